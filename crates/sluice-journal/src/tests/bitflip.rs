//! Bit flips in record headers, values and checksums, and in segment headers (reliability plan
//! T3): corrupt bytes are never returned; damage before durable data is salvaged at open (every
//! record that verifies is kept, the lost offsets are reported, the file is copied aside) and
//! the partition keeps serving; damage to the last, possibly unsynced, record is a torn tail;
//! damage found by a read after open quarantines the partition until the next open.

use std::os::unix::fs::FileExt as _;

use super::*;
use crate::JournalError;
use crate::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, decode_segment};

/// Byte offsets within a frame to damage: crc, length, offset, timestamp, unsynced, flags,
/// then the value.
const FRAME_FIELDS: [usize; 6] = [0, 4, 8, 16, 24, 28];

struct Fixture {
    dir: tempfile::TempDir,
    records: Vec<Vec<u8>>,
}

/// Partition 0: one append per record (each its own group commit), three or more segments.
fn fixture() -> Fixture {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 2).unwrap();
    let mut records = Vec::new();
    while segment_files(dir.path(), "t", 0).len() < 3 || records.len() < 50 {
        let v = value(records.len() + 1);
        append(&j, "t", 0, &[&v]).unwrap();
        records.push(v);
    }
    append(&j, "t", 1, &[b"other"]).unwrap();
    drop(j);
    Fixture { dir, records }
}

/// Where each frame of a segment file starts, and its value length.
fn frame_starts(bytes: &[u8]) -> Vec<(u64, usize)> {
    let (_, frames) = decode_segment(bytes).unwrap();
    let mut pos = SEGMENT_HEADER_LEN as u64;
    frames
        .iter()
        .map(|f| {
            let at = (pos, f.value.len());
            pos += (FRAME_HEADER_LEN + f.value.len()) as u64;
            at
        })
        .collect()
}

fn flip(path: &Path, at: u64, bit: u8) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 1 << (bit % 8);
    file.write_all_at(&b, at).unwrap();
}

/// Positions to damage in one frame.
fn targets(start: u64, value_len: usize) -> Vec<u64> {
    let mut t: Vec<u64> = FRAME_FIELDS.iter().map(|f| start + *f as u64).collect();
    if value_len > 0 {
        t.push(start + (FRAME_HEADER_LEN + value_len / 2) as u64);
    }
    t
}

/// Reopens a damaged copy and checks what every test needs: no panic, partition 1 serves, and
/// whatever partition 0 returns is byte-identical to what was written.
fn reopen_and_check(
    f: &Fixture,
    damage: impl FnOnce(&Path),
) -> (tempfile::TempDir, Arc<LocalJournal>) {
    let copy = scratch();
    copy_dir(f.dir.path(), copy.path());
    damage(copy.path());
    let j = open(&settings(copy.path()));
    if let Ok(records) = read_all_paged(&j, "t", 0, 7) {
        for r in &records {
            assert_eq!(
                r.value.to_vec(),
                f.records[r.offset as usize],
                "corrupt bytes returned"
            );
        }
    }
    assert_eq!(values(&read_all(&j, "t", 1)), vec![b"other".to_vec()]);
    assert_eq!(append(&j, "t", 1, &[b"more"]).unwrap(), 1);
    (copy, j)
}

/// Recovery kept what verifies, reported the rest as lost, and the partition serves: reads give
/// every record but the lost ones, appends continue past every offset ever used.
fn assert_salvaged(j: &LocalJournal, total: u64, what: &str) {
    let report = j.recovery_report().partition("t", 0).unwrap();
    assert!(report.quarantined.is_none(), "{what}: {report:?}");
    assert_eq!(report.damaged_files.len(), 1, "{what}: {report:?}");
    assert!(report.damaged_files[0].exists());
    let lost: u64 = report.lost.iter().map(crate::LostRange::records).sum();
    assert!(
        lost <= 2,
        "{what}: one flip costs at most two records: {report:?}"
    );
    let records = read_all(j, "t", 0);
    assert_eq!(records.len() as u64, total - lost, "{what}: {report:?}");
    for r in &report.lost {
        assert!(
            records
                .iter()
                .all(|x| x.offset < r.from || x.offset >= r.to)
        );
    }
    assert!(append(j, "t", 0, &[b"x"]).unwrap() >= total);
}

#[test]
fn any_flip_in_a_sealed_segment_is_salvaged_and_the_partition_serves() {
    let f = fixture();
    let files = segment_files(f.dir.path(), "t", 0);
    let sealed = files[files.len() - 2].clone();
    let name = sealed.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&sealed).unwrap();
    let mut positions: Vec<u64> = vec![0, 9, 17, 25, 37];
    for (start, len) in frame_starts(&bytes) {
        positions.extend(targets(start, len));
    }
    let total = f.records.len() as u64;
    for (k, at) in positions.into_iter().enumerate() {
        let (copy, j) = reopen_and_check(&f, |d| flip(&d.join("t/0").join(&name), at, k as u8));
        assert_salvaged(&j, total, &format!("flip at {at}"));
        // Salvage is done once: the next open finds healthy segments.
        drop(j);
        let j = open(&settings(copy.path()));
        let report = j.recovery_report().partition("t", 0).unwrap();
        assert!(
            report.damaged_files.is_empty() && report.lost.is_empty(),
            "{report:?}"
        );
    }
}

#[test]
fn flips_in_the_active_segment_are_salvaged_unless_only_the_last_record_is_hit() {
    let f = fixture();
    let files = segment_files(f.dir.path(), "t", 0);
    let active = files.last().unwrap().clone();
    let name = active.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&active).unwrap();
    let frames = frame_starts(&bytes);
    assert!(frames.len() >= 2);
    let total = f.records.len() as u64;
    for at in [0u64, 16, 30] {
        let (_copy, j) = reopen_and_check(&f, |d| flip(&d.join("t/0").join(&name), at, 3));
        assert_salvaged(&j, total, &format!("segment header flip at {at}"));
    }
    for (i, (start, len)) in frames.iter().enumerate() {
        let last = i + 1 == frames.len();
        for (k, at) in targets(*start, *len).into_iter().enumerate() {
            let (_copy, j) =
                reopen_and_check(&f, |d| flip(&d.join("t/0").join(&name), at, (i + k) as u8));
            if last {
                // Indistinguishable from a torn unsynced write: truncated, reported, and its
                // offset is not handed out again.
                let report = j.recovery_report().partition("t", 0).unwrap();
                assert!(report.quarantined.is_none(), "{report:?}");
                assert!(report.truncated_bytes > 0);
                assert_eq!(read_all(&j, "t", 0).len() as u64, total - 1);
                assert!(append(&j, "t", 0, &[b"x"]).unwrap() >= total);
            } else {
                // Later records were written after this one was durable: corruption, salvaged.
                assert_salvaged(&j, total, &format!("record {i}, byte {at}"));
            }
        }
    }
}

#[test]
fn damage_after_open_is_caught_by_the_read_and_quarantines() {
    let f = fixture();
    let j = open(&settings(f.dir.path()));
    let files = segment_files(f.dir.path(), "t", 0);
    let bytes = std::fs::read(&files[0]).unwrap();
    let (start, len) = frame_starts(&bytes)[2];
    flip(&files[0], start + (FRAME_HEADER_LEN + len / 2) as u64, 0);
    // The first two records still read fine; the third is refused, never returned corrupt.
    let first = j.read("t", 0, 0, 2, usize::MAX).unwrap();
    assert_eq!(values(&first), f.records[..2].to_vec());
    assert!(matches!(
        j.read("t", 0, 0, 10, usize::MAX),
        Err(JournalError::Quarantined { .. })
    ));
    assert!(matches!(
        append(&j, "t", 0, &[b"x"]),
        Err(JournalError::Quarantined { .. })
    ));
    assert_eq!(
        append(&j, "t", 1, &[b"y"]).unwrap(),
        1,
        "partition 1 unaffected"
    );
}
