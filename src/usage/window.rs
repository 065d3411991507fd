//! The day a request falls in, in the reset time zone, and the instant that day ends.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The calendar day of a request in `RESET_TIMEZONE` and when its limit resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayWindow {
    pub date: NaiveDate,
    /// The first instant of the next day in the zone, as UTC.
    pub reset_at: DateTime<Utc>,
    /// The first instant of the next month in the zone, as UTC: when a monthly cap resets.
    pub month_reset_at: DateTime<Utc>,
}

impl DayWindow {
    pub fn containing(now: DateTime<Utc>, zone: Tz) -> Self {
        Self::of_date(now.with_timezone(&zone).date_naive(), zone)
    }

    /// The window of a given day in `zone`.
    pub fn of_date(date: NaiveDate, zone: Tz) -> Self {
        let next = date.succ_opt().unwrap_or(date);
        let next_month = date
            .with_day(1)
            .and_then(|first| first.checked_add_months(chrono::Months::new(1)))
            .unwrap_or(next);
        Self {
            date,
            reset_at: start_of_day(next, zone),
            month_reset_at: start_of_day(next_month, zone),
        }
    }

    pub fn year(&self) -> i32 {
        self.date.year()
    }

    pub fn month(&self) -> u32 {
        self.date.month()
    }

    /// The day of the month as the `"DD"` key of `dailyUsage`.
    pub fn day_key(&self) -> String {
        format!("{:02}", self.date.day())
    }
}

/// Whole seconds from `now` until `at`, rounded up; 0 once it has passed.
pub fn seconds_until(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let millis = (at - now).num_milliseconds();
    ((millis + 999) / 1000).max(0)
}

/// The first instant of `date` in `zone`. Midnight may be skipped by a DST jump (then the day
/// starts where the jump lands) or happen twice (then the earlier one counts).
fn start_of_day(date: NaiveDate, zone: Tz) -> DateTime<Utc> {
    let midnight = date.and_time(chrono::NaiveTime::MIN);
    if let Some(start) = zone.from_local_datetime(&midnight).earliest() {
        return start.with_timezone(&Utc);
    }
    // No zone skips more than a day; walk the gap a minute at a time to where it ends.
    (1..=24 * 60)
        .map(|minutes| midnight + Duration::minutes(minutes))
        .find_map(|local| zone.from_local_datetime(&local).earliest())
        .map(|start| start.with_timezone(&Utc))
        .unwrap_or_else(|| midnight.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(now: &str, zone: Tz) -> DayWindow {
        DayWindow::containing(utc(now), zone)
    }

    #[test]
    fn utc_day_resets_at_next_midnight() {
        let w = window("2024-01-15T14:30:00Z", Tz::UTC);
        assert_eq!(w.date, NaiveDate::from_ymd_opt(2024, 1, 15).unwrap());
        assert_eq!(w.reset_at, utc("2024-01-16T00:00:00Z"));
        assert_eq!(w.month_reset_at, utc("2024-02-01T00:00:00Z"));
        assert_eq!(
            (w.year(), w.month(), w.day_key()),
            (2024, 1, "15".to_owned())
        );
    }

    #[test]
    fn the_date_is_the_local_date_not_the_utc_one() {
        let ny = chrono_tz::America::New_York;
        // 03:00 UTC on the 16th is still the 15th in New York (EST, UTC-5).
        let w = window("2024-01-16T03:00:00Z", ny);
        assert_eq!(w.date, NaiveDate::from_ymd_opt(2024, 1, 15).unwrap());
        assert_eq!(w.reset_at, utc("2024-01-16T05:00:00Z"));
    }

    #[test]
    fn the_day_before_spring_forward_is_23_hours_long() {
        let ny = chrono_tz::America::New_York;
        // 2024-03-10: 02:00 EST jumps to 03:00 EDT.
        let w = window("2024-03-10T05:00:00Z", ny);
        assert_eq!(w.date, NaiveDate::from_ymd_opt(2024, 3, 10).unwrap());
        assert_eq!(w.reset_at, utc("2024-03-11T04:00:00Z"));
        assert_eq!(
            w.reset_at - utc("2024-03-10T05:00:00Z"),
            Duration::hours(23)
        );
    }

    #[test]
    fn the_day_of_fall_back_is_25_hours_long() {
        let ny = chrono_tz::America::New_York;
        // 2024-11-03: 02:00 EDT falls back to 01:00 EST.
        let w = window("2024-11-03T04:00:00Z", ny);
        assert_eq!(w.date, NaiveDate::from_ymd_opt(2024, 11, 3).unwrap());
        assert_eq!(w.reset_at, utc("2024-11-04T05:00:00Z"));
        assert_eq!(
            w.reset_at - utc("2024-11-03T04:00:00Z"),
            Duration::hours(25)
        );
        // Late in the repeated hour it is still the same day.
        let late = window("2024-11-03T06:30:00Z", ny);
        assert_eq!(late.date, w.date);
    }

    #[test]
    fn a_day_whose_midnight_is_skipped_starts_where_the_jump_lands() {
        // Santiago springs forward at midnight: 2024-09-08 00:00 -04 became 01:00 -03.
        let santiago = chrono_tz::America::Santiago;
        let w = window("2024-09-07T12:00:00Z", santiago);
        assert_eq!(w.date, NaiveDate::from_ymd_opt(2024, 9, 7).unwrap());
        assert_eq!(w.reset_at, utc("2024-09-08T04:00:00Z"));
    }

    #[test]
    fn month_and_year_ends_roll_over() {
        let w = window("2023-12-31T23:59:59Z", Tz::UTC);
        assert_eq!(w.reset_at, utc("2024-01-01T00:00:00Z"));
        assert_eq!(
            (w.year(), w.month(), w.day_key()),
            (2023, 12, "31".to_owned())
        );
        let april = window("2024-04-30T10:00:00Z", Tz::UTC);
        assert_eq!(april.reset_at, utc("2024-05-01T00:00:00Z"));
    }

    #[test]
    fn leap_day_is_a_day_of_its_own() {
        let w = window("2024-02-28T12:00:00Z", Tz::UTC);
        assert_eq!(w.reset_at, utc("2024-02-29T00:00:00Z"));
        let leap = window("2024-02-29T12:00:00Z", Tz::UTC);
        assert_eq!(leap.day_key(), "29");
        assert_eq!(leap.reset_at, utc("2024-03-01T00:00:00Z"));
    }

    #[test]
    fn a_month_resets_on_the_first_of_the_next_in_the_zone() {
        let ny = chrono_tz::America::New_York;
        let december = window("2024-12-31T12:00:00Z", ny);
        assert_eq!(december.month_reset_at, utc("2025-01-01T05:00:00Z"));
        // Still January 31st in New York.
        let january = window("2025-02-01T03:00:00Z", ny);
        assert_eq!(january.month_reset_at, utc("2025-02-01T05:00:00Z"));
        let leap = window("2024-02-29T12:00:00Z", Tz::UTC);
        assert_eq!(leap.month_reset_at, utc("2024-03-01T00:00:00Z"));
    }
}
