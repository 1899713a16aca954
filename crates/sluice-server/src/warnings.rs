//! [`Warnings`]: what `/health` reports beside the stages without answering 503, because the
//! node still serves: retention held back by a consumer that has not read, and what recovery
//! lost or set aside (journal records lost to damage, damaged segments copied to quarantine,
//! quarantined partitions, damaged lake log files moved to `<table>/_damaged_log/`, damaged
//! embedded hot stores moved to `<dir>.damaged-<ms>`), the lake data files the upkeep's scrub
//! found damaged, and the typed tables and columns the lake's typed sink or the loader did not
//! create because a limit was reached.
//!
//! Retention's part is replaced after each retention run, the scrub's after each scrub; the journal's part is set once, from
//! the recovery report of this start; the lake's and the hot store's parts are read from the
//! disk at each report, so they list what was set aside until an operator removes it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use sluice_journal::{HeldRetention, RecoveryReport};
use sluice_lake::limits::{RefusalReport, Refusals};
use sluice_lake::verify::{Damage, DamagedFile};

/// Where the lake keeps the log files it set aside, inside a table's directory.
const LAKE_ASIDE_DIR: &str = "_damaged_log";

/// Retention kept segments of one partition past its limits for a consumer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Held {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    /// The slowest registered consumer.
    pub(crate) consumer: String,
    /// Its next offset.
    pub(crate) next: u64,
    pub(crate) segments: u64,
    pub(crate) bytes: u64,
}

/// What recovery lost or set aside in one journal partition at this start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct JournalLoss {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    /// Records lost to damage (consumers step over them).
    pub(crate) lost_records: u64,
    /// The lost offsets, `[from, to)`.
    pub(crate) lost_ranges: Vec<[u64; 2]>,
    /// Damaged segment files, copied into the partition's `quarantine/`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) damaged_files: Vec<String>,
    /// Why the partition is quarantined (it serves nothing), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quarantined: Option<String>,
}

/// The `warnings` of `/health`; empty parts are left out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Report {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) retention_held: Vec<Held>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) journal_recovery: Vec<JournalLoss>,
    /// Damaged lake log files set aside, relative to the lake root.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) lake_set_aside: Vec<String>,
    /// Damaged embedded hot stores set aside (the projection rebuilt the store from `good`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) hot_set_aside: Vec<String>,
    /// Typed tables and columns not created: `[lake] max_typed_tables` / `max_typed_columns`
    /// reached (per sink: the lake's typed tables, the loader).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) typed_limits: Vec<RefusalReport>,
    /// Lake data files the latest scrub (`[upkeep] verify_interval`) found damaged.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) lake_damaged: Vec<DamagedFile>,
}

impl Report {
    /// Whether there is nothing to report.
    pub(crate) fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    held: Vec<Held>,
    journal: Vec<JournalLoss>,
    lake_dir: Option<PathBuf>,
    hot_dir: Option<PathBuf>,
    refusals: Vec<Refusals>,
    damage: Option<Damage>,
}

/// The warnings of this node. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Warnings {
    inner: Arc<Mutex<Inner>>,
}

impl Warnings {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain data, always consistent: a panic elsewhere cannot tear it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks for set-aside log files under the local lake at `dir`.
    pub(crate) fn watch_lake(&self, dir: &Path) {
        self.inner().lake_dir = Some(dir.to_path_buf());
    }

    /// Looks for damaged copies set aside next to the embedded hot store at `dir`.
    pub(crate) fn watch_hot(&self, dir: &Path) {
        self.inner().hot_dir = Some(dir.to_path_buf());
    }

    /// Reports what `refusals` counts once it is not empty.
    pub(crate) fn watch_refusals(&self, refusals: Refusals) {
        self.inner().refusals.push(refusals);
    }

    /// Reports the damaged lake data files the upkeep's scrub finds.
    pub(crate) fn watch_damage(&self, damage: Damage) {
        self.inner().damage = Some(damage);
    }

    /// What the latest retention run held back.
    pub(crate) fn set_held(&self, held: &[HeldRetention]) {
        self.inner().held = held
            .iter()
            .map(|h| Held {
                topic: h.topic.clone(),
                partition: h.partition,
                consumer: h.consumer.clone(),
                next: h.next,
                segments: h.segments,
                bytes: h.bytes,
            })
            .collect();
    }

    /// What the journal's recovery at this start lost, set aside or quarantined.
    pub(crate) fn set_recovery(&self, report: &RecoveryReport) {
        self.inner().journal = report
            .partitions
            .iter()
            .filter(|p| {
                !p.lost.is_empty() || !p.damaged_files.is_empty() || p.quarantined.is_some()
            })
            .map(|p| JournalLoss {
                topic: p.topic.clone(),
                partition: p.partition,
                lost_records: p.lost.iter().map(|r| r.records()).sum(),
                lost_ranges: p.lost.iter().map(|r| [r.from, r.to]).collect(),
                damaged_files: p
                    .damaged_files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect(),
                quarantined: p.quarantined.clone(),
            })
            .collect();
    }

    /// The warnings as of now.
    pub(crate) fn report(&self) -> Report {
        let inner = self.inner();
        let (lake_dir, hot_dir) = (inner.lake_dir.clone(), inner.hot_dir.clone());
        let mut report = Report {
            retention_held: inner.held.clone(),
            journal_recovery: inner.journal.clone(),
            typed_limits: inner.refusals.iter().filter_map(Refusals::report).collect(),
            lake_damaged: inner.damage.as_ref().map(Damage::files).unwrap_or_default(),
            ..Report::default()
        };
        drop(inner);
        // Read from the disk without holding the lock.
        report.lake_set_aside = lake_dir.map(|d| lake_set_aside(&d)).unwrap_or_default();
        report.hot_set_aside = hot_dir.map(|d| hot_set_aside(&d)).unwrap_or_default();
        report
    }
}

/// The files in `<table>/_damaged_log/` of every table under `root` (tables sit directly under
/// it, or one level down under `_sluice/`), relative to `root`, sorted.
fn lake_set_aside(root: &Path) -> Vec<String> {
    let mut tables = subdirs(root);
    tables.extend(subdirs(&root.join("_sluice")));
    let mut out: Vec<String> = tables
        .iter()
        .flat_map(|t| files(&t.join(LAKE_ASIDE_DIR)))
        .filter_map(|f| Some(f.strip_prefix(root).ok()?.display().to_string()))
        .collect();
    out.sort();
    out
}

/// The `<dir>.damaged-<ms>` directories next to the hot store `dir`, sorted.
fn hot_set_aside(dir: &Path) -> Vec<String> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.damaged-", name.to_string_lossy());
    let mut out: Vec<String> = subdirs(parent)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .map(|p| p.display().to_string())
        .collect();
    out.sort();
    out
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    entries(dir).filter(|p| p.is_dir()).collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    entries(dir).filter(|p| p.is_file()).collect()
}

/// The entries of `dir`; none when it cannot be read (absent is the usual case).
fn entries(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_lake_files_and_hot_stores_are_listed() {
        let root = tempfile::tempdir().unwrap();
        let aside = root.path().join("events/_damaged_log");
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("00000000000000000007.json.1"), b"").unwrap();
        let typed = root.path().join("_sluice/typed/_damaged_log");
        std::fs::create_dir_all(&typed).unwrap();
        std::fs::write(typed.join("00000000000000000002.json.5"), b"").unwrap();
        std::fs::create_dir_all(root.path().join("bad_rows/_delta_log")).unwrap();
        let w = Warnings::default();
        assert!(w.report().is_empty());
        w.watch_lake(root.path());
        let hot = root.path().join("hot");
        std::fs::create_dir_all(root.path().join("hot.damaged-1764")).unwrap();
        w.watch_hot(&hot);
        assert_eq!(
            w.report().hot_set_aside,
            vec![root.path().join("hot.damaged-1764").display().to_string()]
        );
        assert_eq!(
            w.report().lake_set_aside,
            vec![
                "_sluice/typed/_damaged_log/00000000000000000002.json.5".to_string(),
                "events/_damaged_log/00000000000000000007.json.1".to_string(),
            ]
        );
    }
}
