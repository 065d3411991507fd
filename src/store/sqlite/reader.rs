//! The embedded store's second connection, owned by a thread of its own: reads, reports and
//! the maintenance commands run on it one after another, beside the writer (WAL). A channel to
//! a thread that is already running costs less per read than a blocking task and a lock.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::store_error;
use crate::usage::StoreError;

/// Work waiting for the connection; beyond this, callers wait for room.
const QUEUE_CAPACITY: usize = 1024;

type Work = Box<dyn FnOnce(&mut Connection) + Send>;

/// Hands work to the reader thread; the thread ends when every handle is dropped.
#[derive(Clone)]
pub(super) struct Reader {
    jobs: mpsc::Sender<Work>,
}

impl Reader {
    pub(super) fn start(mut connection: Connection) -> Result<Self, StoreError> {
        let (jobs, mut queue) = mpsc::channel::<Work>(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name("sqlite-reader".to_owned())
            .spawn(move || {
                while let Some(work) = queue.blocking_recv() {
                    work(&mut connection);
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the sqlite reader: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the connection, after the work queued before it.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Work = Box::new(move |connection| {
            // The caller may have stopped waiting.
            let _ = answer.send(work(connection));
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?.map_err(store_error)
    }
}

fn stopped() -> StoreError {
    StoreError::Internal("the sqlite reader stopped".to_owned())
}
