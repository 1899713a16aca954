//! The runner's exactly-once resume: whatever prefix of its outputs survived a crash, a restart
//! completes `good` and `bad` without a gap or a duplicate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_event::{BadRow, Event, topic};
use sluice_functions::{Chain, EnrichConfig, Registry, Runner, RunnerConfig, ValidationConfig};
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

/// The default chain, with an empty registry.
fn chain(dir: &std::path::Path) -> Arc<Chain> {
    let registry = Arc::new(Registry::open(dir.join("schemas")).unwrap());
    Arc::new(
        Chain::new(
            registry,
            ValidationConfig::default(),
            EnrichConfig::default(),
            sluice_functions::DEFAULT_MAX_EVENT_BYTES,
        )
        .unwrap(),
    )
}

/// Runs a runner with the default chain until it has processed everything, then stops it
/// (drain).
async fn run_to_end(j: Arc<MemJournal>, batch_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    run_with(j, chain(dir.path()), None, batch_size).await;
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
    let dir = tempfile::tempdir().unwrap();
    let err = Runner::new(
        j,
        RunnerConfig::default().validate().unwrap(),
        chain(dir.path()),
        None,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("different partition counts"));
}

/// Runs a runner with `chain` and a state directory until it has processed raw's end.
async fn run_with(
    j: Arc<MemJournal>,
    chain: Arc<Chain>,
    state: Option<&std::path::Path>,
    batch_size: usize,
) {
    let settings = RunnerConfig {
        batch_size,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let runner = Runner::new(j.clone(), settings, chain, state.map(|p| p.to_path_buf())).unwrap();
    let progress = runner.progress();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    tokio::time::timeout(Duration::from_secs(30), progress.wait_caught_up(&*j))
        .await
        .expect("runner caught up")
        .unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn poison_records_never_stall_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(dir.path().join("schemas")).unwrap());
    let mut validation = ValidationConfig {
        on_unknown_schema: sluice_functions::OnUnknown::Bad,
        ..Default::default()
    };
    validation.bindings.insert(
        "Poisoned".into(),
        "iglu:com.acme/missing/jsonschema/1-0-0".into(),
    );
    let chain = Arc::new(Chain::new(registry, validation, EnrichConfig::default(), 4096).unwrap());
    let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
    let poison: Vec<Bytes> = vec![
        Bytes::from_static(b"\xff\xfe not even utf-8"),
        Bytes::from_static(b"{}"),
        Bytes::from(format!(
            r#"{{"event_id":"deep","source":"web","protocol":"native","received_at":1,"payload":{{"event":"x","properties":{{"d":{deep}}}}}}}"#
        )),
        Bytes::from_static(br#"{"event_id":"arr","source":"web","protocol":"native","received_at":1,"payload":[1,2]}"#),
        Bytes::from_static(br#"{"event_id":"schema","source":"web","protocol":"native","received_at":1,"payload":{"event":"Poisoned"}}"#),
        Bytes::from(format!(
            r#"{{"event_id":"big","source":"web","protocol":"native","received_at":1,"payload":{{"event":"x","properties":{{"b":"{}"}}}}}}"#,
            "y".repeat(5000)
        )),
    ];
    let j = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    let mut records = Vec::new();
    for (i, p) in poison.iter().enumerate() {
        records.push(raw_record(i * 4));
        records.push(p.clone());
    }
    records.push(raw_record(100));
    j.append_now(topic::RAW, 0, records).unwrap();
    run_with(j.clone(), chain, None, 16).await;

    let good = good_ids(&j);
    assert_eq!(
        good.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        [
            "id0000", "id0004", "id0008", "id0012", "id0016", "id0020", "id0100"
        ],
        "every healthy event made it, in order"
    );
    let kinds: Vec<(String, String)> = j
        .records(topic::BAD, 0)
        .iter()
        .map(|r| {
            let b: BadRow = serde_json::from_slice(&r.value).unwrap();
            (b.kind.as_str().to_string(), b.function)
        })
        .collect();
    let want = [
        ("parse", "canonicalize"),
        ("parse", "canonicalize"),
        ("parse", "canonicalize"),
        ("parse", "canonicalize"),
        ("schema_violation", "validate"),
        ("size", "size"),
    ];
    assert_eq!(
        kinds,
        want.map(|(k, f)| (k.to_string(), f.to_string())),
        "each poison record is one typed bad row"
    );
}

fn user_event(i: usize, minute: i64) -> Bytes {
    Bytes::from(format!(
        r#"{{"event_id":"s{i:03}","source":"web","protocol":"native","received_at":1764248400000000,"payload":{{"event":"e","userId":"u{}","timestamp":{}}}}}"#,
        i % 3,
        1_764_237_600_000_i64 + minute * 60_000
    ))
}

fn sessions(j: &MemJournal) -> Vec<(String, String, i32)> {
    j.records(topic::GOOD, 0)
        .iter()
        .map(|r| {
            let e: Event = serde_json::from_slice(&r.value).unwrap();
            (
                e.event_id,
                e.enriched.session_id.unwrap(),
                e.enriched.session_index.unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn sessions_are_the_same_whether_or_not_the_runner_restarted() {
    // Three users, an event every 7 minutes each, with a 40-minute pause in the middle: every
    // user has two sessions.
    let minutes: Vec<i64> = (0..60)
        .map(|i| {
            if i < 30 {
                i as i64 * 7 / 3
            } else {
                40 + i as i64 * 7 / 3
            }
        })
        .collect();
    let all: Vec<Bytes> = minutes
        .iter()
        .enumerate()
        .map(|(i, m)| user_event(i, *m))
        .collect();
    let dir = tempfile::tempdir().unwrap();

    // One uninterrupted run.
    let once = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    once.append_now(topic::RAW, 0, all.clone()).unwrap();
    run_with(once.clone(), chain(dir.path()), None, 16).await;
    let want = sessions(&once);
    assert_eq!(want.iter().filter(|s| s.2 == 2).count(), 30, "{want:?}");

    // Restarted halfway, with the snapshot the first run saved on drain.
    let state = dir.path().join("state");
    let twice = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    twice.append_now(topic::RAW, 0, all[..35].to_vec()).unwrap();
    run_with(twice.clone(), chain(dir.path()), Some(&state), 16).await;
    assert!(state.join("sessions/0.json").exists());
    twice.append_now(topic::RAW, 0, all[35..].to_vec()).unwrap();
    run_with(twice.clone(), chain(dir.path()), Some(&state), 16).await;
    assert_eq!(sessions(&twice), want);

    // Restarted halfway with the snapshot lost: rebuilt from raw, still the same.
    let lost = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    let state2 = dir.path().join("state2");
    lost.append_now(topic::RAW, 0, all[..35].to_vec()).unwrap();
    run_with(lost.clone(), chain(dir.path()), Some(&state2), 16).await;
    std::fs::remove_file(state2.join("sessions/0.json")).unwrap();
    lost.append_now(topic::RAW, 0, all[35..].to_vec()).unwrap();
    run_with(lost.clone(), chain(dir.path()), Some(&state2), 16).await;
    assert_eq!(sessions(&lost), want);
}

/// The default chain with the user functions of `functions`.
fn chain_with(dir: &std::path::Path, functions: Arc<sluice_functions::Functions>) -> Arc<Chain> {
    let registry = Arc::new(Registry::open(dir.join("schemas")).unwrap());
    Arc::new(
        Chain::new(
            registry,
            ValidationConfig::default(),
            EnrichConfig::default(),
            sluice_functions::DEFAULT_MAX_EVENT_BYTES,
        )
        .unwrap()
        .with_functions(functions),
    )
}

fn functions(dir: &std::path::Path, partitions: u32) -> Arc<sluice_functions::Functions> {
    Arc::new(sluice_functions::Functions::open(&dir.join("functions"), partitions).unwrap())
}

fn good_values(j: &MemJournal, p: u32) -> Vec<serde_json::Value> {
    j.records(topic::GOOD, p)
        .iter()
        .map(|r| serde_json::from_slice(&r.value).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_during_ingest_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 2);
    let spec = sluice_functions::FunctionSpec::default();
    let version = |v: u32| format!("export function transform(e) {{ return {{...e, v: {v}}}; }}");
    fns.deploy("stamp", &version(1), &spec).unwrap();
    let j = MemJournal::with_topics(&[(topic::RAW, 2), (topic::GOOD, 2), (topic::BAD, 2)]);
    let settings = RunnerConfig {
        batch_size: 16,
        ..Default::default()
    }
    .validate()
    .unwrap();
    let runner = Runner::new(
        j.clone(),
        settings,
        chain_with(dir.path(), fns.clone()),
        None,
    )
    .unwrap();
    let progress = runner.progress();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let mut n = 0;
    let mut append = |count: usize| {
        for _ in 0..count {
            j.append_now(topic::RAW, (n % 2) as u32, vec![raw_record(n)])
                .unwrap();
            n += 1;
        }
    };
    let caught_up = |j: Arc<MemJournal>| {
        let progress = progress.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(30), progress.wait_caught_up(&*j))
                .await
                .expect("runner caught up")
                .unwrap();
        }
    };
    append(300);
    // Deploy v2 while the runner works through the first records, then roll back to v1 while
    // it works through the next ones.
    let f2 = fns.clone();
    let v2 = version(2);
    let deployed = tokio::task::spawn_blocking(move || {
        f2.deploy("stamp", &v2, &sluice_functions::FunctionSpec::default())
            .unwrap()
    });
    append(300);
    deployed.await.unwrap();
    append(300);
    caught_up(j.clone()).await;
    let f3 = fns.clone();
    tokio::task::spawn_blocking(move || f3.rollback("stamp", None).unwrap())
        .await
        .unwrap();
    append(300);
    caught_up(j.clone()).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    let mut seen = std::collections::BTreeSet::new();
    let mut versions_seen = std::collections::BTreeSet::new();
    for p in 0..2 {
        let good = good_values(&j, p);
        let bad = j.records(topic::BAD, p).len();
        let raw = j.end(topic::RAW, p).unwrap() as usize;
        assert_eq!(
            good.len() + bad,
            raw,
            "partition {p}: one output per raw record"
        );
        let offsets: Vec<u64> = good
            .iter()
            .map(|v| v["raw"]["offset"].as_u64().unwrap())
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: in order, no duplicate"
        );
        // Each batch ran on one version: the versions form runs v1, v2, v1.
        let vs: Vec<u64> = good
            .iter()
            .map(|v| v["properties"]["v"].as_u64().unwrap())
            .collect();
        let mut runs = vs.clone();
        runs.dedup();
        assert!(
            runs.len() <= 3 && runs.first() == Some(&1),
            "partition {p}: {runs:?}"
        );
        versions_seen.extend(vs);
        for v in &good {
            assert!(
                seen.insert(v["event_id"].as_str().unwrap().to_string()),
                "duplicate {v}"
            );
        }
    }
    assert_eq!(
        seen.len() + j.records(topic::BAD, 0).len() + j.records(topic::BAD, 1).len(),
        1200
    );
    assert_eq!(
        versions_seen.into_iter().collect::<Vec<_>>(),
        [1, 2],
        "both versions ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_records_resume_exactly_once_from_any_crash_point() {
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 1);
    fns.deploy(
        "triple",
        "export function transform(e) { return [e, {...e, event: e.event + '/b'}, {...e, event: e.event + '/c'}]; }",
        &sluice_functions::FunctionSpec::default(),
    )
    .unwrap();
    let chain = chain_with(dir.path(), fns);
    let full = journal_with_raw(12);
    run_with(full.clone(), chain.clone(), None, 5).await;
    let want: Vec<(String, String)> = good_values(&full, 0)
        .iter()
        .map(|v| {
            (
                v["event_id"].as_str().unwrap().into(),
                v["event"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(want.len(), 27, "9 good raw records, 3 events each");
    let good_records = full.records(topic::GOOD, 0);
    let bad_records = full.records(topic::BAD, 0);
    for kept in 0..=good_records.len() {
        let j = journal_with_raw(12);
        j.append_now(
            topic::GOOD,
            0,
            good_records[..kept]
                .iter()
                .map(|r| r.value.clone())
                .collect(),
        )
        .unwrap();
        // Every bad row below the last kept good record was durable before it.
        j.append_now(
            topic::BAD,
            0,
            bad_records.iter().map(|r| r.value.clone()).collect(),
        )
        .unwrap();
        run_with(j.clone(), chain.clone(), None, 4).await;
        let got: Vec<(String, String)> = good_values(&j, 0)
            .iter()
            .map(|v| {
                (
                    v["event_id"].as_str().unwrap().into(),
                    v["event"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(got, want, "after a crash with {kept} good records written");
        assert_eq!(bad_ids(&j), bad_ids(&full));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_events_are_not_processed_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 1);
    fns.deploy(
        "filter",
        "export function transform(e) { return e.event === 'e0' ? e : null; }",
        &sluice_functions::FunctionSpec::default(),
    )
    .unwrap();
    let chain = chain_with(dir.path(), fns.clone());
    let j = journal_with_raw(40);
    run_with(j.clone(), chain.clone(), None, 8).await;
    assert_eq!(good_ids(&j), [("id0000".to_string(), 0)]);
    let events_in = fns.stats()[0].events_in;
    assert_eq!(events_in, 30);
    // The last good record is raw 0, but the committed offset says 40 were done.
    run_with(j.clone(), chain, None, 8).await;
    assert_eq!(fns.stats()[0].events_in, events_in, "nothing ran twice");
    assert_eq!(good_ids(&j).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_resumes_past_dropped_events_not_yet_committed() {
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 1);
    fns.deploy(
        "filter",
        "export function transform(e) { return ['e0', 'e38'].includes(e.event) ? e : null; }",
        &sluice_functions::FunctionSpec {
            batch_size: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let j = journal_with_raw(40);
    // The second append to `good` (raw 38's event, in the last batch) fails once: the runner
    // resumes, with the events of raw 1..32 dropped (and bad rows written) but not committed.
    j.fail_appends(topic::GOOD, 1, 1);
    run_with(j.clone(), chain_with(dir.path(), fns.clone()), None, 8).await;
    let good: Vec<u64> = good_ids(&j).iter().map(|(_, raw)| *raw).collect();
    assert_eq!(good, [0, 38]);
    assert_eq!(bad_ids(&j).len(), 10);
    // The retry started from the last batch, not from raw 1 again.
    assert_eq!(fns.stats()[0].events_in, 30 + 6, "{:?}", fns.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_window_waits_for_a_full_batch() {
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 1);
    fns.deploy(
        "windowed",
        "export function process(events) { return events; }",
        &sluice_functions::FunctionSpec {
            batch_size: 6,
            batch_window_ms: 60_000,
            ..Default::default()
        },
    )
    .unwrap();
    let j = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    // Events 0, 1, 2, 4, 5, 6 are good (every fourth is a bad row before the function).
    j.append_now(topic::RAW, 0, (0..4).map(raw_record).collect())
        .unwrap();
    let runner = Runner::new(
        j.clone(),
        RunnerConfig::default().validate().unwrap(),
        chain_with(dir.path(), fns.clone()),
        None,
    )
    .unwrap();
    let progress = runner.progress();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    // Four records are fewer than the batch: the runner holds them for the window.
    let early = tokio::time::timeout(
        Duration::from_millis(300),
        progress.wait_until(|s| s.next_offsets[0] > 0),
    )
    .await;
    assert!(early.is_err(), "the runner did not wait for its batch");
    // Three more fill it: one invocation takes all six good events, long before the window ends.
    j.append_now(topic::RAW, 0, (4..7).map(raw_record).collect())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for_offsets(&[7]))
        .await
        .expect("a full batch goes at once")
        .unwrap();
    let s = &fns.stats()[0];
    assert_eq!((s.invocations, s.events_in), (1, 6));
    // A shutdown does not wait for the window: what is there is processed and the runner stops.
    j.append_now(topic::RAW, 0, vec![raw_record(8)]).unwrap();
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("drained without waiting for the window")
        .unwrap()
        .unwrap();
    assert_eq!(good_ids(&j).len(), 7);
}

/// After a crash a partition's end jumps to the journal's floor: the runner steps over the gap
/// (between records and at the tail), counts as caught up, and commits the end.
#[tokio::test]
async fn caught_up_resolves_after_a_crash_gap() {
    const CRASH_GAP: u64 = 1 << 20;
    let j = journal_with_raw(10);
    run_to_end(j.clone(), 4).await;
    j.crash_gap(topic::RAW, 0, CRASH_GAP).unwrap();
    j.append_now(topic::RAW, 0, (10..15).map(raw_record).collect())
        .unwrap();
    j.crash_gap(topic::RAW, 0, CRASH_GAP).unwrap();
    run_to_end(j.clone(), 4).await;
    let end = j.end(topic::RAW, 0).unwrap();
    assert_eq!(end, 15 + 2 * CRASH_GAP);
    assert_eq!(
        // The runner's consumer group.
        j.committed("functions", topic::RAW, 0).unwrap(),
        Some(end)
    );
    let mut ids: Vec<String> = good_ids(&j)
        .into_iter()
        .chain(bad_ids(&j))
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    let want: Vec<String> = (0..15).map(|i| format!("id{i:04}")).collect();
    assert_eq!(ids, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_this_node_cannot_start_holds_the_partition_until_it_can() {
    use sluice_functions::udf::{Keyring, SecretsAtRest, SecretsKey};
    // Deployed, with a sealed secret, on a node that has the key.
    let keyed_dir = tempfile::tempdir().unwrap();
    let key = SecretsKey::from_hex(&"3c".repeat(32)).unwrap();
    let key = Arc::new(Keyring::new(key, Vec::new()));
    let keyed = sluice_functions::Functions::open_with(
        &keyed_dir.path().join("functions"),
        1,
        None,
        SecretsAtRest::Sealed(key),
    )
    .unwrap();
    let spec = sluice_functions::FunctionSpec {
        secrets: [("salt".to_string(), "pepper".to_string())].into(),
        ..Default::default()
    };
    let code = "export function transform(e, ctx) { return {...e, salt: ctx.secrets.salt}; }";
    keyed.deploy("salted", code, &spec).unwrap();
    let bundle = keyed.export("salted").unwrap().unwrap();

    // A runner on a node without the key.
    let dir = tempfile::tempdir().unwrap();
    let fns = functions(dir.path(), 1);
    let j = MemJournal::with_topics(&[(topic::RAW, 1), (topic::GOOD, 1), (topic::BAD, 1)]);
    let health = sluice_journal::Health::new();
    let settings = RunnerConfig::default().validate().unwrap();
    let runner = Runner::new(
        j.clone(),
        settings,
        chain_with(dir.path(), fns.clone()),
        None,
    )
    .unwrap()
    .with_health(health.stage("runner"));
    let progress = runner.progress();
    let stop = CancellationToken::new();
    let task = tokio::spawn(runner.run(stop.clone()));
    let append = |from: usize| {
        for i in from..from + 5 {
            j.append_now(topic::RAW, 0, vec![raw_record(i)]).unwrap();
        }
    };
    append(0);
    wait_until("first events processed", || progress.next_offset(0) == 5).await;

    // The function is taken but cannot start here: nothing passes without it, and the runner
    // says why.
    let f = fns.clone();
    let taken = tokio::task::spawn_blocking(move || f.import("salted", Some(&bundle)))
        .await
        .unwrap();
    let e = taken.unwrap_err().to_string();
    assert!(e.contains("secrets_key_file"), "{e}");
    assert!(fns.live().blocked().is_some_and(|b| b.contains("salt")));
    append(5);
    let failing = || {
        health.snapshot()[0]
            .failing
            .as_ref()
            .is_some_and(|f| f.error.contains("user functions cannot run"))
    };
    wait_until("the runner reports the blocked functions", failing).await;
    let outputs = || j.records(topic::GOOD, 0).len() + j.records(topic::BAD, 0).len();
    assert_eq!((progress.next_offset(0), outputs()), (5, 5));

    // Once what the store holds runs again (here: the function is deleted), the partition
    // goes on from where it stopped.
    let f = fns.clone();
    let deleted = tokio::task::spawn_blocking(move || f.import("salted", None))
        .await
        .unwrap();
    assert!(deleted.unwrap());
    assert!(fns.live().blocked().is_none());
    wait_until("the rest processed", || progress.next_offset(0) == 10).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(outputs(), 10);
    let good = good_values(&j, 0);
    assert!(
        good.iter().all(|e| !e.to_string().contains("pepper")),
        "{good:?}"
    );
}

/// Waits until `done`, at most 30 s.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
