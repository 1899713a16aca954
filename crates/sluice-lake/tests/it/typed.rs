//! Typed tables end to end: an in-memory journal, real Delta tables in a temporary directory,
//! read back with DataFusion. Columns are inferred and added, conflicts become bad rows, and a
//! crash between commits never loses or duplicates a row. No sleeps: waits have a deadline.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::datafusion::prelude::SessionContext;
use serde_json::json;
use sluice_event::topic;
use sluice_journal::Health;
use sluice_lake::typed::{JsonSchemaTypes, TypedSink};
use sluice_lake::{LakeError, LakeRoot, LakeSettings};
use sluice_testkit::mem_journal::MemJournal;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const T0: i64 = 1_764_237_600_000_000;

fn event(p: u32, i: u64, name: &str, properties: serde_json::Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "event_id": format!("e-{p}-{i}"), "event_type": "track", "event": name,
            "source": "web", "user_id": format!("u{}", i % 3),
            "timestamp": T0 + i as i64, "received_at": T0 + 10,
            "properties": properties, "context": {"ip": "10.0.0.1"},
            "enriched": {"geo_country": "DE"}, "raw": {"partition": p, "offset": i},
        }))
        .unwrap(),
    )
}

fn settings() -> LakeSettings {
    LakeSettings {
        flush_interval: Duration::from_millis(50),
        flush_max_events: 7,
        retry_backoff_initial: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..LakeSettings::default()
    }
}

async fn table_query(
    dir: &Path,
    tables: &[&str],
    sql: &str,
) -> Vec<deltalake::arrow::array::RecordBatch> {
    let root = LakeRoot::from_path(dir).unwrap();
    let ctx = SessionContext::new();
    for t in tables {
        let table = deltalake::open_table(root.table_url(t).unwrap())
            .await
            .unwrap();
        ctx.register_table(*t, table.table_provider().await.unwrap())
            .unwrap();
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn scalar(dir: &Path, tables: &[&str], sql: &str) -> i64 {
    let batches = table_query(dir, tables, sql).await;
    let batch = batches.iter().find(|b| b.num_rows() > 0).unwrap();
    batch.column(0).as_primitive::<Int64Type>().value(0)
}

async fn run_until_caught_up(sink: TypedSink, journal: &Arc<MemJournal>) -> Result<(), LakeError> {
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    let caught = tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal.as_ref())).await;
    shutdown.cancel();
    // The sink's own result first: a crash also makes the wait fail with `Stopped`.
    tokio::time::timeout(DEADLINE, task)
        .await
        .unwrap()
        .unwrap()?;
    caught.expect("caught up in time")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_typed_table_per_event_with_inferred_columns_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    let mut p0 = Vec::new();
    for i in 0..10 {
        p0.push(event(
            0,
            i,
            "Order Completed",
            json!({"total": i, "currency": "EUR", "items": [1, 2]}),
        ));
    }
    // A fraction in a bigint column, a string in it: bad rows. A new property: a new column.
    p0.push(event(0, 10, "Order Completed", json!({"total": 2.5})));
    p0.push(event(0, 11, "orderCompleted", json!({"total": "lots"})));
    p0.push(event(
        0,
        12,
        "order_completed",
        json!({"total": 7, "coupon": "X1", "first": true}),
    ));
    journal.append_now(topic::GOOD, 0, p0).unwrap();
    let p1 = (0..5)
        .map(|i| {
            event(
                1,
                i,
                "Signed Up",
                json!({"plan": "pro", "seats": 3, "timestamp": "x"}),
            )
        })
        .collect();
    journal.append_now(topic::GOOD, 1, p1).unwrap();

    let root = LakeRoot::from_path(dir.path()).unwrap();
    let sink = TypedSink::new(journal.clone(), root, settings());
    run_until_caught_up(sink, &journal).await.unwrap();

    let d = dir.path();
    assert_eq!(
        scalar(
            d,
            &["order_completed"],
            "SELECT count(*) FROM order_completed"
        )
        .await,
        11
    );
    assert_eq!(
        scalar(
            d,
            &["order_completed"],
            "SELECT sum(total) FROM order_completed"
        )
        .await,
        (0..10).sum::<i64>() + 7
    );
    assert_eq!(
        scalar(
            d,
            &["order_completed"],
            "SELECT count(*) FROM order_completed WHERE coupon = 'X1' AND first"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(
            d,
            &["signed_up"],
            "SELECT sum(seats) FROM signed_up WHERE plan = 'pro' AND property_timestamp = 'x'"
        )
        .await,
        15
    );
    let batches = table_query(
        d,
        &["order_completed"],
        "SELECT * FROM order_completed LIMIT 1",
    )
    .await;
    let schema = batches[0].schema();
    let ty = |n: &str| schema.field_with_name(n).unwrap().data_type().clone();
    assert_eq!(ty("total"), DataType::Int64);
    assert!(matches!(
        ty("currency"),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
    ));
    assert_eq!(ty("first"), DataType::Boolean);
    assert!(schema.column_with_name("properties").is_none());
    let items = table_query(
        d,
        &["order_completed"],
        "SELECT items FROM order_completed WHERE total = 1",
    )
    .await;
    let col = items[0].column(0);
    let text = match col.data_type() {
        DataType::Utf8View => col.as_string_view().value(0).to_string(),
        _ => col.as_string::<i32>().value(0).to_string(),
    };
    assert_eq!(text, "[1,2]");

    // The two conflicts are bad rows naming the column; the table kept going. Their payload
    // is the good event whole, its enriched fields too (the typed columns have none of them).
    assert_eq!(
        scalar(d, &["bad_rows"], "SELECT count(*) FROM bad_rows WHERE function = 'typed_tables' AND kind = 'schema_violation' AND reason LIKE '%column total%'").await,
        2
    );
    assert_eq!(
        scalar(d, &["bad_rows"], r#"SELECT count(*) FROM bad_rows WHERE function = 'typed_tables' AND payload LIKE '%"enriched":{"geo_country":"DE"}%'"#).await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_types_win_over_inference() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let records = vec![
        event(0, 0, "Paid", json!({"amount": 3})),
        event(0, 1, "Paid", json!({"amount": 3.5})),
    ];
    journal.append_now(topic::GOOD, 0, records).unwrap();
    let mut schemas = JsonSchemaTypes::default();
    schemas.insert(
        "Paid",
        &json!({"properties": {"amount": {"type": "number"}}}),
    );
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let sink =
        TypedSink::new(journal.clone(), root, settings()).with_declared_types(Arc::new(schemas));
    run_until_caught_up(sink, &journal).await.unwrap();
    let batches = table_query(
        dir.path(),
        &["paid"],
        "SELECT CAST(sum(amount) * 10 AS BIGINT) FROM paid",
    )
    .await;
    assert_eq!(
        batches[0].column(0).as_primitive::<Int64Type>().value(0),
        65
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commits_neither_loses_nor_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    for p in 0..2u32 {
        let records = (0..30)
            .map(|i| {
                let name = ["A Event", "B Event", "C Event"][(i % 3) as usize];
                let props = if i % 10 == 9 {
                    json!({"n": "conflict"})
                } else {
                    json!({"n": i})
                };
                event(p, i, name, props)
            })
            .collect();
        journal.append_now(topic::GOOD, p, records).unwrap();
    }
    let root = LakeRoot::from_path(dir.path()).unwrap();
    // Crash after bad rows, after a typed table, and after the control table, one at a time.
    for crash_at in ["bad_rows", "b_event", "_sluice/typed"] {
        let fired = Arc::new(AtomicBool::new(false));
        let f = fired.clone();
        let sink = TypedSink::new(journal.clone(), root.clone(), settings()).with_crash_after(
            Arc::new(move |table: &str| table == crash_at && !f.swap(true, Ordering::SeqCst)),
        );
        let result = run_until_caught_up(sink, &journal).await;
        assert!(
            matches!(result, Err(LakeError::InjectedCrash(_))) || !fired.load(Ordering::SeqCst),
            "{crash_at}: {result:?}"
        );
    }
    let sink = TypedSink::new(journal.clone(), root.clone(), settings());
    run_until_caught_up(sink, &journal).await.unwrap();

    let d = dir.path();
    let tables = ["a_event", "b_event", "c_event"];
    let mut rows = 0;
    for t in tables {
        let sql = format!("SELECT count(*) - count(DISTINCT event_id) FROM {t}");
        assert_eq!(scalar(d, &[t], &sql).await, 0, "{t} has duplicates");
        rows += scalar(d, &[t], &format!("SELECT count(*) FROM {t}")).await;
    }
    let bad = scalar(d, &["bad_rows"], "SELECT count(*) FROM bad_rows").await;
    let distinct_bad = scalar(
        d,
        &["bad_rows"],
        "SELECT count(DISTINCT event_id) FROM bad_rows",
    )
    .await;
    assert_eq!(bad, distinct_bad, "bad rows duplicated");
    // Offsets 9, 19, 29 of each partition are conflicts... unless they created the column:
    // n is first seen as an integer at offset 0, so every "conflict" is a bad row.
    assert_eq!(bad, 6);
    assert_eq!(rows + bad, 60);
}

/// After a crash a partition's end jumps to the journal's floor: the typed sink steps over the
/// gap, on a quiet partition too, and counts as caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_resolves_after_a_crash_gap() {
    const CRASH_GAP: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    let paid = |i: u64| event(0, i, "Paid", json!({"amount": i}));
    journal
        .append_now(topic::GOOD, 0, (0..3).map(paid).collect())
        .unwrap();
    for p in 0..2 {
        journal.crash_gap(topic::GOOD, p, CRASH_GAP).unwrap();
    }
    journal
        .append_now(topic::GOOD, 0, (3..5).map(paid).collect())
        .unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let sink = TypedSink::new(journal.clone(), root.clone(), settings());
    run_until_caught_up(sink, &journal).await.unwrap();
    // A restart resumes after the gap and writes nothing twice.
    let sink = TypedSink::new(journal.clone(), root, settings());
    run_until_caught_up(sink, &journal).await.unwrap();
    assert_eq!(
        scalar(dir.path(), &["paid"], "SELECT count(*) FROM paid").await,
        5
    );
}

/// Runs a typed sink over `good` until its stage reports failing with an error containing
/// `expected`, then stops it; the sink's result.
async fn run_until_refused(
    journal: &Arc<MemJournal>,
    root: &LakeRoot,
    expected: &str,
) -> Result<(), LakeError> {
    let health = Health::new();
    let sink = TypedSink::new(journal.clone(), root.clone(), settings())
        .with_health(health.stage("typed"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let refused = loop {
        let failing = health.snapshot()[0].failing.clone();
        if let Some(f) = failing.filter(|f| f.error.contains(expected)) {
            break f.error;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refused: {expected}"
        );
        // Polls a condition under a deadline; the sink's backoff is at most 50 ms here.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    assert!(
        refused.contains("typed") || refused.contains("order_completed"),
        "{refused}"
    );
    result
}

/// The typed sink runs the `events` sink's checks on each of its txn histories: a version
/// raised past the end of `good` (in the control table or a typed table) or lowered below an
/// earlier commit's is refused, `/health` says so, and nothing is delivered past it; once the
/// commit is restored every event lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_txn_versions_are_refused_by_the_typed_sink() {
    let cases = [
        ("_sluice/typed", "typed/0", 40, "past the end"),
        ("order_completed", "order_completed/0", 40, "past the end"),
        ("_sluice/typed", "typed/0", 2, "below the"),
    ];
    for (table, app_id, version, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
        let paid = |i: u64| event(0, i, "Order Completed", json!({"total": i}));
        journal
            .append_now(topic::GOOD, 0, (0..20).map(paid).collect())
            .unwrap();
        let root = LakeRoot::from_path(dir.path()).unwrap();
        let sink = TypedSink::new(journal.clone(), root.clone(), settings());
        run_until_caught_up(sink, &journal).await.unwrap();
        let (commit, before) = crate::set_txn_version(&dir.path().join(table), app_id, version);
        journal
            .append_now(topic::GOOD, 0, (20..25).map(paid).collect())
            .unwrap();

        // Found while opening or when a flush opens the table: either way the stage cannot
        // drain, and gives up at shutdown.
        match run_until_refused(&journal, &root, expected).await {
            Err(LakeError::GaveUp { last, .. }) => assert!(last.contains(expected), "{last}"),
            other => panic!("{table}: {other:?}"),
        }
        let count = "SELECT count(*) FROM order_completed";
        let d = dir.path();
        assert_eq!(
            scalar(d, &["order_completed"], count).await,
            20,
            "{table} {app_id}"
        );

        std::fs::write(&commit, before).unwrap();
        let sink = TypedSink::new(journal.clone(), root.clone(), settings());
        run_until_caught_up(sink, &journal).await.unwrap();
        assert_eq!(
            scalar(d, &["order_completed"], count).await,
            25,
            "{table} {app_id}"
        );
        let distinct = "SELECT count(DISTINCT event_id) FROM order_completed";
        assert_eq!(scalar(d, &["order_completed"], distinct).await, 25);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limits_events_get_no_new_table_and_properties_no_new_column() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let limited = |tables, columns| LakeSettings {
        max_typed_tables: tables,
        max_typed_columns: columns,
        ..settings()
    };
    // Two tables; `a` gets columns p0..p2 and then no more; `c` gets no table.
    let events = vec![
        event(0, 0, "a", json!({"p0": 1, "p1": 2})),
        event(0, 1, "b", json!({"q": "x"})),
        event(0, 2, "c", json!({"r": 1})),
        event(0, 3, "a", json!({"p2": 3, "p3": 4, "p4": 5})),
        event(0, 4, "a", json!({"p0": 9, "p5": 6})),
        event(0, 5, "c", json!({"r": 2})),
    ];
    journal.append_now(topic::GOOD, 0, events).unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let sink = TypedSink::new(journal.clone(), root.clone(), limited(2, 3));
    let refusals = sink.refusals();
    run_until_caught_up(sink, &journal).await.unwrap();
    let d = dir.path();
    assert!(!d.join("c").exists(), "no table past max_typed_tables");
    assert_eq!(scalar(d, &["a"], "SELECT count(*) FROM a").await, 3);
    assert_eq!(scalar(d, &["b"], "SELECT count(*) FROM b").await, 1);
    let a = table_query(d, &["a"], "SELECT * FROM a LIMIT 1").await;
    let columns: Vec<String> = a[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| n.starts_with('p'))
        .collect();
    assert_eq!(columns, ["p0", "p1", "p2"]);
    // The rows keep the columns they fit.
    assert_eq!(
        scalar(d, &["a"], "SELECT sum(p0) + sum(p2) FROM a").await,
        1 + 9 + 3
    );
    // No bad rows: nothing was refused for its content.
    assert!(
        !d.join("bad_rows/_delta_log").exists() || {
            scalar(d, &["bad_rows"], "SELECT count(*) FROM bad_rows").await == 0
        }
    );
    let report = refusals.report().unwrap();
    assert_eq!(report.events_without_table, 2);
    assert_eq!(report.refused_tables, ["c"]);
    assert_eq!(report.properties_without_column, 3);
    assert_eq!(report.refused_columns, ["a.p3", "a.p4", "a.p5"]);

    // Lowered below what exists: existing tables and columns keep working, nothing new.
    let more = vec![
        event(0, 6, "a", json!({"p1": 7, "p9": 1})),
        event(0, 7, "b", json!({"q": "y"})),
        event(0, 8, "d", json!({})),
    ];
    journal.append_now(topic::GOOD, 0, more).unwrap();
    let sink = TypedSink::new(journal.clone(), root, limited(1, 1));
    let refusals = sink.refusals();
    run_until_caught_up(sink, &journal).await.unwrap();
    assert_eq!(scalar(d, &["a"], "SELECT count(*) FROM a").await, 4);
    assert_eq!(scalar(d, &["b"], "SELECT count(*) FROM b").await, 2);
    assert!(!d.join("d").exists());
    let report = refusals.report().unwrap();
    assert_eq!(report.refused_tables, ["d"]);
    assert_eq!(report.refused_columns, ["a.p9"]);
}
