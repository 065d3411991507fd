//! A webhook receiver for tests: Python with the Standard Webhooks reference library
//! (tests/notify/receiver.py, from the venv of scripts/notify-venv.sh), which records only the
//! deliveries whose signature verifies.

// Each test crate that includes this uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use token_limits::notify::{WebhookSecret, WebhookSink};

/// The Python receiver, ended when dropped.
pub struct Receiver {
    port: u16,
    process: Child,
}

impl Receiver {
    /// Starts a receiver that accepts events signed with `secret`.
    pub fn start(secret: &str) -> Self {
        Self::start_on(secret, 0)
    }

    /// [`Self::start`] on `port` (0: a free one).
    pub fn start_on(secret: &str, port: u16) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("target/notify-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/notify-venv.sh (scripts/test.sh does) to install the \
             Standard Webhooks reference library",
            python.display()
        );
        let mut process = Command::new(python)
            .arg(root.join("tests/notify/receiver.py"))
            .arg(secret)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the webhook receiver");
        let mut first_line = String::new();
        BufReader::new(process.stdout.take().expect("the receiver's stdout"))
            .read_line(&mut first_line)
            .expect("cannot read the receiver's port");
        let port = first_line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the receiver did not print its port but {first_line:?}"));
        Self { port, process }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn sink(&self, path: &str, secret: &str, timeout: Duration) -> WebhookSink {
        WebhookSink::new(
            &self.url(path),
            WebhookSecret::parse(secret).unwrap(),
            timeout,
        )
        .unwrap()
    }

    /// The event ids whose first delivery `/hold-first` held.
    pub async fn held(&self) -> Vec<String> {
        reqwest::get(self.url("/held"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The deliveries the receiver verified, in arrival order.
    pub async fn received(&self) -> Vec<Value> {
        reqwest::get(self.url("/received"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}
