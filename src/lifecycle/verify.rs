//! `verify`: every document decodes, has the schema's fields and types and the id its fields
//! give it, follows the month's aggregate rules, and every day agrees with its month; every
//! notification outbox entry decodes and is the event it names.

use chrono::Datelike;
use clap::Args;

use super::check::{StoredMonth, outbox_problems, problems};
use super::output::{Outcome, Report};
use super::scope::Scope;
use super::store::{Collection, Document, DocumentStore, OUTBOX_COLLECTION, Scan, Stored};
use super::{PAGE_SIZE, Pages, subject};
use crate::usage::DailyUsage;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// The most findings the JSON summary lists (all are counted, and a terminal shows all).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

/// The month last looked up for a day: the days of one month come one after another in id
/// order, so one read serves them all.
struct MonthCache {
    id: String,
    month: StoredMonth,
}

pub async fn run(args: &VerifyArgs, store: &dyn DocumentStore) -> anyhow::Result<Outcome> {
    let mut report = Report::new("verify", false, args.limit);
    let mut cache: Option<MonthCache> = None;
    for collection in Collection::ALL {
        let scan = Scan::Collection {
            collection,
            user: args.scope.user.clone(),
        };
        let mut pages = Pages::new(store, scan);
        while let Some(page) = pages.next(PAGE_SIZE).await? {
            report.advance(page.len() as u64);
            for stored in &page {
                check(stored, &args.scope, store, &mut cache, &mut report).await?;
            }
        }
    }
    // The outbox has no month: a month's scope does not narrow it.
    let mut after: Option<String> = None;
    loop {
        let page = store
            .outbox_entries(args.scope.user.as_ref(), after.as_deref(), PAGE_SIZE)
            .await?;
        report.advance(page.len() as u64);
        for stored in &page {
            report.count("outboxEntriesChecked", 1);
            let name = format!("{OUTBOX_COLLECTION}/{}", stored.id);
            match &stored.entry {
                Err(why) => report.finding(name, format!("does not decode: {why}")),
                Ok(entry) => {
                    for problem in outbox_problems(entry) {
                        report.finding(name.clone(), problem);
                    }
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE_SIZE as usize => after = Some(last.id.clone()),
            _ => break,
        }
    }
    Ok(report.finish())
}

async fn check(
    stored: &Stored,
    scope: &Scope,
    store: &dyn DocumentStore,
    cache: &mut Option<MonthCache>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let name = subject(stored.collection, &stored.id);
    let document = match &stored.content {
        Err(why) if scope.may_hold(&stored.id) => {
            report.count("documentsChecked", 1);
            report.finding(name, format!("does not decode: {why}"));
            return Ok(());
        }
        Err(_) => return Ok(()),
        Ok(document) if !scope.holds(document) => return Ok(()),
        Ok(document) => document,
    };
    report.count("documentsChecked", 1);
    for problem in problems(&stored.id, document) {
        report.finding(name.clone(), problem);
    }
    if let Document::Day(day) = document
        && let Some(problem) = disagreement(&day.usage, store, cache).await?
    {
        report.finding(name, problem);
    }
    Ok(())
}

/// How the day disagrees with its month, confirmed by reading both at one instant: live
/// traffic may have written either between the scan and the month's read.
async fn disagreement(
    day: &DailyUsage,
    store: &dyn DocumentStore,
    cache: &mut Option<MonthCache>,
) -> anyhow::Result<Option<String>> {
    let month_id = day.month_document_id();
    if cache.as_ref().is_none_or(|cached| cached.id != month_id) {
        let found = store
            .get(Collection::History, std::slice::from_ref(&month_id))
            .await?;
        *cache = Some(MonthCache {
            id: month_id,
            month: StoredMonth::of(found.first()),
        });
    }
    let seen = cache
        .as_ref()
        .and_then(|cached| cached.month.disagreement(day));
    if seen.is_none() {
        return Ok(None);
    }
    let snapshot = store
        .month_with_days(&day.user_id, day.date.year(), day.date.month())
        .await?;
    let day_then = snapshot
        .days
        .into_iter()
        .find_map(|stored| match stored.content {
            Ok(Document::Day(found)) if found.usage.date == day.date => Some(found.usage),
            _ => None,
        });
    let month_then = StoredMonth::of(snapshot.month.as_ref());
    Ok(day_then.and_then(|day_then| month_then.disagreement(&day_then)))
}
