//! The rules a month document's derived figures follow, in one place: the record plan writes
//! them, and `verify` and `rebuild-history` check and recompute them.

use std::collections::BTreeMap;

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
pub fn fill_missing_days(daily_usage: &mut BTreeMap<String, i64>) {
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
    fn skipped_days_are_filled_with_zero() {
        let mut daily = usage(&[("03", 1), ("06", 2)]);
        fill_missing_days(&mut daily);
        assert_eq!(daily, usage(&[("03", 1), ("04", 0), ("05", 0), ("06", 2)]));
    }
}
