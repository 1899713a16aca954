//! The hot tier against the lake: a server with every role gets the same events into both, and
//! every profile count, counter window and sum read over HTTP equals a recount of the lake in
//! SQL (`events` and the typed table `order_completed`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::server::TestServer;

const DEADLINE: Duration = Duration::from_secs(60);

/// Users `u0` to `u11`.
const USERS: usize = 12;

/// A server with three counters of `Product Viewed` (1 h and 24 h fixed windows, a 2 h sliding
/// one) and a 24 h sum of `Order Completed` revenue, holding the same 600 events of 12 users
/// (08:00 to 12:00 UTC on one day) in the lake and the hot tier.
async fn loaded() -> TestServer {
    let server = TestServer::start(
        r#"
[lake]
flush_interval = "100ms"
[[hot.counters]]
name = "views_1h"
events = ["Product Viewed"]
window = "1h"
[[hot.counters]]
name = "views_24h"
events = ["Product Viewed"]
window = "24h"
[[hot.counters]]
name = "views_2h_sliding"
events = ["Product Viewed"]
window = "2h"
kind = "sliding"
step = "10m"
[[hot.counters]]
name = "revenue_24h"
events = ["Order Completed"]
aggregate = "sum"
property = "revenue"
window = "24h"
"#,
    )
    .await;
    for chunk in events().chunks(100) {
        let r = server
            .client
            .post(server.url("/v1/events"))
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_for_all_600(&server).await;
    server
}

/// 600 events between 08:00 and 12:00 UTC on one day, in time order (a counter ignores what
/// falls into a bucket it already pruned, as a late event): one in five an order.
fn events() -> Vec<Value> {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z").unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    (0..600)
        .map(|i| {
            let at = t0 + chrono::Duration::seconds(i * 24);
            let user = format!("u{}", next() % USERS as u64);
            if next() % 5 == 0 {
                json!({"event_id": format!("e{i}"), "event": "Order Completed", "user_id": user,
                    "properties": {"revenue": (next() % 10_000) as f64 / 100.0}, "timestamp": at.to_rfc3339()})
            } else {
                json!({"event_id": format!("e{i}"), "event": "Product Viewed", "user_id": user,
                    "properties": {"sku": format!("s{}", next() % 9)}, "timestamp": at.to_rfc3339()})
            }
        })
        .collect()
}

/// Waits for the lake and the hot tier to hold all 600.
async fn wait_for_all_600(server: &TestServer) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = server.sql("SELECT count(*) AS n FROM events").await;
        let mut hot = 0;
        for u in 0..USERS {
            let r = server
                .client
                .get(server.url(&format!("/v1/profiles/u{u}")))
                .send()
                .await
                .unwrap();
            if r.status().is_success() {
                hot += r.json::<Value>().await.unwrap()["events_total"]
                    .as_i64()
                    .unwrap_or(0);
            }
        }
        if n[0]["n"] == 600 && hot == 600 {
            return;
        }
        assert!(Instant::now() < deadline, "lake has {n:?}, hot tier {hot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `rows`' `field` by `user_id`.
fn by_user(rows: Vec<Value>, field: &str) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap().to_string(),
                r[field].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_counts_per_event_equal_a_recount_of_the_lake() {
    let server = loaded().await;
    let per_event = server
        .sql("SELECT user_id, event, count(*) AS n FROM events GROUP BY user_id, event")
        .await;
    for row in &per_event {
        let user = row["user_id"].as_str().unwrap();
        let profile = server.get_json(&format!("/v1/profiles/{user}")).await;
        assert_eq!(
            profile["event_counts"][row["event"].as_str().unwrap()],
            row["n"],
            "{user}: {row}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_and_sliding_counter_windows_equal_a_recount_of_the_lake() {
    let server = loaded().await;
    let window = |from: &str, to: &str| {
        format!(
            "SELECT user_id, count(*) AS n FROM events WHERE event = 'Product Viewed' \
             AND timestamp >= TIMESTAMP '{from}' AND timestamp < TIMESTAMP '{to}' GROUP BY user_id"
        )
    };
    let checks = [
        (
            "views_1h",
            "2026-11-26T11:30:00Z",
            window("2026-11-26T11:00:00Z", "2026-11-26T12:00:00Z"),
        ),
        (
            "views_1h",
            "2026-11-26T10:59:59Z",
            window("2026-11-26T10:00:00Z", "2026-11-26T11:00:00Z"),
        ),
        (
            "views_24h",
            "2026-11-26T23:00:00Z",
            window("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z"),
        ),
        (
            "views_2h_sliding",
            "2026-11-26T11:55:00Z",
            window("2026-11-26T10:00:00Z", "2026-11-26T12:00:00Z"),
        ),
    ];
    for (counter, at, q) in checks {
        let want = by_user(server.sql(&q).await, "n");
        for u in 0..USERS {
            let user = format!("u{u}");
            let got = server
                .get_json(&format!("/v1/counters/{counter}/{user}?at={at}"))
                .await;
            let expected = want.get(&user).copied().unwrap_or(0.0);
            assert_eq!(
                got["value"].as_f64(),
                Some(expected),
                "{counter} {user} at {at}: {got}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sum_counter_equals_a_recount_of_its_events_typed_table() {
    let server = loaded().await;
    // The typed table is written apart from `events`: wait until it has every order.
    let orders = events()
        .iter()
        .filter(|e| e["event"] == "Order Completed")
        .count();
    let stored = server
        .sql_rows("SELECT event_id FROM order_completed", orders)
        .await;
    assert_eq!(stored.len(), orders);
    let want = by_user(
        server
            .sql("SELECT user_id, sum(revenue) AS s FROM order_completed GROUP BY user_id")
            .await,
        "s",
    );
    assert!(!want.is_empty());
    for (user, s) in want {
        let got = server
            .get_json(&format!(
                "/v1/counters/revenue_24h/{user}?at=2026-11-26T12:00:00Z"
            ))
            .await;
        let v = got["value"].as_f64().unwrap();
        assert!((v - s).abs() < 1e-6, "revenue_24h {user}: {v} vs {s}");
    }
    server.shutdown().await;
}
