//! The hot tier against the lake: one server with every role gets the same events into both,
//! and every counter window and profile count read over HTTP equals a recount of the lake in
//! SQL (`events` and the typed table `order_completed`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::server::TestServer;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_profiles_equal_a_recount_of_the_lake() {
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
    let (c, base) = (&server.client, &server.base);

    // 12 users, 600 events between 08:00 and 12:00 UTC on one day, in time order (a counter
    // ignores what falls into a bucket it already pruned, as a late event).
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-26T08:00:00Z").unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let events: Vec<Value> = (0..600)
        .map(|i| {
            let at = t0 + chrono::Duration::seconds(i * 24);
            let user = format!("u{}", next() % 12);
            if next() % 5 == 0 {
                json!({"event_id": format!("e{i}"), "event": "Order Completed", "user_id": user,
                    "properties": {"revenue": (next() % 10_000) as f64 / 100.0}, "timestamp": at.to_rfc3339()})
            } else {
                json!({"event_id": format!("e{i}"), "event": "Product Viewed", "user_id": user,
                    "properties": {"sku": format!("s{}", next() % 9)}, "timestamp": at.to_rfc3339()})
            }
        })
        .collect();
    for chunk in events.chunks(100) {
        let r = c
            .post(format!("{base}/v1/events"))
            .json(&chunk)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    // Wait for the lake and the hot tier to hold all 600.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let n = server.sql("SELECT count(*) AS n FROM events").await;
        let hot: i64 = {
            let mut total = 0;
            for u in 0..12 {
                let r = c
                    .get(format!("{base}/v1/profiles/u{u}"))
                    .send()
                    .await
                    .unwrap();
                if r.status().is_success() {
                    total += r.json::<Value>().await.unwrap()["events_total"]
                        .as_i64()
                        .unwrap_or(0);
                }
            }
            total
        };
        if n[0]["n"] == 600 && hot == 600 {
            break;
        }
        assert!(Instant::now() < deadline, "lake has {n:?}, hot tier {hot}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Profiles: counts per event name.
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

    // Counters, window by window.
    let window = |from: &str, to: &str| {
        format!(
            "SELECT user_id, count(*) AS n FROM events WHERE event = 'Product Viewed' \
             AND timestamp >= TIMESTAMP '{from}' AND timestamp < TIMESTAMP '{to}' GROUP BY user_id"
        )
    };
    let by_user = |rows: Vec<Value>, field: &str| -> BTreeMap<String, f64> {
        rows.iter()
            .map(|r| {
                (
                    r["user_id"].as_str().unwrap().to_string(),
                    r[field].as_f64().unwrap(),
                )
            })
            .collect()
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
        for u in 0..12 {
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
    // A sum, recounted from the typed table of the event.
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
