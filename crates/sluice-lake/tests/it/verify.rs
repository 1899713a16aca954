//! Checksums of the data files, written with every commit, and `verify` naming a damaged file.

use std::path::{Path, PathBuf};

use sluice_event::topic;
use sluice_lake::LakeRoot;
use sluice_lake::checksum::{CRC32C_TAG, FileSum};
use sluice_lake::verify::verify_table;
use sluice_testkit::mem_journal::MemJournal;

use crate::deliver::seven_commits;

/// The `add` actions of every JSON commit of the table in `table_dir`: (path, tags).
fn adds(table_dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut commits: Vec<PathBuf> = std::fs::read_dir(table_dir.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut out = Vec::new();
    for path in commits {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(add) = action.get("add") {
                let path = add["path"].as_str().unwrap().to_string();
                out.push((path, add["tags"].clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_files_carry_their_checksum_through_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    seven_commits(dir.path(), &journal).await;
    let table = dir.path().join("events");
    let adds = adds(&table);
    // Seven flushes of two events over two dates.
    assert_eq!(adds.len(), 14, "{adds:?}");
    for (path, tags) in &adds {
        let bytes = std::fs::read(table.join(path)).unwrap();
        let sum = FileSum::of(&bytes);
        assert_eq!(
            tags[CRC32C_TAG].as_str(),
            Some(format!("{:08x}", sum.crc32c).as_str()),
            "{path}: {tags}"
        );
        assert_eq!(tags["sluice.length"], bytes.len().to_string(), "{path}");
    }
    // The table loads from the checkpoint at version 6 (plus commit 7): the tags must come
    // through it for verification to see them.
    let report = verify_table(&LakeRoot::from_path(dir.path()).unwrap(), "events")
        .await
        .unwrap();
    assert_eq!(report.version, Some(7));
    assert_eq!(report.files_checked, 14);
    assert_eq!(report.files_without_checksum, 0, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_data_file_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    seven_commits(dir.path(), &journal).await;
    let table = dir.path().join("events");
    let (victim, _) = adds(&table).swap_remove(3);
    let file = table.join(&victim);
    let mut bytes = std::fs::read(&file).unwrap();
    let expected = FileSum::of(&bytes);
    // A byte in the middle of the data pages: the footer, and so decoding, may well survive.
    let at = bytes.len() / 3;
    bytes[at] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();

    let report = verify_table(&LakeRoot::from_path(dir.path()).unwrap(), "events")
        .await
        .unwrap();
    assert_eq!(report.files_checked, 14);
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let damaged = &report.damaged[0];
    assert_eq!(damaged.table, "events");
    assert_eq!(damaged.path, victim);
    assert_eq!(damaged.expected, expected.to_string());
    assert_eq!(damaged.found, FileSum::of(&bytes).to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_files_have_no_checksum_and_are_checked_by_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let journal = MemJournal::with_topics(&[(topic::GOOD, 1)]);
    seven_commits(dir.path(), &journal).await;
    let root = LakeRoot::from_path(dir.path()).unwrap();
    let compacted = sluice_lake::upkeep::optimize_table(&root, "events", 3)
        .await
        .unwrap();
    assert_eq!(compacted.files_removed, 14);
    let report = verify_table(&root, "events").await.unwrap();
    // One file per date: delta-rs' OPTIMIZE writes them, and has no way to tag them.
    assert_eq!(report.files_checked, compacted.files_added);
    assert_eq!(report.files_without_checksum, report.files_checked);
    assert!(report.damaged.is_empty(), "{report:?}");

    // Cut one short: its length no longer matches the log and its footer is gone.
    let table = dir.path().join("events");
    let (victim, _) = adds(&table).pop().unwrap();
    let bytes = std::fs::read(table.join(&victim)).unwrap();
    std::fs::write(table.join(&victim), &bytes[..bytes.len() - 8]).unwrap();
    let report = verify_table(&root, "events").await.unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.damaged[0].path, victim);
}
