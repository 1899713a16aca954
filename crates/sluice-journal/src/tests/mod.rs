//! Tests of the local journal that need its internals (crash and fault hooks, small floor
//! reserves), plus the helpers they share.
//!
//! Most tests run in `/dev/shm` when it exists: they open, crash and reopen journals thousands
//! of times, and fsync there costs nothing. The group-commit test uses the real temp directory
//! so that fsync costs what it does in production.

mod basic;
mod bitflip;
mod faults;
mod golden;
mod model;
mod recovery;
mod retention;
mod sweep;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Settings;
use crate::{Journal, JournalConfig, JournalError, LocalJournal, Record};

/// A scratch directory on tmpfs if there is one.
pub(crate) fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::Builder::new()
            .prefix("sluice-journal-")
            .tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

/// Settings for tests: small segments, and a small floor reserve so floor refreshes happen.
pub(crate) fn settings(dir: &Path) -> Settings {
    let mut s = JournalConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 1024,
        ..JournalConfig::default()
    }
    .settings()
    .expect("valid config");
    s.floor_reserve = 16;
    s
}

pub(crate) fn open(settings: &Settings) -> Arc<LocalJournal> {
    LocalJournal::open_settings(settings.clone()).expect("open journal")
}

/// Blocks on an append (the future needs no runtime).
pub(crate) fn append(
    j: &LocalJournal,
    topic: &str,
    partition: u32,
    values: &[&[u8]],
) -> Result<u64, JournalError> {
    let records = values.iter().map(|v| Bytes::copy_from_slice(v)).collect();
    futures::executor::block_on(j.append(topic, partition, records))
}

/// Appends one record per call, returning the offsets.
pub(crate) fn append_each(
    j: &LocalJournal,
    topic: &str,
    partition: u32,
    values: &[Vec<u8>],
) -> Vec<u64> {
    values
        .iter()
        .map(|v| append(j, topic, partition, &[v]).expect("append"))
        .collect()
}

/// Every record from the start, read in pages of `page` records.
pub(crate) fn read_all_paged(
    j: &LocalJournal,
    topic: &str,
    partition: u32,
    page: usize,
) -> Result<Vec<Record>, JournalError> {
    let mut out: Vec<Record> = Vec::new();
    let mut from = 0;
    loop {
        let batch = j.read(topic, partition, from, page, usize::MAX)?;
        let Some(last) = batch.last() else {
            return Ok(out);
        };
        from = last.offset + 1;
        out.extend(batch);
    }
}

pub(crate) fn read_all(j: &LocalJournal, topic: &str, partition: u32) -> Vec<Record> {
    read_all_paged(j, topic, partition, 1000).expect("read")
}

pub(crate) fn values(records: &[Record]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.value.to_vec()).collect()
}

/// The segment files of a partition, oldest first.
pub(crate) fn segment_files(dir: &Path, topic: &str, partition: u32) -> Vec<PathBuf> {
    let pdir = dir.join(topic).join(partition.to_string());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&pdir)
        .expect("partition dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Copies a journal directory (files and subdirectories, not the lock).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != ".lock" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Deterministic test values of varying sizes.
pub(crate) fn value(i: usize) -> Vec<u8> {
    let len = (i * 37) % 61;
    let mut v = format!("record-{i}-").into_bytes();
    v.extend((0..len).map(|k| (i * 31 + k) as u8));
    v
}

/// Polls `cond` until it holds or `deadline` passes (no fixed sleeps).
pub(crate) fn wait_until(what: &str, deadline: std::time::Duration, cond: impl Fn() -> bool) {
    let until = std::time::Instant::now() + deadline;
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::park_timeout(std::time::Duration::from_millis(1));
    }
}

/// Cases for a property test: `default`, or `PROPTEST_CASES` for a long run.
pub(crate) fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default)
}
