//! A daily limit tried against past usage: for each day of a range, how many users of a type
//! it would have refused, and how many tokens they used above it.

use chrono::NaiveDate;

use super::UserType;

/// Days of a range a store is asked about at once.
pub(super) const DAYS_AT_ONCE: usize = 8;

/// The first and last day of a range, both included: `from` no later than `to`, and at most
/// [`DayRange::MAX_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayRange {
    from: NaiveDate,
    to: NaiveDate,
}

/// Why two dates make no [`DayRange`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDayRange {
    #[error("from must be on or before to")]
    Reversed,
    #[error("from..to covers at most {} days, both included", DayRange::MAX_DAYS)]
    TooLong,
}

impl DayRange {
    /// About a quarter: enough to compare a limit across months, few enough queries to answer
    /// within one request.
    pub const MAX_DAYS: i64 = 92;

    pub fn new(from: NaiveDate, to: NaiveDate) -> Result<Self, InvalidDayRange> {
        let days = (to - from).num_days() + 1;
        if days < 1 {
            Err(InvalidDayRange::Reversed)
        } else if days > Self::MAX_DAYS {
            Err(InvalidDayRange::TooLong)
        } else {
            Ok(Self { from, to })
        }
    }

    pub fn from(&self) -> NaiveDate {
        self.from
    }

    pub fn to(&self) -> NaiveDate {
        self.to
    }

    /// Every day of the range, in order.
    pub fn days(self) -> impl Iterator<Item = NaiveDate> {
        self.from.iter_days().take_while(move |day| *day <= self.to)
    }
}

/// One day of one user type measured against a limit. Summed over days, each figure counts a
/// user once per day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverLimit {
    /// Users with tokens used above 0, as the daily summary counts them.
    pub active_users: i64,
    /// Users whose tokens used are above the limit: those it would have refused.
    pub users_over_limit: i64,
    /// The sum, over those users, of their tokens used minus the limit.
    pub tokens_over_limit: i64,
}

impl OverLimit {
    /// The figures from what an aggregation counts: the active users, and the number and the
    /// summed tokens of the users above `limit`.
    pub fn from_counts(active_users: i64, users_over_limit: i64, tokens: i64, limit: i64) -> Self {
        Self {
            active_users,
            users_over_limit,
            tokens_over_limit: tokens.saturating_sub(limit.saturating_mul(users_over_limit)),
        }
    }
}

impl std::ops::Add for OverLimit {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            active_users: self.active_users + other.active_users,
            users_over_limit: self.users_over_limit + other.users_over_limit,
            tokens_over_limit: self.tokens_over_limit + other.tokens_over_limit,
        }
    }
}

/// The answer: the question, the limit configured now for the type, and every day of the
/// range in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatIf {
    pub user_type: UserType,
    pub daily_limit: i64,
    pub current_daily_limit: i64,
    pub range: DayRange,
    pub days: Vec<(NaiveDate, OverLimit)>,
}

impl WhatIf {
    /// The days' figures summed.
    pub fn totals(&self) -> OverLimit {
        self.days
            .iter()
            .fold(OverLimit::default(), |sum, (_, day)| sum + *day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(raw: &str) -> NaiveDate {
        raw.parse().unwrap()
    }

    #[test]
    fn a_range_has_every_day_from_its_first_to_its_last() {
        let range = DayRange::new(date("2024-02-27"), date("2024-03-02")).unwrap();
        let days: Vec<String> = range.days().map(|day| day.to_string()).collect();
        assert_eq!(
            days,
            [
                "2024-02-27",
                "2024-02-28",
                "2024-02-29",
                "2024-03-01",
                "2024-03-02"
            ]
        );
        let one = DayRange::new(date("2024-01-15"), date("2024-01-15")).unwrap();
        assert_eq!(one.days().count(), 1);
    }

    #[test]
    fn a_range_is_forward_and_at_most_92_days() {
        let from = date("2024-01-01");
        let longest = DayRange::new(from, date("2024-04-01")).unwrap();
        assert_eq!(longest.days().count(), 92);
        assert_eq!(
            DayRange::new(from, date("2024-04-02")),
            Err(InvalidDayRange::TooLong)
        );
        assert_eq!(
            DayRange::new(from, date("2023-12-31")),
            Err(InvalidDayRange::Reversed)
        );
    }

    #[test]
    fn tokens_over_the_limit_are_the_sum_less_the_limit_per_user_above_it() {
        let day = OverLimit::from_counts(10, 3, 3_600, 1_000);
        assert_eq!(
            day,
            OverLimit {
                active_users: 10,
                users_over_limit: 3,
                tokens_over_limit: 600
            }
        );
        assert_eq!(OverLimit::from_counts(0, 0, 0, 1_000), OverLimit::default());
    }

    #[test]
    fn totals_sum_the_days() {
        let range = DayRange::new(date("2024-01-01"), date("2024-01-02")).unwrap();
        let what_if = WhatIf {
            user_type: UserType::Trial,
            daily_limit: 100,
            current_daily_limit: 1_000,
            range,
            days: vec![
                (date("2024-01-01"), OverLimit::from_counts(4, 2, 250, 100)),
                (date("2024-01-02"), OverLimit::from_counts(1, 1, 130, 100)),
            ],
        };
        assert_eq!(what_if.totals(), OverLimit::from_counts(5, 3, 380, 100));
    }
}
