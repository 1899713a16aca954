//! Warehouse tests over tables written by the real lake sink (in-memory journal, temporary
//! directory). No sleeps: every wait is on a condition with a deadline.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use sluice_event::{ErrorKind, topic};
use sluice_lake::{LakeRoot, LakeSettings, LakeSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::{Warehouse, WarehouseError, WarehouseOptions, format};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
/// 2025-11-27T10:00:00Z
const T0: i64 = 1_764_237_600_000_000;

fn event(i: u64) -> Bytes {
    let json = serde_json::json!({
        "event_id": format!("e-{i:02}"),
        "event_type": if i.is_multiple_of(3) { "page" } else { "track" },
        "event": if i.is_multiple_of(3) { "page" } else { "Signed Up" },
        "source": "web",
        "user_id": if i.is_multiple_of(2) { serde_json::Value::from(format!("u{i}")) } else { serde_json::Value::Null },
        "timestamp": T0 + i as i64 * 1_500_000,
        "received_at": T0,
        "properties": {"n": i},
        "context": {},
        "raw": {"partition": 0, "offset": i},
    });
    Bytes::from(serde_json::to_vec(&json).unwrap())
}

fn root(dir: &Path) -> LakeRoot {
    LakeRoot::from_path(dir).unwrap()
}

fn settings() -> LakeSettings {
    LakeSettings {
        flush_interval: Duration::from_millis(20),
        ..LakeSettings::default()
    }
}

/// Delivers events `range` of partition 0 into the lake at `dir` with a short-lived sink.
async fn deliver(dir: &Path, journal: &std::sync::Arc<MemJournal>, range: std::ops::Range<u64>) {
    journal
        .append_now(topic::GOOD, 0, range.map(event).collect())
        .unwrap();
    let sink = LakeSink::new(journal.clone(), root(dir), settings());
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(&**journal))
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

async fn lake_with(n: u64) -> (tempfile::TempDir, Warehouse) {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    deliver(dir.path(), &journal, 0..n).await;
    let warehouse = Warehouse::open(root(dir.path())).unwrap();
    (dir, warehouse)
}

async fn table(warehouse: &Warehouse, sql: &str) -> String {
    format::to_table(&warehouse.query(sql).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_see_what_the_lake_sink_wrote() {
    let (_dir, warehouse) = lake_with(12).await;
    assert_eq!(warehouse.tables().await.unwrap(), vec!["events"]);
    let out = warehouse
        .query("SELECT event_type, count(*) AS n, count(user_id) AS users FROM events GROUP BY event_type ORDER BY event_type")
        .await
        .unwrap();
    assert_eq!(out.num_rows(), 2);
    assert_eq!(
        format::to_csv(&out).unwrap(),
        "event_type,n,users\npage,4,2\ntrack,8,4\n"
    );
    // Timestamps and dates are real temporal types: date arithmetic and JSON functions work.
    let text = table(
        &warehouse,
        "SELECT min(timestamp) AS first, max(event_date) AS day, \
         sum(CAST(json_field AS BIGINT)) AS total \
         FROM (SELECT timestamp, event_date, substr(properties, 6, length(properties) - 6) AS json_field FROM events) \
         WHERE timestamp >= TIMESTAMP '2025-11-27T10:00:00Z'",
    )
    .await;
    assert!(
        text.contains("| 2025-11-27T10:00:00Z | 2025-11-27 | 66    |"),
        "{text}"
    );
    // Metadata statements are reads too.
    assert!(table(&warehouse, "SHOW TABLES").await.contains("| events "));
    assert!(
        table(&warehouse, "DESCRIBE events")
            .await
            .contains("event_date")
    );
    assert!(
        table(&warehouse, "EXPLAIN SELECT count(*) FROM events")
            .await
            .contains("plan")
    );
    assert!(
        table(
            &warehouse,
            "WITH x AS (SELECT event_id FROM events) SELECT count(*) AS n FROM x"
        )
        .await
        .contains("| 12 |")
    );
    assert!(
        table(&warehouse, "SELECT * FROM generate_series(1, 2)")
            .await
            .contains("| 2     |")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_reading_statements_are_allowed() {
    let (dir, warehouse) = lake_with(3).await;
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "a\n1\n").unwrap();
    let secret = secret.display();
    let cases = [
        ("INSERT INTO events (event_id) VALUES ('x')", "INSERT"),
        ("DELETE FROM events", "DELETE"),
        ("UPDATE events SET event = 'x'", "UPDATE"),
        ("CREATE TABLE t (a INT)", "CREATE TABLE"),
        ("CREATE TABLE t AS SELECT * FROM events", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT * FROM events", "CREATE VIEW"),
        ("DROP TABLE events", "DROP TABLE"),
        ("COPY events TO '/tmp/sluice-copy.csv'", "COPY"),
        (
            &format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{secret}'"),
            "CREATE EXTERNAL TABLE",
        ),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("SELECT * INTO t2 FROM events", "SELECT INTO"),
        (
            "EXPLAIN INSERT INTO events (event_id) VALUES ('x')",
            "INSERT",
        ),
        ("EXPLAIN COPY events TO '/tmp/x.csv'", "COPY"),
        (
            "WITH x AS (SELECT 1) INSERT INTO events (event_id) SELECT 'y'",
            "INSERT",
        ),
    ];
    for (sql, kind) in cases {
        let err = warehouse.query(sql).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{sql}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("{kind} statements are not allowed")),
            "{sql}: {err}"
        );
    }
    // Nothing changed, and nothing outside the lake became readable.
    assert_eq!(warehouse.tables().await.unwrap(), vec!["events"]);
    let count = table(&warehouse, "SELECT count(*) AS n FROM events").await;
    assert!(count.contains("| 3 |"), "{count}");
    for sql in [
        format!("SELECT * FROM '{secret}'"),
        "SELECT * FROM \"../events\"".to_string(),
        "SELECT * FROM other.events".to_string(),
    ] {
        let err = warehouse.query(&sql).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{sql}: {err}");
    }
    let err = warehouse.query("SELEC 1").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().starts_with("invalid sql"), "{err}");
    let err = warehouse.query("SELECT 1; SELECT 2").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_sized_by_an_argument_stay_under_the_memory_limit() {
    let (dir, _) = lake_with(3).await;
    let options = WarehouseOptions {
        memory_limit: Some(64 << 20),
        ..WarehouseOptions::default()
    };
    let warehouse = Warehouse::open_with(root(dir.path()), options).unwrap();
    // Within a quarter of the limit (16 MiB): answered as before.
    for (sql, want) in [
        ("SELECT length(repeat('x', 1000000)) AS n", "| 1000000 |"),
        ("SELECT length(lpad('a', 1000, 'é')) AS n", "| 1000 |"),
        ("SELECT cardinality(range(1, 100001)) AS n", "| 100000 |"),
        (
            "SELECT sum(length(repeat(event, 1000))) - 1000 * sum(length(event)) AS n FROM events",
            "| 0 |",
        ),
    ] {
        let out = table(&warehouse, sql).await;
        assert!(out.contains(want), "{sql}: {out}");
    }
    // Over it: a user error naming the function, whether folded at planning or run per row.
    for (sql, function) in [
        ("SELECT length(repeat('x', 2000000000))", "repeat"),
        ("SELECT length(repeat('x', 3000000000))", "repeat"),
        ("SELECT length(rpad('x', 20000000))", "rpad"),
        ("SELECT length(lpad('x', 5000000, 'é'))", "lpad"),
        (
            "SELECT cardinality(array_repeat(1, 20000000))",
            "array_repeat",
        ),
        (
            "SELECT cardinality(generate_series(1, 10000000000))",
            "generate_series",
        ),
        (
            "SELECT cardinality(range(DATE '1900-01-01', DATE '9999-01-01', INTERVAL '1 second'))",
            "range",
        ),
        (
            "SELECT length(repeat(event, 100000000)) FROM events",
            "repeat",
        ),
    ] {
        let err = warehouse.query(sql).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{sql}: {err}");
        assert!(
            err.to_string()
                .contains(&format!("{function}(…) would produce")),
            "{sql}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tables_are_named_with_the_ones_that_exist() {
    let (_dir, warehouse) = lake_with(1).await;
    let err = warehouse.query("SELECT * FROM evnets").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(err.to_string(), "table evnets not found; tables: events");
    assert!(matches!(err, WarehouseError::TableNotFound { .. }));
    let err = warehouse
        .query("SELECT nope FROM events")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tables_and_commits_are_visible_to_the_next_query() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    // No lake directory at all yet: no tables, and a clear error.
    let warehouse = Warehouse::open(root(&lake)).unwrap();
    assert!(warehouse.tables().await.unwrap().is_empty());
    let err = warehouse.query("SELECT * FROM events").await.unwrap_err();
    assert_eq!(err.to_string(), "table events not found; tables: none yet");
    assert!(!lake.exists(), "reading must not create the lake");

    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    deliver(&lake, &journal, 0..5).await;
    let count = table(&warehouse, "SELECT count(*) AS n FROM events").await;
    assert!(count.contains("| 5 |"), "{count}");

    // A sink keeps committing while the same warehouse keeps answering.
    let sink = LakeSink::new(journal.clone(), root(&lake), settings());
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    journal
        .append_now(topic::GOOD, 0, (5..9).map(event).collect())
        .unwrap();
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(&*journal))
        .await
        .unwrap()
        .unwrap();
    let count = table(&warehouse, "SELECT count(*) AS n FROM events").await;
    assert!(count.contains("| 9 |"), "{count}");
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_render_a_lake_query_exactly() {
    let (_dir, warehouse) = lake_with(4).await;
    let out = warehouse
        .query(
            "SELECT event_id, event, user_id, timestamp, event_date, properties \
             FROM events WHERE event_id IN ('e-00', 'e-01') ORDER BY event_id",
        )
        .await
        .unwrap();
    assert_eq!(
        format::to_table(&out).unwrap(),
        "\
+----------+-----------+---------+--------------------------+------------+------------+
| event_id | event     | user_id | timestamp                | event_date | properties |
+----------+-----------+---------+--------------------------+------------+------------+
| e-00     | page      | u0      | 2025-11-27T10:00:00Z     | 2025-11-27 | {\"n\":0}    |
| e-01     | Signed Up |         | 2025-11-27T10:00:01.500Z | 2025-11-27 | {\"n\":1}    |
+----------+-----------+---------+--------------------------+------------+------------+"
    );
    assert_eq!(
        format::to_csv(&out).unwrap(),
        "\
event_id,event,user_id,timestamp,event_date,properties
e-00,page,u0,2025-11-27T10:00:00Z,2025-11-27,\"{\"\"n\"\":0}\"
e-01,Signed Up,,2025-11-27T10:00:01.500Z,2025-11-27,\"{\"\"n\"\":1}\"
"
    );
    assert_eq!(
        format::to_json_lines(&out).unwrap(),
        r#"{"event_id":"e-00","event":"page","user_id":"u0","timestamp":"2025-11-27T10:00:00Z","event_date":"2025-11-27","properties":"{\"n\":0}"}
{"event_id":"e-01","event":"Signed Up","user_id":null,"timestamp":"2025-11-27T10:00:01.500Z","event_date":"2025-11-27","properties":"{\"n\":1}"}
"#
    );
}
