//! Copies committed pages from the WAL into the database file on a connection and thread of
//! their own. Left to itself, SQLite does it inside a commit every 1,000 pages, fsync
//! included, and every record queued behind that commit waits; a passive checkpoint here runs
//! beside the writer instead, which keeps only a far larger threshold as a backstop.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

use rusqlite::Connection;

use super::store_error;
use crate::usage::StoreError;

/// WAL pages at which a commit checkpoints by itself: only if this thread falls far behind.
pub(super) const BACKSTOP_PAGES: u32 = 10_000;

/// The least time between two checkpoints: the pages of many commits are copied at once.
const INTERVAL: Duration = Duration::from_millis(100);

/// Tells the checkpointer that commits are waiting to be copied; the thread ends when this is
/// dropped.
pub(super) struct Checkpointer {
    pending: SyncSender<()>,
}

impl Checkpointer {
    pub(super) fn start(connection: Connection) -> Result<Self, StoreError> {
        let (pending, waiting) = sync_channel(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || run(&connection, &waiting))
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the sqlite checkpointer: {e}"))
            })?;
        Ok(Self { pending })
    }

    /// After a commit: never blocks, and many commits make one checkpoint. Full, a checkpoint
    /// is already due; disconnected, the thread stopped and the backstop takes over.
    pub(super) fn committed(&self) {
        let _ = self.pending.try_send(());
    }
}

fn run(connection: &Connection, waiting: &Receiver<()>) {
    while waiting.recv().is_ok() {
        // A failed checkpoint loses nothing: the pages stay in the WAL for the next one.
        if let Err(error) = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %store_error(error), "a WAL checkpoint failed");
        }
        std::thread::sleep(INTERVAL);
    }
}
