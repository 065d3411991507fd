//! The rules a month document's derived figures follow, in one place: the record plan writes
//! them, and `verify` and `rebuild-history` check and recompute them.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};

use super::{MonthlyUsage, UserId, UserType};

/// What a month document holds besides its days and the figures derived from them.
#[derive(Debug, Clone)]
pub struct MonthOf {
    pub user_id: UserId,
    pub year: i32,
    pub month: u32,
    pub user_type: UserType,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl MonthOf {
    /// The month document holding `daily_usage`, its skipped days filled in and its figures
    /// derived; `None` when its total does not fit in 64 bits.
    pub fn with_daily_usage(self, mut daily_usage: BTreeMap<String, i64>) -> Option<MonthlyUsage> {
        fill_missing_days(&mut daily_usage);
        let figures = MonthFigures::of(&daily_usage)?;
        Some(MonthlyUsage {
            user_id: self.user_id,
            year: self.year,
            month: self.month,
            daily_usage,
            total_monthly_tokens: figures.total,
            average_daily_usage: figures.average,
            peak_usage_date: figures.peak_date,
            peak_usage_tokens: figures.peak_tokens,
            user_type: self.user_type,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The first and the last day of a month; `None` for no month.
pub fn month_dates(year: i32, month: u32) -> Option<(NaiveDate, NaiveDate)> {
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let last = first.checked_add_months(Months::new(1))?.pred_opt()?;
    Some((first, last))
}

/// The first day of the month of `date`.
pub fn month_start(date: NaiveDate) -> NaiveDate {
    date.with_day(1).unwrap_or(date)
}

/// What a month derives from its `dailyUsage`.
#[derive(Debug, Clone, PartialEq)]
pub struct MonthFigures {
    /// `totalMonthlyTokens`: the sum of every entry.
    pub total: i64,
    /// `averageDailyUsage`: the total over the number of entries (0 for none).
    pub average: f64,
    /// `peakUsageDate`: the day with the most tokens, the earliest on a tie ("" for none).
    pub peak_date: String,
    /// `peakUsageTokens` (0 for none).
    pub peak_tokens: i64,
}

impl MonthFigures {
    /// The figures of `daily_usage`; `None` when its total does not fit in 64 bits.
    pub fn of(daily_usage: &BTreeMap<String, i64>) -> Option<Self> {
        let total = daily_usage
            .values()
            .try_fold(0_i64, |sum, tokens| sum.checked_add(*tokens))?;
        // BTreeMap iterates days in order, so the first maximum found is the earliest.
        let peak =
            daily_usage
                .iter()
                .fold(None::<(&String, i64)>, |best, (day, &tokens)| match best {
                    Some((_, most)) if most >= tokens => best,
                    _ => Some((day, tokens)),
                });
        let average = match daily_usage.len() {
            0 => 0.0,
            entries => total as f64 / entries as f64,
        };
        Some(Self {
            total,
            average,
            peak_date: peak.map(|(day, _)| day.clone()).unwrap_or_default(),
            peak_tokens: peak.map_or(0, |(_, tokens)| tokens),
        })
    }
}

/// Adds a zero entry for every day between the first and the last day present, so that the
/// average counts the days a user skipped.
fn fill_missing_days(daily_usage: &mut BTreeMap<String, i64>) {
    let days: Vec<u32> = daily_usage.keys().filter_map(|k| k.parse().ok()).collect();
    if let (Some(&first), Some(&last)) = (days.iter().min(), days.iter().max()) {
        for day in first..=last {
            daily_usage.entry(format!("{day:02}")).or_insert(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(entries: &[(&str, i64)]) -> BTreeMap<String, i64> {
        entries.iter().map(|(d, t)| (d.to_string(), *t)).collect()
    }

    #[test]
    fn the_peak_is_the_earliest_maximum() {
        let figures = MonthFigures::of(&usage(&[("01", 5), ("02", 9), ("03", 9)])).unwrap();
        assert_eq!(figures.total, 23);
        assert_eq!((figures.peak_date.as_str(), figures.peak_tokens), ("02", 9));
        assert!((figures.average - 23.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn an_empty_month_has_zero_figures_and_an_overflow_has_none() {
        let empty = MonthFigures::of(&BTreeMap::new()).unwrap();
        assert_eq!((empty.total, empty.average, empty.peak_tokens), (0, 0.0, 0));
        assert_eq!(empty.peak_date, "");
        assert_eq!(
            MonthFigures::of(&usage(&[("01", i64::MAX), ("02", 1)])),
            None
        );
    }

    #[test]
    fn a_month_knows_its_first_and_last_day() {
        let day = |s: &str| s.parse::<NaiveDate>().unwrap();
        assert_eq!(
            month_dates(2024, 2),
            Some((day("2024-02-01"), day("2024-02-29")))
        );
        assert_eq!(
            month_dates(2026, 12),
            Some((day("2026-12-01"), day("2026-12-31")))
        );
        assert_eq!(month_dates(2026, 13), None);
        assert_eq!(month_start(day("2026-11-29")), day("2026-11-01"));
    }

    #[test]
    fn skipped_days_are_filled_with_zero() {
        let mut daily = usage(&[("03", 1), ("06", 2)]);
        fill_missing_days(&mut daily);
        assert_eq!(daily, usage(&[("03", 1), ("04", 0), ("05", 0), ("06", 2)]));
    }
}
