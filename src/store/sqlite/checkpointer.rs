//! Copies committed pages from the WAL into the database file on a connection and thread of
//! their own. Left to itself, SQLite does it inside a commit every 1,000 pages, fsync
//! included, and every record queued behind that commit waits; a passive checkpoint here runs
//! beside the writer instead, which keeps only a far larger threshold as a backstop.
//!
//! A passive checkpoint never copies the frames the writer commits while it runs, so under
//! steady load the WAL is never wholly copied and can never start over. Once it is long, the
//! checkpointer catches up, copying and syncing in a few rounds what the writer committed
//! meanwhile, then pauses the writer between two groups just long enough to copy and sync the
//! last few frames, so that the next commit writes the WAL from its start again.

use std::fs::File;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::store_error;
use crate::metrics::SQLITE_WAL_RESTART_PAUSE;
use crate::usage::StoreError;

/// WAL pages at which a commit checkpoints by itself: only if this thread falls far behind.
pub(super) const BACKSTOP_PAGES: u32 = 16_384;

/// WAL pages past which the checkpointer pauses the writer to let the WAL start over: 16 MiB
/// at the default page size. Longer, each pause has more to sync; shorter, pauses come often.
const RESTART_PAGES: i64 = 4_096;

/// The least time between two checkpoints: the pages of many commits are copied at once.
const INTERVAL: Duration = Duration::from_millis(100);

/// The most checkpoints that catch up with the writer before a pause. Each copies what was
/// committed during the one before, so each has less to copy than the last.
const CATCH_UP_ROUNDS: usize = 4;

/// Few enough new frames for the pause to copy: its syncs then cost little more than a sync
/// of nothing does.
const FEW_FRAMES: i64 = 64;

/// Tells the checkpointer that commits are waiting to be copied, and lets it pause the writer
/// between two groups; the thread ends when this is dropped.
pub(super) struct Checkpointer {
    pending: SyncSender<()>,
    gate: Arc<Gate>,
}

impl Checkpointer {
    pub(super) fn start(connection: Connection, path: &Path) -> Result<Self, StoreError> {
        let database = File::open(path).map_err(|e| {
            StoreError::Internal(format!("cannot open {} to sync it: {e}", path.display()))
        })?;
        let (pending, waiting) = sync_channel(1);
        let gate = Arc::new(Gate::default());
        let thread_gate = gate.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || run(&connection, &database, &waiting, &thread_gate))
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the sqlite checkpointer: {e}"))
            })?;
        Ok(Self { pending, gate })
    }

    /// Before a group: waits while the checkpointer copies the WAL's last frames. The group
    /// is written while the returned turn is held.
    pub(super) fn group_turn(&self) -> GroupTurn<'_> {
        self.gate.group_turn()
    }

    /// After a commit: never blocks, and many commits make one checkpoint. Full, a checkpoint
    /// is already due; disconnected, the thread stopped and the backstop takes over.
    pub(super) fn committed(&self) {
        let _ = self.pending.try_send(());
    }
}

/// The writer's group in progress; the checkpointer waits for its end.
pub(super) struct GroupTurn<'a> {
    gate: &'a Gate,
}

impl Drop for GroupTurn<'_> {
    fn drop(&mut self) {
        self.gate.change(|state| state.writing = false);
    }
}

#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    writing: bool,
    restart_wanted: bool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state once `waiting` no longer holds of it.
    fn wait_while(&self, waiting: impl FnMut(&mut GateState) -> bool) -> MutexGuard<'_, GateState> {
        self.changed
            .wait_while(self.lock(), waiting)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes whoever waits on it.
    fn change(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    fn group_turn(&self) -> GroupTurn<'_> {
        self.wait_while(|state| state.restart_wanted).writing = true;
        GroupTurn { gate: self }
    }

    /// Runs `work` between two of the writer's groups, none beginning meanwhile.
    fn between_groups<T>(&self, work: impl FnOnce() -> T) -> T {
        self.lock().restart_wanted = true;
        // Made before the wait, so that the writer goes on whatever happens from here.
        let _resume = Resume { gate: self };
        drop(self.wait_while(|state| state.writing));
        work()
    }
}

/// Lets the writer go on when dropped.
struct Resume<'a> {
    gate: &'a Gate,
}

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.gate.change(|state| state.restart_wanted = false);
    }
}

fn run(connection: &Connection, database: &File, waiting: &Receiver<()>, gate: &Gate) {
    while waiting.recv().is_ok() {
        if let Some(frames) = checkpoint(connection).filter(|frames| *frames >= RESTART_PAGES) {
            catch_up(connection, database, frames);
            gate.between_groups(|| {
                let paused = Instant::now();
                checkpoint(connection);
                metrics::histogram!(SQLITE_WAL_RESTART_PAUSE).record(paused.elapsed());
            });
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Before a pause, brings the database file close to the WAL's end, synced, so that the pause
/// copies and syncs only the last few frames: without it, the pause would take in everything
/// committed since the last checkpoint began, and the writer would wait for its sync.
/// `frames`: the WAL's frames when the last checkpoint ran.
fn catch_up(connection: &Connection, database: &File, mut frames: i64) {
    if !sync(database) {
        return;
    }
    for _ in 0..CATCH_UP_ROUNDS {
        let Some(now) = checkpoint(connection) else {
            return;
        };
        // Negative when the WAL started over meanwhile: then nothing is left to catch up.
        let committed_meanwhile = now - frames;
        frames = now;
        if !sync(database) || committed_meanwhile <= FEW_FRAMES {
            return;
        }
    }
}

/// Syncs what the checkpoints copied into the database file. Failed, it loses nothing: the
/// pause's checkpoint syncs the file itself.
fn sync(database: &File) -> bool {
    match database.sync_data() {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "syncing the database file before a WAL restart failed");
            false
        }
    }
}

/// A passive checkpoint; the frames in the WAL, when it ran.
fn checkpoint(connection: &Connection) -> Option<i64> {
    // A failed checkpoint loses nothing: the pages stay in the WAL for the next one.
    match connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        row.get::<_, i64>(1)
    }) {
        Ok(frames) => Some(frames),
        Err(error) => {
            tracing::warn!(error = %store_error(error), "a WAL checkpoint failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::*;

    const A_WHILE: Duration = Duration::from_millis(100);

    /// Joins `thread`, failing the test instead of hanging when it does not end.
    fn join_soon<T>(thread: JoinHandle<T>) -> std::thread::Result<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "the thread is still waiting");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join()
    }

    #[test]
    fn a_pause_waits_for_the_group_in_progress() {
        let gate = Arc::new(Gate::default());
        let paused = Arc::new(AtomicBool::new(false));
        let turn = gate.group_turn();
        let pause = {
            let (gate, paused) = (gate.clone(), paused.clone());
            std::thread::spawn(move || gate.between_groups(|| paused.store(true, Ordering::SeqCst)))
        };
        std::thread::sleep(A_WHILE);
        assert!(!paused.load(Ordering::SeqCst), "paused during a group");
        drop(turn);
        join_soon(pause).unwrap();
        assert!(paused.load(Ordering::SeqCst));
    }

    #[test]
    fn no_group_begins_during_a_pause_and_the_next_one_follows_it() {
        let gate = Arc::new(Gate::default());
        let began = Arc::new(AtomicBool::new(false));
        let group = gate.between_groups(|| {
            let group = {
                let (gate, began) = (gate.clone(), began.clone());
                std::thread::spawn(move || {
                    let _turn = gate.group_turn();
                    began.store(true, Ordering::SeqCst);
                })
            };
            std::thread::sleep(A_WHILE);
            assert!(
                !began.load(Ordering::SeqCst),
                "a group began during the pause"
            );
            group
        });
        join_soon(group).unwrap();
        assert!(began.load(Ordering::SeqCst));
    }

    #[test]
    fn a_pause_that_fails_lets_the_writer_go_on() {
        let gate = Arc::new(Gate::default());
        let failed = {
            let gate = gate.clone();
            std::thread::spawn(move || gate.between_groups(|| panic!("the checkpoint failed")))
        };
        assert!(join_soon(failed).is_err());
        let group = std::thread::spawn(move || drop(gate.group_turn()));
        join_soon(group).unwrap();
    }
}
