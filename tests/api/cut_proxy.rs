//! A TCP proxy in front of the Firestore emulator that loses a commit or its answer, or makes
//! every answer slow, as a network can: the service talks gRPC to it as to Firestore, and it
//! forwards every byte until it is told otherwise. A commit is recognised by the month
//! document's `dailyUsage` field, which only a commit's writes carry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const COMMIT_MARK: &[u8] = b"dailyUsage";
/// Long enough for the emulator to apply a commit it has received whole.
const APPLY_TIME: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward the next commit, then cut its connection before the answer comes back.
    LoseAnswer,
    /// Cut the next commit's connection before the commit reaches Firestore.
    LoseCommit,
    /// Like `LoseCommit`, then refuse every connection until the mode changes.
    LoseCommitThenDown,
    /// Like `LoseAnswer`, then refuse every connection until the mode changes.
    LoseAnswerThenDown,
    /// Refuse every connection.
    Down,
    /// Forward everything, each answer's bytes this much later than they came.
    DelayAnswers(Duration),
}

#[derive(Clone)]
pub struct CutProxy {
    pub host: String,
    mode: Arc<Mutex<Mode>>,
}

impl CutProxy {
    pub async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            host: listener.local_addr().unwrap().to_string(),
            mode: Arc::new(Mutex::new(Mode::Pass)),
        };
        let mode = proxy.mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *mode.lock().unwrap() == Mode::Down {
                    continue;
                }
                let (upstream, mode) = (upstream.clone(), mode.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, mode).await;
                    }
                });
            }
        });
        proxy
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

/// Copies both ways; a commit seen while a losing mode is set ends the connection.
async fn relay(client: TcpStream, server: TcpStream, mode: Arc<Mutex<Mode>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set once a commit's answer is to be lost: nothing more reaches the client.
    let holding = Arc::new(AtomicBool::new(false));
    let upward = {
        let holding = holding.clone();
        let mode = mode.clone();
        async move {
            let mut buffer = vec![0; 64 * 1024];
            let mut tail: Vec<u8> = Vec::new();
            loop {
                let read = client_read.read(&mut buffer).await.unwrap_or(0);
                if read == 0 {
                    return;
                }
                let chunk = &buffer[..read];
                tail.extend_from_slice(chunk);
                let commit = tail
                    .windows(COMMIT_MARK.len())
                    .any(|window| window == COMMIT_MARK);
                tail.drain(..tail.len().saturating_sub(COMMIT_MARK.len() - 1));
                let current = *mode.lock().unwrap();
                let losing = commit
                    && matches!(
                        current,
                        Mode::LoseAnswer
                            | Mode::LoseCommit
                            | Mode::LoseAnswerThenDown
                            | Mode::LoseCommitThenDown
                    );
                if losing {
                    holding.store(true, Ordering::SeqCst);
                }
                if losing && matches!(current, Mode::LoseCommit | Mode::LoseCommitThenDown) {
                    *mode.lock().unwrap() = match current {
                        Mode::LoseCommitThenDown => Mode::Down,
                        _ => Mode::Pass,
                    };
                    return;
                }
                if server_write.write_all(chunk).await.is_err() {
                    return;
                }
                if losing {
                    // The commit may span more reads than the one that named it: forward
                    // the rest of it too, until the cut.
                    let cut_at = tokio::time::Instant::now() + APPLY_TIME;
                    while let Ok(read) =
                        tokio::time::timeout_at(cut_at, client_read.read(&mut buffer)).await
                    {
                        let read = read.unwrap_or(0);
                        if read == 0 || server_write.write_all(&buffer[..read]).await.is_err() {
                            break;
                        }
                    }
                    tokio::time::sleep_until(cut_at).await;
                    *mode.lock().unwrap() = match current {
                        Mode::LoseAnswerThenDown => Mode::Down,
                        _ => Mode::Pass,
                    };
                    return;
                }
            }
        }
    };
    // Answers pass through a queue, each with the time it is due, so that a delay is the same
    // for every answer rather than adding up.
    let (due, mut answers) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let downward = async move {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let read = server_read.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                return;
            }
            if holding.load(Ordering::SeqCst) {
                continue;
            }
            let delay = match *mode.lock().unwrap() {
                Mode::DelayAnswers(delay) => delay,
                _ => Duration::ZERO,
            };
            if due
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
            {
                return;
            }
        }
    };
    let deliver = async move {
        while let Some((at, bytes)) = answers.recv().await {
            tokio::time::sleep_until(at).await;
            if client_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends the connection: both halves are dropped.
    tokio::select! {
        () = upward => {},
        () = async { tokio::join!(downward, deliver); } => {},
    }
}
