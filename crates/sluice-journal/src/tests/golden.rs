//! Golden files: the committed bytes under `tests/golden/` pin format version 1. Decoding them
//! must give exactly the records listed here, encoding those records must give exactly the
//! committed bytes, and a journal must open a directory built from them. If a change breaks
//! this, it changed the format: add a new version, never regenerate these files.
//!
//! To create the files for a *new* format version, run once with `SLUICE_BLESS_GOLDEN=1`.

use std::path::PathBuf;

use super::*;
use crate::format::{
    COMMIT_MAGIC, DecodedFrame, FLAG_END_OF_BATCH, FLOOR_MAGIC, SegmentHeader, decode_segment,
    decode_small, encode_segment, encode_small,
};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// The records in `segment-v1.bin`: a segment starting after an offset gap (prev_end 97, base
/// 100), a single-record append, a two-record append (the second value empty), and a binary
/// value.
fn expected_segment() -> (SegmentHeader, Vec<DecodedFrame>) {
    let header = SegmentHeader {
        base_offset: 100,
        prev_end: 97,
    };
    let frames = vec![
        DecodedFrame {
            offset: 100,
            timestamp_ms: 1_700_000_000_000,
            unsynced: 0,
            flags: FLAG_END_OF_BATCH,
            value: br#"{"event":"page_view","user_id":"u1"}"#.to_vec(),
        },
        DecodedFrame {
            offset: 101,
            timestamp_ms: 1_700_000_000_001,
            unsynced: 0,
            flags: 0,
            value: b"first of a batch".to_vec(),
        },
        DecodedFrame {
            offset: 102,
            timestamp_ms: 1_700_000_000_001,
            unsynced: 1,
            flags: FLAG_END_OF_BATCH,
            value: Vec::new(),
        },
        DecodedFrame {
            offset: 103,
            timestamp_ms: 1_700_000_000_002,
            unsynced: 0,
            flags: FLAG_END_OF_BATCH,
            value: vec![0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff],
        },
    ];
    (header, frames)
}

fn check_or_bless(name: &str, bytes: &[u8]) -> Vec<u8> {
    let path = golden(name);
    if std::env::var_os("SLUICE_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
    }
    std::fs::read(&path).unwrap_or_else(|e| panic!("missing golden file {}: {e}", path.display()))
}

#[test]
fn segment_v1_decodes_to_the_listed_records_and_reencodes_identically() {
    let (header, frames) = expected_segment();
    let encoded = encode_segment(&header, &frames);
    let committed = check_or_bless("segment-v1.bin", &encoded);
    assert_eq!(decode_segment(&committed).unwrap(), (header, frames));
    assert_eq!(
        encoded, committed,
        "encoding changed: that is a new format version"
    );
    // Spot checks of the layout the format document describes.
    assert_eq!(&committed[0..8], b"SLUICEJS");
    assert_eq!(&committed[8..10], &1u16.to_le_bytes());
    assert_eq!(&committed[16..24], &100u64.to_le_bytes());
    assert_eq!(&committed[24..32], &97u64.to_le_bytes());
    assert_eq!(
        &committed[40 + 8..40 + 16],
        &100u64.to_le_bytes(),
        "first frame's offset"
    );
}

#[test]
fn small_files_v1_are_pinned() {
    let floor = check_or_bless("floor-v1.bin", &encode_small(FLOOR_MAGIC, 104));
    assert_eq!(decode_small(FLOOR_MAGIC, &floor), Ok(104));
    assert_eq!(floor, encode_small(FLOOR_MAGIC, 104));
    let commit = check_or_bless("consumer-offset-v1.bin", &encode_small(COMMIT_MAGIC, 42));
    assert_eq!(decode_small(COMMIT_MAGIC, &commit), Ok(42));
    assert_eq!(commit, encode_small(COMMIT_MAGIC, 42));
    let meta = check_or_bless("topic-v1.json", br#"{"format_version":1,"partitions":1}"#);
    let parsed: crate::format::TopicMeta = serde_json::from_slice(&meta).unwrap();
    assert_eq!((parsed.format_version, parsed.partitions), (1, 1));
}

#[test]
fn a_journal_opens_a_directory_built_from_the_golden_files() {
    let dir = scratch();
    let pdir = dir.path().join("events/0");
    std::fs::create_dir_all(pdir.join("consumers")).unwrap();
    std::fs::copy(
        golden("topic-v1.json"),
        dir.path().join("events/topic.json"),
    )
    .unwrap();
    std::fs::copy(
        golden("segment-v1.bin"),
        pdir.join("00000000000000000100.seg"),
    )
    .unwrap();
    std::fs::copy(golden("floor-v1.bin"), pdir.join("floor")).unwrap();
    std::fs::copy(
        golden("consumer-offset-v1.bin"),
        pdir.join("consumers/lake"),
    )
    .unwrap();
    let j = open(&settings(dir.path()));
    let report = j.recovery_report().partition("events", 0).unwrap().clone();
    assert_eq!(
        (report.quarantined, report.truncated_bytes, report.floor_gap),
        (None, 0, None)
    );
    assert_eq!(
        (j.start("events", 0).unwrap(), j.end("events", 0).unwrap()),
        (100, 104)
    );
    let records = read_all(&j, "events", 0);
    let (_, frames) = expected_segment();
    assert_eq!(records.len(), frames.len());
    for (r, f) in records.iter().zip(&frames) {
        assert_eq!(
            (r.offset, r.timestamp_ms, r.value.to_vec()),
            (f.offset, f.timestamp_ms, f.value.clone())
        );
    }
    assert_eq!(j.committed("lake", "events", 0).unwrap(), Some(42));
    assert_eq!(append(&j, "events", 0, &[b"next"]).unwrap(), 104);
}
