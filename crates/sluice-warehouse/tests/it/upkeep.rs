//! Table upkeep while the lake is written and queried: compaction runs concurrently with a
//! writing sink and with queries, and every query sees one consistent table version (no row
//! twice, none lost, counts never go back); vacuum then removes the replaced files and the data
//! reads the same. No sleeps: waits have deadlines.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::Int64Type;
use sluice_event::topic;
use sluice_lake::upkeep::{optimize_table, vacuum_table};
use sluice_lake::{LakeRoot, LakeSettings, LakeSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::Warehouse;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(120);
const T0: i64 = 1_764_237_600_000_000;

fn event(i: u64) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "event_id": format!("e-{i}"), "event_type": "track", "event": "Tick",
            "source": "web", "timestamp": T0 + i as i64, "received_at": T0,
            "properties": {"n": i}, "context": {}, "raw": {"partition": 0, "offset": i},
        }))
        .unwrap(),
    )
}

/// Waits (with a deadline) until the sink has delivered everything in the journal.
async fn caught_up(progress: &sluice_lake::DeliveryProgress, journal: &Arc<MemJournal>) {
    tokio::time::timeout(DEADLINE, progress.wait_caught_up(journal.as_ref()))
        .await
        .expect("the sink caught up within the deadline")
        .expect("the journal answered");
}

fn parquet_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("_delta_log") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "parquet") {
                n += 1;
            }
        }
    }
    n
}

/// (rows, distinct event ids)
async fn counts(warehouse: &Warehouse) -> (i64, i64) {
    let out = warehouse
        .query("SELECT count(*), count(DISTINCT event_id) FROM events")
        .await
        .unwrap();
    let batch = &out.batches[0];
    (
        batch.column(0).as_primitive::<Int64Type>().value(0),
        batch.column(1).as_primitive::<Int64Type>().value(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn compaction_under_writes_and_queries_keeps_snapshots_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    // Small flushes: many small files.
    let settings = LakeSettings {
        flush_interval: Duration::from_millis(5),
        flush_max_events: 10,
        ..LakeSettings::default()
    };
    journal
        .append_now(topic::GOOD, 0, (0..200).map(event).collect())
        .unwrap();
    let sink = LakeSink::new(journal.clone(), root.clone(), settings);
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    let small_files = parquet_files(&dir.path().join("events"));
    assert!(small_files >= 20, "{small_files} files");

    // Queries in a loop: every answer is one version (no duplicates) and never shrinks.
    let warehouse = Arc::new(Warehouse::open(root.clone()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (warehouse, stop) = (warehouse.clone(), stop.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let mut queries = 0;
            while !stop.load(Ordering::SeqCst) {
                let (rows, distinct) = counts(&warehouse).await;
                assert_eq!(rows, distinct, "a row was visible twice");
                assert!(rows >= last, "rows went from {last} to {rows}");
                last = rows;
                queries += 1;
            }
            queries
        })
    };
    // Meanwhile the sink keeps writing and compaction runs twice.
    journal
        .append_now(topic::GOOD, 0, (200..400).map(event).collect())
        .unwrap();
    let first = optimize_table(&root, "events", 3).await.unwrap();
    assert!(first.files_removed > 1, "{first:?}");
    caught_up(&progress, &journal).await;
    let second = optimize_table(&root, "events", 3).await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let queries = reader.await.unwrap();
    assert!(queries > 0);
    assert_eq!(counts(&warehouse).await, (400, 400));
    let _ = second;

    // The sink's exactly-once state survived the compaction commits: a restart adds nothing.
    shutdown.cancel();
    sink_task.await.unwrap().unwrap();
    let sink = LakeSink::new(journal.clone(), root.clone(), LakeSettings::default());
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    shutdown.cancel();
    sink_task.await.unwrap().unwrap();
    assert_eq!(counts(&warehouse).await, (400, 400));

    // Vacuum with the default retention keeps everything; with none it removes the replaced
    // files, and the table reads the same.
    let before = parquet_files(&dir.path().join("events"));
    let kept = vacuum_table(&root, "events", Duration::from_secs(7 * 86_400), false)
        .await
        .unwrap();
    assert_eq!(kept.files_deleted, 0);
    let dry = vacuum_table(&root, "events", Duration::ZERO, true)
        .await
        .unwrap();
    assert!(dry.files_deleted > 0);
    assert_eq!(parquet_files(&dir.path().join("events")), before);
    let done = vacuum_table(&root, "events", Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(done.files_deleted, dry.files_deleted);
    let after = parquet_files(&dir.path().join("events"));
    assert!(
        after < before,
        "{after} files after vacuum, {before} before"
    );
    assert_eq!(counts(&warehouse).await, (400, 400));
    let tables = sluice_lake::upkeep::list_tables(&root).await.unwrap();
    assert_eq!(tables, vec!["events".to_string()]);
}

/// Event `i` on day `day` after T0's.
fn event_on(i: u64, day: u64) -> Bytes {
    let at = T0 + (day * 86_400_000_000) as i64;
    Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "event_id": format!("d{day}-{i}"), "event_type": "track", "event": "Tick",
            "source": "web", "timestamp": at, "received_at": at,
            "properties": {}, "context": {}, "raw": {"partition": 0, "offset": i},
        }))
        .unwrap(),
    )
}

fn partitions(table: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(table)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("event_date="))
        .filter(|n| parquet_files(&table.join(n)) > 0)
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_partitions_and_vacuum_ends_their_time_travel() {
    use sluice_lake::retention::{cutoff, expire_all};
    let dir = tempfile::tempdir().unwrap();
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    let events: Vec<Bytes> = (0..30).map(|i| event_on(i, (i / 10) * 5)).collect();
    journal.append_now(topic::GOOD, 0, events).unwrap();
    let sink = LakeSink::new(journal.clone(), root.clone(), LakeSettings::default());
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let sink_task = tokio::spawn(sink.run(shutdown.clone()));
    caught_up(&progress, &journal).await;
    let warehouse = Warehouse::open(root.clone()).unwrap();
    assert_eq!(counts(&warehouse).await, (30, 30));
    let table = dir.path().join("events");
    let days = partitions(&table);
    assert_eq!(days.len(), 3, "{days:?}");

    // Today is day 12; keeping 5 days keeps day 10 and drops days 0 and 5.
    let day0 = chrono::DateTime::from_timestamp_micros(T0)
        .unwrap()
        .date_naive();
    let today = day0 + chrono::Days::new(12);
    let cut = cutoff(today, Duration::from_secs(5 * 86_400));
    assert_eq!(cut, day0 + chrono::Days::new(7));
    let reports = expire_all(&root, cut).await.unwrap();
    let [Ok(report)] = reports.as_slice() else {
        panic!("one table expected: {reports:?}")
    };
    assert_eq!(
        (report.table.as_str(), report.column.as_str()),
        ("events", "event_date")
    );
    assert!(report.files_removed >= 2, "{report:?}");
    assert_eq!(counts(&warehouse).await, (10, 10));
    // The files stay for older versions until vacuum; a second pass commits nothing.
    assert_eq!(partitions(&table), days);
    let again = expire_all(&root, cut).await.unwrap();
    assert!(
        matches!(again.as_slice(), [Ok(r)] if r.files_removed == 0),
        "{again:?}"
    );
    vacuum_table(&root, "events", Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(partitions(&table), days[2..].to_vec());
    assert_eq!(counts(&warehouse).await, (10, 10));

    // The sink's exactly-once state is untouched: it goes on delivering, and nothing expired
    // comes back.
    journal
        .append_now(topic::GOOD, 0, (30..35).map(|i| event_on(i, 12)).collect())
        .unwrap();
    caught_up(&progress, &journal).await;
    shutdown.cancel();
    sink_task.await.unwrap().unwrap();
    assert_eq!(counts(&warehouse).await, (15, 15));
}
