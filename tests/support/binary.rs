//! The built `token-limits` binary as an operator runs it: a process with a clean
//! environment, its address, and the lines it logs.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_token-limits");

/// The binary with a clean environment apart from what the test sets.
pub fn command() -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

/// A running `token-limits` process and the lines it logs.
pub struct Server {
    child: Child,
    pub base: String,
    logs: mpsc::Receiver<String>,
    start_up: Vec<String>,
}

impl Server {
    /// The service on the embedded store at `sqlite_path`, logging JSON at `rust_log`.
    pub fn start(sqlite_path: &std::path::Path, rust_log: &str) -> Self {
        let sqlite_path = sqlite_path.display().to_string();
        Self::start_with(&[("SQLITE_PATH", &sqlite_path), ("RUST_LOG", rust_log)])
    }

    /// The service on loopback and a free port, logging JSON, with `environment` set too.
    pub fn start_with(environment: &[(&str, &str)]) -> Self {
        let mut command = command();
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .stderr(Stdio::piped());
        for (name, value) in environment {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let (sender, logs) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut start_up = Vec::new();
        let address = loop {
            let line = logs
                .recv_timeout(Duration::from_secs(20))
                .expect("no start-up log");
            let entry = serde_json::from_str::<Value>(&line).unwrap_or_default();
            start_up.push(line);
            if entry["message"] == "serving" {
                break entry["address"].as_str().unwrap().to_owned();
            }
        };
        Self {
            child,
            base: format!("http://{address}"),
            logs,
            start_up,
        }
    }

    /// Kills the process; returns every line it logged.
    pub fn stop(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines()
    }

    /// Sends SIGTERM, as Cloud Run and `podman stop` do, without waiting.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own; its status, when, and every line it logged.
    pub fn wait(mut self, at_most: Duration) -> (ExitStatus, Duration, Vec<String>) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = started.elapsed();
                return (status, took, self.lines());
            }
            assert!(
                started.elapsed() < at_most,
                "the service did not exit within {at_most:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&mut self) -> Vec<String> {
        // The reader thread ends with the process; give it the last lines.
        std::thread::sleep(Duration::from_millis(100));
        std::mem::take(&mut self.start_up)
            .into_iter()
            .chain(self.logs.try_iter())
            .collect()
    }
}

/// A test that fails half-way must not leave its service running.
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
