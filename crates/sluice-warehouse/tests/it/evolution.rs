//! Additive schema evolution of `events`: a table made by an earlier version (without the
//! enrichment columns) gains them when the lake sink opens it; its old rows read as nulls and
//! new rows fill them, in one query.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use deltalake::kernel::{DataType, StructField};
use sluice_event::topic;
use sluice_lake::{LakeRoot, LakeSettings, LakeSink};
use sluice_testkit::mem_journal::MemJournal;
use sluice_warehouse::{Warehouse, format};
use tokio_util::sync::CancellationToken;

/// 2025-11-27T10:00:00Z
const T0: i64 = 1_764_237_600_000_000;

/// The `events` columns of the version before enrichment.
fn old_columns() -> Vec<StructField> {
    let s = |n: &str, null| StructField::new(n, DataType::STRING, null);
    let ts = |n: &str, null| StructField::new(n, DataType::TIMESTAMP, null);
    vec![
        s("event_id", false),
        s("event_type", false),
        s("event", false),
        s("source", false),
        s("user_id", true),
        s("anonymous_id", true),
        ts("timestamp", false),
        ts("sent_at", true),
        ts("received_at", false),
        s("properties", false),
        s("context", false),
        StructField::new("raw_partition", DataType::INTEGER, false),
        StructField::new("raw_offset", DataType::LONG, false),
        StructField::new("event_date", DataType::DATE, false),
    ]
}

fn event(i: u64, enriched: bool) -> Bytes {
    let mut json = serde_json::json!({
        "event_id": format!("e-{i:02}"), "event_type": "track", "event": "Signed Up", "source": "web",
        "timestamp": T0 + i as i64, "received_at": T0, "properties": {}, "context": {},
        "raw": {"partition": 0, "offset": i},
    });
    if enriched {
        json["enriched"] = serde_json::json!({"ua_browser": "Firefox", "is_bot": false, "geo_latitude": 52.5, "session_index": 3});
    }
    Bytes::from(serde_json::to_vec(&json).unwrap())
}

async fn deliver(dir: &Path, journal: &std::sync::Arc<MemJournal>) {
    let settings = LakeSettings {
        flush_interval: Duration::from_millis(20),
        ..LakeSettings::default()
    };
    let sink = LakeSink::new(journal.clone(), LakeRoot::from_path(dir).unwrap(), settings);
    let progress = sink.progress();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(sink.run(shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(60), progress.wait_caught_up(&**journal))
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_events_table_gains_the_new_columns_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let url = url::Url::from_directory_path(dir.path().join("events")).unwrap();
    std::fs::create_dir_all(dir.path().join("events")).unwrap();
    // The old version's table, with rows of the old shape written by a plain Delta writer.
    let table = deltalake::DeltaTableBuilder::from_url(url)
        .unwrap()
        .build()
        .unwrap()
        .create()
        .with_table_name("events")
        .with_columns(old_columns())
        .with_partition_columns(["event_date"])
        .await
        .unwrap();
    assert_eq!(table.version(), Some(0));

    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    journal
        .append_now(topic::GOOD, 0, vec![event(0, false), event(1, true)])
        .unwrap();
    deliver(dir.path(), &journal).await;

    let w = Warehouse::open(LakeRoot::from_path(dir.path()).unwrap()).unwrap();
    let out = w
        .query("SELECT event_id, ua_browser, is_bot, geo_latitude, session_index, geo_city FROM events ORDER BY event_id")
        .await
        .unwrap();
    let text = format::to_table(&out).unwrap();
    assert!(text.contains("e-00") && text.contains("e-01"), "{text}");
    assert!(
        text.contains("Firefox") && text.contains("52.5") && text.contains("| 3 "),
        "{text}"
    );
    // The sink reopens the evolved table without adding anything again.
    journal
        .append_now(topic::GOOD, 0, vec![event(2, true)])
        .unwrap();
    deliver(dir.path(), &journal).await;
    let out = w
        .query("SELECT count(*) AS n, count(ua_browser) AS ua FROM events")
        .await
        .unwrap();
    let text = format::to_table(&out).unwrap();
    assert!(text.contains("| 3 ") && text.contains("| 2 "), "{text}");
}
