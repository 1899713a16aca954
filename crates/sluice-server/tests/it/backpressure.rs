//! Back-pressure from a stalled sink: when the `events` sink cannot write (here its partition
//! directory is a file, so every Parquet write fails), its lag grows past
//! `collector.max_backlog_events`, `/health` answers 503 naming the failing stage, and intake
//! answers 503 with `Retry-After` and the reason; once the sink can write again it catches up
//! by itself and intake answers 2xx, with every acked event in `events` once.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::server::TestServer;

const DEADLINE: Duration = Duration::from_secs(60);
/// Every event falls on this date, so the stalled partition directory is known in advance.
const DAY: &str = "2026-01-01";

fn batch(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| {
            json!({"event_id": format!("bp-{i}"), "event": "bp_view", "user_id": format!("u{}", i % 3),
                "timestamp": format!("{DAY}T12:00:00Z")})
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Posts events `from..from + n`; the status, `Retry-After` and body.
async fn post(server: &TestServer, from: usize, n: usize) -> (u16, Option<String>, Value) {
    let resp = server
        .client
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(batch(from, n))
        .send()
        .await
        .expect("post");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn health(server: &TestServer) -> (u16, Value) {
    let resp = server
        .client
        .get(server.url("/health"))
        .send()
        .await
        .expect("health");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sink_slows_intake_until_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir
        .path()
        .join("lake/events")
        .join(format!("event_date={DAY}"));
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let server = TestServer::start_in(
        dir.path(),
        "[collector]\nmax_backlog_events = 10\n[lake]\nflush_interval = \"50ms\"\ntyped_tables = false\n",
    )
    .await;

    // Send until intake refuses: the sink cannot write, so its lag only grows.
    let mut acked = 0usize;
    let end = Instant::now() + DEADLINE;
    let (retry_after, reason) = loop {
        assert!(Instant::now() < end, "intake never pushed back");
        let (status, retry_after, body) = post(&server, acked, 5).await;
        match status {
            200 => acked += 5,
            // On a loaded machine the runner can fall 10 events behind for a moment too; it
            // catches up, so only the stalled sink's refusal ends the loop.
            503 if !body["error"]
                .as_str()
                .unwrap_or("")
                .contains("lake/events is") => {}
            503 => {
                break (
                    retry_after,
                    body["error"].as_str().unwrap_or("").to_string(),
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
        if acked > 200 {
            panic!("200 events acked while the sink was stalled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(acked > 10, "refused after only {acked} events");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(
        reason.contains("lake/events is") && reason.contains("limit 10"),
        "{reason}"
    );
    // The sink's next flush attempt fails too: /health then says which stage and why.
    let end = Instant::now() + DEADLINE;
    let (status, body) = loop {
        let (status, body) = health(&server).await;
        if status == 503 || Instant::now() > end {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["stages"]["lake/events"]["state"], "failing", "{body}");
    assert!(body["stages"]["lake/events"]["error"].is_string(), "{body}");
    assert_eq!(body["stages"]["journal"]["state"], "ok", "{body}");

    // Unstall: the sink retries by itself, catches up, and intake takes events again.
    std::fs::remove_file(&blocker).unwrap();
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "intake never resumed");
        let (status, _, body) = post(&server, acked, 5).await;
        match status {
            200 => {
                acked += 5;
                break;
            }
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let rows = server.sql_rows("SELECT count(*) AS n FROM events", 1).await;
    let end = Instant::now() + DEADLINE;
    let mut n = rows[0]["n"].as_u64().unwrap_or(0);
    while n < acked as u64 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        n = server.sql("SELECT count(*) AS n FROM events").await[0]["n"]
            .as_u64()
            .unwrap_or(0);
    }
    let distinct = server
        .sql("SELECT count(DISTINCT event_id) AS n FROM events")
        .await[0]["n"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!((n, distinct), (acked as u64, acked as u64));
    let (status, body) = health(&server).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
}
