//! End-to-end tests of lake delivery: an in-memory journal, a real Delta table in a temporary
//! directory, and the table read back with DataFusion. No sleeps: every wait is on a condition
//! with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
};
use deltalake::datafusion::prelude::SessionContext;
use sluice_event::topic;
use sluice_journal::Health;
use sluice_lake::{
    BadRowsSink, DeliveryProgress, FaultAction, FaultPoint, LakeError, LakeRoot, LakeSettings,
    LakeSink,
};
use sluice_testkit::mem_journal::MemJournal;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);
const DAY_MICROS: i64 = 86_400_000_000;
/// 2025-11-27T10:00:00Z
const T0: i64 = 1_764_237_600_000_000;

fn event(partition: u32, i: u64) -> Bytes {
    let json = serde_json::json!({
        "event_id": format!("e-{partition}-{i}"),
        "event_type": "track",
        "event": "Order Completed",
        "source": "web",
        "user_id": if i.is_multiple_of(2) { serde_json::Value::from(format!("u{i}")) } else { serde_json::Value::Null },
        "anonymous_id": "anon-1",
        // Two dates, so that every flush writes two partitions.
        "timestamp": T0 + (i as i64 % 2) * DAY_MICROS + i as i64,
        "sent_at": T0 + 5,
        "received_at": T0 + 10,
        "properties": {"total": i, "currency": "EUR"},
        "context": {"ip": "10.0.0.1"},
        "raw": {"partition": partition, "offset": 1000 + i},
    });
    Bytes::from(serde_json::to_vec(&json).unwrap())
}

pub(super) fn append_events(journal: &MemJournal, partition: u32, range: std::ops::Range<u64>) {
    let records = range.map(|i| event(partition, i)).collect();
    journal.append_now(topic::GOOD, partition, records).unwrap();
}

pub(super) fn settings() -> LakeSettings {
    LakeSettings {
        flush_interval: Duration::from_millis(50),
        retry_backoff_initial: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        ..LakeSettings::default()
    }
}

fn root(dir: &Path) -> LakeRoot {
    LakeRoot::from_path(dir).unwrap()
}

pub(super) struct Running {
    pub(super) progress: DeliveryProgress,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), LakeError>>,
}

impl Running {
    pub(super) async fn stop(self) -> Result<(), LakeError> {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("sink stops in time")
            .expect("sink task does not panic")
    }
}

pub(super) fn start(sink: LakeSink) -> Running {
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    Running {
        progress,
        shutdown,
        task,
    }
}

pub(super) async fn caught_up(progress: &DeliveryProgress, journal: &MemJournal) {
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal))
        .await
        .expect("delivery catches up in time")
        .expect("sink is running");
}

async fn query(dir: &Path, table: &str, sql: &str) -> Vec<RecordBatch> {
    let url = root(dir).table_url(table).unwrap();
    let table_handle = deltalake::open_table(url).await.unwrap();
    let ctx = SessionContext::new();
    ctx.register_table(table, table_handle.table_provider().await.unwrap())
        .unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// Event ids in the table with how often each occurs.
async fn event_ids(dir: &Path) -> BTreeMap<String, i64> {
    let batches = query(
        dir,
        "events",
        "SELECT event_id, count(*) AS n FROM events GROUP BY event_id",
    )
    .await;
    let mut out = BTreeMap::new();
    for batch in batches {
        let ids = batch.column(0).as_string_view_opt().map(|a| {
            (0..a.len())
                .map(|i| a.value(i).to_string())
                .collect::<Vec<_>>()
        });
        let ids = ids.unwrap_or_else(|| {
            let a = batch.column(0).as_string::<i32>();
            (0..a.len()).map(|i| a.value(i).to_string()).collect()
        });
        let counts = batch.column(1).as_primitive::<Int64Type>();
        for (i, id) in ids.into_iter().enumerate() {
            out.insert(id, counts.value(i));
        }
    }
    out
}

pub(super) fn expected_ids(ranges: &[(u32, std::ops::Range<u64>)]) -> BTreeMap<String, i64> {
    ranges
        .iter()
        .flat_map(|(p, r)| r.clone().map(move |i| (format!("e-{p}-{i}"), 1)))
        .collect()
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_have_the_right_values_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    append_events(&journal, 0, 0..20);
    append_events(&journal, 1, 0..15);
    let sink = LakeSink::new(journal.clone(), root(dir.path()), settings());
    let running = start(sink);
    caught_up(&running.progress, &journal).await;
    let status = running.progress.status();
    assert_eq!(status.next_offsets, vec![20, 15]);
    running.stop().await.unwrap();

    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..20), (1, 0..15)])
    );
    let batches = query(
        dir.path(),
        "events",
        "SELECT * FROM events WHERE event_id = 'e-1-4'",
    )
    .await;
    let batch = batches.iter().find(|b| b.num_rows() > 0).unwrap();
    let schema = batch.schema();
    let ty = |name: &str| schema.field_with_name(name).unwrap().data_type().clone();
    assert_eq!(
        ty("timestamp"),
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    assert_eq!(ty("event_date"), DataType::Date32);
    assert_eq!(ty("raw_partition"), DataType::Int32);
    assert_eq!(ty("raw_offset"), DataType::Int64);
    let text = |name: &str| -> Option<String> {
        let col = batch.column_by_name(name).unwrap();
        if col.is_null(0) {
            return None;
        }
        Some(match col.data_type() {
            DataType::Utf8View => col.as_string_view().value(0).to_string(),
            _ => col.as_string::<i32>().value(0).to_string(),
        })
    };
    assert_eq!(text("event_type").as_deref(), Some("track"));
    assert_eq!(text("event").as_deref(), Some("Order Completed"));
    assert_eq!(text("user_id").as_deref(), Some("u4"));
    assert_eq!(text("anonymous_id").as_deref(), Some("anon-1"));
    assert_eq!(
        text("properties").as_deref(),
        Some(r#"{"currency":"EUR","total":4}"#)
    );
    let int = |name: &str| batch.column_by_name(name).unwrap().clone();
    assert_eq!(
        int("timestamp")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        T0 + 4
    );
    assert_eq!(
        int("sent_at")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        T0 + 5
    );
    assert_eq!(int("raw_partition").as_primitive::<Int32Type>().value(0), 1);
    assert_eq!(int("raw_offset").as_primitive::<Int64Type>().value(0), 1004);
    assert_eq!(
        int("event_date").as_primitive::<Date32Type>().value(0),
        20419
    );
    // Odd events are a day later: a second date partition, and an odd one has no user id.
    let days = query(
        dir.path(),
        "events",
        "SELECT CAST(event_date AS VARCHAR) AS d, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
    )
    .await;
    let days = deltalake::arrow::util::pretty::pretty_format_batches(&days)
        .unwrap()
        .to_string();
    assert!(days.contains("2025-11-27 | 18"), "{days}");
    assert!(days.contains("2025-11-28 | 17"), "{days}");
    assert!(dir.path().join("events/event_date=2025-11-28").is_dir());
    assert!(count_files(&dir.path().join("events"), ".zstd.parquet") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_table_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    append_events(&journal, 0, 0..30);
    append_events(&journal, 1, 0..7);
    let first = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&first.progress, &journal).await;
    first.stop().await.unwrap();

    append_events(&journal, 0, 30..45);
    append_events(&journal, 1, 7..20);
    // The new sink knows nothing but the table.
    let second = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&second.progress, &journal).await;
    let status = second.progress.status();
    assert_eq!(status.next_offsets, vec![45, 20]);
    // It only wrote what was new.
    assert_eq!(status.rows, 15 + 13);
    second.stop().await.unwrap();
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..45), (1, 0..20)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_everything_durable() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 3)]);
    for p in 0..3 {
        append_events(&journal, p, 0..10);
    }
    // Neither the size nor the time would flush: only shutdown does.
    let settings = LakeSettings {
        flush_interval: Duration::from_secs(3600),
        ..settings()
    };
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    tokio::time::timeout(DEADLINE, running.progress.wait_for_offsets(&[0, 0, 0]))
        .await
        .unwrap()
        .unwrap();
    let progress = running.progress.clone();
    running.stop().await.unwrap();
    let status = progress.status();
    assert!(status.stopped);
    assert_eq!(status.next_offsets, vec![10, 10, 10]);
    assert_eq!(status.commits, 1);
    assert!(progress.is_caught_up(&*journal));
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..10), (1, 0..10), (2, 0..10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_by_size_then_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let by_size = LakeSettings {
        flush_interval: Duration::from_secs(3600),
        flush_max_events: 10,
        ..settings()
    };
    append_events(&journal, 0, 0..35);
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), by_size));
    let status = tokio::time::timeout(DEADLINE, running.progress.wait_for_offsets(&[30]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.commits, 3);
    assert_eq!(status.rows, 30);
    // The 5 left over wait for the (hour-long) interval or shutdown.
    running.stop().await.unwrap();
    assert_eq!(event_ids(dir.path()).await.len(), 35);

    // By time: a large size limit, a short interval.
    let by_time = LakeSettings {
        flush_interval: Duration::from_millis(20),
        flush_max_events: 1_000_000,
        ..settings()
    };
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), by_time));
    append_events(&journal, 0, 35..40);
    caught_up(&running.progress, &journal).await;
    let status = running.progress.status();
    assert!(status.commits >= 1);
    assert_eq!(status.rows, 5);
    running.stop().await.unwrap();
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..40)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_parquet_before_commit_redelivers_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    append_events(&journal, 0, 0..12);
    append_events(&journal, 1, 0..9);
    let sink = LakeSink::new(journal.clone(), root(dir.path()), settings()).with_fault_injector(
        Arc::new(|point| match point {
            FaultPoint::FilesWritten => FaultAction::Crash,
            FaultPoint::Committed => FaultAction::Proceed,
        }),
    );
    let running = start(sink);
    let result = tokio::time::timeout(DEADLINE, running.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(result, Err(LakeError::InjectedCrash(_))),
        "{result:?}"
    );
    // Parquet files were written, but nothing was committed: they are invisible orphans.
    let orphans = count_files(&dir.path().join("events"), ".parquet");
    assert!(orphans >= 2, "{orphans}");
    assert!(event_ids(dir.path()).await.is_empty());

    append_events(&journal, 0, 12..14);
    let restarted = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&restarted.progress, &journal).await;
    restarted.stop().await.unwrap();
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..14), (1, 0..9)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_ambiguous_commits_are_read_back_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    append_events(&journal, 0, 0..10);
    append_events(&journal, 1, 0..10);
    // First flush: the write "fails" before the commit. Second attempt: the commit lands but the
    // sink is told it failed (outcome unknown). Then everything proceeds.
    let calls = Arc::new(AtomicUsize::new(0));
    let injector = {
        let calls = calls.clone();
        Arc::new(move |point| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            match (n, point) {
                (0, FaultPoint::FilesWritten) => FaultAction::Fail,
                (2, FaultPoint::Committed) => FaultAction::Fail,
                _ => FaultAction::Proceed,
            }
        })
    };
    let sink =
        LakeSink::new(journal.clone(), root(dir.path()), settings()).with_fault_injector(injector);
    let running = start(sink);
    caught_up(&running.progress, &journal).await;
    append_events(&journal, 0, 10..13);
    caught_up(&running.progress, &journal).await;
    running.stop().await.unwrap();
    assert!(calls.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..13), (1, 0..10)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_on_one_table_never_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    let fast = LakeSettings {
        flush_max_events: 7,
        ..settings()
    };
    // Create the table first so both sinks start from the same snapshot.
    let first = start(LakeSink::new(
        journal.clone(),
        root(dir.path()),
        fast.clone(),
    ));
    caught_up(&first.progress, &journal).await;
    let second = start(LakeSink::new(journal.clone(), root(dir.path()), fast));
    tokio::time::timeout(DEADLINE, second.progress.wait_for_offsets(&[0, 0]))
        .await
        .unwrap()
        .unwrap();
    for chunk in 0..5 {
        append_events(&journal, 0, chunk * 10..chunk * 10 + 10);
        append_events(&journal, 1, chunk * 6..chunk * 6 + 6);
    }
    caught_up(&first.progress, &journal).await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..50), (1, 0..30)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_written_and_resumed_from() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let settings = LakeSettings {
        flush_max_events: 2,
        checkpoint_interval: std::num::NonZeroU64::new(3).unwrap(),
        ..settings()
    };
    append_events(&journal, 0, 0..14);
    let running = start(LakeSink::new(
        journal.clone(),
        root(dir.path()),
        settings.clone(),
    ));
    caught_up(&running.progress, &journal).await;
    let status = running.progress.status();
    running.stop().await.unwrap();
    // Version 0 creates the table, then 7 commits of 2 events: versions 1..=7.
    assert_eq!(status.table_version, Some(7));
    let log = dir.path().join("events/_delta_log");
    assert!(
        log.join("00000000000000000003.checkpoint.parquet")
            .is_file()
    );
    assert!(
        log.join("00000000000000000006.checkpoint.parquet")
            .is_file()
    );
    let last: serde_json::Value =
        serde_json::from_slice(&std::fs::read(log.join("_last_checkpoint")).unwrap()).unwrap();
    assert_eq!(last["version"], 6);
    // The txn versions are our only state: they must never expire (reliability plan T9).
    let create = std::fs::read_to_string(log.join("00000000000000000000.json")).unwrap();
    assert!(
        !create.contains("setTransactionRetentionDuration"),
        "{create}"
    );
    assert!(
        create.contains(r#""delta.checkpointInterval":"3""#),
        "{create}"
    );
    // Every commit carries its txn action.
    let commit = std::fs::read_to_string(log.join("00000000000000000007.json")).unwrap();
    assert!(
        commit.contains(r#""txn":{"appId":"events/0","version":13"#),
        "{commit}"
    );

    // A restart reads its position through the checkpoint.
    append_events(&journal, 0, 14..17);
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    caught_up(&running.progress, &journal).await;
    assert_eq!(running.progress.status().rows, 3);
    running.stop().await.unwrap();
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..17)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_skipped_without_stalling() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    journal
        .append_now(
            topic::GOOD,
            0,
            vec![
                event(0, 0),
                Bytes::from_static(b"{not json"),
                Bytes::from_static(br#"{"event_id":"x"}"#),
                event(0, 3),
            ],
        )
        .unwrap();
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&running.progress, &journal).await;
    let status = running.progress.status();
    assert_eq!(status.next_offsets, vec![4]);
    assert_eq!(status.skipped, 2);
    assert_eq!(status.rows, 2);
    // A flush of nothing but garbage still moves the position past it.
    journal
        .append_now(topic::GOOD, 0, vec![Bytes::from_static(b"garbage")])
        .unwrap();
    caught_up(&running.progress, &journal).await;
    assert_eq!(running.progress.status().next_offsets, vec![5]);
    running.stop().await.unwrap();
    let ids = event_ids(dir.path()).await;
    assert_eq!(
        ids.keys().cloned().collect::<Vec<_>>(),
        vec!["e-0-0", "e-0-3"]
    );

    // A restart does not see (or log) the skipped records again.
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&running.progress, &journal).await;
    assert_eq!(running.progress.status().skipped, 0);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_delivered_to_their_table() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::BAD, 2)]);
    for p in 0..2u32 {
        let rows = (0..4u64)
            .map(|i| {
                Bytes::from(
                    serde_json::to_vec(&serde_json::json!({
                        "kind": "schema_violation",
                        "reason": format!("missing field total ({i})"),
                        "function": "validate",
                        "event_id": format!("b-{p}-{i}"),
                        "source": "web",
                        "received_at": T0,
                        "failed_at": T0 + 1,
                        "payload": {"event_id": format!("b-{p}-{i}"), "payload": {"event": "x"}},
                        "raw": {"partition": p, "offset": i},
                    }))
                    .unwrap(),
                )
            })
            .collect();
        journal.append_now(topic::BAD, p, rows).unwrap();
    }
    let sink = BadRowsSink::new(journal.clone(), root(dir.path()), settings());
    let progress = sink.progress();
    assert_eq!(progress.name(), "bad_rows");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(&*journal))
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let batches = query(
        dir.path(),
        "bad_rows",
        "SELECT kind, count(*) AS n, min(failed_date) AS d FROM bad_rows GROUP BY kind",
    )
    .await;
    let text = deltalake::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| schema_violation | 8 | 2025-11-27 |"),
        "{text}"
    );
    assert!(dir.path().join("bad_rows/failed_date=2025-11-27").is_dir());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_another_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = root(dir.path()).table_url("events").unwrap();
    std::fs::create_dir_all(dir.path().join("events")).unwrap();
    let table = deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .build()
        .unwrap();
    table
        .create()
        .with_columns(vec![deltalake::kernel::StructField::new(
            "event_id",
            deltalake::kernel::DataType::STRING,
            false,
        )])
        .await
        .unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let result = LakeSink::new(journal, root(dir.path()), settings())
        .run(CancellationToken::new())
        .await;
    match result {
        Err(e @ LakeError::SchemaMismatch { .. }) => {
            assert_eq!(e.kind(), sluice_event::ErrorKind::Conflict);
            assert!(e.to_string().contains("partitioned by"), "{e}");
        }
        other => panic!("expected a schema mismatch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Arc::new(MemJournal::new());
    let result = LakeSink::new(journal, root(dir.path()), settings())
        .run(CancellationToken::new())
        .await;
    assert_eq!(
        result.unwrap_err().kind(),
        sluice_event::ErrorKind::NotFound
    );
}

/// About the offsets a journal skips after an unclean stop (its durable floor).
const CRASH_GAP: u64 = 1 << 20;

/// After a crash a partition's end jumps to the journal's floor. A partition that stays quiet
/// then holds nothing below its end, and the sink must still count as caught up; one that gets
/// new events delivers them after the gap, once, also across a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_resolves_after_a_crash_gap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 2)]);
    append_events(&journal, 0, 0..5);
    append_events(&journal, 1, 0..5);
    let first = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&first.progress, &journal).await;
    for p in 0..2 {
        journal.crash_gap(topic::GOOD, p, CRASH_GAP).unwrap();
    }
    append_events(&journal, 1, 5..8);
    caught_up(&first.progress, &journal).await;
    assert_eq!(
        first.progress.status().next_offsets,
        vec![5 + CRASH_GAP, 8 + CRASH_GAP]
    );
    first.stop().await.unwrap();

    let second = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&second.progress, &journal).await;
    assert_eq!(second.progress.status().rows, 0);
    assert!(second.progress.is_caught_up(&*journal));
    second.stop().await.unwrap();
    assert_eq!(
        event_ids(dir.path()).await,
        expected_ids(&[(0, 0..5), (1, 0..8)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bad_rows_sink_is_caught_up_after_a_crash_gap() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::BAD, 1)]);
    journal.crash_gap(topic::BAD, 0, CRASH_GAP).unwrap();
    let sink = BadRowsSink::new(journal.clone(), root(dir.path()), settings());
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    assert_eq!(progress.status().next_offsets, vec![CRASH_GAP]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// A table with 14 events of partition 0 in commits of two (versions 1..=7) and checkpoints at
/// versions 3 and 6.
pub(super) async fn seven_commits(dir: &Path, journal: &Arc<MemJournal>) -> LakeSettings {
    let settings = LakeSettings {
        flush_max_events: 2,
        checkpoint_interval: std::num::NonZeroU64::new(3).unwrap(),
        ..settings()
    };
    append_events(journal, 0, 0..14);
    let running = start(LakeSink::new(journal.clone(), root(dir), settings.clone()));
    caught_up(&running.progress, journal).await;
    running.stop().await.unwrap();
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_checkpoint_falls_back_to_the_json_commits() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let settings = seven_commits(dir.path(), &journal).await;
    let checkpoint = dir
        .path()
        .join("events/_delta_log/00000000000000000006.checkpoint.parquet");
    // Cut in half: the Parquet footer is gone, so nothing in it reads.
    let bytes = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &bytes[..bytes.len() / 2]).unwrap();
    append_events(&journal, 0, 14..17);
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    caught_up(&running.progress, &journal).await;
    assert_eq!(running.progress.status().rows, 3);
    running.stop().await.unwrap();
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..17)]));
    // delta-rs does not fall back by itself on a checkpoint it cannot read: the lake set it
    // aside (the repair on open names it `<file>.<nanos>`), where an operator can look at it.
    let aside: Vec<String> = std::fs::read_dir(dir.path().join("events/_damaged_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside
            .iter()
            .any(|n| n.starts_with("00000000000000000006.checkpoint.parquet")),
        "{aside:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_version_lowered_in_the_log_is_refused_not_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let settings = seven_commits(dir.path(), &journal).await;
    let newest = dir
        .path()
        .join("events/_delta_log/00000000000000000007.json");
    let commit = std::fs::read_to_string(&newest).unwrap();
    let lowered = commit.replace(
        r#""txn":{"appId":"events/0","version":13"#,
        r#""txn":{"appId":"events/0","version":3"#,
    );
    assert_ne!(commit, lowered);
    std::fs::write(&newest, lowered).unwrap();
    append_events(&journal, 0, 14..17);
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    let refused = tokio::time::timeout(
        DEADLINE,
        running.progress.wait_until(|s| s.refused.is_some()),
    )
    .await
    .expect("the sink refuses in time")
    .expect("the sink keeps running")
    .refused
    .unwrap_or_default();
    assert!(refused.contains("events/0"), "{refused}");
    assert!(!running.progress.status().started);
    stop_refused(running).await;
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..14)]));
}

/// Stops a sink whose table is refused: the stage could not drain what the journal holds, so
/// shutdown ends in [`LakeError::GaveUp`] after `shutdown_attempts`, naming the refusal.
async fn stop_refused(running: Running) {
    match running.stop().await {
        Err(LakeError::GaveUp {
            table,
            attempts,
            last,
        }) => {
            assert_eq!(table, "events");
            assert!(attempts >= settings().shutdown_attempts, "{attempts}");
            assert!(last.contains("events/0"), "{last}");
        }
        other => panic!("a refused table stopped with {other:?}, not a give-up"),
    }
}

/// A txn version raised past the journal's end (the table claims offsets the journal never
/// held) is refused at start, loudly, and nothing is skipped: once the commit is restored the
/// sink delivers everything after the true version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_version_past_the_journal_end_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let settings = seven_commits(dir.path(), &journal).await;
    let (commit, before) = crate::set_txn_version(&dir.path().join("events"), "events/0", 40);
    append_events(&journal, 0, 14..17);
    let health = Health::new();
    let sink = LakeSink::new(journal.clone(), root(dir.path()), settings.clone())
        .with_health(health.stage("lake/events"));
    let running = start(sink);
    let refused = tokio::time::timeout(
        DEADLINE,
        running.progress.wait_until(|s| s.refused.is_some()),
    )
    .await
    .expect("the sink refuses in time")
    .expect("the sink keeps running")
    .refused
    .unwrap_or_default();
    // Recorded: 41 (the version + 1); the journal's end: 17.
    assert!(
        refused.contains("events/0") && refused.contains("41") && refused.contains("17"),
        "{refused}"
    );
    assert!(!running.progress.status().started);
    let stage = &health.snapshot()[0];
    assert_eq!(stage.name, "lake/events");
    let failure = stage.failing.as_ref().expect("the stage reports failing");
    assert!(failure.error.contains("past the end"), "{failure:?}");
    stop_refused(running).await;
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..14)]));

    std::fs::write(&commit, before).unwrap();
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    caught_up(&running.progress, &journal).await;
    running.stop().await.unwrap();
    assert_eq!(event_ids(dir.path()).await, expected_ids(&[(0, 0..17)]));
}

/// A version up to the journal's end is not refused: the end is the next offset to be written,
/// so a table that holds every record of a partition records exactly `end - 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_holds_the_whole_journal_starts() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let settings = seven_commits(dir.path(), &journal).await;
    let running = start(LakeSink::new(journal.clone(), root(dir.path()), settings));
    caught_up(&running.progress, &journal).await;
    assert_eq!(running.progress.status().next_offsets, vec![14]);
    assert_eq!(running.progress.status().refused, None);
    running.stop().await.unwrap();
}

/// A delete that read the table before a sink's append (a deletion request while events flow)
/// is rebased over the append instead of failing as a conflict: the sinks' commits say they are
/// blind appends, which they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_read_before_an_append_is_not_a_conflict() {
    use deltalake::datafusion::prelude::{col, lit};
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    append_events(&journal, 0, 0..10);
    let sink = start(LakeSink::new(journal.clone(), root(dir.path()), settings()));
    caught_up(&sink.progress, &journal).await;
    let mut stale = root(dir.path()).table("events").unwrap();
    stale.load().await.unwrap();
    // Their user ids (u10..u58) span u4 in the files' statistics, so the delete cannot rule the
    // new files out by their min/max.
    append_events(&journal, 0, 10..60);
    caught_up(&sink.progress, &journal).await;
    sink.stop().await.unwrap();
    let (_, metrics) = stale
        .delete()
        .with_predicate(col("user_id").eq(lit("u4")))
        .await
        .expect("the delete is rebased over the append");
    assert_eq!(metrics.num_deleted_rows, Some(1));
    let mut expected = expected_ids(&[(0, 0..60)]);
    expected.remove("e-0-4");
    assert_eq!(event_ids(dir.path()).await, expected);
}
