//! The truncation sweep (reliability plan T3): build segments through the real write path, then
//! cut the files at every byte of interest, reopen, and check that exactly the intact prefix is
//! recovered and that no offset is handed out twice.
//!
//! The cuts at clean frame boundaries are the ones no checksum can detect (a public WAL sweep
//! failed at exactly those); only the durable floor keeps their offsets from being reissued.

use super::*;
use crate::format::{FLAG_END_OF_BATCH, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN, decode_segment};

/// One record as built: offset, value, and (in the last segment) the byte where its batch ends.
struct Built {
    dir: tempfile::TempDir,
    records: Vec<(u64, Vec<u8>)>,
    end: u64,
}

/// Partition 0: a few segments of single and multi-record batches; partition 1: a little data
/// that must keep working whatever happens to partition 0.
fn build() -> Built {
    let dir = scratch();
    let j = open(&settings(dir.path()));
    j.create_topic("t", 2).unwrap();
    let mut records = Vec::new();
    let mut i = 0;
    while segment_files(dir.path(), "t", 0).len() < 3 || i < 70 {
        let n = 1 + i % 3;
        let batch: Vec<Vec<u8>> = (i..i + n).map(value).collect();
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let first = append(&j, "t", 0, &refs).unwrap();
        for (k, v) in batch.into_iter().enumerate() {
            records.push((first + k as u64, v));
        }
        i += n;
    }
    append(&j, "t", 1, &[b"other"]).unwrap();
    let end = j.end("t", 0).unwrap();
    drop(j); // clean: the floor is the exact end
    Built { dir, records, end }
}

/// Frame boundaries of a segment file: (start, end, ends_batch) per frame.
fn frames(bytes: &[u8]) -> Vec<(u64, u64, bool)> {
    let (_, decoded) = decode_segment(bytes).unwrap();
    let mut pos = SEGMENT_HEADER_LEN as u64;
    decoded
        .iter()
        .map(|f| {
            let end = pos + (FRAME_HEADER_LEN + f.value.len()) as u64;
            let out = (pos, end, f.flags & FLAG_END_OF_BATCH != 0);
            pos = end;
            out
        })
        .collect()
}

/// Copies the built journal, lets `damage` change the copy, reopens it.
fn reopen_damaged(
    built: &Built,
    damage: impl FnOnce(&Path),
) -> (tempfile::TempDir, Arc<LocalJournal>) {
    let copy = scratch();
    copy_dir(built.dir.path(), copy.path());
    damage(copy.path());
    let j = open(&settings(copy.path()));
    (copy, j)
}

fn cut(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

#[test]
fn every_cut_of_the_active_segment_recovers_exactly_the_intact_prefix() {
    let built = build();
    let files = segment_files(built.dir.path(), "t", 0);
    let last = files.last().unwrap().clone();
    let name = last.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&last).unwrap();
    let base: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let layout = frames(&bytes);
    assert!(layout.len() >= 6, "the active segment needs a few records");
    // Every byte of the last 6 records, and every byte of the header.
    let sweep_from = layout[layout.len() - 6].0;
    let cuts: Vec<u64> = (0..=SEGMENT_HEADER_LEN as u64)
        .chain(sweep_from..=bytes.len() as u64)
        .collect();
    let mut clean_boundary_losses = 0;
    for &at in &cuts {
        let (_copy, j) = reopen_damaged(&built, |d| cut(&d.join("t/0").join(&name), at));
        // Intact: every record of sealed segments, and each batch of the active segment that
        // ends at or before the cut.
        let batch_end_of = |offset: u64| {
            let i = (offset - base) as usize;
            layout[i..].iter().find(|f| f.2).map(|f| f.1).unwrap()
        };
        let expect: Vec<&(u64, Vec<u8>)> = built
            .records
            .iter()
            .filter(|(o, _)| {
                *o < base || (at >= SEGMENT_HEADER_LEN as u64 && batch_end_of(*o) <= at)
            })
            .collect();
        let got = read_all(&j, "t", 0);
        assert_eq!(got.len(), expect.len(), "cut at {at}");
        for (r, (o, v)) in got.iter().zip(&expect) {
            assert_eq!((r.offset, r.value.to_vec()), (*o, v.clone()), "cut at {at}");
        }
        let report = j.recovery_report().partition("t", 0).unwrap().clone();
        assert!(report.quarantined.is_none(), "cut at {at}: {report:?}");
        let header = SEGMENT_HEADER_LEN as u64;
        let kept = if at < header {
            0
        } else {
            layout
                .iter()
                .filter(|f| f.2 && f.1 <= at)
                .map(|f| f.1)
                .max()
                .unwrap_or(header)
        };
        assert_eq!(report.truncated_bytes, at - kept, "cut at {at}");
        if at >= header && at == kept && expect.len() < built.records.len() {
            clean_boundary_losses += 1;
        }
        // Never reissued: whatever was cut, the next offset is past everything ever written.
        assert!(j.end("t", 0).unwrap() >= built.end, "cut at {at}");
        let next = append(&j, "t", 0, &[b"after"]).unwrap();
        assert!(next >= built.end, "cut at {at}: offset {next} reissued");
        assert_eq!(read_all(&j, "t", 1).len(), 1);
    }
    assert!(
        clean_boundary_losses >= 3,
        "the sweep must reach undetectable clean-boundary cuts ({clean_boundary_losses})"
    );
}

#[test]
fn cuts_inside_sealed_segments_are_salvaged_and_the_loss_reported() {
    let built = build();
    let files = segment_files(built.dir.path(), "t", 0);
    let sealed = &files[..files.len() - 1];
    let mut tried = 0;
    for file in sealed {
        let name = file.file_name().unwrap().to_owned();
        let bytes = std::fs::read(file).unwrap();
        let mut cuts: Vec<u64> = frames(&bytes).iter().map(|f| f.0).collect();
        cuts.extend([1, 20, bytes.len() as u64 - 1]);
        for at in cuts {
            let (_copy, j) = reopen_damaged(&built, |d| cut(&d.join("t/0").join(&name), at));
            let report = j.recovery_report().partition("t", 0).unwrap();
            assert!(report.quarantined.is_none(), "{name:?} cut at {at}");
            // What is lost runs from the cut to where the next segment says this one ended.
            let lost: u64 = report.lost.iter().map(crate::LostRange::records).sum();
            assert!(lost >= 1, "{name:?} cut at {at}: {report:?}");
            let records = read_all(&j, "t", 0);
            assert_eq!(
                records.len() as u64 + lost,
                built.records.len() as u64,
                "{name:?} cut at {at}"
            );
            assert!(append(&j, "t", 0, &[b"x"]).is_ok());
            assert_eq!(
                append(&j, "t", 1, &[b"y"]).unwrap(),
                1,
                "partition 1 unaffected"
            );
            tried += 1;
        }
    }
    assert!(tried > 20);
}

#[test]
fn losing_trailing_records_and_the_floor_file_is_reported() {
    // Losing the last records at a clean boundary *and* the floor is a double fault no
    // recovery can see through; the report must at least say the floor was missing.
    let built = build();
    let files = segment_files(built.dir.path(), "t", 0);
    let last = files.last().unwrap().clone();
    let layout = frames(&std::fs::read(&last).unwrap());
    let boundary = layout.iter().filter(|f| f.2).rev().nth(1).unwrap().1;
    let (_copy, j) = reopen_damaged(&built, |d| {
        cut(&d.join("t/0").join(last.file_name().unwrap()), boundary);
        std::fs::remove_file(d.join("t/0/floor")).unwrap();
    });
    let report = j.recovery_report().partition("t", 0).unwrap();
    assert!(report.warnings.iter().any(|w| w.contains("floor")));
}
