use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::helpers::*;

fn today_utc() -> String {
    Utc::now().format("%Y-%m-%d").to_string()
}

#[tokio::test]
async fn a_first_read_shows_zeros_and_creates_nothing() {
    let app = spawn_app().await;
    let today = app.today(&token("alice")).await;
    assert_eq!(today["userId"], "alice");
    assert_eq!(today["date"], today_utc());
    assert_eq!(today["tokensUsed"], 0);
    assert_eq!(today["tokenLimit"], 10_000);
    assert_eq!(today["remaining"], 10_000);
    assert_eq!(today["userType"], "trial");
    assert!(app.history(&token("alice")).await.is_empty());
}

#[tokio::test]
async fn recording_accumulates_and_answers_the_usage_object() {
    let app = spawn_app().await;
    let alice = token("alice");
    let response = app.post_usage(&alice, json!({"tokens": 1250})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["allowed"], true);
    assert_eq!(body["tokensUsed"], 1250);
    assert_eq!(body["remaining"], 8750);
    assert_eq!(body["tokenLimit"], 10_000);
    assert_eq!(body["date"], today_utc());
    let reset_at: DateTime<Utc> = body["resetAt"].as_str().unwrap().parse().unwrap();
    let last_updated: DateTime<Utc> = body["lastUpdated"].as_str().unwrap().parse().unwrap();
    assert!(reset_at > Utc::now() && reset_at <= Utc::now() + chrono::Duration::days(1));
    assert!(body["resetAt"].as_str().unwrap().ends_with('Z'));
    assert!((Utc::now() - last_updated).num_seconds() < 60);

    let body: Value = app
        .post_usage(&alice, json!({"tokens": 750}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tokensUsed"], 2000);
    assert_eq!(app.today(&alice).await["tokensUsed"], 2000);
    // Another user is untouched.
    assert_eq!(app.today(&token("bob")).await["tokensUsed"], 0);
}

#[tokio::test]
async fn the_limit_admits_exactly_up_to_it_then_answers_429() {
    let app = spawn_app().await;
    let alice = token("alice");
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 9_999}))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_usage(&alice, json!({"tokens": 1})).await.status(),
        200
    );

    let response = app.post_usage(&alice, json!({"tokens": 1})).await;
    assert_eq!(response.status(), 429);
    let retry_after: i64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400 + 3_600).contains(&retry_after));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["allowed"], false);
    assert_eq!(body["error"]["code"], "daily_limit_exceeded");
    assert_eq!(body["tokensUsed"], 10_000);
    assert_eq!(body["remaining"], 0);
    assert_eq!(app.today(&alice).await["tokensUsed"], 10_000);
}

#[tokio::test]
async fn an_upgrade_mid_day_raises_the_limit_at_once() {
    let app = spawn_app().await;
    let trial = token("alice");
    let subscribed = token_with("alice", json!({"userType": "subscribed"}));
    assert_eq!(
        app.post_usage(&trial, json!({"tokens": 10_000}))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_usage(&trial, json!({"tokens": 100}))
            .await
            .status(),
        429
    );

    let response = app.post_usage(&subscribed, json!({"tokens": 100})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["tokenLimit"], 100_000);
    assert_eq!(body["userType"], "subscribed");
    assert_eq!(body["tokensUsed"], 10_100);
    let history = app.history(&subscribed).await;
    assert_eq!(history[0]["userType"], "subscribed");
}

#[tokio::test]
async fn history_carries_the_months_aggregate() {
    let app = spawn_app().await;
    let alice = token("alice");
    app.post_usage(&alice, json!({"tokens": 100})).await;
    app.post_usage(&alice, json!({"tokens": 250})).await;
    let history = app.history(&alice).await;
    assert_eq!(history.len(), 1);
    let month = &history[0];
    let now = Utc::now();
    let day = now.format("%d").to_string();
    assert_eq!(month["userId"], "alice");
    assert_eq!(
        month["year"],
        now.format("%Y").to_string().parse::<i64>().unwrap()
    );
    assert_eq!(
        month["month"],
        now.format("%m").to_string().parse::<i64>().unwrap()
    );
    assert_eq!(month["dailyUsage"], json!({ day.clone(): 350 }));
    assert_eq!(month["totalMonthlyTokens"], 350);
    assert!(month["averageDailyUsage"].is_f64());
    assert_eq!(month["averageDailyUsage"], 350.0);
    assert_eq!(month["peakUsageDate"], day);
    assert_eq!(month["peakUsageTokens"], 350);
    assert_eq!(month["userType"], "trial");
    for field in ["createdAt", "updatedAt"] {
        assert!(
            month[field]
                .as_str()
                .unwrap()
                .parse::<DateTime<Utc>>()
                .is_ok(),
            "{field}"
        );
    }
}

#[tokio::test]
async fn history_months_are_validated() {
    let app = spawn_app().await;
    for query in ["months=0", "months=25", "months=abc", "months=-1"] {
        let response = app
            .get(&token("alice"), &format!("/usage/history?{query}"))
            .await;
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("months"),
            "{query}"
        );
    }
    let response = app.get(&token("alice"), "/usage/history").await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn only_an_admin_may_record_for_another_user() {
    let app = spawn_app().await;
    let response = app
        .post_usage(&token("alice"), json!({"tokens": 5, "userId": "bob"}))
        .await;
    assert_error(response, 403, "forbidden").await;
    assert_eq!(app.today(&token("bob")).await["tokensUsed"], 0);

    // Naming oneself is fine.
    let response = app
        .post_usage(&token("alice"), json!({"tokens": 5, "userId": "alice"}))
        .await;
    assert_eq!(response.status(), 200);

    let response = app
        .post_usage(
            &admin_token("backend"),
            json!({"tokens": 40, "userId": "bob"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["userId"], "bob");
    assert_eq!(app.today(&token("bob")).await["tokensUsed"], 40);
    assert_eq!(app.today(&admin_token("backend")).await["tokensUsed"], 0);

    let response = app
        .post_usage(
            &admin_token("backend"),
            json!({"tokens": 5, "userId": "__bad__"}),
        )
        .await;
    assert_error(response, 400, "invalid_user_id").await;
}

#[tokio::test]
async fn an_admin_acting_for_a_user_applies_the_users_plan() {
    let app = spawn_app().await;
    // Carol is subscribed: her token and her account in Firebase Auth say so.
    crate::auth_emulator::shared()
        .await
        .set_claims(PROJECT, "carol", json!({"userType": "subscribed"}))
        .await;
    let subscribed = token_with("carol", json!({"userType": "subscribed"}));
    app.post_usage(&subscribed, json!({"tokens": 20_000})).await;
    let response = app
        .post_usage(
            &admin_token("backend"),
            json!({"tokens": 1_000, "userId": "carol"}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["userType"], "subscribed");
    assert_eq!(body["tokensUsed"], 21_000);
}

#[tokio::test]
async fn a_retry_with_the_same_key_answers_again_and_counts_once() {
    let app = spawn_app().await;
    let alice = token("alice");
    let first = app
        .post_usage_keyed(&alice, "msg-1", json!({"tokens": 300}))
        .await;
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let again = app
        .post_usage_keyed(&alice, "msg-1", json!({"tokens": 300}))
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    assert_eq!(app.today(&alice).await["tokensUsed"], 300);

    let reused = app
        .post_usage_keyed(&alice, "msg-1", json!({"tokens": 301}))
        .await;
    assert_error(reused, 422, "idempotency_key_reused").await;
    assert_eq!(app.today(&alice).await["tokensUsed"], 300);

    // Keys belong to one user: bob's "msg-1" is his own.
    let bob = app
        .post_usage_keyed(&token("bob"), "msg-1", json!({"tokens": 300}))
        .await;
    assert_eq!(bob.status(), 200);
    assert!(bob.headers().get("idempotent-replayed").is_none());
    assert_eq!(app.history(&alice).await[0]["totalMonthlyTokens"], 300);
}

#[tokio::test]
async fn a_denied_request_is_not_remembered_under_its_key() {
    let app = spawn_app().await;
    let trial = token("alice");
    app.post_usage(&trial, json!({"tokens": 10_000})).await;
    let denied = app
        .post_usage_keyed(&trial, "msg-2", json!({"tokens": 500}))
        .await;
    assert_eq!(denied.status(), 429);
    // After an upgrade, the retry is decided afresh and admitted once.
    let subscribed = token_with("alice", json!({"userType": "subscribed"}));
    let retried = app
        .post_usage_keyed(&subscribed, "msg-2", json!({"tokens": 500}))
        .await;
    assert_eq!(retried.status(), 200);
    assert!(retried.headers().get("idempotent-replayed").is_none());
    let replayed = app
        .post_usage_keyed(&subscribed, "msg-2", json!({"tokens": 500}))
        .await;
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(app.today(&subscribed).await["tokensUsed"], 10_500);
}
