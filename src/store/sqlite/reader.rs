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

    /// Runs `work` on the connection, after the work queued before it, unless the returned
    /// future is dropped before its turn.
    pub(super) async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Work = Box::new(move |connection| {
            // A caller that stopped waiting (its request answered at its deadline) has its
            // read skipped, so that reads nobody waits for do not hold up the ones behind.
            if !answer.is_closed() {
                let _ = answer.send(work(connection));
            }
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?.map_err(store_error)
    }
}

fn stopped() -> StoreError {
    StoreError::Internal("the sqlite reader stopped".to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_read_whose_caller_gave_up_is_skipped() {
        let reader = Reader::start(Connection::open_in_memory().unwrap()).unwrap();
        let (unblock, blocked) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel();
        let busy = tokio::spawn({
            let reader = reader.clone();
            async move {
                reader
                    .run(move |_| {
                        let _ = started.send(());
                        let _ = blocked.recv();
                        Ok(())
                    })
                    .await
            }
        });
        running.await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let abandoned = reader.run({
            let ran = ran.clone();
            move |_| {
                ran.store(true, Ordering::SeqCst);
                Ok(())
            }
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), abandoned)
                .await
                .is_err()
        );
        unblock.send(()).unwrap();
        busy.await.unwrap().unwrap();
        reader.run(|_| Ok(())).await.unwrap();
        assert!(!ran.load(Ordering::SeqCst), "a read nobody waited for ran");
    }
}
