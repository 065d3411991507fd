use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_need_no_token() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap()["status"], "ok");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let response = app.get(&token("alice"), "/no/such/thing").await;
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405_with_allow() {
    let app = spawn_app().await;
    let response = app.get(&token("alice"), "/usage").await;
    assert_eq!(response.headers()["allow"], "POST");
    assert_error(response, 405, "method_not_allowed").await;
    let response = app
        .client
        .delete(app.url("/usage/today"))
        .bearer_auth(token("alice"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let app = spawn_app_with(
        &["--cors-allowed-origins=https://admin.example.com,http://localhost:3000"],
        |_| {},
    )
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/usage"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let allowed = preflight("https://admin.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );
    let allowed_headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        allowed_headers.contains("authorization") && allowed_headers.contains("idempotency-key")
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let response = app
        .client
        .post(app.url("/usage"))
        .header("Origin", "http://localhost:3000")
        .bearer_auth(token("alice"))
        .json(&json!({"tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
}

#[tokio::test]
async fn without_configured_origins_there_is_no_cors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("Origin", "https://admin.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn readiness_fails_at_once_while_shutting_down() {
    let app = spawn_app().await;
    let ready = || app.client.get(app.url("/readyz")).send();
    assert_eq!(ready().await.unwrap().status(), 200);
    app.draining.start();
    assert_error(ready().await.unwrap(), 503, "unavailable").await;
    // Requests still being answered meanwhile are served as usual.
    assert_eq!(app.today(&token("alice")).await["tokensUsed"], 0);
}

/// Metric labels come from closed sets: a method the service does not know counts as `other`,
/// so that clients sending invented methods add no series. The registry is the process's,
/// shared with the tests running beside this one, which send standard methods only.
#[tokio::test]
async fn invented_methods_add_no_metric_series() {
    let app = spawn_app().await;
    let invented = |n: usize| format!("X{n}Y");
    let send_invented = |range: std::ops::Range<usize>| {
        let app = &app;
        async move {
            for n in range {
                let method = reqwest::Method::from_bytes(invented(n).as_bytes()).unwrap();
                for path in ["/usage", "/no/such/thing"] {
                    let response = app
                        .client
                        .request(method.clone(), app.url(path))
                        .send()
                        .await
                        .unwrap();
                    assert!(response.status().is_client_error(), "{path}");
                }
            }
        }
    };
    let scrape = || async {
        let response = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    };
    let unnamed_method_series = |text: &str| {
        text.lines()
            .filter(|line| line.starts_with("http_request"))
            .filter(|line| {
                let method = line
                    .split_once("method=\"")
                    .and_then(|(_, rest)| rest.split_once('"'))
                    .map(|(method, _)| method);
                method.is_some_and(|method| {
                    ![
                        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT",
                        "TRACE",
                    ]
                    .contains(&method)
                })
            })
            .count()
    };

    send_invented(0..10).await;
    let first = scrape().await;
    send_invented(10..200).await;
    let after = scrape().await;

    for n in 0..200 {
        let label = format!("method=\"{}\"", invented(n));
        assert!(!after.contains(&label), "{label} is a label value");
    }
    assert!(
        after.contains(r#"http_requests_total{route="unmatched",method="other",status="404"}"#),
        "{after}"
    );
    let series = unnamed_method_series(&first);
    assert!(series > 0, "{first}");
    assert_eq!(unnamed_method_series(&after), series, "{after}");
}
