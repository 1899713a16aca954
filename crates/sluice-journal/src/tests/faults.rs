//! Storage faults at the exact calls the journal makes: out of space while writing a segment or
//! creating one (roll back, `DiskFull`, stay usable) and fsync failures (poison, never retry).

use std::sync::atomic::Ordering;

use super::*;
use crate::JournalError;

#[test]
fn disk_full_rolls_the_write_back_and_the_journal_stays_usable() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append(&j, "t", 0, &[b"one"]).unwrap();
    let seg = segment_files(dir.path(), "t", 0).pop().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    j.faults().enospc_writes.store(1, Ordering::SeqCst);
    let err = append(&j, "t", 0, &[b"two", b"three"]).unwrap_err();
    assert!(matches!(err, JournalError::DiskFull(_)), "{err}");
    assert_eq!(err.kind(), sluice_event::ErrorKind::Unavailable);
    assert!(!j.is_failed());
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "partial write rolled back"
    );
    assert_eq!(j.end("t", 0).unwrap(), 1);
    // The refused records never got offsets: the next append takes offset 1.
    assert_eq!(append(&j, "t", 0, &[b"two"]).unwrap(), 1);
    drop(j);
    let j = open(&s);
    assert_eq!(
        values(&read_all(&j, "t", 0)),
        vec![b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(
        j.recovery_report()
            .partition("t", 0)
            .unwrap()
            .truncated_bytes,
        0
    );
}

#[test]
fn disk_full_while_rolling_leaves_no_half_created_segment() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    let mut n = 0;
    while segment_files(dir.path(), "t", 0).len() < 2 {
        append(&j, "t", 0, &[&value(n)]).unwrap();
        n += 1;
    }
    // Fill the second segment until the next record must roll a third one.
    let files_before = loop {
        let files = segment_files(dir.path(), "t", 0);
        let active = std::fs::metadata(files.last().unwrap()).unwrap().len();
        if active + crate::format::frame_len(value(n).len()) > s.segment_bytes {
            break files;
        }
        append(&j, "t", 0, &[&value(n)]).unwrap();
        n += 1;
    };
    j.faults().enospc_writes.store(1, Ordering::SeqCst);
    let err = append(&j, "t", 0, &[&value(n)]).unwrap_err();
    assert!(matches!(err, JournalError::DiskFull(_)), "{err}");
    assert_eq!(segment_files(dir.path(), "t", 0), files_before);
    assert!(!j.is_failed());
    assert_eq!(append(&j, "t", 0, &[&value(n)]).unwrap(), n as u64);
    assert_eq!(
        segment_files(dir.path(), "t", 0).len(),
        files_before.len() + 1
    );
    assert_eq!(read_all(&j, "t", 0).len(), n + 1);
}

#[test]
fn an_fsync_failure_poisons_the_journal_and_is_never_acknowledged() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    append(&j, "t", 0, &[b"durable"]).unwrap();
    j.faults().eio_data_syncs.store(1, Ordering::SeqCst);
    let err = append(&j, "t", 0, &[b"unknown"]).unwrap_err();
    assert!(matches!(err, JournalError::Failed(_)), "{err}");
    assert!(j.is_failed());
    // Every later append fails, on every partition; the failed fdatasync is never retried.
    let data_syncs = j.counters().data_syncs.load(Ordering::SeqCst);
    for p in 0..2 {
        assert!(matches!(
            append(&j, "t", p, &[b"later"]),
            Err(JournalError::Failed(_))
        ));
    }
    assert_eq!(
        j.counters().data_syncs.load(Ordering::SeqCst),
        data_syncs,
        "no fdatasync after the failure"
    );
    assert!(matches!(
        j.create_topic("u", 1),
        Err(JournalError::Failed(_))
    ));
    assert!(matches!(
        j.commit("g", "t", 0, 1),
        Err(JournalError::Failed(_))
    ));
    // Durable data stays readable; the failed record is not visible.
    assert_eq!(values(&read_all(&j, "t", 0)), vec![b"durable".to_vec()]);
    drop(j);
    // Recovery from disk: the acked record is there and offsets move on.
    let j = open(&s);
    assert!(!j.is_failed());
    let all = read_all(&j, "t", 0);
    assert_eq!(all[0].value.to_vec(), b"durable");
    assert!(append(&j, "t", 0, &[b"x"]).unwrap() >= 2);
}

#[test]
fn an_fsync_failure_at_any_point_of_a_workload_never_loses_an_acknowledged_record() {
    // SQLite-style: fail the k-th fsync (of any kind, in any thread) for k = 1, 2, ... until the
    // workload completes without reaching it.
    for k in 1.. {
        let dir = scratch();
        let s = settings(dir.path());
        let j = open(&s);
        j.create_topic("t", 1).unwrap();
        let base = j.stats().fsyncs;
        j.faults().eio_at_fsync.store(base + k, Ordering::SeqCst);
        let mut acked = Vec::new();
        let mut failed = false;
        for i in 0..40 {
            match append(&j, "t", 0, &[&value(i)]) {
                Ok(offset) => acked.push((offset, value(i))),
                Err(JournalError::Failed(_)) => {
                    failed = true;
                    break;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        let hit = failed || j.is_failed();
        drop(j);
        let j = open(&s);
        let all = read_all(&j, "t", 0);
        for (offset, v) in &acked {
            let r = all
                .iter()
                .find(|r| r.offset == *offset)
                .unwrap_or_else(|| panic!("k={k}: acked offset {offset} lost"));
            assert_eq!(&r.value.to_vec(), v);
        }
        let max_acked = acked.last().map_or(0, |(o, _)| *o);
        assert!(append(&j, "t", 0, &[b"z"]).unwrap() > max_acked, "k={k}");
        if !hit {
            assert!(
                k > 20,
                "the loop must have covered many fsyncs, stopped at {k}"
            );
            break;
        }
    }
}
