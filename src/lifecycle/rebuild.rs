//! `rebuild-history`: recomputes month documents from the day documents. A day's document is
//! the live counter and wins over its month's entry; entries of days whose documents are gone
//! (cleaned up) are kept. Each month is read with its days at one instant and written on the
//! condition that it is unchanged, so a count that live traffic writes meanwhile is never lost:
//! the write is refused and the month is read and rebuilt again.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Utc};
use clap::Args;

use super::audit::Operator;
use super::output::{Outcome, Report};
use super::scope::{Scope, YearMonth};
use super::store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite, MonthSnapshot,
    Scan,
};
use super::{PAGE_SIZE, Pages, retry_pauses, subject};
use crate::usage::{AuditAction, DailyUsage, MonthOf, MonthlyUsage, UserId};

#[derive(Debug, Args)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Show what would change, and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub operator: Operator,
    /// The most changes the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

pub async fn run(args: &RebuildArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("rebuild-history", args.dry_run, args.limit);
    let scan = Scan::Collection {
        collection: Collection::Daily,
        user: args.scope.user.clone(),
    };
    // Day ids are `{user}_{date}`, so a user's days of one month come one after another: each
    // month is rebuilt once, when its first day is seen.
    let mut last_month: Option<(UserId, YearMonth)> = None;
    let mut pages = Pages::new(store, scan);
    while let Some(page) = pages.next(PAGE_SIZE).await? {
        report.advance(page.len() as u64);
        for stored in &page {
            let Ok(Document::Day(day)) = &stored.content else {
                report.finding(
                    subject(Collection::Daily, &stored.id),
                    "skipped: it does not decode".to_owned(),
                );
                continue;
            };
            let month = YearMonth::of(day.usage.date);
            if !args.scope.holds(&Document::Day(day.clone()))
                || last_month.as_ref() == Some(&(day.usage.user_id.clone(), month))
            {
                continue;
            }
            last_month = Some((day.usage.user_id.clone(), month));
            rebuild_month(&day.usage.user_id, month, args, store, &mut report).await?;
        }
    }
    Ok(report.finish())
}

async fn rebuild_month(
    user_id: &UserId,
    month: YearMonth,
    args: &RebuildArgs,
    store: &dyn DocumentStore,
    report: &mut Report,
) -> anyhow::Result<()> {
    let id = MonthlyUsage::document_id(user_id, month.year, month.month);
    let name = subject(Collection::History, &id);
    let mut pauses = retry_pauses();
    loop {
        let snapshot = store
            .month_with_days(user_id, month.year, month.month)
            .await?;
        let current = match snapshot.month.as_ref().map(|stored| &stored.content) {
            None => None,
            Some(Ok(Document::Month(current))) => Some(current.clone()),
            Some(_) => {
                report.finding(
                    name,
                    "does not decode; repair or delete it, then rebuild".to_owned(),
                );
                return Ok(());
            }
        };
        let days = used_days(user_id, current.as_ref(), &snapshot);
        if current.is_none() && days.is_empty() {
            // Days that only ever held reservations make no month.
            return Ok(());
        }
        let rebuilt = rebuilt(user_id, month, current.as_ref(), &days, Utc::now());
        let Some(rebuilt) = rebuilt else {
            report.finding(name, "its days' total does not fit in 64 bits".to_owned());
            return Ok(());
        };
        report.count("monthsRead", 1);
        let Some(changes) = differences(current.as_ref(), &rebuilt) else {
            report.count("monthsUnchanged", 1);
            return Ok(());
        };
        if args.dry_run {
            report.change(name, changes);
            return Ok(());
        }
        let condition = match &snapshot.month {
            Some(stored) => Condition::Unchanged(stored.version.clone()),
            None => Condition::Missing,
        };
        let write = DocumentWrite {
            collection: Collection::History,
            id: id.clone(),
            change: Change::Put(Document::Month(rebuilt)),
            condition,
        };
        let write = vec![write];
        let audit = args.operator.entry(AuditAction::HistoryRebuilt, &write);
        if store.apply(write, &audit).await? == Applied::All {
            report.count("monthsRewritten", 1);
            report.change(name, changes);
            return Ok(());
        }
        report.count("retriesAfterLiveWrites", 1);
        let Some(pause) = pauses.next() else {
            anyhow::bail!("{name} kept changing under live traffic; run rebuild-history again")
        };
        tokio::time::sleep(pause).await;
    }
}

/// The user's days of the month that count in it: those with tokens, and those its month
/// already has. A day with none that its month lacks only ever held reservations.
fn used_days<'a>(
    user_id: &UserId,
    current: Option<&MonthlyUsage>,
    snapshot: &'a MonthSnapshot,
) -> Vec<&'a DailyUsage> {
    snapshot
        .days
        .iter()
        .filter_map(|stored| match &stored.content {
            Ok(Document::Day(day)) if &day.usage.user_id == user_id => Some(&day.usage),
            _ => None,
        })
        .filter(|day| {
            let key = format!("{:02}", day.date.day());
            day.tokens_used > 0 || current.is_some_and(|m| m.daily_usage.contains_key(&key))
        })
        .collect()
}

/// The month as its days say it is, or `None` when its total overflows.
fn rebuilt(
    user_id: &UserId,
    month: YearMonth,
    current: Option<&MonthlyUsage>,
    days: &[&DailyUsage],
    now: DateTime<Utc>,
) -> Option<MonthlyUsage> {
    let mut daily_usage: BTreeMap<String, i64> =
        current.map(|m| m.daily_usage.clone()).unwrap_or_default();
    for day in days {
        daily_usage.insert(format!("{:02}", day.date.day()), day.tokens_used);
    }
    let latest_day = days.iter().max_by_key(|day| day.date);
    // The service writes a month's type with each day's, so the latest day's is the month's.
    let user_type = latest_day
        .map(|day| day.user_type)
        .or(current.map(|m| m.user_type))?;
    let created_at = current
        .map(|m| m.created_at)
        .or_else(|| days.iter().map(|day| day.last_updated).min())?;
    MonthOf {
        user_id: user_id.clone(),
        year: month.year,
        month: month.month,
        user_type,
        created_at,
        updated_at: now,
    }
    .with_daily_usage(daily_usage)
}

/// What rebuilding changes, field by field; `None` when the figures are already right.
fn differences(current: Option<&MonthlyUsage>, rebuilt: &MonthlyUsage) -> Option<String> {
    let Some(current) = current else {
        return Some(format!(
            "created with totalMonthlyTokens {} over {} days",
            rebuilt.total_monthly_tokens,
            rebuilt.daily_usage.len()
        ));
    };
    let mut changes = Vec::new();
    let days: std::collections::BTreeSet<&String> = current
        .daily_usage
        .keys()
        .chain(rebuilt.daily_usage.keys())
        .collect();
    for day in days {
        let (before, after) = (current.daily_usage.get(day), rebuilt.daily_usage.get(day));
        if before != after {
            let show = |n: Option<&i64>| n.map_or("none".to_owned(), i64::to_string);
            changes.push(format!(
                "dailyUsage.{day} {} -> {}",
                show(before),
                show(after)
            ));
        }
    }
    let fields = [
        (
            "totalMonthlyTokens",
            current.total_monthly_tokens.to_string(),
            rebuilt.total_monthly_tokens.to_string(),
        ),
        (
            "averageDailyUsage",
            current.average_daily_usage.to_string(),
            rebuilt.average_daily_usage.to_string(),
        ),
        (
            "peakUsageDate",
            current.peak_usage_date.clone(),
            rebuilt.peak_usage_date.clone(),
        ),
        (
            "peakUsageTokens",
            current.peak_usage_tokens.to_string(),
            rebuilt.peak_usage_tokens.to_string(),
        ),
        (
            "userType",
            current.user_type.to_string(),
            rebuilt.user_type.to_string(),
        ),
    ];
    for (name, before, after) in fields {
        if before != after {
            changes.push(format!("{name} {before} -> {after}"));
        }
    }
    (!changes.is_empty()).then(|| changes.join("; "))
}
