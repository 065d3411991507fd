//! The real Firebase Auth emulator (firebase-tools, installed by `npm ci` in tests/auth-emulator),
//! started and stopped by the tests themselves.
//!
//! Node runs under a small shell watchdog in its own process group: it is ended with the group
//! when a test stops it, and by the watchdog when the test process exits, so no emulator
//! outlives the test run. A missing Node or install fails the test; it is never skipped.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// Start-up is about 7 s of CPU (compiling the API description), much longer on a busy machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Any project id works against one emulator; a `demo-` id keeps the CLI from calling Google.
const CLI_PROJECT: &str = "demo-token-limits";

/// `$1` CLI, `$2` config, `$3` working folder, `$4` test process, `$5` project. The folder is
/// removed once the test process is gone; before that, an early exit leaves the log to report.
const WATCHDOG: &str = r#"
node "$1" emulators:start --only auth --project "$5" --config "$2" --non-interactive \
    </dev/null >"$3/emulator.log" 2>&1 &
emulator=$!
while kill -0 "$4" 2>/dev/null && kill -0 "$emulator" 2>/dev/null; do sleep 1; done
kill -9 "$emulator" 2>/dev/null
kill -0 "$4" 2>/dev/null || rm -rf "$3"
"#;

pub struct AuthEmulator {
    port: u16,
    dir: PathBuf,
    process: Option<Child>,
}

static SHARED: OnceCell<AuthEmulator> = OnceCell::const_new();

/// One emulator for a whole test binary; tests keep apart by using projects or uids of their own.
pub async fn shared() -> &'static AuthEmulator {
    SHARED.get_or_init(AuthEmulator::start).await
}

fn firebase_cli() -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/auth-emulator");
    let cli = folder.join("node_modules/firebase-tools/lib/bin/firebase.js");
    assert!(
        cli.exists(),
        "the Firebase Auth emulator is not installed ({} is missing): run \
         `npm ci --no-audit --no-fund --ignore-scripts` in {} (needs Node 20+)",
        cli.display(),
        folder.display()
    );
    cli
}

/// Two distinct free ports, held together so they differ.
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("no free port");
    let (first, second) = (bind(), bind());
    let port = |listener: &TcpListener| listener.local_addr().expect("no free port").port();
    (port(&first), port(&second))
}

enum Failure {
    /// Another process took a port between choosing and binding it.
    PortTaken,
    Exited(String),
}

impl AuthEmulator {
    /// Starts an emulator on free ports and waits until it answers.
    pub async fn start() -> Self {
        let cli = firebase_cli();
        for _ in 0..3 {
            let (port, hub_port) = free_ports();
            let mut emulator = Self::spawn(&cli, port, hub_port);
            match emulator.wait_until_ready().await {
                Ok(()) => return emulator,
                Err(Failure::PortTaken) => continue,
                Err(Failure::Exited(log)) => {
                    panic!("the Firebase Auth emulator exited (is Node 20+ installed?):\n{log}")
                }
            }
        }
        panic!("the Firebase Auth emulator found its ports taken three times");
    }

    fn spawn(cli: &Path, port: u16, hub_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "token-limits-auth-emulator-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the emulator's folder");
        // The hub always starts and takes a port of its own; the logging emulator is left off
        // (only the env variable stops it) and so is the UI, so that no fixed port is used.
        let config = json!({
            "emulators": {
                "singleProjectMode": false,
                "ui": { "enabled": false },
                "hub": { "host": "127.0.0.1", "port": hub_port },
                "auth": { "host": "127.0.0.1", "port": port },
            }
        });
        let config_path = dir.join("firebase.json");
        std::fs::write(&config_path, config.to_string()).expect("cannot write firebase.json");
        let process = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("auth-emulator-watchdog")
                .arg(cli)
                .arg(&config_path)
                .arg(&dir)
                .arg(std::process::id().to_string())
                .arg(CLI_PROJECT)
                // The CLI writes its debug log to the working folder and the hub's locator file
                // to TMPDIR; a folder of its own for its settings keeps any login out.
                .current_dir(&dir)
                .env("TMPDIR", &dir)
                .env("XDG_CONFIG_HOME", &dir)
                .env("NO_UPDATE_NOTIFIER", "1")
                .env("START_LOGGING_EMULATOR", "false")
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("cannot start the Firebase Auth emulator's watchdog")
        };
        Self {
            port,
            dir,
            process: Some(process),
        }
    }

    async fn wait_until_ready(&mut self) -> Result<(), Failure> {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let answer = client.get(format!("http://{}/", self.host())).send().await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            let exited = self
                .process
                .as_mut()
                .is_some_and(|process| process.try_wait().is_ok_and(|status| status.is_some()));
            if exited {
                let log = self.log();
                self.stop();
                let port_taken = log.contains("port taken") || log.contains("EADDRINUSE");
                return Err(if port_taken {
                    Failure::PortTaken
                } else {
                    Failure::Exited(log)
                });
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "the Firebase Auth emulator did not answer on port {} within {} s:\n{}",
                    self.port,
                    READY_TIMEOUT.as_secs(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("emulator.log")).unwrap_or_default()
    }

    /// For `FIREBASE_AUTH_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The emulator's URL of an Identity Toolkit method, e.g. `accounts:lookup`.
    pub fn api_url(&self, project: &str, method: &str) -> String {
        format!(
            "http://{}/identitytoolkit.googleapis.com/v1/projects/{project}/{method}",
            self.host()
        )
    }

    /// Gives user `uid` of `project` these custom claims, creating the user if needed;
    /// `{}` removes them.
    pub async fn set_claims(&self, project: &str, uid: &str, claims: Value) {
        let client = reqwest::Client::new();
        let created = client
            .post(self.api_url(project, "accounts"))
            .bearer_auth("owner")
            .json(&json!({ "localId": uid }))
            .send()
            .await
            .expect("the Auth emulator did not answer");
        if !created.status().is_success() {
            let body: Value = created.json().await.unwrap_or_default();
            assert_eq!(
                body["error"]["message"], "DUPLICATE_LOCAL_ID",
                "creating user {uid} failed: {body}"
            );
        }
        let claims = if claims.is_null() { json!({}) } else { claims };
        let updated = client
            .post(self.api_url(project, "accounts:update"))
            .bearer_auth("owner")
            .json(&json!({ "localId": uid, "customAttributes": claims.to_string() }))
            .send()
            .await
            .expect("the Auth emulator did not answer");
        if !updated.status().is_success() {
            let body = updated.text().await.unwrap_or_default();
            panic!("setting the claims of user {uid} failed: {body}");
        }
    }

    /// Deletes every user of `project`.
    pub async fn clear(&self, project: &str) {
        let url = format!(
            "http://{}/emulator/v1/projects/{project}/accounts",
            self.host()
        );
        let response = reqwest::Client::new().delete(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "clearing the Auth emulator failed"
        );
    }

    /// Ends the emulator and its watchdog.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let group = format!("-{}", process.id());
            let _ = Command::new("kill").args(["-9", "--", &group]).status();
            let _ = process.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for AuthEmulator {
    fn drop(&mut self) {
        self.stop();
    }
}
