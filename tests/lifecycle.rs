//! The lifecycle commands as an operator runs them: the real binary on real SQLite files and
//! the real Firestore emulator, on data written by the service's own HTTP API plus hand-made
//! history and hand-planted corruption.

#[path = "support/binary.rs"]
mod binary;
#[path = "support/emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use binary::{Server, client};
use emulator::Emulator;
use serde_json::{Value, json};
use sha2::Digest;

fn emulator() -> &'static Emulator {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| tokio::runtime::Runtime::new().unwrap());
    runtime.block_on(emulator::shared())
}

/// One store as the commands and the service see it.
enum Target {
    Sqlite(PathBuf),
    Firestore { project: String },
}

/// What a command printed and how it ended.
struct Run {
    code: i32,
    summary: Value,
    stderr: String,
}

impl Target {
    fn sqlite(dir: &Path, name: &str) -> Self {
        Self::Sqlite(dir.join(name))
    }

    fn firestore(label: &str) -> Self {
        Self::Firestore {
            project: emulator::unique_project(label),
        }
    }

    fn environment(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Sqlite(path) => vec![
                ("STORE", "sqlite".to_owned()),
                ("SQLITE_PATH", path.display().to_string()),
            ],
            Self::Firestore { project } => vec![
                ("STORE", "firestore".to_owned()),
                ("FIRESTORE_EMULATOR_HOST", emulator().host()),
                ("FIREBASE_PROJECT_ID", project.clone()),
            ],
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = binary::command();
        command.args(args);
        for (name, value) in self.environment() {
            command.env(name, value);
        }
        command
    }

    /// Runs a lifecycle command to its end.
    fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let summary = stdout
            .lines()
            .last()
            .and_then(|line| serde_json::from_str(line).ok())
            .unwrap_or(Value::Null);
        Run {
            code: output.status.code().unwrap_or(-1),
            summary,
            stderr,
        }
    }

    /// Runs a command that must finish clean.
    fn clean(&self, args: &[&str]) -> Value {
        let run = self.run(args);
        assert_eq!(
            run.code, 0,
            "{args:?} ended {}: {} {}",
            run.code, run.summary, run.stderr
        );
        assert_eq!(run.summary["outcome"], "clean", "{}", run.summary);
        run.summary
    }

    fn serve(&self) -> Server {
        let environment = self.environment();
        let pairs: Vec<(&str, &str)> = environment
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .chain([("RUST_LOG", "info")])
            .collect();
        Server::start_with(&pairs)
    }

    fn admin_token(&self) -> String {
        let output = self
            .command(&["dev-token", "--uid", "operator", "--admin"])
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// Both collections as exported, line by line.
    fn export(&self, dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        self.clean(&["export", "--output", path.to_str().unwrap()]);
        std::fs::read_to_string(path).unwrap()
    }

    fn wipe(&self) {
        match self {
            Self::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut name = path.as_os_str().to_owned();
                    name.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(name));
                }
            }
            Self::Firestore { project } => {
                let url = format!(
                    "http://{}/emulator/v1/projects/{project}/databases/(default)/documents",
                    emulator().host()
                );
                assert!(client().delete(url).send().unwrap().status().is_success());
            }
        }
    }
}

/// Records `tokens` for `user` through the API, as an admin acting for them.
fn record(server: &Server, admin: &str, user: &str, tokens: i64) -> Value {
    let response = client()
        .post(format!("{}/usage", server.base))
        .bearer_auth(admin)
        .json(&json!({"tokens": tokens, "userId": user, "userType": "trial"}))
        .send()
        .unwrap();
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert!(status.is_success() || status == 429, "{status}: {body}");
    body
}

/// Holds `tokens` for `user` through the API, as an admin acting for them; returns its id.
fn reserve(server: &Server, admin: &str, user: &str, tokens: i64) -> String {
    let response = client()
        .post(format!("{}/usage/reservations", server.base))
        .bearer_auth(admin)
        .json(&json!({"tokens": tokens, "userId": user, "userType": "trial"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().unwrap();
    body["id"].as_str().unwrap().to_owned()
}

fn commit(server: &Server, admin: &str, user: &str, id: &str, tokens: i64) {
    let response = client()
        .post(format!("{}/usage/reservations/{id}/commit", server.base))
        .bearer_auth(admin)
        .json(&json!({"tokens": tokens, "userId": user}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn get(server: &Server, admin: &str, path: &str) -> Value {
    let response = client()
        .get(format!("{}{path}", server.base))
        .bearer_auth(admin)
        .send()
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().unwrap()
}

/// The audit entries of `action`, newest first, as the service lists them.
fn audited(target: &Target, action: &str) -> Vec<Value> {
    let server = target.serve();
    let page = get(&server, &target.admin_token(), "/admin/audit?limit=500");
    assert_eq!(page["nextPageToken"], Value::Null);
    let entries = page["items"].as_array().unwrap();
    entries
        .iter()
        .filter(|entry| entry["action"] == action)
        .cloned()
        .collect()
}

/// How many documents the entries' `before` and `after` name, in all.
fn named(entries: &[Value], side: &str) -> usize {
    entries
        .iter()
        .map(|entry| entry[side]["documents"].as_array().unwrap().len())
        .sum()
}

/// A consistent month of `days` (day of month, tokens) and its day documents, as NDJSON.
fn backfill(user: &str, year: i32, month: u32, days: &[(u32, i64)]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut daily_usage = BTreeMap::new();
    for &(day, tokens) in days {
        let date = format!("{year:04}-{month:02}-{day:02}");
        daily_usage.insert(format!("{day:02}"), tokens);
        lines.push(
            json!({"collection": "daily_token_usage", "id": format!("{user}_{date}"), "data": {
                "userId": user, "date": date, "tokensUsed": tokens, "tokenLimit": 10000,
                "userType": "trial", "lastUpdated": format!("{date}T12:00:00Z"),
                "resetAt": format!("{date}T23:59:59Z")}})
            .to_string(),
        );
    }
    let first = days.iter().map(|(day, _)| *day).min().unwrap();
    let last = days.iter().map(|(day, _)| *day).max().unwrap();
    for day in first..=last {
        daily_usage.entry(format!("{day:02}")).or_insert(0);
    }
    let total: i64 = daily_usage.values().sum();
    let (peak_day, peak) =
        daily_usage
            .iter()
            .fold((String::new(), -1), |(best_day, best), (day, &tokens)| {
                if tokens > best {
                    (day.clone(), tokens)
                } else {
                    (best_day, best)
                }
            });
    lines.push(
        json!({"collection": "token_usage_history", "id": format!("{user}_{year:04}_{month:02}"),
            "data": {"userId": user, "year": year, "month": month, "dailyUsage": daily_usage,
            "totalMonthlyTokens": total,
            "averageDailyUsage": total as f64 / daily_usage.len() as f64,
            "peakUsageDate": peak_day, "peakUsageTokens": peak, "userType": "trial",
            "createdAt": format!("{year:04}-{month:02}-{first:02}T00:00:00Z"),
            "updatedAt": format!("{year:04}-{month:02}-{last:02}T12:00:00Z")}})
        .to_string(),
    );
    lines
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Five users' March 2025 (days 1 to 20) and a few records today through the API, with a
/// reservation held, one committed, and a user who has only held one (a day without tokens,
/// which needs no month).
fn seed(target: &Target, dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for n in 0..5 {
        let days: Vec<(u32, i64)> = (1..=20)
            .filter(|day| day % 4 != 0)
            .map(|day| (day, i64::from(day) * 10 + n))
            .collect();
        lines.extend(backfill(&format!("user{n}"), 2025, 3, &days));
    }
    let file = dir.join("backfill.ndjson");
    write_lines(&file, &lines);
    let imported = target.clean(&["import", "--input", file.to_str().unwrap()]);
    assert_eq!(imported["counts"]["documentsCreated"], lines.len());
    let server = target.serve();
    let admin = target.admin_token();
    for n in 0..5 {
        for tokens in [100, 250] {
            record(&server, &admin, &format!("user{n}"), tokens + n);
        }
    }
    reserve(&server, &admin, "user0", 40);
    let settled = reserve(&server, &admin, "user1", 60);
    commit(&server, &admin, "user1", &settled, 55);
    reserve(&server, &admin, "user9", 30);
    server.stop();
    lines
}

fn round_trip(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    seed(target, dir.path());
    assert_eq!(target.clean(&["verify"])["findingsTotal"], 0);
    let before = target.export(dir.path(), "before.ndjson");
    let documents = before.lines().count();
    assert_eq!(
        documents,
        5 * 16 + 5 + 5 + 1,
        "March days and months, today and this month, and a day that only held tokens"
    );
    let nowhere = dir.path().join("nowhere.ndjson");
    let counted = target.clean(&["export", "--output", nowhere.to_str().unwrap(), "--dry-run"]);
    assert_eq!(counted["counts"]["documentsExported"], documents);
    assert!(!nowhere.exists(), "a dry run wrote");

    target.wipe();
    assert_eq!(target.export(dir.path(), "empty.ndjson"), "");
    let input = dir.path().join("before.ndjson");
    let input = input.to_str().unwrap();
    let operator = ["--actor", "ops-anna", "--reason", "restore drill"];
    let imported = target.clean(&[&["import", "--input", input][..], &operator].concat());
    assert_eq!(imported["counts"]["documentsCreated"], documents);
    let again = target.clean(&["import", "--input", input]);
    assert_eq!(again["counts"]["documentsUnchanged"], documents);
    assert_eq!(again["counts"].get("documentsCreated"), None);
    // One commit, one entry: what it wrote, by whom and why; the import that wrote nothing
    // has none.
    let entries = audited(target, "documents_imported");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (
            &entries[0]["actor"],
            &entries[0]["reason"],
            &entries[0]["userId"]
        ),
        (&json!("ops-anna"), &json!("restore drill"), &Value::Null)
    );
    assert_eq!(
        (named(&entries, "before"), named(&entries, "after")),
        (0, documents)
    );

    assert_eq!(target.export(dir.path(), "after.ndjson"), before);
    assert_eq!(
        target.clean(&["verify"])["counts"]["documentsChecked"],
        documents
    );
}

#[test]
fn export_wipe_import_reproduces_every_document_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&Target::sqlite(dir.path(), "usage.db"));
}

#[test]
fn export_wipe_import_reproduces_every_document_on_firestore() {
    round_trip(&Target::firestore("trip"));
}

#[test]
fn a_deployment_moves_from_sqlite_to_firestore_with_every_figure() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Target::sqlite(dir.path(), "usage.db");
    seed(&sqlite, dir.path());
    let export = dir.path().join("migration.ndjson");
    sqlite.clean(&["export", "--output", export.to_str().unwrap()]);

    let firestore = Target::firestore("move");
    let imported = firestore.clean(&["import", "--input", export.to_str().unwrap()]);
    assert_eq!(imported["counts"]["documentsCreated"], 91);
    firestore.clean(&["verify"]);

    let today = chrono::Utc::now().date_naive();
    let reports = [
        "/admin/usage/monthly?year=2025&month=3&limit=500".to_owned(),
        format!("/admin/usage/daily?date={today}&limit=500"),
        format!("/admin/reports/summary?date={today}"),
        "/admin/users/user3/usage?months=24".to_owned(),
    ];
    let read_all = |target: &Target| {
        let server = target.serve();
        let admin = target.admin_token();
        let answers: Vec<Value> = reports
            .iter()
            .map(|path| get(&server, &admin, path))
            .collect();
        server.stop();
        answers
    };
    let (from_sqlite, from_firestore) = (read_all(&sqlite), read_all(&firestore));
    assert_eq!(from_sqlite[0]["items"].as_array().unwrap().len(), 5);
    assert_eq!(from_sqlite, from_firestore);
}

#[test]
fn a_bad_line_writes_nothing_and_is_named_by_number() {
    let dir = tempfile::tempdir().unwrap();
    for target in [
        Target::sqlite(dir.path(), "usage.db"),
        Target::firestore("badline"),
    ] {
        let mut lines = backfill("alice", 2025, 3, &[(1, 10), (2, 20)]);
        lines[1] = lines[1].replace("\"tokensUsed\":20", "\"tokensUsed\":\"20\"");
        lines.push(lines[0].replace("alice_2025-03-01", "alice_2025-03-09"));
        lines.push("not json".to_owned());
        let file = dir.path().join("bad.ndjson");
        write_lines(&file, &lines);

        let run = target.run(&["import", "--input", file.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{}", run.summary);
        let findings = &run.summary["findings"];
        let named: Vec<&str> = findings
            .as_array()
            .unwrap()
            .iter()
            .map(|finding| finding["subject"].as_str().unwrap())
            .collect();
        assert_eq!(named, ["line 2", "line 4", "line 5"], "{findings}");
        assert!(
            findings[1]["problem"]
                .as_str()
                .unwrap()
                .contains("id should be")
        );
        assert_eq!(target.export(dir.path(), "after.ndjson"), "");
    }
}

/// A day, a month, a wrong-typed field and a contradictory reservation planted straight into
/// the store.
fn plant_faults(target: &Target) {
    match target {
        Target::Sqlite(path) => {
            let db = rusqlite::Connection::open(path).unwrap();
            db.execute_batch(
                "UPDATE daily_token_usage SET tokens_used = 999 WHERE id = 'user1_2025-03-05';
                 UPDATE token_usage_history SET average_daily_usage = 1.5 WHERE id = 'user2_2025_03';
                 UPDATE daily_token_usage SET id = 'someone_2025-03-06' WHERE id = 'user3_2025-03-06';
                 UPDATE daily_token_usage SET user_type = 'premium' WHERE id = 'user4_2025-03-07';
                 UPDATE daily_token_usage SET reservations = '{\"20250309-1741514400-0123456789abcdef\":
                     {\"tokens\": 300, \"createdAt\": \"2025-03-09T10:00:00Z\",
                      \"expiresAt\": \"2025-03-09T10:10:00Z\", \"status\": \"committed\"}}'
                     WHERE id = 'user0_2025-03-09';",
            )
            .unwrap();
            for (id, status, payload) in outbox_entries() {
                db.execute(
                    "INSERT INTO notification_outbox (id, event_type, user_id, payload, created_at,
                         status, attempts, next_attempt_at, retry_since)
                     VALUES (?1, 'usage.threshold_crossed', 'user1', ?2,
                         '2025-03-05 10:00:00+00:00', ?3, 0, '2025-03-05 10:00:00+00:00',
                         '2025-03-05 10:00:00+00:00')",
                    rusqlite::params![id, payload, status],
                )
                .unwrap();
            }
        }
        Target::Firestore { project } => {
            let patch = |path: &str, fields: Value| {
                let field_names: Vec<String> = fields
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|name| format!("updateMask.fieldPaths={name}"))
                    .collect();
                let url = format!(
                    "{}?{}",
                    emulator().document_url(project, path),
                    field_names.join("&")
                );
                let response = client()
                    .patch(url)
                    .bearer_auth("owner")
                    .json(&json!({ "fields": fields }))
                    .send()
                    .unwrap();
                assert!(
                    response.status().is_success(),
                    "{}",
                    response.text().unwrap()
                );
            };
            patch(
                "daily_token_usage/user1_2025-03-05",
                json!({"tokensUsed": {"integerValue": "999"}}),
            );
            patch(
                "token_usage_history/user2_2025_03",
                json!({"averageDailyUsage": {"doubleValue": 1.5}}),
            );
            let moved: Value = client()
                .get(emulator().document_url(project, "daily_token_usage/user3_2025-03-06"))
                .bearer_auth("owner")
                .send()
                .unwrap()
                .json()
                .unwrap();
            patch(
                "daily_token_usage/someone_2025-03-06",
                moved["fields"].clone(),
            );
            let gone = client()
                .delete(emulator().document_url(project, "daily_token_usage/user3_2025-03-06"))
                .bearer_auth("owner")
                .send()
                .unwrap();
            assert!(gone.status().is_success());
            patch(
                "daily_token_usage/user4_2025-03-07",
                json!({"tokensUsed": {"stringValue": "70"}}),
            );
            let timestamp = |at: &str| json!({ "timestampValue": at });
            patch(
                "daily_token_usage/user0_2025-03-09",
                json!({"reservations": {"mapValue": {"fields": {
                    "20250309-1741514400-0123456789abcdef": {"mapValue": {"fields": {
                        "tokens": {"integerValue": "300"},
                        "createdAt": timestamp("2025-03-09T10:00:00Z"),
                        "expiresAt": timestamp("2025-03-09T10:10:00Z"),
                        "status": {"stringValue": "committed"},
                    }}}
                }}}}),
            );
            for (id, status, payload) in outbox_entries() {
                patch(
                    &format!("notification_outbox/{id}"),
                    json!({
                        "eventType": {"stringValue": "usage.threshold_crossed"},
                        "userId": {"stringValue": "user1"},
                        "payload": {"stringValue": payload},
                        "status": {"stringValue": status},
                        "attempts": {"integerValue": "0"},
                        "createdAt": timestamp("2025-03-05T10:00:00Z"),
                        "nextAttemptAt": timestamp("2025-03-05T10:00:00Z"),
                        "retrySince": timestamp("2025-03-05T10:00:00Z"),
                    }),
                );
            }
        }
    }
}

/// Outbox entries as a record writes them: one sound, one whose body names another event, one
/// of no known status.
fn outbox_entries() -> [(&'static str, &'static str, String); 3] {
    let body = |event_id: &str| {
        json!({"type": "usage.threshold_crossed", "data": {"eventId": event_id, "userId": "user1"}})
            .to_string()
    };
    [
        (
            "user1_2025-03-05_daily-80",
            "pending",
            body("user1_2025-03-05_daily-80"),
        ),
        (
            "user1_2025-03-05_daily-100",
            "pending",
            body("user1_2025-03-06_daily-100"),
        ),
        (
            "user1_2025-03-05_denied",
            "lost",
            body("user1_2025-03-05_denied"),
        ),
    ]
}

fn verify_finds_each_planted_fault(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    seed(target, dir.path());
    let clean = target.clean(&["verify"]);
    assert_eq!(clean["findingsTotal"], 0);

    plant_faults(target);
    let run = target.run(&["verify"]);
    assert_eq!(run.code, 1, "{} {}", run.summary, run.stderr);
    let findings: BTreeMap<String, String> = run.summary["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["subject"].as_str().unwrap().to_owned(),
                f["problem"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |subject: &str, problem: &str| {
        let found = findings
            .get(subject)
            .unwrap_or_else(|| panic!("{subject} not reported: {findings:?}"));
        assert!(found.contains(problem), "{subject}: {found}");
    };
    expect(
        "daily_token_usage/user1_2025-03-05",
        "tokensUsed is 999 but its month user1_2025_03 has dailyUsage.05 = 51",
    );
    expect(
        "token_usage_history/user2_2025_03",
        "averageDailyUsage is 1.5",
    );
    expect(
        "daily_token_usage/someone_2025-03-06",
        "the id should be \"user3_2025-03-06\"",
    );
    let wrong_type = match target {
        Target::Sqlite(_) => "userType holds \"premium\"",
        Target::Firestore { .. } => "tokensUsed is not an integer",
    };
    expect("daily_token_usage/user4_2025-03-07", wrong_type);
    expect(
        "daily_token_usage/user0_2025-03-09",
        "status \"committed\" does not fit its fields",
    );
    expect(
        "notification_outbox/user1_2025-03-05_daily-100",
        "payload's data.eventId is \"user1_2025-03-06_daily-100\"",
    );
    expect(
        "notification_outbox/user1_2025-03-05_denied",
        "does not decode",
    );
    assert_eq!(findings.len(), 7, "{findings:?}");

    let narrowed = target.run(&["verify", "--user", "user2", "--month", "2025-03"]);
    assert_eq!(narrowed.summary["findingsTotal"], 1, "{}", narrowed.summary);
    let outbox_of_user1 = target.run(&["verify", "--user", "user1", "--month", "2024-03"]);
    assert_eq!(
        outbox_of_user1.summary["findingsTotal"], 2,
        "{}",
        outbox_of_user1.summary
    );
    assert_eq!(outbox_of_user1.summary["counts"]["outboxEntriesChecked"], 3);
    let elsewhere = target.run(&["verify", "--user", "user2", "--month", "2024-03"]);
    assert_eq!(elsewhere.code, 0, "{}", elsewhere.summary);
}

#[test]
fn verify_finds_each_planted_fault_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    verify_finds_each_planted_fault(&Target::sqlite(dir.path(), "usage.db"));
}

#[test]
fn verify_finds_each_planted_fault_on_firestore() {
    verify_finds_each_planted_fault(&Target::firestore("verify"));
}

/// Live traffic for `users` until `stop`; the tokens admitted per user.
fn traffic(
    target: &Target,
    users: &[String],
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) -> (Server, Vec<std::thread::JoinHandle<i64>>) {
    let server = target.serve();
    let admin = target.admin_token();
    let base = server.base.clone();
    let workers = users
        .iter()
        .map(|user| {
            let (user, admin, base, stop, paused) = (
                user.clone(),
                admin.clone(),
                base.clone(),
                stop.clone(),
                paused.clone(),
            );
            std::thread::spawn(move || {
                let mut admitted = 0;
                while !stop.load(Ordering::SeqCst) {
                    if paused.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let response = client()
                        .post(format!("{base}/usage"))
                        .bearer_auth(&admin)
                        .json(&json!({"tokens": 3, "userId": user, "userType": "subscribed"}))
                        .send()
                        .unwrap();
                    if response.status().is_success() {
                        admitted += 3;
                    }
                }
                admitted
            })
        })
        .collect();
    (server, workers)
}

fn rebuild_under_live_traffic_loses_no_token(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    let users: Vec<String> = (0..4).map(|n| format!("live{n}")).collect();
    let server = target.serve();
    let admin = target.admin_token();
    for user in &users {
        record(&server, &admin, user, 1);
    }
    server.stop();
    // Every month now says 1,000 tokens more for today than its day does.
    let exported = target.export(dir.path(), "today.ndjson");
    let planted: Vec<String> = exported
        .lines()
        .filter(|line| line.contains("token_usage_history"))
        .map(|line| {
            let mut month: Value = serde_json::from_str(line).unwrap();
            let data = &mut month["data"];
            let today = data["dailyUsage"]
                .as_object()
                .unwrap()
                .keys()
                .next_back()
                .unwrap()
                .clone();
            data["dailyUsage"][&today] = json!(1001);
            let total: i64 = data["dailyUsage"]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_i64().unwrap())
                .sum();
            let days = data["dailyUsage"].as_object().unwrap().len() as f64;
            data["totalMonthlyTokens"] = json!(total);
            data["averageDailyUsage"] = json!(total as f64 / days);
            data["peakUsageDate"] = json!(today);
            data["peakUsageTokens"] = json!(1001);
            month.to_string()
        })
        .collect();
    assert_eq!(planted.len(), users.len());
    let file = dir.path().join("planted.ndjson");
    write_lines(&file, &planted);
    target.clean(&["import", "--input", file.to_str().unwrap(), "--overwrite"]);
    assert_eq!(
        target.run(&["verify"]).summary["findingsTotal"],
        users.len()
    );

    // Rounds of corruption and repair while the users keep sending: after each rebuild the
    // months must hold exactly their days, which a lost live write would break for good.
    let (stop, paused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (server, workers) = traffic(target, &users, stop.clone(), paused.clone());
    let mut rewritten = 0;
    for round in 0..6 {
        // The corruption is planted in a lull; the repair runs under full traffic.
        paused.store(true, Ordering::SeqCst);
        target.clean(&["import", "--input", file.to_str().unwrap(), "--overwrite"]);
        paused.store(false, Ordering::SeqCst);
        let run = target.clean(&["rebuild-history"]);
        rewritten += run["counts"]["monthsRewritten"].as_u64().unwrap_or(0);
        let verified = target.run(&["verify"]);
        assert_eq!(
            verified.summary["findingsTotal"], 0,
            "round {round}: {}",
            verified.summary
        );
    }
    stop.store(true, Ordering::SeqCst);
    let admitted: Vec<i64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    server.stop();
    assert_eq!(rewritten, 6 * users.len() as u64);
    assert!(admitted.iter().all(|&tokens| tokens > 0), "{admitted:?}");

    let after = target.export(dir.path(), "after.ndjson");
    for (user, admitted) in users.iter().zip(admitted) {
        let line = |collection: &str| -> Value {
            let found = after
                .lines()
                .find(|line| {
                    line.contains(collection) && line.contains(&format!("\"userId\":\"{user}\""))
                })
                .unwrap();
            serde_json::from_str(found).unwrap()
        };
        let (day, month) = (line("daily_token_usage"), line("token_usage_history"));
        let key = &day["data"]["date"].as_str().unwrap()[8..10];
        assert_eq!(day["data"]["tokensUsed"], 1 + admitted, "{user}");
        assert_eq!(
            month["data"]["dailyUsage"][key],
            1 + admitted,
            "{user}: {month}"
        );
    }
    target.clean(&["verify"]);
}

#[test]
fn rebuild_history_under_live_traffic_loses_no_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    rebuild_under_live_traffic_loses_no_token(&Target::sqlite(dir.path(), "usage.db"));
}

#[test]
fn rebuild_history_under_live_traffic_loses_no_token_on_firestore() {
    rebuild_under_live_traffic_loses_no_token(&Target::firestore("rebuild"));
}

#[test]
fn rebuild_history_recreates_lost_months_from_their_days() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::sqlite(dir.path(), "usage.db");
    seed(&target, dir.path());
    let before = target.export(dir.path(), "before.ndjson");
    let db = rusqlite::Connection::open(dir.path().join("usage.db")).unwrap();
    db.execute("DELETE FROM token_usage_history WHERE year = 2025", [])
        .unwrap();
    drop(db);
    assert_eq!(target.run(&["verify"]).code, 1);

    let dry = target.clean(&["rebuild-history", "--dry-run"]);
    assert_eq!(dry["changesTotal"], 5);
    assert!(
        dry["changes"][0]["change"]
            .as_str()
            .unwrap()
            .contains("created")
    );
    assert_eq!(target.run(&["verify"]).code, 1, "a dry run wrote");

    let rebuilt = target.clean(&["rebuild-history", "--month", "2025-03"]);
    assert_eq!(rebuilt["counts"]["monthsRewritten"], 5);
    let entries = audited(&target, "history_rebuilt");
    assert_eq!(entries.len(), 5, "a commit per month: {entries:?}");
    for entry in &entries {
        let user = entry["userId"].as_str().unwrap();
        assert_eq!(
            entry["after"]["documents"],
            json!([format!("token_usage_history/{user}_2025_03")])
        );
        assert_eq!(
            (&entry["actor"], &entry["before"]["documents"]),
            (&json!("lifecycle"), &json!([]))
        );
    }
    target.clean(&["verify"]);
    let figures = |export: &str| -> Vec<Value> {
        export
            .lines()
            .filter(|line| line.contains("_2025_03"))
            .map(|line| {
                let data = serde_json::from_str::<Value>(line).unwrap()["data"].clone();
                json!([
                    data["dailyUsage"],
                    data["totalMonthlyTokens"],
                    data["peakUsageDate"]
                ])
            })
            .collect()
    };
    assert_eq!(
        figures(&target.export(dir.path(), "after.ndjson")),
        figures(&before)
    );
}

fn old_days(users: usize, days: u32) -> Vec<String> {
    (0..users)
        .flat_map(|n| {
            let days: Vec<(u32, i64)> = (1..=days).map(|day| (day, 5 + i64::from(day))).collect();
            backfill(&format!("old{n}"), 2025, 1, &days)
        })
        .collect()
}

fn count_days(path: &Path) -> i64 {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row("SELECT COUNT(*) FROM daily_token_usage", [], |row| {
        row.get(0)
    })
    .unwrap()
}

#[test]
fn a_cleanup_killed_mid_run_finishes_on_the_next_run_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let target = Target::Sqlite(path.clone());
    let file = dir.path().join("old.ndjson");
    write_lines(&file, &old_days(200, 31));
    target.clean(&["import", "--input", file.to_str().unwrap()]);
    let server = target.serve();
    record(&server, &target.admin_token(), "recent", 42);
    server.stop();
    let history_before: Vec<String> = target
        .export(dir.path(), "before.ndjson")
        .lines()
        .filter(|line| line.contains("token_usage_history"))
        .map(str::to_owned)
        .collect();
    let all_days = count_days(&path);
    assert_eq!(all_days, 200 * 31 + 1);

    let mut cleanup = target
        .command(&["cleanup", "--batch-size", "3"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_days(&path) > all_days - 50 {
        assert!(Instant::now() < deadline, "cleanup made no progress");
        assert!(
            cleanup.try_wait().unwrap().is_none(),
            "cleanup ended before the kill"
        );
    }
    cleanup.kill().unwrap();
    cleanup.wait().unwrap();
    let left = count_days(&path);
    assert!(left > 1 && left < all_days, "{left} days left");

    let finished = target.clean(&["cleanup"]);
    assert_eq!(finished["counts"]["daysDeleted"], left - 1);
    assert_eq!(count_days(&path), 1, "today's day is kept");
    let history_after: Vec<String> = target
        .export(dir.path(), "after.ndjson")
        .lines()
        .filter(|line| line.contains("token_usage_history"))
        .map(str::to_owned)
        .collect();
    assert_eq!(history_after, history_before);
    let again = target.clean(&["cleanup"]);
    assert_eq!(again["counts"].get("daysDeleted"), None, "{again}");
}

#[test]
fn cleanup_keeps_days_their_month_does_not_hold_and_resumes_on_firestore() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::firestore("cleanup");
    let mut lines = old_days(3, 10);
    let wrong = lines[0].replace("\"tokensUsed\":6", "\"tokensUsed\":7");
    lines[0] = wrong;
    let file = dir.path().join("old.ndjson");
    write_lines(&file, &lines);
    target.clean(&["import", "--input", file.to_str().unwrap()]);

    let dry = target.run(&["cleanup", "--dry-run"]);
    assert_eq!(dry.summary["counts"]["daysToDelete"], 29, "{}", dry.summary);
    let first = target.run(&["cleanup", "--batch-size", "4", "--max-deletes", "8"]);
    assert_eq!(
        first.summary["counts"]["daysDeleted"], 8,
        "{}",
        first.summary
    );
    let rest = target.run(&["cleanup", "--batch-size", "4"]);
    assert_eq!(rest.code, 1, "the kept day is a finding: {}", rest.summary);
    assert_eq!(rest.summary["counts"]["daysDeleted"], 21);
    let entries = audited(&target, "days_deleted");
    for entry in &entries {
        let batch = entry["before"]["documents"].as_array().unwrap().len();
        assert!(
            (1..=4).contains(&batch),
            "a commit per batch of at most 4: {entry}"
        );
    }
    assert_eq!(
        (named(&entries, "before"), named(&entries, "after")),
        (29, 0)
    );
    assert_eq!(
        rest.summary["findings"][0]["subject"],
        "daily_token_usage/old0_2025-01-01"
    );
    let left = target.export(dir.path(), "left.ndjson");
    let days: Vec<&str> = left
        .lines()
        .filter(|l| l.contains("daily_token_usage"))
        .collect();
    assert_eq!(days.len(), 1);
    assert_eq!(
        left.lines()
            .filter(|l| l.contains("token_usage_history"))
            .count(),
        3
    );
}

#[test]
fn cleanup_deletes_expired_idempotency_records_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let target = Target::Sqlite(path.clone());
    let server = target.serve();
    let admin = target.admin_token();
    for key in ["a", "b", "c"] {
        let response = client()
            .post(format!("{}/usage", server.base))
            .bearer_auth(&admin)
            .header("Idempotency-Key", key)
            .json(&json!({"tokens": 1, "userId": "keyed", "userType": "trial"}))
            .send()
            .unwrap();
        assert!(response.status().is_success());
    }
    server.stop();
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute(
        "UPDATE idempotency_keys SET expires_at = '2020-01-01 00:00:00+00:00' WHERE key != 'c'",
        [],
    )
    .unwrap();
    let summary = target.clean(&["cleanup"]);
    assert_eq!(summary["counts"]["expiredKeysDeleted"], 2);
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM idempotency_keys", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(left, 1);
}

#[test]
fn exit_codes_tell_bad_usage_and_failure_apart() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::sqlite(dir.path(), "usage.db");
    assert_eq!(target.run(&["verify", "--month", "2025-13"]).code, 2);
    let missing = target.run(&["import", "--input", "/nonexistent/file.ndjson"]);
    assert_eq!(missing.code, 3);
    assert!(missing.stderr.contains("cannot open"), "{}", missing.stderr);
}

/// Five users' January 2024, old enough to be archived, beside the seeded March 2025 and today.
fn archive_moves_old_months_and_import_restores_them(target: &Target) {
    let dir = tempfile::tempdir().unwrap();
    seed(target, dir.path());
    let old: Vec<String> = (0..5)
        .flat_map(|n| backfill(&format!("user{n}"), 2024, 1, &[(2, 20 + n), (9, 90)]))
        .filter(|line| line.contains("token_usage_history"))
        .collect();
    let file = dir.path().join("old.ndjson");
    write_lines(&file, &old);
    target.clean(&["import", "--input", file.to_str().unwrap()]);
    let before = target.export(dir.path(), "before.ndjson");
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();

    let dry = target.clean(&["archive", "--destination", archive_arg, "--dry-run"]);
    assert_eq!(dry["changesTotal"], 1, "{dry}");
    assert!(!archive.exists(), "a dry run wrote");

    let done = target.clean(&["archive", "--destination", archive_arg]);
    assert_eq!(done["counts"]["monthsArchived"], 1, "{done}");
    assert_eq!(done["counts"]["documentsDeleted"], 5, "{done}");
    let month_dir = archive.join("token_usage_history/2024-01");
    let mut names: Vec<String> = std::fs::read_dir(&month_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(month_dir.join(&names[0])).unwrap()).unwrap();
    let data = std::fs::read(month_dir.join(&names[1])).unwrap();
    assert!(names[1].ends_with(".ndjson.gz") && names[0].ends_with(".manifest.json"));
    assert_eq!(manifest["documents"], 5);
    assert_eq!(manifest["bytes"], data.len());
    let digest: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(manifest["sha256"], digest);

    let left = target.export(dir.path(), "left.ndjson");
    assert!(
        !left.contains("_2024_01"),
        "archived months stay in the store"
    );
    assert_eq!(left.lines().count(), before.lines().count() - 5);
    let again = target.clean(&["archive", "--destination", archive_arg]);
    assert_eq!(again["counts"].get("monthsArchived"), None, "{again}");
    let entries = audited(target, "months_archived");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        (named(&entries, "before"), named(&entries, "after")),
        (5, 0)
    );

    let restored = target.clean(&[
        "import",
        "--input",
        month_dir.join(&names[1]).to_str().unwrap(),
    ]);
    assert_eq!(restored["counts"]["documentsCreated"], 5);
    assert_eq!(target.export(dir.path(), "after.ndjson"), before);
}

#[test]
fn archive_moves_old_months_and_import_restores_them_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    archive_moves_old_months_and_import_restores_them(&Target::sqlite(dir.path(), "usage.db"));
}

#[test]
fn archive_moves_old_months_and_import_restores_them_on_firestore() {
    archive_moves_old_months_and_import_restores_them(&Target::firestore("archive"));
}
