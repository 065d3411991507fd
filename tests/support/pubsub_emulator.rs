//! The Pub/Sub emulator of the Google Cloud CLI, started and stopped by the tests themselves.
//!
//! `gcloud` starts a Python process that makes itself a process group and starts a JVM in it,
//! under a small shell watchdog. Stopping ends that group and the watchdog's; the watchdog ends
//! the emulator's group when the test process exits. A missing Google Cloud CLI or emulator
//! fails the test; it is never skipped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::emulator::wait_until_answers;

/// A message pulled from a subscription: its attributes `eventId` and `eventType`, and its
/// data.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pulled {
    pub event_id: String,
    pub event_type: String,
    pub data: String,
}

pub struct PubSubEmulator {
    port: u16,
    /// The watchdog, and the process group of `gcloud` and its JVM.
    process: Option<(Child, u32)>,
}

impl PubSubEmulator {
    /// Starts an emulator on `port` and waits until it answers.
    pub async fn start_on(port: u16) -> Self {
        let script = format!(
            "gcloud beta emulators pubsub start --host-port=127.0.0.1:{port} \
             >/dev/null 2>&1 </dev/null & emulator=$!; echo $emulator; \
             while kill -0 {parent} 2>/dev/null && kill -0 $emulator 2>/dev/null; do sleep 1; done; \
             kill -9 -$emulator 2>/dev/null; kill -9 0",
            parent = std::process::id(),
        );
        let mut watchdog = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("cannot start the Pub/Sub emulator (is the Google Cloud CLI installed?)")
        };
        let mut first_line = String::new();
        BufReader::new(watchdog.stdout.take().expect("the watchdog's stdout"))
            .read_line(&mut first_line)
            .expect("cannot read the emulator's process id");
        let emulator_pid = first_line.trim().parse().unwrap_or_else(|_| {
            panic!("the watchdog did not print the emulator's process id but {first_line:?}")
        });
        let mut emulator = Self {
            port,
            process: Some((watchdog, emulator_pid)),
        };
        emulator.wait_until_ready().await;
        emulator
    }

    async fn wait_until_ready(&mut self) {
        let url = format!("http://{}/", self.host());
        let watchdog = self.process.as_mut().map(|(watchdog, _)| watchdog);
        let watchdog = watchdog.expect("a started emulator");
        wait_until_answers(&url, "the Pub/Sub emulator", || {
            let status = watchdog.try_wait().ok().flatten()?;
            Some(format!(
                "{status}: install the Google Cloud CLI's pubsub-emulator component (and Java)"
            ))
        })
        .await;
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The emulator's REST URL of a project's resource, e.g. `topics/events`.
    pub fn url(&self, project: &str, path: &str) -> String {
        format!("http://{}/v1/projects/{project}/{path}", self.host())
    }

    /// Creates `topic` in `project`, and the pull subscription `subscription` to it.
    pub async fn create_topic_with_subscription(
        &self,
        project: &str,
        topic: &str,
        subscription: &str,
    ) {
        let full_topic = format!("projects/{project}/topics/{topic}");
        for (path, body) in [
            (format!("topics/{topic}"), json!({})),
            (
                format!("subscriptions/{subscription}"),
                json!({ "topic": full_topic }),
            ),
        ] {
            let created = reqwest::Client::new()
                .put(self.url(project, &path))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(created.status().is_success(), "{created:?}");
        }
    }

    /// Up to 10 of the messages waiting on `subscription`, unacknowledged.
    pub async fn pull(&self, project: &str, subscription: &str) -> Vec<Pulled> {
        let pulled: Value = reqwest::Client::new()
            .post(self.url(project, &format!("subscriptions/{subscription}:pull")))
            .json(&json!({ "maxMessages": 10 }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let attribute = |message: &Value, name: &str| {
            message["attributes"][name]
                .as_str()
                .unwrap_or_else(|| panic!("no attribute {name}: {message}"))
                .to_owned()
        };
        pulled["receivedMessages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|received| {
                let message = &received["message"];
                let data = STANDARD.decode(message["data"].as_str().unwrap()).unwrap();
                Pulled {
                    event_id: attribute(message, "eventId"),
                    event_type: attribute(message, "eventType"),
                    data: String::from_utf8(data).unwrap(),
                }
            })
            .collect()
    }

    /// Ends the emulator, its JVM and the watchdog: both process groups. The emulator's group
    /// may not exist yet if `gcloud` has only just started; then it is still in the watchdog's.
    pub fn stop(&mut self) {
        if let Some((mut watchdog, emulator_pid)) = self.process.take() {
            for group in [emulator_pid, watchdog.id()] {
                let _ = Command::new("kill")
                    .args(["-9", "--", &format!("-{group}")])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = watchdog.wait();
        }
    }
}

impl Drop for PubSubEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
