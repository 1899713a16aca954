//! The SQL benchmark: typical product-analytics queries on `SLUICE_BENCH_EVENTS` events (default
//! 1,000,000) written by the real lake sinks and compacted, run by sluice's warehouse and by
//! DuckDB over the same Parquet files in the same run (best of three each, two threads each).
//! It asserts only that both engines return the same number of rows. Run it with
//! `cargo bench -p sluice-warehouse --bench sql` (an optimised build).

// The results table is this benchmark's output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_event::topic;
use sluice_lake::{LakeRoot, LakeSettings, LakeSink, TypedSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::{Warehouse, format};
use tokio_util::sync::CancellationToken;

// The pinned PyPI toolchain the client tests use too; only part of it is needed here.
#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

/// 2025-10-28T00:00:00Z: events over the 30 days from there.
const T0: i64 = 1_761_609_600_000_000;
const DAY: i64 = 86_400_000_000;

/// A deterministic pseudo-random sequence (xorshift).
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn event(i: u64, state: &mut u64) -> Bytes {
    let user = next(state) % 50_000;
    // A user is active for two weeks from a first day, so cohorts have returning users.
    let day = i64::try_from(user % 30 + next(state) % 14)
        .unwrap_or(0)
        .min(29);
    let ts = T0 + day * DAY + i64::try_from(next(state) % 86_400_000_000).unwrap_or(0);
    let roll = next(state) % 100;
    let (name, props) = match roll {
        0..60 => (
            "Page Viewed",
            json!({"path": format!("/p/{}", next(state) % 200), "referrer": "search"}),
        ),
        60..85 => (
            "Product Viewed",
            json!({"sku": format!("sku-{}", next(state) % 1000)}),
        ),
        85..95 => (
            "Order Completed",
            json!({"total": (next(state) % 50_000) as f64 / 100.0, "currency": "EUR"}),
        ),
        _ => (
            "Signed Up",
            json!({"plan": if next(state).is_multiple_of(3) { "pro" } else { "free" }}),
        ),
    };
    Bytes::from(
        serde_json::to_vec(&json!({
            "event_id": format!("e{i}"), "event_type": "track", "event": name, "source": "web",
            "user_id": format!("u{user}"), "timestamp": ts, "received_at": ts,
            "properties": props, "context": {}, "raw": {"partition": i % 4, "offset": i / 4},
        }))
        .unwrap_or_default(),
    )
}

/// (name, sluice SQL, DuckDB SQL)
const QUERIES: &[(&str, &str, &str)] = &[
    (
        "events by name and day",
        "SELECT event, event_date, count(*) AS n FROM events GROUP BY event, event_date ORDER BY event, event_date",
        "SELECT event, event_date, count(*) AS n FROM events GROUP BY event, event_date ORDER BY event, event_date",
    ),
    (
        "distinct users",
        "SELECT count(DISTINCT user_id) AS users FROM events",
        "SELECT count(DISTINCT user_id) AS users FROM events",
    ),
    (
        "top pages",
        "SELECT path, count(*) AS views FROM page_viewed GROUP BY path ORDER BY views DESC, path LIMIT 10",
        "SELECT path, count(*) AS views FROM page_viewed GROUP BY path ORDER BY views DESC, path LIMIT 10",
    ),
    (
        "funnel signed up → ordered",
        "WITH s AS (SELECT user_id, min(timestamp) AS t FROM events WHERE event = 'Signed Up' GROUP BY user_id), o AS (SELECT user_id, min(timestamp) AS t FROM events WHERE event = 'Order Completed' GROUP BY user_id) SELECT count(*) AS signed_up, count(o.user_id) AS then_ordered FROM s LEFT JOIN o ON o.user_id = s.user_id AND o.t > s.t",
        "WITH s AS (SELECT user_id, min(timestamp) AS t FROM events WHERE event = 'Signed Up' GROUP BY user_id), o AS (SELECT user_id, min(timestamp) AS t FROM events WHERE event = 'Order Completed' GROUP BY user_id) SELECT count(*) AS signed_up, count(o.user_id) AS then_ordered FROM s LEFT JOIN o ON o.user_id = s.user_id AND o.t > s.t",
    ),
    (
        "weekly retention by first-day cohort",
        "WITH f AS (SELECT user_id, min(event_date) AS d0 FROM events GROUP BY user_id), a AS (SELECT DISTINCT user_id, event_date FROM events) SELECT f.d0 AS cohort, count(DISTINCT f.user_id) AS users, count(DISTINCT CASE WHEN a.event_date >= f.d0 + INTERVAL '7 days' THEN a.user_id END) AS returned_after_7d FROM f JOIN a ON a.user_id = f.user_id GROUP BY f.d0 ORDER BY f.d0",
        "WITH f AS (SELECT user_id, min(event_date) AS d0 FROM events GROUP BY user_id), a AS (SELECT DISTINCT user_id, event_date FROM events) SELECT f.d0 AS cohort, count(DISTINCT f.user_id) AS users, count(DISTINCT CASE WHEN a.event_date >= f.d0 + INTERVAL '7 days' THEN a.user_id END) AS returned_after_7d FROM f JOIN a ON a.user_id = f.user_id GROUP BY f.d0 ORDER BY f.d0",
    ),
    (
        "p95 order total (approximate)",
        "SELECT approx_percentile_cont(total, 0.95) AS p95 FROM order_completed",
        "SELECT approx_quantile(total, 0.95) AS p95 FROM order_completed",
    ),
];

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(bench_sql());
}

async fn bench_sql() {
    let n: u64 = std::env::var("SLUICE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 4)]);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut parts: Vec<Vec<Bytes>> = vec![Vec::new(); 4];
    for i in 0..n {
        parts[(i % 4) as usize].push(event(i, &mut state));
    }
    for (p, records) in parts.into_iter().enumerate() {
        journal.append_now(topic::GOOD, p as u32, records).unwrap();
    }
    let started = Instant::now();
    let settings = LakeSettings {
        flush_interval: Duration::from_secs(1),
        ..LakeSettings::default()
    };
    let events = LakeSink::new(journal.clone(), root.clone(), settings.clone());
    let typed = TypedSink::new(journal.clone(), root.clone(), settings);
    let (p1, p2) = (events.progress(), typed.progress());
    let shutdown = CancellationToken::new();
    let t1 = tokio::spawn(events.run(shutdown.clone()));
    let t2 = tokio::spawn(typed.run(shutdown.clone()));
    for p in [p1, p2] {
        p.wait_caught_up(journal.as_ref()).await.unwrap();
    }
    shutdown.cancel();
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
    let delivered = started.elapsed();
    let started = Instant::now();
    for table in ["events", "page_viewed", "order_completed"] {
        sluice_lake::upkeep::optimize_table(&root, table, 3)
            .await
            .unwrap();
    }
    let optimized = started.elapsed();
    eprintln!(
        "{n} events: delivered into events + typed tables in {delivered:.1?}, compacted in {optimized:.1?}"
    );

    let warehouse = Warehouse::open(root).unwrap();
    let mut ours = Vec::new();
    for (name, sql, _) in QUERIES {
        let mut best = Duration::MAX;
        let mut output = None;
        for _ in 0..3 {
            let start = Instant::now();
            let o = warehouse.query(sql).await.unwrap();
            best = best.min(start.elapsed());
            output = Some(o);
        }
        let output = output.unwrap();
        let first = format::to_json_lines(&output).unwrap();
        ours.push((
            name,
            best,
            output.num_rows(),
            first.lines().next().unwrap_or("").to_string(),
        ));
    }

    let duck_queries: serde_json::Map<String, Value> = QUERIES
        .iter()
        .map(|(name, _, duck)| ((*name).to_string(), json!(duck)))
        .collect();
    let tools = tokio::task::spawn_blocking(support::toolchain)
        .await
        .unwrap();
    let script = support::compat_dir().join("bench_duckdb.py");
    let out = std::process::Command::new(tools.join("venv/bin/python"))
        .arg(script)
        .arg(dir.path())
        .arg(Value::Object(duck_queries).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let duck: Value = serde_json::from_slice(&out.stdout).unwrap();

    println!("| query | sluice | DuckDB | rows | sluice's first row | DuckDB's first row |");
    println!("|---|---|---|---|---|---|");
    for (name, best, rows, first) in ours {
        let d = &duck[*name];
        println!(
            "| {name} | {:.0} ms | {} ms | {rows} | `{first}` | `{}` |",
            best.as_secs_f64() * 1000.0,
            d["best_ms"],
            d["first"]
        );
        assert_eq!(d["rows"], json!(rows), "{name}: row counts differ");
    }
}
