use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::*;

fn with(uid: &str, change: impl FnOnce(&mut Value)) -> Value {
    let mut claims = claims(uid);
    change(&mut claims);
    claims
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

fn tampered() -> String {
    let valid = token("alice");
    let parts: Vec<&str> = valid.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

#[tokio::test]
async fn every_bad_token_is_refused_with_401() {
    let app = spawn_app().await;
    let now = now_secs();
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header {
            kid: Some(KEY_1.kid.to_owned()),
            ..Header::new(Algorithm::HS256)
        },
        &claims("alice"),
        &EncodingKey::from_secret(KEY_1.jwk.as_bytes()),
    )
    .unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            KEY_1.sign(&with("alice", |c| c["exp"] = json!(now - 120))),
        ),
        (
            "wrong aud",
            KEY_1.sign(&with("alice", |c| c["aud"] = json!("another-project"))),
        ),
        (
            "wrong iss",
            KEY_1.sign(&with("alice", |c| {
                c["iss"] = json!("https://securetoken.google.com/another-project")
            })),
        ),
        (
            "future iat",
            KEY_1.sign(&with("alice", |c| c["iat"] = json!(now + 600))),
        ),
        (
            "future auth_time",
            KEY_1.sign(&with("alice", |c| c["auth_time"] = json!(now + 600))),
        ),
        (
            "empty sub",
            KEY_1.sign(&with("alice", |c| c["sub"] = json!(""))),
        ),
        (
            "129-character sub",
            KEY_1.sign(&with("alice", |c| c["sub"] = json!("a".repeat(129)))),
        ),
        ("alg none outside emulator mode", unsigned(&claims("alice"))),
        ("HS256 signed with the public key", hs256_with_public_key),
        (
            "unknown kid",
            KEY_1.sign_as(Some("no-such-key"), &claims("alice")),
        ),
        ("missing kid", KEY_1.sign_as(None, &claims("alice"))),
        ("tampered payload", tampered()),
        (
            "bad signature",
            KEY_2.sign_as(Some(KEY_1.kid), &claims("alice")),
        ),
        (
            "missing exp",
            KEY_1.sign(&with("alice", |c| {
                c.as_object_mut().unwrap().remove("exp");
            })),
        ),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (case, bad) in cases {
        for path in ["/usage/today", "/usage/history"] {
            let response = app.get(&bad, path).await;
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
            assert_error(response, 401, "unauthenticated").await;
        }
        let response = app.post_usage(&bad, json!({"tokens": 10})).await;
        assert_error(response, 401, "unauthenticated").await;
    }
    // None of them recorded anything.
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 0);
}

#[tokio::test]
async fn a_missing_or_malformed_authorization_header_is_401() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/usage/today"))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthenticated").await;
    for value in ["Basic abc", "Bearer", "Bearer ", &token("alice")] {
        let response = app
            .client
            .get(app.url("/usage/today"))
            .header("Authorization", value)
            .send()
            .await
            .unwrap();
        assert_error(response, 401, "unauthenticated").await;
    }
}

#[tokio::test]
async fn a_128_character_uid_is_accepted() {
    let app = spawn_app().await;
    let uid = "é".repeat(128);
    let today = app.today(&token(&uid)).await;
    assert_eq!(today["userId"], uid.as_str());
}

#[tokio::test]
async fn keys_are_fetched_once_not_per_request() {
    let app = spawn_app().await;
    for _ in 0..20 {
        app.today(&token("alice")).await;
    }
    assert_eq!(app.jwks.fetches(), 1);
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_rotated_keys() {
    let app = spawn_app_with(&[], |config| config.jwks_refetch_cooldown = Duration::ZERO).await;
    app.today(&token("alice")).await;
    app.jwks.serve(&[KEY_1, KEY_2]);
    let rotated = KEY_2.sign(&claims("alice"));
    assert_eq!(app.today(&rotated).await["userId"], "alice");
    assert_eq!(app.jwks.fetches(), 2);
}

#[tokio::test]
async fn unknown_kids_refetch_at_most_once_per_cooldown() {
    let app = spawn_app().await;
    app.today(&token("alice")).await;
    app.jwks.serve(&[KEY_1, KEY_2]);
    for _ in 0..5 {
        let response = app.get(&KEY_2.sign(&claims("alice")), "/usage/today").await;
        assert_error(response, 401, "unauthenticated").await;
    }
    assert_eq!(app.jwks.fetches(), 1, "refetched within the cooldown");
}

#[tokio::test]
async fn keys_are_refetched_when_their_max_age_runs_out() {
    let jwks = JwksServer::start(&[KEY_1]).await;
    jwks.set_max_age(1);
    let cooldown = Duration::from_millis(500);
    let app = spawn_app_on(jwks, &[], |config| config.jwks_refetch_cooldown = cooldown).await;
    app.today(&token("alice")).await;
    let fetched = app.jwks.fetches();
    // Within max-age: served from the cache.
    app.today(&token("alice")).await;
    assert_eq!(app.jwks.fetches(), fetched);
    app.jwks.serve(&[KEY_1, KEY_2]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past max-age the set is fetched again, though the kid is known.
    app.today(&token("alice")).await;
    assert_eq!(app.jwks.fetches(), fetched + 1);
    assert_eq!(
        app.today(&KEY_2.sign(&claims("alice"))).await["userId"],
        "alice"
    );
}

#[tokio::test]
async fn no_keys_at_all_is_503_not_401() {
    let jwks = JwksServer::start(&[KEY_1]).await;
    jwks.set_failing(true);
    let app = spawn_app_on(jwks, &[], |_| {}).await;
    let response = app.get(&token("alice"), "/usage/today").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "unavailable").await;
    // Once the endpoint answers again, so does the service.
    app.jwks.set_failing(false);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.today(&token("alice")).await["userId"], "alice");
}

#[tokio::test]
async fn a_hanging_key_endpoint_is_cut_off_by_the_request_timeout() {
    let jwks = JwksServer::start(&[KEY_1]).await;
    jwks.set_delay(Duration::from_secs(4));
    let app = spawn_app_on(jwks, &["--request-timeout-secs=1"], |_| {}).await;
    let started = std::time::Instant::now();
    let response = app.get(&token("alice"), "/usage/today").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waited for the slow fetch"
    );
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "unavailable").await;
}

#[tokio::test]
async fn a_uid_that_cannot_name_a_document_is_400() {
    let app = spawn_app().await;
    for uid in ["a/b", "__reserved__", "..", "."] {
        let response = app.post_usage(&token(uid), json!({"tokens": 10})).await;
        assert_error(response, 400, "invalid_user_id").await;
        let response = app.get(&token(uid), "/usage/today").await;
        assert_error(response, 400, "invalid_user_id").await;
    }
}
