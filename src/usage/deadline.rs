//! The one deadline of a request: fixed when the request arrives and carried through the
//! token check, the user directory and the store, so that whatever answers at the deadline
//! tells the truth about what was written.

use std::time::{Duration, Instant};

/// The share of a request's time kept after the last moment a write may begin: for that
/// write's answer, or the settling of a lost one, to arrive before the request is answered.
const SETTLING_SHARE: u32 = 4;

/// Kept at the very end of a request's time for its answer to be written and sent: whatever
/// waits for an outcome stops waiting this long before the answer is due (at most half the
/// settling time, so that a write refused at the last moment it could begin is still known).
const ANSWER_MARGIN: Duration = Duration::from_millis(100);

/// When a request must be answered, and until when a write may begin for it.
///
/// No write begins after [`Self::writes_until`]. Whatever the request waits for ends by
/// [`Self::work_until`], so that by [`Self::answer_by`] it has its answer: a write's real
/// outcome, or, when one may have begun and its outcome cannot be known in time, an answer
/// that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    writes_until: Instant,
    work_until: Instant,
    answer_by: Instant,
}

impl Deadline {
    /// The deadline of a request that arrived at `arrived` and may take `timeout`: writes may
    /// begin in its first three quarters, the last quarter is for their outcomes.
    pub fn after(arrived: Instant, timeout: Duration) -> Self {
        let settling = timeout / SETTLING_SHARE;
        Self {
            writes_until: arrived + timeout - settling,
            work_until: arrived + timeout - ANSWER_MARGIN.min(settling / 2),
            answer_by: arrived + timeout,
        }
    }

    /// The deadline of a request arriving now.
    pub fn from_now(timeout: Duration) -> Self {
        Self::after(Instant::now(), timeout)
    }

    /// The last moment a write may begin.
    pub fn writes_until(&self) -> Instant {
        self.writes_until
    }

    /// When everything the request waits for has ended: its answer follows at once.
    pub fn work_until(&self) -> Instant {
        self.work_until
    }

    /// When the request is answered, whatever is still under way.
    pub fn answer_by(&self) -> Instant {
        self.answer_by
    }

    /// Whether a write may still begin.
    pub fn may_write(&self) -> bool {
        Instant::now() < self.writes_until
    }

    /// How long the request may still wait for anything; zero once that time has come.
    pub fn time_left(&self) -> Duration {
        self.work_until.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_stop_a_quarter_of_the_time_before_the_answer() {
        let arrived = Instant::now();
        let deadline = Deadline::after(arrived, Duration::from_secs(2));
        let at = |millis| arrived + Duration::from_millis(millis);
        assert_eq!(deadline.writes_until(), at(1_500));
        assert_eq!(deadline.work_until(), at(1_900));
        assert_eq!(deadline.answer_by(), at(2_000));
    }

    #[test]
    fn a_short_request_keeps_half_its_settling_time_past_the_last_write() {
        let arrived = Instant::now();
        let deadline = Deadline::after(arrived, Duration::from_millis(200));
        assert_eq!(
            deadline.writes_until(),
            arrived + Duration::from_millis(150)
        );
        assert_eq!(deadline.work_until(), arrived + Duration::from_millis(175));
    }

    #[test]
    fn a_past_deadline_allows_no_write_and_leaves_no_time() {
        let long_ago = Instant::now() - Duration::from_secs(60);
        let deadline = Deadline::after(long_ago, Duration::from_secs(10));
        assert!(!deadline.may_write());
        assert_eq!(deadline.time_left(), Duration::ZERO);
        assert!(Deadline::from_now(Duration::from_secs(10)).may_write());
    }
}
