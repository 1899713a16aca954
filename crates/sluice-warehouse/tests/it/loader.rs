//! The Postgres loader against the Postgres server on this machine (127.0.0.1:5432, trust
//! authentication, database `test`); each test works in a schema of its own. Ignored by default
//! (it needs the service): `cargo nextest run --run-ignored all`.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sluice_event::topic;
use sluice_lake::DeliveryProgress;
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::loader::{LoaderConfig, PgLoader};
use sluice_warehouse::pgclient::{PgConnection, PgTarget};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const T0: i64 = 1_764_237_600_000_000;

fn event(p: u32, i: u64) -> Bytes {
    let (name, props) = if i.is_multiple_of(2) {
        (
            "Order Completed",
            json!({"total": i, "currency": "EUR", "note": "it's \"quoted\" \\ ok"}),
        )
    } else {
        (
            "Signed Up",
            json!({"plan": "pro", "trial": i.is_multiple_of(3)}),
        )
    };
    Bytes::from(
        serde_json::to_vec(&json!({
            "event_id": format!("e-{p}-{i}"), "event_type": "track", "event": name,
            "source": "web", "user_id": format!("u{i}"),
            "timestamp": T0 + i as i64, "received_at": T0 + 10,
            "properties": props, "context": {"ip": "10.0.0.1"},
            "raw": {"partition": p, "offset": i},
        }))
        .unwrap(),
    )
}

fn config(schema: &str) -> LoaderConfig {
    LoaderConfig {
        database: "test".into(),
        schema: schema.into(),
        flush_interval: Duration::from_millis(50),
        flush_max_events: 7,
        ..LoaderConfig::default()
    }
}

fn unique_schema() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sluice_loader_{}_{nanos}", std::process::id())
}

async fn db() -> PgConnection {
    let target = PgTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        database: "test".into(),
        sslmode: sluice_warehouse::pgtls::SslMode::Disable,
        sslrootcert: None,
    };
    PgConnection::connect(&target, DEADLINE).await.unwrap()
}

async fn scalar(conn: &mut PgConnection, sql: &str) -> i64 {
    let rows = conn.query(sql).await.unwrap();
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

async fn caught_up(progress: &DeliveryProgress, journal: &MemJournal) {
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal))
        .await
        .expect("the loader catches up in time")
        .expect("the loader runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn loads_exactly_once_across_restarts_and_kills() {
    let schema = unique_schema();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    for p in 0..2 {
        journal
            .append_now(topic::GOOD, p, (0..40).map(|i| event(p, i)).collect())
            .unwrap();
    }
    let settings = config(&schema).validate().unwrap();

    // Run 1: killed (task aborted, connection dropped) after some batches.
    let loader = PgLoader::new(journal.clone(), settings.clone());
    let progress = loader.progress();
    let task = tokio::spawn(loader.run(CancellationToken::new()));
    tokio::time::timeout(DEADLINE, async {
        while progress.status().rows < 14 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("the first batches load in time");
    task.abort();
    let _ = task.await;

    // Run 2: resumes from the positions in the database and catches up.
    let loader = PgLoader::new(journal.clone(), settings.clone());
    let progress = loader.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(loader.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    // More events while running, then a clean stop that drains them.
    for p in 0..2 {
        journal
            .append_now(topic::GOOD, p, (40..50).map(|i| event(p, i)).collect())
            .unwrap();
    }
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let mut conn = db().await;
    let q = |t: &str| format!("SELECT count(*) FROM \"{schema}\".{t}");
    assert_eq!(scalar(&mut conn, &q("events")).await, 100);
    assert_eq!(
        scalar(
            &mut conn,
            &format!("SELECT count(DISTINCT event_id) FROM \"{schema}\".events")
        )
        .await,
        100
    );
    assert_eq!(scalar(&mut conn, &q("order_completed")).await, 50);
    assert_eq!(scalar(&mut conn, &q("signed_up")).await, 50);
    assert_eq!(
        scalar(
            &mut conn,
            &format!("SELECT sum(total) FROM \"{schema}\".order_completed")
        )
        .await,
        2 * (0..50_i64).step_by(2).sum::<i64>()
    );
    assert_eq!(
        scalar(&mut conn, &format!("SELECT count(*) FROM \"{schema}\".order_completed WHERE note = 'it''s \"quoted\" \\ ok'")).await,
        50
    );
    assert_eq!(
        scalar(&mut conn, &format!("SELECT count(*) FROM \"{schema}\".events WHERE properties::jsonb ->> 'currency' = 'EUR' AND event_date = DATE '2025-11-27' AND timestamp = TIMESTAMPTZ '2025-11-27T10:00:00.000002Z'")).await,
        2
    );
    assert_eq!(
        scalar(
            &mut conn,
            &format!("SELECT sum(next_offset) FROM \"{schema}\"._sluice_positions")
        )
        .await,
        100
    );
    let types = conn
        .query(&format!("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = '{schema}' AND table_name = 'signed_up' AND column_name IN ('trial', 'plan', 'timestamp') ORDER BY 1"))
        .await
        .unwrap();
    let types: Vec<(String, String)> = types
        .into_iter()
        .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
        .collect();
    assert_eq!(
        types,
        vec![
            ("plan".to_string(), "text".to_string()),
            (
                "timestamp".to_string(),
                "timestamp with time zone".to_string()
            ),
            ("trial".to_string(), "boolean".to_string()),
        ]
    );

    // A new property adds a column; a type conflict leaves the event out of its typed table.
    let extra = vec![
        Bytes::from(
            serde_json::to_vec(&json!({
            "event_id": "x-1", "event_type": "track", "event": "Signed Up", "source": "web",
            "timestamp": T0, "received_at": T0, "properties": {"plan": "team", "seats": 5},
            "context": {}, "raw": {"partition": 0, "offset": 999}}))
            .unwrap(),
        ),
        Bytes::from(
            serde_json::to_vec(&json!({
            "event_id": "x-2", "event_type": "track", "event": "Signed Up", "source": "web",
            "timestamp": T0, "received_at": T0, "properties": {"plan": 7},
            "context": {}, "raw": {"partition": 0, "offset": 1000}}))
            .unwrap(),
        ),
    ];
    journal.append_now(topic::GOOD, 0, extra).unwrap();
    let loader = PgLoader::new(journal.clone(), settings);
    let progress = loader.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(loader.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(scalar(&mut conn, &q("events")).await, 102);
    assert_eq!(scalar(&mut conn, &q("signed_up")).await, 51);
    assert_eq!(
        scalar(
            &mut conn,
            &format!("SELECT sum(seats) FROM \"{schema}\".signed_up")
        )
        .await,
        5
    );
    conn.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn an_unreachable_database_is_retried_not_fatal() {
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let mut config = config(&unique_schema());
    config.port = 1; // nothing listens there
    let health = sluice_journal::Health::new();
    let loader = PgLoader::new(journal.clone(), config.validate().unwrap())
        .with_health(health.stage("loader"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(loader.run(shutdown.clone()));
    // It reports the failure and keeps trying: still running after its first failed attempt.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while health.snapshot()[0].failing.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "never reported");
        // Polls a condition under a deadline.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!task.is_finished(), "the loader stopped by itself");
    // At shutdown it cannot drain, and says so after its shutdown attempts.
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(
        matches!(
            result,
            Err(sluice_warehouse::loader::LoaderError::GaveUp { .. })
        ),
        "{result:?}"
    );
}

/// After a crash a partition's end jumps to the journal's floor: the loader steps over the gap,
/// on a quiet partition too, and counts as caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn caught_up_resolves_after_a_crash_gap() {
    const CRASH_GAP: u64 = 1 << 20;
    let schema = unique_schema();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    journal
        .append_now(topic::GOOD, 0, (0..5).map(|i| event(0, i)).collect())
        .unwrap();
    for p in 0..2 {
        journal.crash_gap(topic::GOOD, p, CRASH_GAP).unwrap();
    }
    journal
        .append_now(topic::GOOD, 0, (5..8).map(|i| event(0, i)).collect())
        .unwrap();
    let loader = PgLoader::new(journal.clone(), config(&schema).validate().unwrap());
    let progress = loader.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(loader.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    assert_eq!(
        progress.status().next_offsets,
        vec![8 + CRASH_GAP, CRASH_GAP]
    );
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut conn = db().await;
    let count = format!("SELECT count(*) FROM \"{schema}\".events");
    assert_eq!(scalar(&mut conn, &count).await, 8);
}

/// A position moved by another writer (a loader whose last COMMIT landed after it was given up
/// for dead) fences this loader's next batch: it rolls back, reads the positions again and
/// loads only what the other did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Postgres server on 127.0.0.1:5432"]
async fn a_position_moved_by_another_writer_fences_the_batch() {
    let schema = unique_schema();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    journal
        .append_now(topic::GOOD, 0, (0..20).map(|i| event(0, i)).collect())
        .unwrap();
    let loader = PgLoader::new(journal.clone(), config(&schema).validate().unwrap());
    let progress = loader.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(loader.run(shutdown.clone()));
    caught_up(&progress, &journal).await;

    // Another writer commits offsets 20..25 behind this loader's back.
    let mut conn = db().await;
    conn.execute(&format!(
        "UPDATE \"{schema}\"._sluice_positions SET next_offset = 25 WHERE \"partition\" = 0"
    ))
    .await
    .unwrap();
    journal
        .append_now(topic::GOOD, 0, (20..30).map(|i| event(0, i)).collect())
        .unwrap();
    caught_up(&progress, &journal).await;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // 0..20 by the first batches, 25..30 after the fence; 20..25 were the other writer's.
    let ids = conn
        .query(&format!(
            "SELECT event_id FROM \"{schema}\".events ORDER BY length(event_id), event_id"
        ))
        .await
        .unwrap();
    let ids: Vec<String> = ids.into_iter().filter_map(|r| r[0].clone()).collect();
    let expected: Vec<String> = (0..20).chain(25..30).map(|i| format!("e-0-{i}")).collect();
    assert_eq!(ids, expected);
    conn.execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}
