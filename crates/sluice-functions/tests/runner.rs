//! The runner's exactly-once resume: whatever prefix of its outputs survived a crash, a restart
//! completes `good` and `bad` without a gap or a duplicate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_event::{BadRow, Event, topic};
use sluice_functions::{Runner, RunnerConfig};
use sluice_journal::Journal;
use sluice_testkit::mem_journal::MemJournal;
use tokio_util::sync::CancellationToken;

fn raw_record(i: usize) -> Bytes {
    // Every fourth event has an unparseable timestamp and becomes a bad row.
    let ts = if i % 4 == 3 {
        "\"not a time\"".to_string()
    } else {
        "\"2026-11-27T10:00:00Z\"".to_string()
    };
    let payload = format!(
        r#"{{"event":"e{i}","userId":"u{}","timestamp":{ts}}}"#,
        i % 3
    );
    Bytes::from(format!(
        r#"{{"event_id":"id{i:04}","source":"web","protocol":"native","received_at":1764237600000000,"payload":{payload}}}"#
    ))
}

fn journal_with_raw(n: usize) -> Arc<MemJournal> {
    let j = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    j.append_now(topic::RAW, 0, (0..n).map(raw_record).collect())
        .unwrap();
    j
}

/// Runs a runner until it has processed everything, then stops it (drain).
async fn run_to_end(j: Arc<MemJournal>, batch_size: usize) {
    let settings = RunnerConfig { batch_size }.validate().unwrap();
    let runner = Runner::new(j.clone(), settings).unwrap();
    let progress = runner.progress();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let end = j.end(topic::RAW, 0).unwrap();
    tokio::time::timeout(Duration::from_secs(30), async {
        while progress.next(0) < end {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("runner caught up");
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn good_ids(j: &MemJournal) -> Vec<(String, u64)> {
    j.records(topic::GOOD, 0)
        .iter()
        .map(|r| {
            let e: Event = serde_json::from_slice(&r.value).unwrap();
            (e.event_id, e.raw.offset)
        })
        .collect()
}

fn bad_ids(j: &MemJournal) -> Vec<(String, u64)> {
    j.records(topic::BAD, 0)
        .iter()
        .map(|r| {
            let b: BadRow = serde_json::from_slice(&r.value).unwrap();
            (b.event_id, b.raw.offset)
        })
        .collect()
}

#[tokio::test]
async fn splits_raw_into_good_and_bad_in_order() {
    let j = journal_with_raw(40);
    run_to_end(j.clone(), 7).await;
    let good = good_ids(&j);
    let bad = bad_ids(&j);
    assert_eq!(good.len(), 30);
    assert_eq!(bad.len(), 10);
    assert!(bad.iter().all(|(_, off)| off % 4 == 3));
    assert!(
        good.windows(2).all(|w| w[0].1 < w[1].1),
        "good keeps raw order"
    );
    let row: BadRow = serde_json::from_slice(&j.records(topic::BAD, 0)[0].value).unwrap();
    assert_eq!(row.kind.as_str(), "parse");
    assert!(row.reason.contains("timestamp"), "{}", row.reason);
    // The bad row carries the whole raw record, so it can be replayed.
    assert!(row.payload.get().contains("\"event_id\":\"id0003\""));
    // Progress is committed for the collector's backlog measure.
    assert_eq!(j.committed("functions", topic::RAW, 0).unwrap(), Some(40));
}

#[tokio::test]
async fn resumes_exactly_once_from_any_crash_point() {
    let full = journal_with_raw(40);
    run_to_end(full.clone(), 5).await;
    let want_good = good_ids(&full);
    let want_bad = bad_ids(&full);
    let good_records = full.records(topic::GOOD, 0);
    let bad_records = full.records(topic::BAD, 0);

    // Every combination of surviving output prefixes a crash can leave behind: bad is written
    // before good in each batch, so any bad prefix may come with any good prefix up to it.
    for good_kept in [0, 1, 7, 15, 29, 30] {
        for bad_kept in [0, 1, 4, 9, 10] {
            let j = journal_with_raw(40);
            let goods: Vec<Bytes> = good_records[..good_kept]
                .iter()
                .map(|r| r.value.clone())
                .collect();
            let bads: Vec<Bytes> = bad_records[..bad_kept]
                .iter()
                .map(|r| r.value.clone())
                .collect();
            // Only states the append order allows: the bad rows for raw offsets below the last
            // kept good record were durable before it.
            let last_good_raw = good_ids(&full).get(good_kept.wrapping_sub(1)).map(|g| g.1);
            let bads_needed = want_bad
                .iter()
                .filter(|b| last_good_raw.is_some_and(|g| b.1 < g))
                .count();
            if bad_kept < bads_needed {
                continue;
            }
            j.append_now(topic::GOOD, 0, goods).unwrap();
            j.append_now(topic::BAD, 0, bads).unwrap();
            run_to_end(j.clone(), 3).await;
            assert_eq!(
                good_ids(&j),
                want_good,
                "good after crash at good={good_kept} bad={bad_kept}"
            );
            assert_eq!(
                bad_ids(&j),
                want_bad,
                "bad after crash at good={good_kept} bad={bad_kept}"
            );
        }
    }
}

#[tokio::test]
async fn refuses_mismatched_partition_counts() {
    let j = MemJournal::with_topics(&[(topic::RAW, 4), (topic::GOOD, 2), (topic::BAD, 4)]);
    let err = Runner::new(j, RunnerConfig::default().validate().unwrap())
        .err()
        .unwrap();
    assert!(err.to_string().contains("different partition counts"));
}
