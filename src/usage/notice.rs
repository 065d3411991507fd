//! Threshold events: what a record raises when a user's day or month reaches a share of its
//! limit, or when the day refuses for the first time. They are decided inside the record that
//! crosses, from the marks the day and the month keep of what they already raised, so that
//! each is raised once per user, window and threshold, whatever the retries, instances, resets
//! or changes of limit.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{LimitWindow, Share, Standing, UserId, UserType};

/// What a window's document keeps once it raised an event, so that it never raises it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    /// The window's tokens reached this share of its limit.
    Reached(Share),
    /// The day refused a request (kept by the day only).
    Denied,
}

const DENIED: &str = "denied";

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reached(share) => share.fmt(f),
            Self::Denied => f.write_str(DENIED),
        }
    }
}

/// A stored mark that is neither a share nor `denied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a notification mark (a share such as \"0.8\", or \"denied\")")]
pub struct InvalidMark(String);

impl FromStr for Mark {
    type Err = InvalidMark;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw == DENIED {
            return Ok(Self::Denied);
        }
        raw.parse()
            .map(Self::Reached)
            .map_err(|_| InvalidMark(raw.to_owned()))
    }
}

/// The marks of one day or month: `notified`, a list of strings, in the stored document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Marks(BTreeSet<Mark>);

impl Marks {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, mark: Mark) -> bool {
        self.0.contains(&mark)
    }

    pub fn iter(&self) -> impl Iterator<Item = Mark> + '_ {
        self.0.iter().copied()
    }

    fn with(&self, added: impl IntoIterator<Item = Mark>) -> Self {
        let mut marks = self.0.clone();
        marks.extend(added);
        Self(marks)
    }
}

impl FromIterator<Mark> for Marks {
    fn from_iter<I: IntoIterator<Item = Mark>>(marks: I) -> Self {
        Self(marks.into_iter().collect())
    }
}

impl Serialize for Marks {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Mark::to_string))
    }
}

impl<'de> Deserialize<'de> for Marks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<String>::deserialize(deserializer)?
            .iter()
            .map(|raw| raw.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

/// What happened to the user's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The window's tokens reached `threshold` of its limit.
    ThresholdCrossed {
        window: LimitWindow,
        threshold: Share,
    },
    /// The day's first refusal, by the window that refused.
    FirstDenied { window: LimitWindow },
}

/// Every event type, as receivers see them.
pub const EVENT_TYPES: [&str; 2] = ["usage.threshold_crossed", "usage.first_denied"];

impl EventKind {
    /// The event's type, as receivers see it: one of [`EVENT_TYPES`].
    pub fn name(self) -> &'static str {
        match self {
            Self::ThresholdCrossed { .. } => EVENT_TYPES[0],
            Self::FirstDenied { .. } => EVENT_TYPES[1],
        }
    }

    pub fn window(self) -> LimitWindow {
        match self {
            Self::ThresholdCrossed { window, .. } | Self::FirstDenied { window } => window,
        }
    }
}

/// One event, as the outbox keeps it until it is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageEvent {
    /// The same for the same user, window and threshold, so that a receiver can tell a
    /// redelivery from a new event; without `.`, which signatures use as their separator.
    pub id: String,
    pub kind: EventKind,
    pub user_id: UserId,
    pub user_type: UserType,
    /// The day of the request that raised it (a monthly event's month is this day's).
    pub date: NaiveDate,
    /// The window's tokens and limit at that moment.
    pub tokens_used: i64,
    pub limit: i64,
    pub occurred_at: DateTime<Utc>,
}

impl UsageEvent {
    /// The event as receivers get it: the Standard Webhooks payload shape, `type`,
    /// `timestamp` and `data`.
    pub fn payload(&self) -> serde_json::Value {
        let threshold = match self.kind {
            EventKind::ThresholdCrossed { threshold, .. } => Some(threshold.to_string()),
            EventKind::FirstDenied { .. } => None,
        };
        serde_json::json!({
            "type": self.kind.name(),
            "timestamp": self.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": {
                "eventId": self.id,
                "userId": self.user_id.as_str(),
                "userType": self.user_type.as_str(),
                "window": self.kind.window().as_str(),
                "date": self.date.format("%Y-%m-%d").to_string(),
                "month": self.date.format("%Y-%m").to_string(),
                "threshold": threshold,
                "tokensUsed": self.tokens_used,
                "limit": self.limit,
            },
        })
    }

    fn new(kind: EventKind, standing: &Standing, at: DateTime<Utc>) -> Self {
        let day = &standing.day;
        let (period, tokens_used, limit) = match kind.window() {
            LimitWindow::Daily => (
                day.date.format("%Y-%m-%d").to_string(),
                day.tokens_used,
                day.token_limit,
            ),
            LimitWindow::Monthly => (
                day.date.format("%Y-%m").to_string(),
                standing.month.tokens_used,
                standing.month.limit.unwrap_or_default(),
            ),
        };
        let what = match kind {
            EventKind::ThresholdCrossed { window, threshold } => {
                format!("{}-{}", window.as_str(), threshold.percent_label())
            }
            EventKind::FirstDenied { .. } => DENIED.to_owned(),
        };
        Self {
            id: format!("{}_{period}_{what}", day.user_id),
            kind,
            user_id: day.user_id.clone(),
            user_type: day.user_type,
            date: day.date,
            tokens_used,
            limit,
            occurred_at: at,
        }
    }
}

/// What a record raised: its events, and the marks its day and month keep from now on
/// (`None`: unchanged).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raised {
    pub events: Vec<UsageEvent>,
    pub day_marks: Option<Marks>,
    pub month_marks: Option<Marks>,
}

/// The shares of a limit at which events are raised (`NOTIFY_THRESHOLDS`); none when no sink
/// is configured, and then a record raises nothing and writes nothing more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Thresholds(BTreeSet<Share>);

impl Thresholds {
    pub fn new(shares: impl IntoIterator<Item = Share>) -> Self {
        Self(shares.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The crossings of a record that counted tokens, as `standing` now stands, beside what
    /// the day and the month already marked.
    pub fn crossed(
        &self,
        standing: &Standing,
        day_marks: &Marks,
        month_marks: &Marks,
        at: DateTime<Utc>,
    ) -> Raised {
        let day = &standing.day;
        let newly = |marks: &Marks, used: i64, limit: i64| -> Vec<Share> {
            self.0
                .iter()
                .copied()
                .filter(|share| !marks.contains(Mark::Reached(*share)))
                .filter(|share| share.reached(used, limit))
                .collect()
        };
        let daily = newly(day_marks, day.tokens_used, day.token_limit);
        let monthly = standing.month.limit.map_or_else(Vec::new, |limit| {
            newly(month_marks, standing.month.tokens_used, limit)
        });
        let event = |window, threshold| {
            UsageEvent::new(
                EventKind::ThresholdCrossed { window, threshold },
                standing,
                at,
            )
        };
        let events = (daily.iter().map(|share| event(LimitWindow::Daily, *share)))
            .chain(
                monthly
                    .iter()
                    .map(|share| event(LimitWindow::Monthly, *share)),
            )
            .collect();
        let marked = |marks: &Marks, shares: &[Share]| {
            (!shares.is_empty()).then(|| marks.with(shares.iter().copied().map(Mark::Reached)))
        };
        Raised {
            events,
            day_marks: marked(day_marks, &daily),
            month_marks: marked(month_marks, &monthly),
        }
    }

    /// The day's first refusal raises one event; later ones raise nothing.
    pub fn denied(&self, standing: &Standing, day_marks: &Marks, at: DateTime<Utc>) -> Raised {
        let Some(window) = standing.exceeds else {
            return Raised::default();
        };
        if self.is_empty() || day_marks.contains(Mark::Denied) {
            return Raised::default();
        }
        Raised {
            events: vec![UsageEvent::new(
                EventKind::FirstDenied { window },
                standing,
                at,
            )],
            day_marks: Some(day_marks.with([Mark::Denied])),
            month_marks: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::usage::{DailyUsage, Enforcement, MonthStanding};

    fn share(raw: &str) -> Share {
        raw.parse().unwrap()
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap()
    }

    fn standing(day_used: i64, month_used: i64, month_limit: Option<i64>) -> Standing {
        Standing {
            day: DailyUsage {
                user_id: UserId::parse("alice").unwrap(),
                date: NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
                tokens_used: day_used,
                token_limit: 1_000,
                user_type: UserType::Trial,
                last_updated: at(),
                reset_at: Utc.with_ymd_and_hms(2026, 12, 5, 0, 0, 0).unwrap(),
            },
            reserved_tokens: 0,
            month: MonthStanding {
                tokens_used: month_used,
                limit: month_limit,
                reset_at: Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap(),
            },
            enforcement: Enforcement::Enforce,
            exceeds: None,
        }
    }

    fn defaults() -> Thresholds {
        Thresholds::new([share("0.8"), share("1")])
    }

    #[test]
    fn a_record_that_crosses_nothing_raises_nothing_and_marks_nothing() {
        let raised = defaults().crossed(
            &standing(799, 799, None),
            &Marks::default(),
            &Marks::default(),
            at(),
        );
        assert_eq!(raised, Raised::default());
    }

    #[test]
    fn each_share_reached_is_raised_once_with_a_stable_id() {
        let thresholds = defaults();
        let first = thresholds.crossed(
            &standing(1_200, 5_000, Some(6_000)),
            &Marks::default(),
            &Marks::default(),
            at(),
        );
        let ids: Vec<&str> = first.events.iter().map(|event| event.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "alice_2026-12-04_daily-80",
                "alice_2026-12-04_daily-100",
                "alice_2026-12_monthly-80"
            ]
        );
        assert_eq!(
            (first.events[2].tokens_used, first.events[2].limit),
            (5_000, 6_000)
        );
        assert_eq!(
            (first.events[0].tokens_used, first.events[0].limit),
            (1_200, 1_000)
        );
        let day_marks = first.day_marks.unwrap();
        let month_marks = first.month_marks.unwrap();
        assert_eq!(
            serde_json::to_value(&day_marks).unwrap(),
            serde_json::json!(["0.8", "1"])
        );

        // The same day again, or back under after a reset and over once more: nothing new.
        for used in [1_300, 900] {
            let again = thresholds.crossed(
                &standing(used, 5_100, Some(6_000)),
                &day_marks,
                &month_marks,
                at(),
            );
            assert_eq!(again, Raised::default(), "{used}");
        }
        let month_full = thresholds.crossed(
            &standing(1_300, 6_000, Some(6_000)),
            &day_marks,
            &month_marks,
            at(),
        );
        assert_eq!(month_full.events.len(), 1);
        assert_eq!(month_full.events[0].id, "alice_2026-12_monthly-100");
        assert_eq!(month_full.day_marks, None);
    }

    #[test]
    fn only_the_first_refusal_of_a_day_is_raised() {
        let mut refused = standing(990, 990, None);
        refused.exceeds = Some(LimitWindow::Daily);
        let first = defaults().denied(&refused, &Marks::default(), at());
        assert_eq!(first.events.len(), 1);
        assert_eq!(first.events[0].kind.name(), "usage.first_denied");
        assert_eq!(first.events[0].id, "alice_2026-12-04_denied");
        let marks = first.day_marks.unwrap();
        assert!(marks.contains(Mark::Denied));
        assert_eq!(defaults().denied(&refused, &marks, at()), Raised::default());
        assert_eq!(
            Thresholds::default().denied(&refused, &Marks::default(), at()),
            Raised::default()
        );
    }

    #[test]
    fn the_payload_names_the_event_its_window_and_figures() {
        let raised = defaults().crossed(
            &standing(800, 800, None),
            &Marks::default(),
            &Marks::default(),
            at(),
        );
        assert_eq!(
            raised.events[0].payload(),
            serde_json::json!({
                "type": "usage.threshold_crossed",
                "timestamp": "2026-12-04T10:00:00.000Z",
                "data": {
                    "eventId": "alice_2026-12-04_daily-80", "userId": "alice", "userType": "trial",
                    "window": "daily", "date": "2026-12-04", "month": "2026-12",
                    "threshold": "0.8", "tokensUsed": 800, "limit": 1000,
                },
            })
        );
    }

    #[test]
    fn marks_are_stored_as_strings_and_read_back() {
        let marks: Marks = serde_json::from_value(serde_json::json!(["denied", "0.8"])).unwrap();
        assert_eq!(
            marks.iter().collect::<Vec<_>>(),
            [Mark::Reached(share("0.8")), Mark::Denied]
        );
        assert!(serde_json::from_value::<Marks>(serde_json::json!(["0"])).is_err());
        assert!(serde_json::from_value::<Marks>(serde_json::json!(["often"])).is_err());
    }
}
