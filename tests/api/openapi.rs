//! `/openapi.json` describes exactly the routes the router serves.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::helpers::*;

/// Every endpoint of the service and its methods.
const ENDPOINTS: [(&str, &str); 26] = [
    ("/usage", "post"),
    ("/usage/reservations", "post"),
    ("/usage/reservations/{id}/commit", "post"),
    ("/usage/reservations/{id}", "delete"),
    ("/usage/today", "get"),
    ("/usage/history", "get"),
    ("/usage/stream", "get"),
    ("/admin/usage/daily", "get"),
    ("/admin/usage/monthly", "get"),
    ("/admin/users/{user_id}/usage", "get"),
    ("/admin/reports/summary", "get"),
    ("/admin/reports/month", "get"),
    ("/admin/reports/what-if", "get"),
    ("/admin/reports/activity", "get"),
    ("/admin/users/{user_id}/limit", "put"),
    ("/admin/users/{user_id}/limit", "get"),
    ("/admin/users/{user_id}/limit", "delete"),
    ("/admin/users/{user_id}/reset", "post"),
    ("/admin/limits", "get"),
    ("/admin/audit", "get"),
    ("/admin/notifications", "get"),
    ("/admin/notifications/{event_id}/redeliver", "post"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

async fn document(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn operations(document: &Value) -> BTreeMap<(String, String), Value> {
    let mut operations = BTreeMap::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            operations.insert((path.clone(), method.clone()), operation.clone());
        }
    }
    operations
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_endpoints() {
    let app = spawn_app().await;
    let document = document(&app).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let listed: Vec<(String, String)> = operations(&document).into_keys().collect();
    let mut expected: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(p, m)| (p.to_string(), m.to_string()))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    // Each listed operation is served: neither 404 nor 405 for its method.
    for (path, method) in ENDPOINTS {
        let url = app.url(
            &path
                .replace("{user_id}", "alice")
                .replace("{id}", "no-such-id"),
        );
        let request = match method {
            "post" => app.client.post(url).json(&serde_json::json!({"tokens": 1})),
            "delete" => app.client.delete(url),
            "put" => app.client.put(url).json(&serde_json::json!({})),
            _ => app.client.get(url),
        };
        let response = request
            .bearer_auth(admin_token("dashboard"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        // An event stream does not end: its status says enough.
        let streamed = response
            .headers()
            .get("content-type")
            .is_some_and(|kind| kind == "text/event-stream");
        // A reservation that does not exist is a 404 of its own, not an unknown route.
        let body: Value = if streamed {
            Value::Null
        } else {
            response.json().await.unwrap_or_default()
        };
        let unrouted = status == 404 && body["error"]["code"] == "not_found";
        assert!(
            !unrouted && status != 405,
            "{method} {path}: {status} {body}"
        );
    }
}

#[tokio::test]
async fn every_operation_documents_its_answers_and_security() {
    let app = spawn_app().await;
    let document = document(&app).await;
    let scheme = &document["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (scheme["type"].as_str(), scheme["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );
    assert!(document["components"]["schemas"]["ErrorEnvelope"].is_object());

    for ((path, method), operation) in operations(&document) {
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.contains_key("200") || responses.contains_key("201"),
            "{method} {path}"
        );
        let open = ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str());
        if open {
            continue;
        }
        assert_eq!(
            operation["security"],
            serde_json::json!([{"bearer": []}]),
            "{method} {path}"
        );
        for status in ["400", "401", "500", "503"] {
            let body = &responses[status]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(
                body, "#/components/schemas/ErrorEnvelope",
                "{method} {path} {status}"
            );
        }
        if path.starts_with("/admin") {
            assert!(responses.contains_key("403"), "{method} {path}");
        }
    }
    let record = &document["paths"]["/usage"]["post"];
    assert!(record["requestBody"]["content"]["application/json"]["schema"].is_object());
    for status in ["403", "413", "415", "422", "429"] {
        assert!(
            record["responses"][status].is_object(),
            "POST /usage {status}"
        );
    }
}

/// The schema of the parameter `name` of an operation.
fn parameter<'a>(document: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    document["paths"][path][method]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|parameter| parameter["name"] == name)
        .map(|parameter| &parameter["schema"])
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

#[tokio::test]
async fn parameters_state_the_bounds_they_are_checked_against() {
    let app = spawn_app_with(&["--max-tokens-per-request=5000"], |_| {}).await;
    let document = document(&app).await;
    let tokens = &document["components"]["schemas"]["RecordBody"]["properties"]["tokens"];
    assert_eq!(
        (tokens["minimum"].as_i64(), tokens["maximum"].as_i64()),
        (Some(1), Some(5000))
    );
    let response = app
        .post_usage(&token("alice"), serde_json::json!({"tokens": 5001}))
        .await;
    let body = assert_error(response, 400, "invalid_request").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("5000"));
    let schemas = &document["components"]["schemas"];
    for (schema, field, max) in [
        ("ReserveBody", "tokens", 5000),
        ("CommitBody", "tokens", 5000),
        ("ReserveBody", "ttlSeconds", 3600),
    ] {
        let bounds = &schemas[schema]["properties"][field];
        assert_eq!(
            (bounds["minimum"].as_i64(), bounds["maximum"].as_i64()),
            (Some(1), Some(max)),
            "{schema}.{field}"
        );
    }
    let reserve = app
        .reserve(&token("alice"), serde_json::json!({"tokens": 5001}), None)
        .await;
    assert_error(reserve, 400, "invalid_request").await;

    for (path, name, min, max) in [
        ("/usage/history", "months", 1, 24),
        ("/admin/users/{user_id}/usage", "months", 1, 24),
        ("/admin/usage/daily", "limit", 1, 500),
        ("/admin/usage/monthly", "year", 1970, 9999),
        ("/admin/usage/monthly", "month", 1, 12),
        ("/admin/reports/what-if", "dailyLimit", 0, 1_000_000_000_000),
    ] {
        let schema = parameter(&document, path, "get", name);
        assert_eq!(
            (schema["minimum"].as_i64(), schema["maximum"].as_i64()),
            (Some(min), Some(max)),
            "{path} {name}: {schema}"
        );
    }
    let date = parameter(&document, "/admin/reports/summary", "get", "date");
    assert_eq!(date["format"], "date");
    let user_type = parameter(&document, "/admin/usage/daily", "get", "userType");
    assert!(user_type.to_string().contains("subscribed"), "{user_type}");
    for name in ["from", "to"] {
        let date = parameter(&document, "/admin/reports/what-if", "get", name);
        assert_eq!(date["format"], "date", "{name}");
    }
    let key = parameter(&document, "/usage", "post", "Idempotency-Key");
    assert_eq!(key["maxLength"], 255);
}
