//! The hot tier and the online models through a running server: profiles, batch get, counters
//! and predictions over HTTP, every acked event visible, bad requests, and a restart that keeps
//! profiles and the model (restored from its checkpoint, no double counting).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::server::TestServer;

const DEADLINE: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
roles = ["collector", "runner", "hot", "predict"]
[hot]
recent_events = 3
[[hot.counters]]
name = "views_1h"
events = ["Product Viewed"]
window = "1h"
[[hot.counters]]
name = "spend_24h"
aggregate = "sum"
property = "revenue"
window = "24h"
kind = "sliding"
[[predict.models]]
name = "purchase_30m"
outcome = "Order Completed"
bits = 16
"#;

/// Polls `GET url` until `ok` holds for its JSON body, with a deadline; returns the body.
async fn wait_json(client: &reqwest::Client, url: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = client.get(url).send().await.unwrap();
        if resp.status().is_success() {
            let v: Value = resp.json().await.unwrap();
            if ok(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url}: condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn send(client: &reqwest::Client, base: &str, body: Value) {
    let resp = client
        .post(format!("{base}/v1/events"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// The time to stamp events with, and the query that reads an hourly counter at that time: the
/// hour may turn while a test waits, and the hourly window with it.
fn now_and_its_hour() -> (String, String) {
    let now = chrono::Utc::now();
    let at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (now.to_rfc3339(), format!("?at={at}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_counters_and_predictions_over_http() {
    let server = TestServer::start(CONFIG).await;
    let (client, base) = (&server.client, &server.base);
    let (now, hour) = now_and_its_hour();
    send(client, base, json!([
        {"type": "identify", "user_id": "u1", "traits": {"plan": "pro"}, "timestamp": now},
        {"event": "Product Viewed", "user_id": "u1", "properties": {"sku": "a"}, "timestamp": now},
        {"event": "Product Viewed", "user_id": "u1", "properties": {"sku": "b"}, "timestamp": now},
        {"event": "Order Completed", "user_id": "u1", "properties": {"revenue": 12.5}, "timestamp": now},
        {"event": "Product Viewed", "user_id": "u2", "timestamp": now},
    ]))
    .await;
    let profile = wait_json(client, &format!("{base}/v1/profiles/u1"), |v| {
        v["events_total"] == 4
    })
    .await;
    assert_eq!(profile["event_counts"]["Product Viewed"], 2);
    assert_eq!(profile["traits"]["plan"], "pro");
    assert_eq!(profile["last_events"].as_array().unwrap().len(), 3);
    assert_eq!(profile["session"]["events"], 4);
    let score = profile["predictions"]["purchase_30m"]["score"]
        .as_f64()
        .unwrap();
    assert!((0.0..=1.0).contains(&score));

    let views = wait_json(
        client,
        &format!("{base}/v1/counters/views_1h/u1{hour}"),
        |v| v["value"] == 2.0,
    )
    .await;
    assert_eq!(views["aggregate"], "count");
    let spend = wait_json(client, &format!("{base}/v1/counters/spend_24h/u1"), |v| {
        v["value"] == 12.5
    })
    .await;
    assert_eq!(spend["kind"], "sliding");
    let past = client
        .get(format!(
            "{base}/v1/counters/views_1h/u1?at=2020-01-01T00:00:00Z"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(past.json::<Value>().await.unwrap()["value"], 0.0);

    let batch: Value = client
        .post(format!("{base}/v1/profiles:batch"))
        .json(&json!({"ids": ["u2", "nobody", "u1"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let profiles = batch["profiles"].as_array().unwrap();
    assert_eq!(profiles[0]["id"], "u2");
    assert!(profiles[1].is_null());
    assert_eq!(profiles[2]["id"], "u1");

    let p = wait_json(
        client,
        &format!("{base}/v1/predictions/purchase_30m/u1"),
        |_| true,
    )
    .await;
    assert_eq!(p["model"], "purchase_30m");

    // Bad requests get a reason.
    for (method, url, body, status) in [
        ("GET", "/v1/profiles/nobody", None, 404),
        ("GET", "/v1/counters/nope/u1", None, 404),
        ("GET", "/v1/counters/views_1h/u1?at=yesterday", None, 400),
        ("GET", "/v1/predictions/nope/u1", None, 404),
        ("POST", "/v1/profiles:batch", Some("{\"id\": 1}"), 400),
        ("POST", "/v1/profiles:batch", Some("not json"), 400),
    ] {
        let req = match method {
            "GET" => client.get(format!("{base}{url}")),
            _ => client
                .post(format!("{base}{url}"))
                .body(body.unwrap_or_default().to_string()),
        };
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status, "{method} {url}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {v}"
        );
    }
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let resp = client
        .post(format!("{base}/v1/profiles:batch"))
        .json(&json!({"ids": many}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Every acked event becomes visible in the hot tier (how soon is `sluice bench --hot`'s
    // figure, not a test's).
    for i in 0..20 {
        let user = format!("fresh-{i}");
        send(
            client,
            base,
            json!({"event": "Product Viewed", "user_id": user}),
        )
        .await;
        wait_json(client, &format!("{base}/v1/profiles/{user}"), |v| {
            v["events_total"] == 1
        })
        .await;
    }

    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("sluice_hot_events_total"), "{metrics}");

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_profiles_counters_and_the_model() {
    let mut server = TestServer::start(CONFIG).await;
    let (now, hour) = now_and_its_hour();
    let viewed = json!({"event": "Product Viewed", "user_id": "u1", "timestamp": now});
    send(
        &server.client,
        &server.base,
        json!([viewed, viewed, {"event": "Order Completed", "user_id": "u1", "timestamp": now}]),
    )
    .await;
    let url = server.url("/v1/profiles/u1");
    wait_json(&server.client, &url, |v| v["events_total"] == 3).await;

    // Profiles stay, nothing is counted twice, the model is restored from its checkpoint.
    server.restart().await;
    assert!(server.data_dir().join("models/purchase_30m.ftrl").is_file());
    let (client, base) = (&server.client, &server.base);
    send(client, base, viewed.clone()).await;
    let profile = wait_json(client, &format!("{base}/v1/profiles/u1"), |v| {
        v["events_total"] == 4
    })
    .await;
    assert_eq!(profile["event_counts"]["Product Viewed"], 3);
    wait_json(
        client,
        &format!("{base}/v1/counters/views_1h/u1{hour}"),
        |v| v["value"] == 3.0,
    )
    .await;
    assert!(
        profile["predictions"]["purchase_30m"]["score"].is_number(),
        "{profile}"
    );
    server.shutdown().await;
}
