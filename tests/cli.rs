//! The binary as an operator runs it: configuration errors, `dev-token`, and a restart on the
//! same SQLite file.

#[path = "support/binary.rs"]
mod binary;

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use binary::{Server, client, command};
use serde_json::{Value, json};

#[test]
fn help_lists_the_subcommands_and_flags() {
    let output = command().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for expected in [
        "serve",
        "dev-token",
        "--port",
        "[env: PORT=]",
        "RESET_TIMEZONE",
        "STORE",
    ] {
        assert!(help.contains(expected), "help lacks {expected}:\n{help}");
    }
}

#[test]
fn bad_configuration_stops_with_one_line_naming_the_variable() {
    let cases = [
        ("PORT", "eighty"),
        ("RESET_TIMEZONE", "Mars/Olympus_Mons"),
        ("STORE", "postgres"),
        ("DAILY_LIMIT_TRIAL", "-1"),
        ("MAX_TOKENS_PER_REQUEST", "0"),
        ("CORS_ALLOWED_ORIGINS", "admin.example.com"),
        ("FIREBASE_JWKS_URL", "not a url"),
        ("FIREBASE_PROJECT_ID", "Bad_Project"),
        ("LOG_FORMAT", "xml"),
        ("HOST", "localhost:80"),
        ("RESERVATION_MAX_TTL_SECS", "0"),
        ("RESERVATION_COMMIT_GRACE_SECS", "-5"),
        ("METRICS_PUBLIC", "yes"),
    ];
    for (variable, value) in cases {
        let output = command().env(variable, value).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{variable}: {stderr}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}

#[test]
fn emulator_tokens_never_write_to_a_production_firestore() {
    let output = command()
        .env("STORE", "firestore")
        .env("FIREBASE_PROJECT_ID", "demo-token-limits")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("FIRESTORE_EMULATOR_HOST"), "{stderr}");
}

#[test]
fn a_default_reservation_ttl_above_the_maximum_is_refused() {
    let output = command()
        .env("RESERVATION_MAX_TTL_SECS", "60")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("RESERVATION_DEFAULT_TTL_SECS"), "{stderr}");
}

/// Outside emulator mode `/metrics` (business figures, and a store query each time they are
/// counted) is not served to anyone unless the operator says so.
#[test]
fn production_refuses_to_start_with_the_metrics_open_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = command()
        .env("FIREBASE_PROJECT_ID", "my-production-app")
        .env("FIREBASE_JWKS_URL", "http://127.0.0.1:9/keys")
        .env("SQLITE_PATH", dir.path().join("usage.db"))
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = service.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            service.kill().unwrap();
            service.wait().unwrap();
            panic!("the service started with /metrics open to anyone");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    service
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("METRICS_TOKEN") && stderr.contains("METRICS_PUBLIC"),
        "{stderr}"
    );
}

#[test]
fn dev_token_refuses_a_production_project() {
    let output = command()
        .args(["dev-token", "--uid", "alice"])
        .env("FIREBASE_PROJECT_ID", "my-production-app")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn an_empty_variable_counts_as_unset() {
    // As firebase-admin reads it: an empty emulator host does not mean emulator mode.
    let output = command()
        .args(["dev-token", "--uid", "alice"])
        .env("FIREBASE_PROJECT_ID", "my-production-app")
        .env("FIREBASE_AUTH_EMULATOR_HOST", "")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("demo- projects"), "{stderr}");
    // An empty value with a default takes the default instead of failing.
    let output = command()
        .args(["dev-token", "--uid", "alice"])
        .env("FIREBASE_PROJECT_ID", "")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn dev_token(args: &[&str]) -> String {
    let output = command().arg("dev-token").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn a_restart_on_the_same_file_keeps_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let alice = dev_token(&["--uid", "alice"]);
    let bob = dev_token(&["--uid", "bob", "--user-type", "subscribed"]);

    let server = Server::start(&db, "info");
    for (token, tokens) in [(&alice, 1234), (&alice, 766), (&bob, 50_000)] {
        let response = client()
            .post(format!("{}/usage", server.base))
            .bearer_auth(token)
            .json(&json!({"tokens": tokens}))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let read = |base: &str, token: &str, path: &str| -> Value {
        client()
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    let before: Vec<Value> = [&alice, &bob]
        .iter()
        .flat_map(|t| {
            [
                read(&server.base, t, "/usage/today"),
                read(&server.base, t, "/usage/history"),
            ]
        })
        .collect();
    assert_eq!(before[0]["tokensUsed"], 2000);
    assert_eq!(before[2]["tokensUsed"], 50_000);
    server.stop();

    let server = Server::start(&db, "info");
    let after: Vec<Value> = [&alice, &bob]
        .iter()
        .flat_map(|t| {
            [
                read(&server.base, t, "/usage/today"),
                read(&server.base, t, "/usage/history"),
            ]
        })
        .collect();
    server.stop();
    assert_eq!(before, after);
}

/// Killed under load, the service loses no record it answered: each is committed before its
/// answer. Records in flight at the kill may or may not have been.
#[test]
fn a_crash_under_load_loses_no_answered_record() {
    const CLIENTS: i64 = 16;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    let db_path = db.display().to_string();
    let environment = [
        ("SQLITE_PATH", db_path.as_str()),
        // The start-up line, without a line per request.
        ("RUST_LOG", "info,token_limits::http=warn"),
        ("DAILY_LIMIT_TRIAL", "1000000000"),
    ];
    let alice = dev_token(&["--uid", "alice"]);
    let server = Server::start_with(&environment);
    let answered = Arc::new(AtomicI64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (base, alice, answered) = (server.base.clone(), alice.clone(), answered.clone());
            std::thread::spawn(move || {
                let client = client();
                loop {
                    let sent = client
                        .post(format!("{base}/usage"))
                        .bearer_auth(&alice)
                        .json(&json!({"tokens": 1}))
                        .send();
                    match sent {
                        Ok(response) if response.status() == 200 => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(response) => panic!("{}", response.status()),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.stop();
    for client in clients {
        client.join().unwrap();
    }
    let answered = answered.load(Ordering::SeqCst);
    assert!(answered > 100, "too little load to tell: {answered}");

    let server = Server::start_with(&environment);
    let today: Value = client()
        .get(format!("{}/usage/today", server.base))
        .bearer_auth(&alice)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let stored = today["tokensUsed"].as_i64().unwrap();
    assert!(
        (answered..=answered + CLIENTS).contains(&stored),
        "answered {answered}, stored {stored}"
    );
    server.stop();
}

#[test]
fn logs_never_carry_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dev_token(&["--uid", "alice", "--admin"]);
    let server = Server::start(&dir.path().join("usage.db"), "trace");
    for path in ["/usage/today", "/usage/history?months=2", "/nowhere"] {
        client()
            .get(format!("{}{path}", server.base))
            .bearer_auth(&token)
            .send()
            .unwrap();
    }
    client()
        .post(format!("{}/usage", server.base))
        .bearer_auth(&token)
        .json(&json!({"tokens": 5}))
        .send()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let logs = server.stop();
    assert!(
        logs.iter().any(|line| line.contains("/usage/today")),
        "requests were not logged"
    );
    let payload = token.split('.').nth(1).unwrap();
    for line in &logs {
        assert!(
            !line.contains(payload),
            "a log line carries the token: {line}"
        );
    }
}

#[test]
fn emulator_mode_warns_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("usage.db"), "info");
    let logs = server.stop();
    assert!(
        logs.iter().any(|line| line.contains("emulator mode")),
        "{logs:?}"
    );
}
