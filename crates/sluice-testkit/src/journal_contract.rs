//! The `Journal` contract as checks any backend must pass, run against the file journal and the
//! JetStream journal alike (the server's `tests/it/jetstream.rs`). Each check makes its own
//! topics, so they can run one after another on one journal. Call them from a multi-thread
//! tokio runtime: the synchronous methods may wait on network IO there.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_journal::{Journal, JournalError, Record};

/// How long anything that is refreshed in the background may take to show.
const DEADLINE: Duration = Duration::from_secs(10);

/// Every check below, in order.
pub async fn check_all(j: Arc<dyn Journal>) {
    append_then_read_gives_dense_offsets_and_honours_limits(j.as_ref()).await;
    errors_name_the_missing_topic_partition_and_limits(j.as_ref()).await;
    topics_are_created_once_listed_sorted_and_deleted(j.as_ref()).await;
    wait_for_wakes_on_append_and_times_out_otherwise(j.clone()).await;
    committed_positions_are_per_group_and_partition(j.as_ref()).await;
    concurrent_appends_get_dense_offsets_and_keep_batches_whole(j.clone()).await;
    size_bytes_counts_what_is_stored(j.as_ref()).await;
}

fn bytes(values: &[&[u8]]) -> Vec<Bytes> {
    values.iter().map(|v| Bytes::copy_from_slice(v)).collect()
}

fn values(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.value.to_vec()).collect()
}

/// Every record of a partition from `from`, read in pages of `page`.
pub fn read_all(j: &dyn Journal, topic: &str, partition: u32, page: usize) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut from = j.start(topic, partition).expect("start");
    loop {
        let batch = j
            .read(topic, partition, from, page, usize::MAX)
            .expect("read");
        let Some(last) = batch.last() else {
            return out;
        };
        from = last.offset + 1;
        out.extend(batch);
    }
}

pub async fn append_then_read_gives_dense_offsets_and_honours_limits(j: &dyn Journal) {
    j.create_topic("c-dense", 1).unwrap();
    assert_eq!(j.end("c-dense", 0).unwrap(), 0);
    assert_eq!(j.start("c-dense", 0).unwrap(), 0);
    let first = j.append("c-dense", 0, bytes(&[b"a", b"", b"ccc"]));
    assert_eq!(first.await.unwrap(), 0);
    assert_eq!(j.append("c-dense", 0, bytes(&[b"d"])).await.unwrap(), 3);
    assert_eq!(
        j.end("c-dense", 0).unwrap(),
        4,
        "end covers an acked append"
    );
    let all = j.read("c-dense", 0, 0, 100, usize::MAX).unwrap();
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        values(&all),
        vec![b"a".to_vec(), vec![], b"ccc".to_vec(), b"d".to_vec()]
    );
    assert!(all.iter().all(|r| r.timestamp_ms > 1_600_000_000_000));
    assert_eq!(j.read("c-dense", 0, 1, 2, usize::MAX).unwrap().len(), 2);
    assert_eq!(
        values(&j.read("c-dense", 0, 2, 100, 1).unwrap()),
        vec![b"ccc".to_vec()],
        "at least one record whatever max_bytes"
    );
    assert_eq!(
        j.read("c-dense", 0, 0, 100, 1).unwrap().len(),
        2,
        "an empty value adds no bytes"
    );
    assert!(j.read("c-dense", 0, 4, 100, usize::MAX).unwrap().is_empty());
    assert!(
        j.read("c-dense", 0, 99, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    assert!(j.read("c-dense", 0, 0, 0, usize::MAX).unwrap().is_empty());
    assert_eq!(j.append("c-dense", 0, Vec::new()).await.unwrap(), 4);
    assert_eq!(
        j.end("c-dense", 0).unwrap(),
        4,
        "an empty append writes nothing"
    );
}

pub async fn errors_name_the_missing_topic_partition_and_limits(j: &dyn Journal) {
    j.create_topic("c-errors", 2).unwrap();
    assert!(matches!(
        j.append("nope", 0, bytes(&[b"x"])).await,
        Err(JournalError::TopicNotFound(_))
    ));
    assert!(matches!(
        j.append("c-errors", 2, bytes(&[b"x"])).await,
        Err(JournalError::PartitionNotFound { partition: 2, .. })
    ));
    assert!(matches!(
        j.read("c-errors", 5, 0, 1, 1),
        Err(JournalError::PartitionNotFound { .. })
    ));
    assert!(matches!(j.end("x", 0), Err(JournalError::TopicNotFound(_))));
    assert!(matches!(
        j.partitions("x"),
        Err(JournalError::TopicNotFound(_))
    ));
    // Larger than any backend's default limit (8 MiB; less on JetStream's max_payload).
    let huge = Bytes::from(vec![0u8; 16 << 20]);
    assert!(matches!(
        j.append("c-errors", 0, vec![Bytes::from_static(b"ok"), huge]).await,
        Err(JournalError::RecordTooLarge { size, .. }) if size == 16 << 20
    ));
    assert_eq!(
        j.end("c-errors", 0).unwrap(),
        0,
        "a refused batch writes nothing"
    );
}

pub async fn topics_are_created_once_listed_sorted_and_deleted(j: &dyn Journal) {
    assert_eq!(j.create_topic("c-topics-b", 3).unwrap().partitions, 3);
    assert_eq!(
        j.create_topic("c-topics-b", 3).unwrap().partitions,
        3,
        "same count is ok"
    );
    assert!(matches!(
        j.create_topic("c-topics-b", 4),
        Err(JournalError::TopicExists { existing: 3, .. })
    ));
    j.create_topic("c-topics-a", 1).unwrap();
    for name in ["", ".x", "a/b", "a b"] {
        assert!(
            matches!(j.create_topic(name, 1), Err(JournalError::Invalid(_))),
            "{name:?}"
        );
    }
    assert!(matches!(
        j.create_topic("c-z", 0),
        Err(JournalError::Invalid(_))
    ));
    let names: Vec<_> = j
        .topics()
        .into_iter()
        .filter(|t| t.name.starts_with("c-topics"))
        .map(|t| (t.name, t.partitions))
        .collect();
    assert_eq!(
        names,
        vec![("c-topics-a".to_string(), 1), ("c-topics-b".to_string(), 3)]
    );
    let all: Vec<String> = j.topics().into_iter().map(|t| t.name).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "topics are sorted by name");
    j.append("c-topics-b", 2, bytes(&[b"x"])).await.unwrap();
    j.delete_topic("c-topics-b").unwrap();
    assert!(matches!(
        j.delete_topic("c-topics-b"),
        Err(JournalError::TopicNotFound(_))
    ));
    assert!(matches!(
        j.end("c-topics-b", 2),
        Err(JournalError::TopicNotFound(_))
    ));
    j.create_topic("c-topics-b", 1).unwrap();
    assert_eq!(
        j.end("c-topics-b", 0).unwrap(),
        0,
        "a new topic starts empty"
    );
}

pub async fn wait_for_wakes_on_append_and_times_out_otherwise(j: Arc<dyn Journal>) {
    j.create_topic("c-wait", 1).unwrap();
    let started = Instant::now();
    j.wait_for("c-wait", 0, 0, Duration::from_millis(50)).await;
    assert!(started.elapsed() >= Duration::from_millis(50), "timed out");
    let waiter = {
        let j = j.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            j.wait_for("c-wait", 0, 0, Duration::from_secs(30)).await;
            started.elapsed()
        })
    };
    j.append("c-wait", 0, bytes(&[b"x"])).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(30), "woken by the append");
    // Already past: resolves at once.
    let started = Instant::now();
    j.wait_for("c-wait", 0, 0, Duration::from_secs(30)).await;
    assert!(started.elapsed() < Duration::from_secs(30));
}

pub async fn committed_positions_are_per_group_and_partition(j: &dyn Journal) {
    j.create_topic("c-commit", 2).unwrap();
    for p in 0..2 {
        let records: Vec<Bytes> = (0..8u8).map(|i| Bytes::from(vec![i])).collect();
        j.append("c-commit", p, records).await.unwrap();
    }
    assert_eq!(j.committed("g1", "c-commit", 0).unwrap(), None);
    j.commit("g1", "c-commit", 0, 5).unwrap();
    j.commit("g1", "c-commit", 0, 7).unwrap();
    j.commit("g2", "c-commit", 1, 3).unwrap();
    assert_eq!(j.committed("g1", "c-commit", 0).unwrap(), Some(7));
    assert_eq!(j.committed("g1", "c-commit", 1).unwrap(), None);
    assert_eq!(j.committed("g2", "c-commit", 1).unwrap(), Some(3));
    assert!(matches!(
        j.commit("g1", "c-commit", 9, 1),
        Err(JournalError::PartitionNotFound { .. })
    ));
    assert!(
        matches!(
            j.commit("g1", "c-commit", 0, 9),
            Err(JournalError::Invalid(_))
        ),
        "a position past the end is refused"
    );
    assert_eq!(j.committed("g1", "c-commit", 0).unwrap(), Some(7));
}

pub async fn concurrent_appends_get_dense_offsets_and_keep_batches_whole(j: Arc<dyn Journal>) {
    const TASKS: usize = 8;
    const BATCHES: usize = 20;
    j.create_topic("c-concurrent", 1).unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for b in 0..BATCHES {
                let batch: Vec<Bytes> = (0..3)
                    .map(|i| Bytes::from(format!("{t}-{b}-{i}")))
                    .collect();
                firsts.push((b, j.append("c-concurrent", 0, batch).await.unwrap()));
            }
            (t, firsts)
        }));
    }
    let mut placed = Vec::new();
    for task in tasks {
        placed.push(task.await.unwrap());
    }
    let all = read_all(j.as_ref(), "c-concurrent", 0, 64);
    assert_eq!(all.len(), TASKS * BATCHES * 3);
    let offsets: BTreeSet<u64> = all.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..(TASKS * BATCHES * 3) as u64).collect());
    for (t, firsts) in placed {
        for (b, first) in firsts {
            for i in 0..3 {
                let r = &all[first as usize + i];
                assert_eq!(
                    r.value,
                    Bytes::from(format!("{t}-{b}-{i}")),
                    "batch kept whole"
                );
            }
        }
    }
}

pub async fn size_bytes_counts_what_is_stored(j: &dyn Journal) {
    j.create_topic("c-size", 1).unwrap();
    j.append("c-size", 0, vec![Bytes::from(vec![7u8; 4096])])
        .await
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while j.size_bytes("c-size", 0).unwrap() < 4096 {
        assert!(
            Instant::now() < deadline,
            "size_bytes never counted the record"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
