//! The `Journal` API on a healthy journal: append and read, limits, topics, partitions, segment
//! rolls, the watermark, waiting, consumer offsets, reopening, group commit under concurrency.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::{FsyncPolicy, JournalError};

#[test]
fn append_then_read_returns_the_same_bytes_at_dense_offsets() {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    assert_eq!(append(&j, "t", 0, &[b"a", b"", b"ccc"]).unwrap(), 0);
    assert_eq!(append(&j, "t", 0, &[b"d"]).unwrap(), 3);
    assert_eq!(j.end("t", 0).unwrap(), 4);
    assert_eq!(j.start("t", 0).unwrap(), 0);
    let all = j.read("t", 0, 0, 100, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        values(&all),
        vec![b"a".to_vec(), vec![], b"ccc".to_vec(), b"d".to_vec()]
    );
    assert!(all.iter().all(|r| r.timestamp_ms > 1_600_000_000_000));
    // Limits: records, bytes (at least one record), from the middle, at the end.
    assert_eq!(j.read("t", 0, 1, 2, usize::MAX).unwrap().len(), 2);
    let one = j.read("t", 0, 2, 100, 1).unwrap();
    assert_eq!(values(&one), vec![b"ccc".to_vec()]);
    assert_eq!(
        j.read("t", 0, 0, 100, 1).unwrap().len(),
        2,
        "an empty value adds no bytes"
    );
    assert!(j.read("t", 0, 4, 100, usize::MAX).unwrap().is_empty());
    assert!(j.read("t", 0, 99, 100, usize::MAX).unwrap().is_empty());
    assert!(j.read("t", 0, 0, 0, usize::MAX).unwrap().is_empty());
    // An empty append resolves with the end and writes nothing.
    assert_eq!(append(&j, "t", 0, &[]).unwrap(), 4);
    assert_eq!(j.end("t", 0).unwrap(), 4);
}

#[test]
fn errors_name_the_missing_topic_partition_and_limits() {
    let dir = scratch();
    let mut s = settings(dir.path());
    s.max_record_bytes = 10;
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    assert!(matches!(
        append(&j, "nope", 0, &[b"x"]),
        Err(JournalError::TopicNotFound(_))
    ));
    assert!(matches!(
        append(&j, "t", 2, &[b"x"]),
        Err(JournalError::PartitionNotFound { partition: 2, .. })
    ));
    assert!(matches!(
        j.read("t", 5, 0, 1, 1),
        Err(JournalError::PartitionNotFound { .. })
    ));
    assert!(matches!(
        append(&j, "t", 0, &[b"ok", b"this is too long"]),
        Err(JournalError::RecordTooLarge {
            size: 16,
            limit: 10
        })
    ));
    assert_eq!(j.end("t", 0).unwrap(), 0, "a refused batch writes nothing");
    assert!(matches!(j.end("x", 0), Err(JournalError::TopicNotFound(_))));
    assert!(matches!(
        j.partitions("x"),
        Err(JournalError::TopicNotFound(_))
    ));
}

#[test]
fn topics_are_created_once_listed_sorted_and_deleted_with_their_data() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    assert_eq!(j.create_topic("raw", 3).unwrap().partitions, 3);
    assert_eq!(
        j.create_topic("raw", 3).unwrap().partitions,
        3,
        "same count is ok"
    );
    assert!(matches!(
        j.create_topic("raw", 4),
        Err(JournalError::TopicExists { existing: 3, .. })
    ));
    j.create_topic("bad", 1).unwrap();
    for name in ["", ".x", "a/b", "a b"] {
        assert!(
            matches!(j.create_topic(name, 1), Err(JournalError::Invalid(_))),
            "{name}"
        );
    }
    assert!(matches!(
        j.create_topic("z", 0),
        Err(JournalError::Invalid(_))
    ));
    assert!(matches!(
        j.create_topic("z", 1025),
        Err(JournalError::Invalid(_))
    ));
    let names: Vec<_> = j
        .topics()
        .into_iter()
        .map(|t| (t.name, t.partitions))
        .collect();
    assert_eq!(names, vec![("bad".to_string(), 1), ("raw".to_string(), 3)]);
    assert_eq!(j.partitions("raw").unwrap(), 3);
    append(&j, "raw", 2, &[b"x"]).unwrap();
    j.delete_topic("raw").unwrap();
    assert!(matches!(
        j.delete_topic("raw"),
        Err(JournalError::TopicNotFound(_))
    ));
    assert!(!dir.path().join("raw").exists());
    assert!(matches!(
        append(&j, "raw", 0, &[b"x"]),
        Err(JournalError::TopicNotFound(_))
    ));
    // Recreated, it starts empty.
    j.create_topic("raw", 2).unwrap();
    assert_eq!(append(&j, "raw", 1, &[b"y"]).unwrap(), 0);
    drop(j);
    let j = open(&s);
    assert_eq!(j.partitions("raw").unwrap(), 2);
    assert_eq!(j.partitions("bad").unwrap(), 1);
    assert_eq!(values(&read_all(&j, "raw", 1)), vec![b"y".to_vec()]);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp") || n.starts_with(".deleted"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn partitions_are_independent() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 3).unwrap();
    for i in 0..30 {
        let p = (i % 3) as u32;
        append(&j, "t", p, &[&value(i)]).unwrap();
    }
    for p in 0..3u32 {
        assert_eq!(j.end("t", p).unwrap(), 10);
        let expect: Vec<_> = (0..30).filter(|i| i % 3 == p as usize).map(value).collect();
        assert_eq!(values(&read_all(&j, "t", p)), expect);
    }
}

#[test]
fn segments_roll_at_the_size_limit_and_reads_cross_them() {
    let dir = scratch();
    let s = settings(dir.path()); // 1 KiB segments
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    let all: Vec<Vec<u8>> = (0..120).map(value).collect();
    let offsets = append_each(&j, "t", 0, &all);
    assert_eq!(offsets, (0..120).collect::<Vec<_>>());
    // A record larger than a whole segment gets a segment of its own.
    let big = vec![7u8; 3000];
    assert_eq!(append(&j, "t", 0, &[&big]).unwrap(), 120);
    assert_eq!(append(&j, "t", 0, &[b"after"]).unwrap(), 121);
    let files = segment_files(dir.path(), "t", 0);
    assert!(files.len() >= 5, "{files:?}");
    let mut total = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        let base: u64 = f.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let (header, frames) = crate::format::decode_segment(&std::fs::read(f).unwrap()).unwrap();
        assert_eq!(header.base_offset, base, "file named by its base offset");
        assert!(len <= 1024 || frames.len() == 1, "{f:?} is {len} bytes");
        total += len;
    }
    assert_eq!(j.size_bytes("t", 0).unwrap(), total);
    let mut expect = all.clone();
    expect.push(big);
    expect.push(b"after".to_vec());
    for page in [1, 7, 1000] {
        assert_eq!(values(&read_all_paged(&j, "t", 0, page).unwrap()), expect);
    }
    // Reading from every offset starts exactly there.
    for from in 0..122u64 {
        let r = j.read("t", 0, from, 3, usize::MAX).unwrap();
        assert_eq!(r[0].offset, from);
        assert_eq!(r[0].value.to_vec(), expect[from as usize]);
    }
    drop(j);
    let j = open(&s);
    assert_eq!(values(&read_all(&j, "t", 0)), expect);
    assert_eq!(
        append(&j, "t", 0, &[b"next"]).unwrap(),
        122,
        "clean reopen: no gap"
    );
    let report = j.recovery_report().partition("t", 0).unwrap();
    assert_eq!((report.truncated_bytes, report.floor_gap), (0, None));
}

#[test]
fn queued_appends_stay_invisible_until_committed() {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    append(&j, "t", 0, &[b"durable"]).unwrap();
    j.hold("t", 0, true);
    let pending = j.append("t", 0, vec![Bytes::from_static(b"queued")]);
    assert_eq!(j.end("t", 0).unwrap(), 1);
    assert_eq!(
        values(&j.read("t", 0, 0, 10, usize::MAX).unwrap()),
        vec![b"durable".to_vec()]
    );
    assert!(j.read("t", 0, 1, 10, usize::MAX).unwrap().is_empty());
    j.hold("t", 0, false);
    assert_eq!(futures::executor::block_on(pending).unwrap(), 1);
    assert_eq!(j.end("t", 0).unwrap(), 2);
}

#[test]
fn readers_running_alongside_appends_never_pass_the_watermark() {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    let reader = {
        let j = j.clone();
        std::thread::spawn(move || {
            let mut seen = 0u64;
            while seen < 300 {
                let records = j.read("t", 0, seen, 50, usize::MAX).unwrap();
                let end = j.end("t", 0).unwrap();
                for r in &records {
                    assert_eq!(r.offset, seen, "dense and in order");
                    assert!(r.offset < end, "read past the watermark");
                    assert_eq!(r.value.to_vec(), value(r.offset as usize));
                    seen += 1;
                }
            }
        })
    };
    let all: Vec<_> = (0..300).map(value).collect();
    append_each(&j, "t", 0, &all);
    reader.join().unwrap();
}

#[tokio::test]
async fn wait_for_wakes_when_the_watermark_passes_and_times_out_otherwise() {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    // Nothing coming: returns after the timeout.
    j.wait_for("t", 0, 0, Duration::from_millis(20)).await;
    assert_eq!(j.end("t", 0).unwrap(), 0);
    // Already past: returns at once.
    j.append("t", 0, vec![Bytes::from_static(b"a")])
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(5),
        j.wait_for("t", 0, 0, Duration::from_secs(60)),
    )
    .await
    .expect("already durable");
    // A waiter wakes when another task appends.
    let waiter = {
        let j = j.clone();
        tokio::spawn(async move { j.wait_for("t", 0, 1, Duration::from_secs(60)).await })
    };
    j.append("t", 0, vec![Bytes::from_static(b"b")])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by the append")
        .unwrap();
    // Unknown partitions do not hang.
    tokio::time::timeout(
        Duration::from_secs(5),
        j.wait_for("x", 0, 0, Duration::from_secs(60)),
    )
    .await
    .expect("unknown topic resolves at once");
}

#[test]
fn consumer_offsets_are_durable_across_reopen() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    append_each(&j, "t", 1, &(0..10).map(value).collect::<Vec<_>>());
    assert_eq!(j.committed("lake", "t", 1).unwrap(), None);
    j.commit("lake", "t", 1, 4).unwrap();
    j.commit("lake", "t", 1, 7).unwrap();
    j.commit("../odd group/", "t", 1, 10).unwrap();
    j.commit("lake", "t", 0, 0).unwrap();
    assert!(matches!(
        j.commit("lake", "t", 1, 11),
        Err(JournalError::Invalid(_))
    ));
    assert!(matches!(
        j.commit("", "t", 1, 1),
        Err(JournalError::Invalid(_))
    ));
    assert!(matches!(
        j.commit("g", "nope", 0, 0),
        Err(JournalError::TopicNotFound(_))
    ));
    assert!(matches!(
        j.committed("g", "t", 9),
        Err(JournalError::PartitionNotFound { .. })
    ));
    drop(j);
    let j = open(&s);
    assert_eq!(j.committed("lake", "t", 1).unwrap(), Some(7));
    assert_eq!(j.committed("../odd group/", "t", 1).unwrap(), Some(10));
    assert_eq!(j.committed("lake", "t", 0).unwrap(), Some(0));
    assert_eq!(j.committed("other", "t", 1).unwrap(), None);
    assert!(
        j.recovery_report()
            .partition("t", 1)
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    assert!(matches!(
        LocalJournal::open_settings(s.clone()),
        Err(JournalError::Locked(_))
    ));
    drop(j);
    open(&s);
}

#[test]
fn appends_after_shutdown_are_refused() {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    append(&j, "t", 0, &[b"a"]).unwrap();
    j.shutdown();
    assert!(matches!(
        append(&j, "t", 0, &[b"b"]),
        Err(JournalError::Closed)
    ));
    assert_eq!(
        values(&read_all(&j, "t", 0)),
        vec![b"a".to_vec()],
        "reads still work"
    );
}

#[test]
fn interval_policy_acks_after_write_and_syncs_in_the_background() {
    let dir = scratch();
    let mut s = settings(dir.path());
    s.fsync = FsyncPolicy::Interval(Duration::from_millis(5));
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    let before = j.stats().fsyncs;
    let all: Vec<_> = (0..20).map(value).collect();
    append_each(&j, "t", 0, &all);
    assert_eq!(j.stats().group_commits, 20);
    // Appends did not fsync each; the flusher catches up on its own.
    let part = j.partition("t", 0).unwrap();
    wait_until("the flusher to sync", Duration::from_secs(10), || {
        part.synced_end.load(std::sync::atomic::Ordering::Acquire) == 20
    });
    assert!(j.stats().fsyncs > before);
    drop(j);
    let j = open(&s);
    assert_eq!(values(&read_all(&j, "t", 0)), all);
    assert_eq!(j.end("t", 0).unwrap(), 20, "clean shutdown: no gap");
}

/// Many tasks append at once: offsets are dense and unique per partition, every value lands
/// where its append said, and group commit needs far fewer fsyncs than appends. Runs on the
/// real disk, where an fdatasync takes milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_dense_unique_offsets_and_share_fsyncs() {
    const TASKS: usize = 64;
    const EACH: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.segment_bytes = 64 << 20;
    s.floor_reserve = 1 << 20;
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    let before = j.stats();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let p = (task % 2) as u32;
            let mut got = Vec::new();
            for i in 0..EACH {
                let mut v = format!("{task}:{i}:").into_bytes();
                v.resize(500, b'x');
                let offset = j
                    .append("t", p, vec![Bytes::from(v.clone())])
                    .await
                    .unwrap();
                got.push((p, offset, v));
            }
            got
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let stats = j.stats();
    let appends = stats.appends - before.appends;
    let commits = stats.group_commits - before.group_commits;
    assert_eq!(appends as usize, TASKS * EACH);
    for p in 0..2u32 {
        let mine: Vec<_> = acked.iter().filter(|(q, _, _)| *q == p).collect();
        let offsets: BTreeSet<u64> = mine.iter().map(|(_, o, _)| *o).collect();
        assert_eq!(offsets.len(), mine.len(), "offsets are unique");
        assert_eq!(
            offsets,
            (0..mine.len() as u64).collect(),
            "offsets are dense"
        );
        let records = read_all(&j, "t", p);
        for (_, offset, v) in mine {
            assert_eq!(&records[*offset as usize].value.to_vec(), v);
        }
    }
    assert!(
        commits * 4 <= appends,
        "group commit should coalesce: {commits} commits for {appends} appends"
    );
    eprintln!(
        "{appends} appends in {commits} group commits ({:.1} per fsync)",
        appends as f64 / commits as f64
    );
}

#[test]
fn appends_from_many_threads_interleave_without_loss() {
    let dir = scratch();
    let j: Arc<LocalJournal> = open(&settings(dir.path()));
    j.create_topic("t", 1).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let j = j.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let v = format!("{t}/{i}");
                        (append(&j, "t", 0, &[v.as_bytes(), b"pair"]).unwrap(), v)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let acked: Vec<(u64, String)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let records = read_all(&j, "t", 0);
    assert_eq!(records.len(), acked.len() * 2);
    for (offset, v) in &acked {
        let at = *offset as usize;
        assert_eq!(records[at].value.to_vec(), v.as_bytes());
        assert_eq!(
            records[at + 1].value.to_vec(),
            b"pair",
            "a batch stays together"
        );
    }
    assert_eq!(j.end("t", 0).unwrap(), records.len() as u64);
}
