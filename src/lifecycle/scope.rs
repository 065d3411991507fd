//! Which documents a command looks at: everything, one user's, one month's, or both.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use clap::Args;

use super::store::Document;
use crate::usage::UserId;

/// A calendar month, spelled `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    pub year: i32,
    pub month: u32,
}

impl YearMonth {
    pub fn of(date: NaiveDate) -> Self {
        Self {
            year: date.year(),
            month: date.month(),
        }
    }
}

impl FromStr for YearMonth {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        NaiveDate::parse_from_str(&format!("{raw}-01"), "%Y-%m-%d")
            .ok()
            .filter(|_| raw.len() == 7)
            .map(Self::of)
            .ok_or_else(|| "a month is written YYYY-MM, e.g. 2026-11".to_owned())
    }
}

impl fmt::Display for YearMonth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[derive(Debug, Clone, Default, Args)]
pub struct Scope {
    /// Only this user's documents.
    #[arg(long, value_parser = parse_user)]
    pub user: Option<UserId>,
    /// Only the documents of this month (YYYY-MM).
    #[arg(long)]
    pub month: Option<YearMonth>,
}

impl Scope {
    /// Whether a decoded document is in scope (its user is already filtered by the scan).
    pub fn holds(&self, document: &Document) -> bool {
        let month = match document {
            Document::Day(day) => YearMonth::of(day.usage.date),
            Document::Month(month) => YearMonth {
                year: month.year,
                month: month.month,
            },
        };
        self.month.is_none_or(|wanted| wanted == month)
    }

    /// Whether a document that does not decode may be in scope, judged by its id.
    pub fn may_hold(&self, id: &str) -> bool {
        self.month.is_none_or(|wanted| {
            let (year, month) = (wanted.year, wanted.month);
            id.contains(&format!("_{year:04}-{month:02}-"))
                || id.ends_with(&format!("_{year:04}_{month:02}"))
        })
    }
}

fn parse_user(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_are_written_year_dash_month() {
        assert_eq!(
            "2026-02".parse::<YearMonth>().unwrap(),
            YearMonth {
                year: 2026,
                month: 2
            }
        );
        for bad in ["2026-13", "2026-2", "26-02", "2026-02-01", ""] {
            assert!(bad.parse::<YearMonth>().is_err(), "{bad} accepted");
        }
    }
}
