use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_never_over_admit() {
    let app = spawn_app().await;
    let alice = token("alice");
    let mut requests = JoinSet::new();
    for _ in 0..200 {
        let client = app.client.clone();
        let url = app.url("/usage");
        let alice = alice.clone();
        requests.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(alice)
                .json(&json!({"tokens": 300}))
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        });
    }
    let statuses = requests.join_all().await;
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let denied = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((admitted, denied), (33, 167), "statuses: {statuses:?}");

    assert_eq!(app.today(&alice).await["tokensUsed"], 9_900);
    let history = app.history(&alice).await;
    assert_eq!(history[0]["totalMonthlyTokens"], 9_900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_key_count_once() {
    let app = spawn_app().await;
    let alice = token("alice");
    let mut requests = JoinSet::new();
    for _ in 0..50 {
        let client = app.client.clone();
        let url = app.url("/usage");
        let alice = alice.clone();
        requests.spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(alice)
                .header("Idempotency-Key", "chat-message-7")
                .json(&json!({"tokens": 300}))
                .send()
                .await
                .unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, replayed, body["tokensUsed"].clone())
        });
    }
    let answers = requests.join_all().await;
    assert!(
        answers
            .iter()
            .all(|(status, _, used)| *status == 200 && *used == 300),
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1
    );
    assert_eq!(app.today(&alice).await["tokensUsed"], 300);
}
