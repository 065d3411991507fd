use serde_json::json;

use crate::helpers::*;

/// Sends a raw body with the given content type.
async fn post_raw(app: &TestApp, content_type: Option<&str>, body: String) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(token("alice"))
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("Content-Type", content_type);
    }
    request.send().await.unwrap()
}

async fn assert_nothing_recorded(app: &TestApp) {
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 0);
    assert!(app.history(&token("alice")).await.is_empty());
}

#[tokio::test]
async fn bad_bodies_are_400_and_record_nothing() {
    let app = spawn_app().await;
    let cases = [
        ("zero", r#"{"tokens": 0}"#, "tokens"),
        ("negative", r#"{"tokens": -5}"#, "tokens"),
        ("fraction", r#"{"tokens": 1.5}"#, "tokens"),
        ("whole float", r#"{"tokens": 100.0}"#, "tokens"),
        ("string", r#"{"tokens": "100"}"#, "tokens"),
        ("null", r#"{"tokens": null}"#, "tokens"),
        ("missing", r#"{}"#, "tokens"),
        ("unknown field", r#"{"tokens": 5, "model": "x"}"#, "model"),
        ("above the maximum", r#"{"tokens": 1000001}"#, "tokens"),
        (
            "larger than i64",
            r#"{"tokens": 9223372036854775808}"#,
            "tokens",
        ),
        ("huge", r#"{"tokens": 1e400}"#, ""),
        ("malformed", r#"{"tokens": "#, ""),
        ("not an object", r#"[1]"#, ""),
        ("empty", "", ""),
        (
            "userId not a string",
            r#"{"tokens": 5, "userId": 7}"#,
            "userId",
        ),
    ];
    for (case, body, field) in cases {
        let response = post_raw(&app, Some("application/json"), body.to_owned()).await;
        assert_eq!(response.status(), 400, "{case}");
        let body = assert_error(response, 400, "invalid_request").await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(field),
            "{case}: message {message:?} does not name {field:?}"
        );
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let response = post_raw(&app, content_type, r#"{"tokens": 5}"#.to_owned()).await;
        assert_error(response, 415, "unsupported_media_type").await;
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn_app().await;
    let padding = "x".repeat(64 * 1024);
    let body = format!(r#"{{"tokens": 5, "userId": "{padding}"}}"#);
    let response = post_raw(&app, Some("application/json"), body).await;
    assert_error(response, 413, "payload_too_large").await;
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn a_bad_idempotency_key_is_400_and_records_nothing() {
    let app = spawn_app().await;
    for key in ["has space", &"k".repeat(256)] {
        let response = app
            .post_usage_keyed(&token("alice"), key, json!({"tokens": 5}))
            .await;
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert_nothing_recorded(&app).await;
}

#[tokio::test]
async fn a_configured_maximum_is_enforced() {
    let app = spawn_app_with(&["--max-tokens-per-request=500"], |_| {}).await;
    let response = app
        .post_usage(&token("alice"), json!({"tokens": 501}))
        .await;
    let body = assert_error(response, 400, "invalid_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("500"));
    let response = app
        .post_usage(&token("alice"), json!({"tokens": 500}))
        .await;
    assert_eq!(response.status(), 200);
}
