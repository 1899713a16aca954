//! Reopening after crashes: offset gaps from the floor, torn tails, half-created segments,
//! all-or-nothing append batches, damaged auxiliary files, missing segments, leftovers.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::JournalError;

#[test]
fn after_a_crash_offsets_continue_at_the_floor_and_reads_skip_the_gap() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append_each(&j, "t", 0, &(0..5).map(value).collect::<Vec<_>>());
    j.crash();
    drop(j);
    let j = open(&s);
    let report = j.recovery_report().partition("t", 0).unwrap().clone();
    let gap = report.floor_gap.expect("a crash leaves a gap");
    assert_eq!(gap.recovered_end, 5);
    assert!(gap.floor > 5);
    assert_eq!(j.end("t", 0).unwrap(), gap.floor);
    let next = append(&j, "t", 0, &[b"after"]).unwrap();
    assert_eq!(next, gap.floor);
    let all = read_all(&j, "t", 0);
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4, next]
    );
    // Reading from inside the gap returns the next record.
    for from in [5, 6, next - 1] {
        let r = j.read("t", 0, from, 10, usize::MAX).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].offset, next);
    }
    // The gap survives a clean reopen; nothing is reissued.
    drop(j);
    let j = open(&s);
    assert_eq!(read_all(&j, "t", 0).len(), 6);
    assert_eq!(append(&j, "t", 0, &[b"x"]).unwrap(), next + 1);
    assert!(
        j.recovery_report()
            .partition("t", 0)
            .unwrap()
            .floor_gap
            .is_none()
    );
}

#[test]
fn a_crash_before_any_append_keeps_offsets_unique_too() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    j.crash();
    drop(j);
    let j = open(&s);
    let first = append(&j, "t", 0, &[b"a"]).unwrap();
    assert_eq!(j.start("t", 0).unwrap(), first);
    assert_eq!(values(&read_all(&j, "t", 0)), vec![b"a".to_vec()]);
}

#[test]
fn unsynced_appends_are_all_or_nothing_per_batch() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append(&j, "t", 0, &[b"acked"]).unwrap();
    j.hold("t", 0, true);
    let batch: Vec<Bytes> = (0..3).map(|i| Bytes::from(value(i))).collect();
    let pending = j.append("t", 0, batch);
    let crashed = j.crash();
    assert!(matches!(
        futures::executor::block_on(pending),
        Err(JournalError::Closed)
    ));
    drop(j);
    let c = &crashed[0];
    let file_len = std::fs::metadata(&c.active_segment).unwrap().len();
    assert!(
        file_len > c.durable_len,
        "the crash wrote the batch without syncing it"
    );
    // Cut anywhere inside the unsynced batch: none of it survives; at its end: all of it.
    for cut in c.durable_len..=file_len {
        let copy = scratch();
        copy_dir(dir.path(), copy.path());
        let seg = copy
            .path()
            .join("t/0")
            .join(c.active_segment.file_name().unwrap());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let j = open(&settings(copy.path()));
        let got = values(&read_all(&j, "t", 0));
        if cut == file_len {
            assert_eq!(got.len(), 4, "complete batch kept");
        } else {
            assert_eq!(got, vec![b"acked".to_vec()], "cut at {cut}");
            let report = j.recovery_report().partition("t", 0).unwrap();
            assert_eq!(report.truncated_bytes, cut - c.durable_len);
        }
        assert!(
            append(&j, "t", 0, &[b"x"]).unwrap() >= 4,
            "no offset reissued"
        );
    }
}

#[test]
fn garbage_or_zeros_after_the_last_record_are_truncated() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    let all: Vec<_> = (0..6).map(value).collect();
    append_each(&j, "t", 0, &all);
    drop(j);
    let seg = segment_files(dir.path(), "t", 0).pop().unwrap();
    let mut seed = 0x9e37_79b9_u32;
    for n in [1usize, 7, 31, 32, 33, 100, 4096, 8192] {
        for zeros in [true, false] {
            let copy = scratch();
            copy_dir(dir.path(), copy.path());
            let path = copy.path().join("t/0").join(seg.file_name().unwrap());
            let tail: Vec<u8> = (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    if zeros { 0 } else { seed as u8 }
                })
                .collect();
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(&tail)
                .unwrap();
            let j = open(&settings(copy.path()));
            assert_eq!(
                values(&read_all(&j, "t", 0)),
                all,
                "{n} bytes, zeros {zeros}"
            );
            let report = j.recovery_report().partition("t", 0).unwrap();
            assert_eq!(report.truncated_bytes, n as u64);
            assert!(report.quarantined.is_none());
            assert_eq!(
                append(&j, "t", 0, &[b"x"]).unwrap(),
                6,
                "clean floor: no gap"
            );
        }
    }
}

#[test]
fn a_half_created_last_segment_is_removed() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    let all: Vec<_> = (0..5).map(value).collect();
    append_each(&j, "t", 0, &all);
    // A crash, so that offsets continue at the floor after the removed segment.
    j.crash();
    drop(j);
    for content in [vec![], vec![0u8; 40], b"SLUICEJS\x01".to_vec()] {
        let copy = scratch();
        copy_dir(dir.path(), copy.path());
        let name = crate::format::segment_file_name(5);
        std::fs::write(copy.path().join("t/0").join(&name), &content).unwrap();
        let j = open(&settings(copy.path()));
        let report = j.recovery_report().partition("t", 0).unwrap();
        assert_eq!(report.removed_segments, 1);
        assert_eq!(report.truncated_bytes, content.len() as u64);
        assert!(!copy.path().join("t/0").join(&name).exists());
        assert_eq!(values(&read_all(&j, "t", 0)), all);
        let x = append(&j, "t", 0, &[b"x"]).unwrap();
        assert!(x >= 5);
        // The segment before the removed one is active again and continues cleanly.
        drop(j);
        let j = open(&settings(copy.path()));
        assert!(
            j.recovery_report()
                .partition("t", 0)
                .unwrap()
                .quarantined
                .is_none()
        );
        assert_eq!(read_all(&j, "t", 0).len(), 6);
        assert!(append(&j, "t", 0, &[b"y"]).unwrap() > x);
    }
}

#[test]
fn a_missing_middle_segment_is_reported_as_lost_and_the_rest_serves() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    append_each(&j, "t", 0, &(0..60).map(value).collect::<Vec<_>>());
    append_each(&j, "t", 1, &(0..3).map(value).collect::<Vec<_>>());
    drop(j);
    let files = segment_files(dir.path(), "t", 0);
    assert!(files.len() >= 3);
    let missing =
        crate::format::parse_segment_file_name(files[1].file_name().unwrap().to_str().unwrap())
            .unwrap();
    let next =
        crate::format::parse_segment_file_name(files[2].file_name().unwrap().to_str().unwrap())
            .unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    let j = open(&s);
    let report = j.recovery_report().partition("t", 0).unwrap();
    assert!(report.quarantined.is_none(), "{report:?}");
    assert_eq!(
        report.lost,
        vec![crate::LostRange {
            from: missing,
            to: next
        }]
    );
    assert_eq!(j.recovery_report().lost_records(), next - missing);
    let records = read_all(&j, "t", 0);
    assert_eq!(records.len() as u64, 60 - (next - missing));
    assert!(
        records
            .iter()
            .all(|r| r.offset < missing || r.offset >= next)
    );
    assert_eq!(append(&j, "t", 0, &[b"x"]).unwrap(), 60);
    assert_eq!(read_all(&j, "t", 1).len(), 3);
    // Reported once: the next open finds a consistent partition.
    drop(j);
    let j = open(&s);
    assert!(
        j.recovery_report()
            .partition("t", 0)
            .unwrap()
            .lost
            .is_empty()
    );
}

#[test]
fn a_damaged_sealed_segment_keeps_its_records_on_both_sides_of_the_damage() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append_each(&j, "t", 0, &(0..60).map(value).collect::<Vec<_>>());
    drop(j);
    let files = segment_files(dir.path(), "t", 0);
    let victim = &files[0];
    let len = std::fs::metadata(victim).unwrap().len();
    // Sixteen bytes in the middle: one or two records.
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = (len / 2) as usize;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(victim, &bytes).unwrap();
    let j = open(&s);
    let report = j.recovery_report().partition("t", 0).unwrap().clone();
    assert!(report.quarantined.is_none(), "{report:?}");
    let lost: u64 = report.lost.iter().map(crate::LostRange::records).sum();
    assert!((1..=2).contains(&lost), "{report:?}");
    assert!(
        report.lost[0].from > 0,
        "records before the damage are kept"
    );
    assert_eq!(
        std::fs::read(&report.damaged_files[0]).unwrap(),
        bytes,
        "the damaged file is kept as it was"
    );
    let records = read_all(&j, "t", 0);
    assert_eq!(records.len() as u64, 60 - lost);
    for r in &records {
        assert_eq!(r.value.to_vec(), value(r.offset as usize));
    }
    assert_eq!(append(&j, "t", 0, &[b"x"]).unwrap(), 60);
    drop(j);
    let j = open(&s);
    let again = j.recovery_report().partition("t", 0).unwrap();
    assert!(
        again.lost.is_empty() && again.damaged_files.is_empty(),
        "{again:?}"
    );
    assert_eq!(read_all(&j, "t", 0).len() as u64, 61 - lost);
}

#[test]
fn damaged_floor_and_metadata_files_are_reported_not_fatal() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    j.create_topic("u", 1).unwrap();
    append_each(&j, "t", 0, &(0..3).map(value).collect::<Vec<_>>());
    append_each(&j, "t", 1, &(0..3).map(value).collect::<Vec<_>>());
    append(&j, "u", 0, &[b"u"]).unwrap();
    j.commit("g", "t", 1, 3).unwrap();
    drop(j);
    std::fs::write(dir.path().join("t/0/floor"), b"garbage").unwrap();
    std::fs::remove_file(dir.path().join("t/1/floor")).unwrap();
    std::fs::write(dir.path().join("t/1/floor.tmp"), b"half").unwrap();
    std::fs::write(dir.path().join("t/1/consumers/other"), b"bad").unwrap();
    std::fs::write(dir.path().join("u/topic.json"), b"{not json").unwrap();
    std::fs::create_dir(dir.path().join(".tmp-v")).unwrap();
    let j = open(&s);
    let r = j.recovery_report();
    for p in 0..2 {
        let pr = r.partition("t", p).unwrap();
        assert!(pr.quarantined.is_none());
        assert!(
            pr.warnings.iter().any(|w| w.contains("floor")),
            "{:?}",
            pr.warnings
        );
        assert_eq!(read_all(&j, "t", p).len(), 3);
        assert_eq!(append(&j, "t", p, &[b"x"]).unwrap(), 3);
    }
    assert!(
        r.partition("t", 1)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("other")),
        "{:?}",
        r.partition("t", 1)
    );
    assert!(!dir.path().join("t/1/floor.tmp").exists());
    assert!(!dir.path().join(".tmp-v").exists());
    assert_eq!(j.committed("g", "t", 1).unwrap(), Some(3));
    // A damaged offsets file is an error that names it.
    let damaged = j.committed("other", "t", 1);
    assert!(
        matches!(
            &damaged,
            Err(JournalError::Io { context, source })
                if context.ends_with("consumers/other")
                    && source.kind() == std::io::ErrorKind::InvalidData
        ),
        "{damaged:?}"
    );
    // A topic whose metadata is unreadable stays visible, quarantined, and is not recreated.
    assert_eq!(j.partitions("u").unwrap(), 1);
    assert!(matches!(
        j.read("u", 0, 0, 1, 1),
        Err(JournalError::Quarantined { .. })
    ));
    assert!(dir.path().join("u/0").is_dir());
}

#[test]
fn an_unsupported_format_version_is_quarantined_never_truncated() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append_each(&j, "t", 0, &(0..3).map(value).collect::<Vec<_>>());
    drop(j);
    let seg = segment_files(dir.path(), "t", 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let len = bytes.len();
    bytes[8] = 2; // version 2, with a valid checksum
    let crc = crc32c::crc32c(&bytes[0..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let j = open(&s);
    let reason = j
        .recovery_report()
        .partition("t", 0)
        .unwrap()
        .quarantined
        .clone();
    assert!(reason.unwrap().contains("version 2"));
    drop(j);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len as u64);
}

#[test]
fn records_written_by_a_killed_process_become_durable_and_keep_their_offsets() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 1).unwrap();
    append(&j, "t", 0, &[b"a"]).unwrap();
    j.hold("t", 0, true);
    let pending = j.append("t", 0, vec![Bytes::from_static(b"b")]);
    j.crash();
    drop(pending);
    drop(j);
    let j = open(&s);
    // The unsynced write survived (page cache): recovery keeps it at the offset it was given.
    let all = read_all(&j, "t", 0);
    assert_eq!(values(&all), vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(all[1].offset, 1);
    assert!(append(&j, "t", 0, &[b"c"]).unwrap() >= 2);
    let _ = Duration::ZERO;
}

#[test]
fn crafted_offsets_at_the_end_of_the_offset_space_quarantine_instead_of_overflowing() {
    let dir = scratch();
    let s = settings(dir.path());
    let j = open(&s);
    j.create_topic("t", 2).unwrap();
    append(&j, "t", 0, &[b"a"]).unwrap();
    append(&j, "t", 1, &[b"b"]).unwrap();
    drop(j);
    let floor = crate::format::encode_small(crate::format::FLOOR_MAGIC, u64::MAX);
    std::fs::write(dir.path().join("t/0/floor"), floor).unwrap();
    let huge = crate::format::SegmentHeader {
        base_offset: u64::MAX,
        prev_end: u64::MAX,
    };
    std::fs::write(
        dir.path()
            .join("t/1")
            .join(crate::format::segment_file_name(u64::MAX)),
        huge.encode(),
    )
    .unwrap();
    let j = open(&s);
    for p in 0..2 {
        let report = j.recovery_report().partition("t", p).unwrap();
        let reason = report.quarantined.clone().unwrap_or_default();
        assert!(reason.contains("offset space"), "{report:?}");
    }
}

mod arbitrary_bytes {
    //! Segment files of arbitrary bytes (fuzzing-lite, plan T15): opening never panics, and a
    //! partition either recovers records that verify or is quarantined.

    use proptest::prelude::*;

    use super::super::*;
    use crate::format::{FLAG_END_OF_BATCH, SegmentHeader, encode_frame};

    fn segment() -> impl Strategy<Value = Vec<u8>> {
        let garbage = prop::collection::vec(any::<u8>(), 0..400);
        // A valid header and frames with random damage are more interesting than pure noise.
        let damaged = (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(values, flips, cut)| {
                let mut b = SegmentHeader {
                    base_offset: 0,
                    prev_end: 0,
                }
                .encode()
                .to_vec();
                for (i, v) in values.iter().enumerate() {
                    encode_frame(&mut b, i as u64, 1, 0, FLAG_END_OF_BATCH, v);
                }
                for (at, x) in flips {
                    let at = at.index(b.len());
                    b[at] ^= x;
                }
                let keep = cut.index(b.len() + 1).max(b.len() / 2);
                b.truncate(keep);
                b
            });
        prop_oneof![garbage, damaged]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases(64)))]

        #[test]
        fn opening_arbitrary_segments_never_panics(sealed in segment(), active in segment()) {
            let dir = scratch();
            let pdir = dir.path().join("t/0");
            std::fs::create_dir_all(&pdir).unwrap();
            std::fs::write(dir.path().join("t/topic.json"), br#"{"format_version":1,"partitions":1}"#).unwrap();
            std::fs::write(pdir.join(crate::format::segment_file_name(0)), &sealed).unwrap();
            std::fs::write(pdir.join(crate::format::segment_file_name(1000)), &active).unwrap();
            let j = open(&settings(dir.path()));
            if let Ok(records) = read_all_paged(&j, "t", 0, 5) {
                let mut last = None;
                for r in records {
                    prop_assert!(last.is_none_or(|l| r.offset > l));
                    last = Some(r.offset);
                }
            }
            let _ = append(&j, "t", 0, &[b"x"]);
        }
    }
}
