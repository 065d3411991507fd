//! The data lifecycle as commands of the one binary: `verify`, `rebuild-history`, `cleanup`,
//! `archive`, `export` and `import`. Each runs on either store through the [`DocumentStore`] port, is
//! configured like `serve` (so the same image runs them as Cloud Run Jobs), and streams its
//! documents in pages, so memory stays flat however much data there is.

mod archive;
mod check;
mod cleanup;
mod ndjson;
mod output;
mod rebuild;
mod scope;
mod store;
mod transfer;
mod verify;

pub use archive::ArchiveArgs;
pub use cleanup::CleanupArgs;
pub use output::Outcome;
pub use rebuild::RebuildArgs;
pub use scope::{Scope, YearMonth};
pub use store::{
    Applied, Change, Collection, Condition, Document, DocumentStore, DocumentWrite,
    MAX_WRITES_PER_COMMIT, MonthSnapshot, Scan, ScanCursor, Stored, Version, strict_user_type,
};
pub use transfer::{ExportArgs, ImportArgs};
pub use verify::VerifyArgs;

use std::sync::Arc;
use std::time::Duration;

use crate::config::{StoreKind, StoreSettings};
use crate::store::{FirestoreSettings, FirestoreStore, SqliteStore};
use crate::usage::StoreError;

/// How many documents one page of a scan holds.
const PAGE_SIZE: u32 = 500;

/// The lifecycle commands, as subcommands of the binary.
#[derive(Debug, clap::Subcommand)]
pub enum LifecycleCommand {
    /// Check every document: schema, ids, month aggregates, days against their months.
    Verify(VerifyArgs),
    /// Recompute month documents from the day documents, showing the differences.
    RebuildHistory(RebuildArgs),
    /// Delete day documents past their retention once their months hold them, and expired
    /// idempotency records.
    Cleanup(CleanupArgs),
    /// Move month documents past their retention to gzip NDJSON files with a manifest, in a
    /// directory or a Cloud Storage bucket, then delete them.
    Archive(ArchiveArgs),
    /// Write both collections to an NDJSON file.
    Export(ExportArgs),
    /// Read an NDJSON file into the store: every line checked first, none overwriting newer
    /// data.
    Import(ImportArgs),
}

impl LifecycleCommand {
    pub fn store(&self) -> &StoreSettings {
        match self {
            Self::Verify(args) => &args.store,
            Self::RebuildHistory(args) => &args.store,
            Self::Cleanup(args) => &args.store,
            Self::Archive(args) => &args.store,
            Self::Export(args) => &args.store,
            Self::Import(args) => &args.store,
        }
    }

    /// Runs the command to its end: `Ok` says whether it found anything, `Err` that it could
    /// not finish.
    pub async fn run(self) -> anyhow::Result<Outcome> {
        let store = open(self.store()).await?;
        match self {
            Self::Verify(args) => verify::run(&args, store.as_ref()).await,
            Self::RebuildHistory(args) => rebuild::run(&args, store.as_ref()).await,
            Self::Cleanup(args) => cleanup::run(&args, store.as_ref()).await,
            Self::Archive(args) => archive::run(&args, store.as_ref()).await,
            Self::Export(args) => transfer::export(&args, store.as_ref()).await,
            Self::Import(args) => transfer::import(&args, store.as_ref()).await,
        }
    }
}

/// The configured store, seen through the maintenance port.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn DocumentStore>, StoreError> {
    Ok(match settings.kind {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&settings.sqlite_path)?),
        StoreKind::Firestore => Arc::new(
            FirestoreStore::connect(FirestoreSettings {
                project_id: settings.firestore_project().to_owned(),
                database_id: settings.firestore_database.clone(),
                emulator_host: settings.firestore_emulator_host.clone(),
                // Maintenance reads and writes whole collections once: nothing to reuse.
                cache_bytes: 0,
            })
            .await?,
        ),
    })
}

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
