//! The data lifecycle: `verify`, `rebuild-history`, `cleanup`, `archive`, `export` and
//! `import`, commands of the one binary (so the same image runs them as Cloud Run Jobs,
//! configured like `serve`). Each is handed its arguments and an opened store, which it sees
//! only through the [`DocumentStore`] port, and streams its documents in pages, so memory stays
//! flat however much data there is.

mod archive;
mod audit;
mod check;
mod cleanup;
mod ndjson;
mod output;
mod rebuild;
mod scope;
mod store;
mod transfer;
mod verify;

pub use archive::{ArchiveArgs, run as archive};
pub use audit::Operator;
pub use cleanup::{CleanupArgs, run as cleanup};
pub use output::Outcome;
pub use rebuild::{RebuildArgs, run as rebuild_history};
pub use scope::{Scope, YearMonth};
pub use store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite,
    MAX_WRITES_PER_COMMIT, MonthSnapshot, Scan, ScanCursor, Stored, StoredEntry, Version,
    strict_user_type,
};
pub use transfer::{ExportArgs, ImportArgs, export, import};
pub use verify::{VerifyArgs, run as verify};

use std::time::Duration;

use crate::usage::StoreError;

/// How many documents one page of a scan holds.
const PAGE_SIZE: u32 = 500;

/// A scan read a page at a time, each page resuming after the last one's final document.
struct Pages<'a> {
    store: &'a dyn DocumentStore,
    scan: Scan,
    after: Option<ScanCursor>,
    done: bool,
}

impl<'a> Pages<'a> {
    fn new(store: &'a dyn DocumentStore, scan: Scan) -> Self {
        Self {
            store,
            scan,
            after: None,
            done: false,
        }
    }

    /// The next page of at most `limit` documents; `None` once the scan is done.
    async fn next(&mut self, limit: u32) -> Result<Option<Vec<Stored>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = self
            .store
            .scan(&self.scan, self.after.as_ref(), limit)
            .await?;
        match page.last() {
            Some(last) if page.len() == limit as usize => self.after = Some(last.cursor.clone()),
            _ => self.done = true,
        }
        Ok(Some(page))
    }
}

/// The pauses between attempts of a write that live traffic refused: short, growing and
/// jittered, so that an attempt finds a gap between a busy user's requests.
fn retry_pauses() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_delay(Duration::from_millis(500))
        .with_jitter()
        .with_max_times(30)
        .build()
}

/// Names a document the way findings and changes do.
fn subject(collection: Collection, id: &str) -> String {
    format!("{}/{id}", collection.name())
}
