//! `cleanup`: deletes day documents past their retention once their month holds the same
//! figure, and (on SQLite) expired idempotency records. Every commit deletes a batch of days
//! on the condition that each is unchanged since it was checked, so a crash loses nothing and
//! a second run simply carries on with what is left.

use chrono::{Days, NaiveDate, Utc};
use chrono_tz::Tz;
use clap::Args;

use super::audit::Operator;
use super::check::StoredMonth;
use super::output::{Outcome, Report};
use super::store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite,
    MAX_WRITES_PER_COMMIT, Scan, Stored,
};
use super::{Pages, subject};
use crate::usage::{AuditAction, DayWindow, month_start};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Days a day document is kept; the current month's are always kept.
    #[arg(long, env = "DAILY_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=36_500))]
    pub daily_retention_days: u64,
    /// The IANA time zone in which a day starts and ends.
    #[arg(long, env = "RESET_TIMEZONE", default_value = "UTC")]
    pub reset_timezone: Tz,
    /// Documents deleted per commit (each commit also writes its audit entry).
    #[arg(long, default_value_t = 499, value_parser = clap::value_parser!(u32).range(1..=499))]
    pub batch_size: u32,
    /// Stop after deleting this many day documents (the next run carries on).
    #[arg(long)]
    pub max_deletes: Option<u64>,
    /// Show what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub operator: Operator,
    /// The most findings the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// The first date whose documents are kept: `retention` days back, and never later than the
/// first day of the current month, so that this month's days are all still there.
pub fn keep_from(today: NaiveDate, retention_days: u64) -> NaiveDate {
    let by_retention = today
        .checked_sub_days(Days::new(retention_days))
        .unwrap_or(NaiveDate::MIN);
    by_retention.min(month_start(today))
}

pub async fn run(args: &CleanupArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("cleanup", args.dry_run, args.limit);
    let today = DayWindow::containing(Utc::now(), args.reset_timezone).date;
    let scan = Scan::DaysBefore(keep_from(today, args.daily_retention_days));
    let batch = (args.batch_size as usize).min(MAX_WRITES_PER_COMMIT);
    let max_deletes = args.max_deletes.unwrap_or(u64::MAX);
    let mut deleted = 0_u64;
    let mut pages = Pages::new(store, scan);
    while deleted < max_deletes {
        let room = usize::try_from(max_deletes - deleted).unwrap_or(usize::MAX);
        let size = batch.min(room).max(1);
        let Some(page) = pages.next(size as u32).await? else {
            break;
        };
        report.advance(page.len() as u64);
        let deletions = deletable(&page, store, &mut report).await?;
        let count = deletions.len() as u64;
        if !args.dry_run && !deletions.is_empty() {
            let audit = args.operator.entry(AuditAction::DaysDeleted, &deletions);
            match store.apply(deletions, &audit).await? {
                Applied::All => report.count("daysDeleted", count),
                // A day changed since it was checked: leave the batch to the next run.
                Applied::Nothing => report.count("daysChangedMeanwhile", count),
            }
        } else if args.dry_run {
            report.count("daysToDelete", count);
        }
        deleted += count;
    }
    if !args.dry_run {
        expire_keys(store, &mut report).await?;
    }
    Ok(report.finish())
}

/// The days of `page` whose months hold their figures, as conditional deletes; the others are
/// reported and kept.
async fn deletable(
    page: &[Stored],
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<Vec<DocumentWrite>> {
    let month_ids: Vec<String> = page
        .iter()
        .filter_map(|stored| match &stored.content {
            Ok(Document::Day(day)) => Some(day.usage.month_document_id()),
            _ => None,
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let months = store.get(Collection::History, &month_ids).await?;
    let month_of = |id: &str| StoredMonth::of(months.iter().find(|stored| stored.id == id));
    let mut deletions = Vec::new();
    for stored in page {
        let name = subject(Collection::Daily, &stored.id);
        let Ok(Document::Day(day)) = &stored.content else {
            report.finding(name, "kept: it does not decode".to_owned());
            continue;
        };
        let month_id = day.usage.month_document_id();
        let disagreement = match month_of(&month_id) {
            StoredMonth::Unreadable => Some(format!("its month {month_id} does not decode")),
            month => month.disagreement(&day.usage),
        };
        if let Some(problem) = disagreement {
            report.finding(name, format!("kept: {problem}"));
            continue;
        }
        deletions.push(DocumentWrite {
            collection: Collection::Daily,
            id: stored.id.clone(),
            change: Change::Delete,
            condition: Condition::Unchanged(stored.version.clone()),
        });
    }
    Ok(deletions)
}

async fn expire_keys(store: &dyn DocumentStore, report: &mut Report) -> anyhow::Result<()> {
    const BATCH: u32 = 500;
    loop {
        match store.delete_expired_keys(Utc::now(), BATCH).await? {
            None => return Ok(()),
            Some(deleted) => {
                report.count("expiredKeysDeleted", deleted);
                if deleted < u64::from(BATCH) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_current_month_is_always_kept() {
        assert_eq!(keep_from(date("2026-11-29"), 90), date("2026-08-31"));
        assert_eq!(keep_from(date("2026-11-29"), 3), date("2026-11-01"));
        assert_eq!(keep_from(date("2026-11-01"), 1), date("2026-10-31"));
    }
}
