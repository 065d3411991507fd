//! The admin reports, with one test body per behaviour run on both stores.

use std::collections::BTreeSet;

use chrono::{Datelike, Utc};
use serde_json::{Value, json};

use crate::firestore::firestore_app;
use crate::helpers::*;

/// Seven users with distinct figures; three of them subscribed.
const USERS: [(&str, i64, &str); 7] = [
    ("ada", 700, "trial"),
    ("bo", 500, "subscribed"),
    ("cy", 900, "trial"),
    ("di", 100, "subscribed"),
    ("ed", 300, "trial"),
    ("fay", 600, "subscribed"),
    ("gus", 200, "trial"),
];

fn user_token(uid: &str, user_type: &str) -> String {
    token_with(uid, json!({ "userType": user_type }))
}

/// The users' figures, recorded with their own tokens, and their plans in Firebase Auth, as
/// the admin views look them up.
async fn seed(app: &TestApp) {
    let auth = crate::auth_emulator::shared().await;
    for (uid, tokens, user_type) in USERS {
        auth.set_claims(PROJECT, uid, json!({ "userType": user_type }))
            .await;
        let response = app
            .post_usage(&user_token(uid, user_type), json!({ "tokens": tokens }))
            .await;
        assert_eq!(response.status(), 200);
    }
}

fn today() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

fn admin() -> String {
    admin_token("dashboard")
}

/// Every page of a report, following `nextPageToken`.
async fn walk(app: &TestApp, first: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(token) => format!("{first}&pageToken={token}"),
            None => first.to_owned(),
        };
        let response = app.get(&admin(), &path).await;
        assert_eq!(response.status(), 200, "{path}");
        let body: Value = response.json().await.unwrap();
        pages.push(body["items"].as_array().unwrap().clone());
        match body["nextPageToken"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => {
                assert!(body["nextPageToken"].is_null());
                return pages;
            }
        }
    }
}

fn figures(items: &[Value], figure: &str) -> Vec<(String, i64)> {
    items
        .iter()
        .map(|item| {
            (
                item["userId"].as_str().unwrap().to_owned(),
                item[figure].as_i64().unwrap(),
            )
        })
        .collect()
}

fn expected(filter: Option<&str>) -> Vec<(String, i64)> {
    let mut users: Vec<(String, i64)> = USERS
        .iter()
        .filter(|(_, _, user_type)| filter.is_none_or(|wanted| wanted == *user_type))
        .map(|(uid, tokens, _)| (uid.to_string(), *tokens))
        .collect();
    users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    users
}

async fn the_daily_report_walks_every_user_once_in_order(app: TestApp) {
    seed(&app).await;
    let pages = walk(
        &app,
        &format!("/admin/usage/daily?date={}&limit=3", today()),
    )
    .await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let items: Vec<Value> = pages.concat();
    assert_eq!(figures(&items, "tokensUsed"), expected(None));
    assert!(
        items
            .iter()
            .all(|item| item["date"] == today() && item["remaining"].is_i64())
    );
    let distinct: BTreeSet<&str> = items
        .iter()
        .map(|i| i["userId"].as_str().unwrap())
        .collect();
    assert_eq!(distinct.len(), 7);
}

async fn the_user_type_filter_keeps_only_that_type(app: TestApp) {
    seed(&app).await;
    for user_type in ["trial", "subscribed"] {
        let path = format!(
            "/admin/usage/daily?date={}&userType={user_type}&limit=2",
            today()
        );
        let items = walk(&app, &path).await.concat();
        assert_eq!(figures(&items, "tokensUsed"), expected(Some(user_type)));
        assert!(items.iter().all(|item| item["userType"] == user_type));
        let path = format!(
            "/admin/usage/monthly?year={}&month={}&userType={user_type}",
            Utc::now().year(),
            Utc::now().month()
        );
        let items = walk(&app, &path).await.concat();
        assert_eq!(
            figures(&items, "totalMonthlyTokens"),
            expected(Some(user_type))
        );
    }
}

async fn the_monthly_report_is_ordered_by_total(app: TestApp) {
    seed(&app).await;
    // A second message for gus lifts him above cy.
    let response = app
        .post_usage(&user_token("gus", "trial"), json!({ "tokens": 750 }))
        .await;
    assert_eq!(response.status(), 200);
    let path = format!(
        "/admin/usage/monthly?year={}&month={}&limit=4",
        Utc::now().year(),
        Utc::now().month()
    );
    let pages = walk(&app, &path).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3]);
    let items = pages.concat();
    let order: Vec<&str> = items
        .iter()
        .map(|i| i["userId"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["gus", "cy", "ada", "fay", "bo", "ed", "di"]);
    assert_eq!(items[0]["totalMonthlyTokens"], 950);
}

async fn the_drill_down_matches_what_the_user_sees(app: TestApp) {
    seed(&app).await;
    let bo = user_token("bo", "subscribed");
    let response = app.get(&admin(), "/admin/users/bo/usage?months=2").await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["today"], app.today(&bo).await);
    assert_eq!(body["planSource"], "directory");
    let own_history: Value = app
        .get(&bo, "/usage/history?months=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["history"], own_history["items"]);
    assert_eq!(body["today"]["tokensUsed"], 500);

    let nobody: Value = app
        .get(&admin(), "/admin/users/nobody/usage")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(nobody["today"]["tokensUsed"], 0);
    assert_eq!(nobody["history"], json!([]));
}

async fn the_summary_matches_the_pages(app: TestApp) {
    seed(&app).await;
    let response = app
        .get(
            &admin(),
            &format!("/admin/reports/summary?date={}", today()),
        )
        .await;
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    let items = walk(
        &app,
        &format!("/admin/usage/daily?date={}&limit=500", today()),
    )
    .await
    .concat();
    let total: i64 = items
        .iter()
        .map(|item| item["tokensUsed"].as_i64().unwrap())
        .sum();
    assert_eq!(summary["date"], today());
    assert_eq!(summary["activeUsers"], items.len());
    assert_eq!(summary["totalTokens"], total);
    assert_eq!(
        summary["averageTokensPerUser"],
        total as f64 / items.len() as f64
    );
    for user_type in ["trial", "subscribed"] {
        let of_type: Vec<&Value> = items
            .iter()
            .filter(|item| item["userType"] == user_type)
            .collect();
        let tokens: i64 = of_type
            .iter()
            .map(|item| item["tokensUsed"].as_i64().unwrap())
            .sum();
        let totals = &summary["byUserType"][user_type];
        assert_eq!(totals["activeUsers"], of_type.len(), "{user_type}");
        assert_eq!(totals["totalTokens"], tokens, "{user_type}");
    }
    let empty: Value = app
        .get(&admin(), "/admin/reports/summary?date=2001-01-01")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(empty["activeUsers"], 0);
    assert_eq!(empty["averageTokensPerUser"], 0.0);
}

/// The month's summary agrees with the monthly report's pages, in all and per type, and its
/// days with the day's summary: today has the month's tokens (all recorded today), every other
/// day none.
async fn the_month_summary_matches_the_pages(app: TestApp) {
    seed(&app).await;
    let now = Utc::now();
    let (year, month) = (now.year(), now.month());
    let response = app
        .get(
            &admin(),
            &format!("/admin/reports/month?year={year}&month={month}"),
        )
        .await;
    assert_eq!(response.status(), 200);
    let summary: Value = response.json().await.unwrap();
    let items = walk(
        &app,
        &format!("/admin/usage/monthly?year={year}&month={month}&limit=500"),
    )
    .await
    .concat();
    let tokens = |items: &[&Value]| -> i64 {
        items
            .iter()
            .map(|item| item["totalMonthlyTokens"].as_i64().unwrap())
            .sum()
    };
    let all: Vec<&Value> = items.iter().collect();
    assert_eq!(
        (summary["year"].clone(), summary["month"].clone()),
        (json!(year), json!(month))
    );
    assert_eq!(summary["activeUsers"], USERS.len());
    assert_eq!(summary["totalTokens"], tokens(&all));
    for user_type in ["trial", "subscribed"] {
        let of_type: Vec<&Value> = all
            .iter()
            .copied()
            .filter(|item| item["userType"] == user_type)
            .collect();
        let totals = &summary["byUserType"][user_type];
        assert_eq!(totals["activeUsers"], of_type.len(), "{user_type}");
        assert_eq!(totals["totalTokens"], tokens(&of_type), "{user_type}");
    }
    let day_summary: Value = app
        .get(
            &admin(),
            &format!("/admin/reports/summary?date={}", today()),
        )
        .await
        .json()
        .await
        .unwrap();
    let days = summary["days"].as_array().unwrap();
    assert_eq!(
        days.first().unwrap()["date"],
        format!("{year}-{month:02}-01")
    );
    for day in days {
        if day["date"] == today() {
            assert_eq!(day["activeUsers"], day_summary["activeUsers"]);
            assert_eq!(day["totalTokens"], day_summary["totalTokens"]);
        } else {
            assert_eq!(day["totalTokens"], 0, "{day}");
        }
    }
    assert!(days.iter().any(|day| day["date"] == today()));
}

/// A reservation released unused leaves a day document with no tokens: no activity, so the
/// summary and the daily report stay as they were.
async fn a_released_reservation_is_no_activity(app: TestApp) {
    seed(&app).await;
    let summary_path = format!("/admin/reports/summary?date={}", today());
    let report_path = format!("/admin/usage/daily?date={}&limit=500", today());
    let summary = || async {
        let response = app.get(&admin(), &summary_path).await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()
    };
    let before = (summary().await, walk(&app, &report_path).await);
    assert_eq!(before.0["activeUsers"], USERS.len());

    let hal = user_token("hal", "trial");
    let reserved = app.reserve(&hal, json!({"tokens": 300}), None).await;
    assert_eq!(reserved.status(), 201);
    let id = reserved.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.release(&hal, &id).await.status(), 200);

    let after = (summary().await, walk(&app, &report_path).await);
    assert_eq!(after, before);
}

macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::spawn_app().await).await;
                }
            )*
        }
        mod firestore {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case(super::firestore_app().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    the_daily_report_walks_every_user_once_in_order,
    the_user_type_filter_keeps_only_that_type,
    the_monthly_report_is_ordered_by_total,
    the_drill_down_matches_what_the_user_sees,
    the_summary_matches_the_pages,
    the_month_summary_matches_the_pages,
    a_released_reservation_is_no_activity,
);

const ADMIN_ROUTES: [&str; 8] = [
    "/admin/usage/daily?date=2024-01-15",
    "/admin/usage/monthly?year=2024&month=1",
    "/admin/users/alice/usage",
    "/admin/reports/summary?date=2024-01-15",
    "/admin/reports/month?year=2024&month=1",
    "/admin/reports/what-if?userType=trial&dailyLimit=100&from=2024-01-01&to=2024-01-31",
    "/admin/limits",
    "/admin/audit",
];

#[tokio::test]
async fn admin_routes_refuse_everyone_else() {
    let app = spawn_app().await;
    for route in ADMIN_ROUTES {
        let response = app.client.get(app.url(route)).send().await.unwrap();
        assert_error(response, 401, "unauthenticated").await;
        let response = app.get(&token("alice"), route).await;
        assert_error(response, 403, "forbidden").await;
        let not_quite = token_with("alice", json!({ "admin": "true" }));
        let response = app.get(&not_quite, route).await;
        assert_error(response, 403, "forbidden").await;
        assert_eq!(app.get(&admin(), route).await.status(), 200, "{route}");
    }
}

#[tokio::test]
async fn bad_report_parameters_are_400_naming_them() {
    let app = spawn_app().await;
    let other_report = {
        seed(&app).await;
        let body: Value = app
            .get(
                &admin(),
                &format!("/admin/usage/daily?date={}&limit=1", today()),
            )
            .await
            .json()
            .await
            .unwrap();
        body["nextPageToken"].as_str().unwrap().to_owned()
    };
    let cases = [
        ("/admin/usage/daily", "date"),
        ("/admin/usage/daily?date=2024-13-01", "date"),
        ("/admin/usage/daily?date=15-01-2024", "date"),
        ("/admin/usage/daily?date=2024-01-15&limit=0", "limit"),
        ("/admin/usage/daily?date=2024-01-15&limit=501", "limit"),
        ("/admin/usage/daily?date=2024-01-15&limit=ten", "limit"),
        (
            "/admin/usage/daily?date=2024-01-15&userType=gold",
            "userType",
        ),
        (
            "/admin/usage/daily?date=2024-01-15&pageToken=not-a-token",
            "pageToken",
        ),
        (
            &format!("/admin/usage/daily?date=2024-01-15&pageToken={other_report}"),
            "pageToken",
        ),
        (
            &format!(
                "/admin/usage/daily?date={}&pageToken={other_report}x",
                today()
            ),
            "pageToken",
        ),
        ("/admin/usage/monthly?month=1", "year"),
        ("/admin/usage/monthly?year=abc&month=1", "year"),
        ("/admin/usage/monthly?year=2024&month=13", "month"),
        ("/admin/usage/monthly?year=2024&month=0", "month"),
        ("/admin/usage/monthly?year=2024", "month"),
        ("/admin/users/alice/usage?months=25", "months"),
        ("/admin/reports/summary?date=yesterday", "date"),
        ("/admin/reports/month?month=1", "year"),
        ("/admin/reports/month?year=1969&month=1", "year"),
        ("/admin/reports/month?year=2024", "month"),
        ("/admin/reports/month?year=2024&month=13", "month"),
        ("/admin/reports/month?year=2024&month=0", "month"),
        ("/admin/reports/month?year=2024&month=may", "month"),
    ];
    for (path, parameter) in cases {
        let body = assert_error(app.get(&admin(), path).await, 400, "invalid_request").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(parameter), "{path}: {message}");
    }
    let response = app.get(&admin(), "/admin/users/__bad__/usage").await;
    assert_error(response, 400, "invalid_user_id").await;
}
