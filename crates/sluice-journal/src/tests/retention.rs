//! Retention: whole sealed segments by age and by size, never the active one; `start` moves up,
//! reads skip what is gone, and offsets are not reissued afterwards.

use super::*;
use crate::writer::now_ms;

fn filled(
    records: usize,
) -> (
    tempfile::TempDir,
    crate::config::Settings,
    Arc<LocalJournal>,
) {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append_each(&j, "t", 0, &(0..records).map(value).collect::<Vec<_>>());
    (dir, s, j)
}

#[test]
fn retention_by_size_deletes_the_oldest_sealed_segments_only() {
    let (dir, mut s, j) = filled(100);
    let files = segment_files(dir.path(), "t", 0);
    assert!(files.len() >= 4);
    let before = j.size_bytes("t", 0).unwrap();
    drop(j);
    s.retention_bytes = Some(before / 2);
    let j = open(&s);
    let report = j.enforce_retention().unwrap();
    assert!(report.deleted_segments >= 1);
    let after = j.size_bytes("t", 0).unwrap();
    assert!(after <= before / 2, "{after} > {}", before / 2);
    assert_eq!(before - after, report.deleted_bytes);
    let start = j.start("t", 0).unwrap();
    assert!(start > 0);
    assert_eq!(report.partitions[0].start, start);
    // Reads from below the start skip to it.
    let first = j.read("t", 0, 0, 1, usize::MAX).unwrap();
    assert_eq!(first[0].offset, start);
    assert_eq!(first[0].value.to_vec(), value(start as usize));
    let rest = read_all(&j, "t", 0);
    assert_eq!(rest.len() as u64, 100 - start);
    // A tiny limit still keeps the active segment.
    drop(j);
    s.retention_bytes = Some(1);
    let j = open(&s);
    j.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "t", 0).len(), 1);
    assert!(!read_all(&j, "t", 0).is_empty());
    assert_eq!(
        append(&j, "t", 0, &[b"next"]).unwrap(),
        100,
        "offsets continue"
    );
    let start = j.start("t", 0).unwrap();
    drop(j);
    let j = open(&s);
    assert_eq!(j.start("t", 0).unwrap(), start);
    assert!(
        j.recovery_report()
            .partition("t", 0)
            .unwrap()
            .quarantined
            .is_none()
    );
    assert_eq!(append(&j, "t", 0, &[b"again"]).unwrap(), 101);
}

#[test]
fn retention_by_age_uses_the_newest_record_of_each_segment() {
    let (dir, _s, j) = filled(60);
    let segments = segment_files(dir.path(), "t", 0).len();
    // Nothing is older than seven days yet.
    let report = j.enforce_retention().unwrap();
    assert_eq!(report, crate::RetentionReport::default());
    // Seven days and a bit later, every sealed segment is too old.
    let later = now_ms() + 7 * 86_400_000 + 1_000;
    let report = j.enforce_retention_at(later).unwrap();
    assert_eq!(report.deleted_segments as usize, segments - 1);
    assert_eq!(segment_files(dir.path(), "t", 0).len(), 1);
    let remaining = read_all(&j, "t", 0);
    assert_eq!(remaining.last().unwrap().offset, 59);
    assert_eq!(j.start("t", 0).unwrap(), remaining[0].offset);
    assert_eq!(append(&j, "t", 0, &[b"new"]).unwrap(), 60);
    // Running again deletes nothing more (the active segment stays).
    assert_eq!(j.enforce_retention_at(later).unwrap().deleted_segments, 0);
}

#[test]
fn retention_never_lets_a_crash_reissue_deleted_offsets() {
    let (dir, mut s, j) = filled(80);
    drop(j);
    s.retention_bytes = Some(1);
    let j = open(&s);
    j.enforce_retention().unwrap();
    j.crash();
    drop(j);
    // Even with the active segment gone too, the floor keeps offsets moving forward.
    for f in segment_files(dir.path(), "t", 0) {
        std::fs::remove_file(f).unwrap();
    }
    let j = open(&s);
    assert!(append(&j, "t", 0, &[b"x"]).unwrap() >= 80);
}

#[test]
fn retention_never_deletes_what_a_registered_consumer_has_not_read() {
    let (dir, _s, j) = filled(100);
    let segments = segment_files(dir.path(), "t", 0).len();
    j.commit("lake", "t", 0, 30).unwrap();
    let later = now_ms() + 7 * 86_400_000 + 1_000;
    let report = j.enforce_retention_at(later).unwrap();
    // Only segments wholly below the consumer's position went.
    let start = j.start("t", 0).unwrap();
    assert!(start <= 30, "start {start} passed the consumer at 30");
    assert!(report.deleted_segments >= 1, "{report:?}");
    assert_eq!(report.unread_deleted_records, 0);
    let held = &report.held[0];
    assert_eq!((held.consumer.as_str(), held.next), ("lake", 30));
    assert_eq!(
        held.segments as usize + report.deleted_segments as usize + 1,
        segments
    );
    let unread = j.read("t", 0, 30, 1000, usize::MAX).unwrap();
    assert_eq!(unread.len(), 70);
    assert_eq!(unread[0].value.to_vec(), value(30));
    // The slowest consumer decides; once every consumer has read on, the rest goes.
    j.commit("hot", "t", 0, 100).unwrap();
    assert_eq!(j.enforce_retention_at(later).unwrap().deleted_segments, 0);
    j.commit("lake", "t", 0, 100).unwrap();
    let report = j.enforce_retention_at(later).unwrap();
    assert!(report.held.is_empty(), "{report:?}");
    assert_eq!(segment_files(dir.path(), "t", 0).len(), 1);
    assert_eq!(
        j.consumers("t", 0).unwrap(),
        vec![("hot".to_string(), 100), ("lake".to_string(), 100)]
    );
}

#[test]
fn retention_bytes_also_waits_for_consumers() {
    let (dir, mut s, j) = filled(100);
    let before = j.size_bytes("t", 0).unwrap();
    drop(j);
    s.retention_bytes = Some(1);
    let j = open(&s);
    assert_eq!(j.register_consumer("loader", "t").unwrap(), 1);
    assert_eq!(j.register_consumer("loader", "t").unwrap(), 0, "idempotent");
    let report = j.enforce_retention().unwrap();
    assert_eq!(report.deleted_segments, 0);
    assert_eq!(j.size_bytes("t", 0).unwrap(), before);
    assert_eq!(report.held[0].consumer, "loader");
    // Unregistered, it holds nothing any more.
    assert_eq!(j.unregister_consumer("loader", "t").unwrap(), 1);
    assert!(j.consumers("t", 0).unwrap().is_empty());
    j.enforce_retention().unwrap();
    assert_eq!(segment_files(dir.path(), "t", 0).len(), 1);
}

#[test]
fn max_unread_bytes_deletes_unread_records_and_counts_them() {
    let (dir, mut s, j) = filled(100);
    let before = j.size_bytes("t", 0).unwrap();
    drop(j);
    s.max_unread_bytes = Some(before / 2);
    let j = open(&s);
    j.commit("lake", "t", 0, 10).unwrap();
    let report = j.enforce_retention().unwrap();
    assert!(report.deleted_segments >= 1);
    assert!(j.size_bytes("t", 0).unwrap() <= before / 2);
    let start = j.start("t", 0).unwrap();
    assert!(start > 10);
    assert_eq!(report.unread_deleted_records, start - 10);
    // The consumer reads on from the new start; nothing else changed.
    let rest = j.read("t", 0, 10, 1000, usize::MAX).unwrap();
    assert_eq!(rest[0].offset, start);
    assert_eq!(rest.len() as u64, 100 - start);
    assert!(segment_files(dir.path(), "t", 0).len() > 1);
}
