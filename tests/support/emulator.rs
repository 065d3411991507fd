//! The real Firestore emulator, started and stopped by the tests themselves.
//!
//! The JVM runs under a small shell watchdog in its own process group: it is ended with the
//! group when a test stops it, and by the watchdog when the test process exits, so no emulator
//! outlives the test run. A missing Java or emulator fails the test; it is never skipped.

// Each test binary that includes this file uses a different part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

pub struct Emulator {
    port: u16,
    process: Option<Child>,
}

static SHARED: OnceCell<Emulator> = OnceCell::const_new();

/// One emulator for a whole test binary; tests keep apart by using projects of their own.
pub async fn shared() -> &'static Emulator {
    SHARED.get_or_init(|| Emulator::start_on(free_port())).await
}

/// A project id no other test uses, so tests can share one emulator.
pub fn unique_project(label: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("demo-{label}-{}-{n}", std::process::id())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free port")
}

/// Waits until `url` answers 2xx; fails after 60 s, or at once when `exited` tells why the
/// process that should answer is gone.
pub async fn wait_until_answers(url: &str, what: &str, mut exited: impl FnMut() -> Option<String>) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer = client.get(url).send().await;
        if answer.is_ok_and(|response| response.status().is_success()) {
            return;
        }
        if let Some(why) = exited() {
            panic!("{what} exited: {why}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what} did not answer at {url} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn emulator_jar() -> PathBuf {
    let sdk_root = Command::new("gcloud")
        .args(["info", "--format=value(installation.sdk_root)"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|root| !root.is_empty())
        .unwrap_or_else(|| "/usr/lib/google-cloud-sdk".to_owned());
    let jar = PathBuf::from(sdk_root)
        .join("platform/cloud-firestore-emulator/cloud-firestore-emulator.jar");
    assert!(
        jar.exists(),
        "the Firestore emulator is not installed ({} is missing): install the Google Cloud CLI \
         and its cloud-firestore-emulator component",
        jar.display()
    );
    jar
}

impl Emulator {
    /// Starts an emulator on `port` and waits until it answers.
    pub async fn start_on(port: u16) -> Self {
        let jar = emulator_jar();
        let script = format!(
            "java -Xmx384m -Duser.language=en -cp '{jar}' \
             com.google.cloud.datastore.emulator.firestore.CloudFirestore \
             --host 127.0.0.1 --port {port} >/dev/null 2>&1 & jvm=$!; \
             while kill -0 {parent} 2>/dev/null && kill -0 $jvm 2>/dev/null; do sleep 1; done; \
             kill -9 $jvm 2>/dev/null",
            jar = jar.display(),
            parent = std::process::id(),
        );
        let process = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("cannot start the Firestore emulator (is Java installed?)")
        };
        let emulator = Self {
            port,
            process: Some(process),
        };
        emulator.wait_until_ready().await;
        emulator.warm_up().await;
        emulator
    }

    /// A cold JVM answers its first calls several times slower: make them before the tests
    /// do, through the same gRPC calls the store makes.
    async fn warm_up(&self) {
        use token_limits::store::{FirestoreSettings, FirestoreStore};
        use token_limits::usage::{
            Action, DayWindow, Deadline, Limits, RecordRequest, Tokens, UsageStore, UserId,
            UserType,
        };

        let store = FirestoreStore::connect(FirestoreSettings {
            project_id: "demo-warm-up".to_owned(),
            database_id: "(default)".to_owned(),
            emulator_host: Some(self.host()),
            cache_bytes: 0,
        })
        .await
        .expect("cannot connect to the emulator");
        let user = UserId::parse("warm-up").unwrap();
        for _ in 0..20 {
            let now = chrono::Utc::now();
            let request = RecordRequest {
                user_id: user.clone(),
                action: Action::Spend {
                    tokens: Tokens::bounded(1, 1).unwrap(),
                    user_type: UserType::DEFAULT,
                },
                window: DayWindow::containing(now, chrono_tz::Tz::UTC),
                limits: Limits::uniform(i64::MAX),
                commit_grace: chrono::Duration::zero(),
                now,
                idempotency: None,
                audit_actor: None,
                thresholds: Default::default(),
            };
            let deadline = Deadline::from_now(Duration::from_secs(30));
            store
                .record(request, deadline)
                .await
                .expect("the emulator failed a warm-up write");
            store
                .months(&user, 3)
                .await
                .expect("the emulator failed a warm-up query");
        }
        self.clear("demo-warm-up").await;
    }

    async fn wait_until_ready(&self) {
        let url = format!("http://{}/", self.host());
        wait_until_answers(&url, "the Firestore emulator", || None).await;
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The emulator's REST URL of a document.
    pub fn document_url(&self, project: &str, path: &str) -> String {
        format!(
            "http://{}/v1/projects/{project}/databases/(default)/documents/{path}",
            self.host()
        )
    }

    /// Deletes every document of `project`.
    pub async fn clear(&self, project: &str) {
        let url = format!(
            "http://{}/emulator/v1/projects/{project}/databases/(default)/documents",
            self.host()
        );
        let response = reqwest::Client::new().delete(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "clearing the emulator failed"
        );
    }

    /// Ends the emulator and its watchdog.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let group = format!("-{}", process.id());
            let _ = Command::new("kill").args(["-9", "--", &group]).status();
            let _ = process.wait();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
