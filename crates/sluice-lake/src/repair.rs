//! Damaged log files at the end of a local table's Delta log, as a power cut leaves them when
//! they were never fsynced (versions before [`crate::durable_store`]): an empty or cut-short
//! newest commit, or a checkpoint without its Parquet footer. delta-rs refuses to load such a
//! table, and without a repair it stays down for good.
//!
//! Why setting a torn newest commit aside is safe for exactly-once: its content never became
//! durable, so no reader after the cut can have seen it, and its `txn` versions (the sinks'
//! positions) are lost with it. The table reads as the previous version, whose txn versions are
//! lower, so the sink delivers those journal records again — once. Only the newest commits
//! are ever set aside (a damaged commit with a valid one after it is reported, not touched),
//! and never one a checkpoint covers. Set-aside files are kept in `<table>/_damaged_log/` for
//! inspection; names starting with `_` are hidden from Delta readers and from vacuum.

use std::path::{Path, PathBuf};

use sluice_journal::durable_fs;

use crate::LakeError;

/// Where damaged files are moved, inside the table directory.
pub(crate) const ASIDE_DIR: &str = "_damaged_log";

/// The log files of one table, by kind.
#[derive(Default)]
struct Log {
    /// Versions with a `<v>.json` commit, ascending.
    commits: Vec<u64>,
    /// Checkpoint files (`<v>.checkpoint[.…].parquet`) with their version.
    checkpoints: Vec<(u64, PathBuf)>,
}

fn version_of(name: &str, suffix: &str) -> Option<u64> {
    let digits = name.strip_suffix(suffix)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn list(log: &Path) -> std::io::Result<Log> {
    let mut out = Log::default();
    for entry in std::fs::read_dir(log)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = version_of(&name, ".json") {
            out.commits.push(v);
        } else if name.ends_with(".parquet")
            && let Some((v, _)) = name.split_once(".checkpoint")
            && let Some(v) = version_of(&format!("{v}.json"), ".json")
        {
            out.checkpoints.push((v, entry.path()));
        }
    }
    out.commits.sort_unstable();
    out.checkpoints.sort();
    Ok(out)
}

/// Why a commit file is not a whole commit, if it is not: every line must be a JSON object.
fn commit_damage(bytes: &[u8]) -> Option<String> {
    if bytes.is_empty() {
        return Some("empty".into());
    }
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(v) if v.is_object() => {}
            Ok(_) => return Some(format!("line {} is not an action", i + 1)),
            Err(e) => return Some(format!("line {} is cut short or garbled: {e}", i + 1)),
        }
    }
    None
}

/// Why a checkpoint file is not a whole Parquet file, if it is not.
fn parquet_damage(bytes: &[u8]) -> Option<String> {
    let whole = bytes.len() >= 12 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1");
    (!whole).then(|| format!("not a whole Parquet file ({} bytes)", bytes.len()))
}

/// Sets aside the damaged files at the end of the log of the local table in `table_dir`;
/// answers what was set aside. A damaged file that cannot be set aside safely is an error
/// naming it.
pub(crate) fn set_aside_damaged_log(
    table: &str,
    table_dir: &Path,
) -> Result<Vec<PathBuf>, LakeError> {
    let log_dir = table_dir.join("_delta_log");
    let io = |path: &Path, e: std::io::Error| LakeError::DamagedLog {
        table: table.to_string(),
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut log = match list(&log_dir) {
        Ok(log) => log,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&log_dir, e)),
    };
    let mut aside = Vec::new();
    let has_first_commit = log.commits.first() == Some(&0);
    while let Some((v, path)) = log.checkpoints.last().cloned() {
        let Some(why) = parquet_damage(&std::fs::read(&path).map_err(|e| io(&path, e))?) else {
            break;
        };
        if !has_first_commit || !log.commits.contains(&v) {
            return Err(LakeError::DamagedLog {
                table: table.to_string(),
                path: path.display().to_string(),
                reason: format!("{why}; the commits it covers are gone, so it cannot be set aside"),
            });
        }
        aside.push(move_aside(table, table_dir, &path, &why)?);
        // The hint may name the checkpoint just set aside; delta-rs lists the log without it.
        let hint = log_dir.join("_last_checkpoint");
        if hint.exists() {
            aside.push(move_aside(
                table,
                table_dir,
                &hint,
                "names a damaged checkpoint",
            )?);
        }
        log.checkpoints.pop();
    }
    let covered = log.checkpoints.last().map(|(v, _)| *v);
    while let Some(&v) = log.commits.last() {
        let path = log_dir.join(format!("{v:020}.json"));
        let Some(why) = commit_damage(&std::fs::read(&path).map_err(|e| io(&path, e))?) else {
            break;
        };
        if covered.is_some_and(|c| v <= c) {
            return Err(LakeError::DamagedLog {
                table: table.to_string(),
                path: path.display().to_string(),
                reason: format!("{why}; a checkpoint covers it, so it cannot be set aside"),
            });
        }
        aside.push(move_aside(table, table_dir, &path, &why)?);
        log.commits.pop();
    }
    check_earlier_commits(table, &log_dir, &log.commits)?;
    Ok(aside)
}

/// A damaged commit below a whole one is not a torn tail: report it, touch nothing.
fn check_earlier_commits(table: &str, log_dir: &Path, commits: &[u64]) -> Result<(), LakeError> {
    for v in commits.iter().rev().skip(1).take(3) {
        let path = log_dir.join(format!("{v:020}.json"));
        let bytes = std::fs::read(&path).unwrap_or_default();
        if let Some(why) = commit_damage(&bytes) {
            return Err(LakeError::DamagedLog {
                table: table.to_string(),
                path: path.display().to_string(),
                reason: format!("{why}, with whole commits after it; not repaired"),
            });
        }
    }
    Ok(())
}

/// Moves `path` of `table` into `<table_dir>/_damaged_log/` as `<name>.<nanos>`, durably, and
/// says why in a warning.
pub(crate) fn move_aside(
    table: &str,
    table_dir: &Path,
    path: &Path,
    why: &str,
) -> Result<PathBuf, LakeError> {
    let err = |e: std::io::Error| LakeError::DamagedLog {
        table: table.to_string(),
        path: path.display().to_string(),
        reason: format!("{why}; setting it aside failed: {e}"),
    };
    let dir = table_dir.join(ASIDE_DIR);
    durable_fs::create_dir_all_durable(&dir).map_err(err)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let to = dir.join(format!("{name}.{nanos}"));
    durable_fs::rename_durable(path, &to).map_err(err)?;
    tracing::warn!(
        table,
        file = %path.display(),
        kept_as = %to.display(),
        reason = why,
        "set aside a damaged file of the Delta log, kept for inspection"
    );
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(dir: &Path, v: u64, body: &[u8]) {
        let log = dir.join("_delta_log");
        std::fs::create_dir_all(&log).unwrap();
        std::fs::write(log.join(format!("{v:020}.json")), body).unwrap();
    }

    const WHOLE: &[u8] = b"{\"commitInfo\":{}}\n{\"txn\":{\"appId\":\"events/0\",\"version\":7}}\n";

    #[test]
    fn empty_and_cut_short_newest_commits_are_set_aside() {
        let t = tempfile::tempdir().unwrap();
        commit(t.path(), 0, WHOLE);
        commit(t.path(), 1, WHOLE);
        commit(t.path(), 2, &WHOLE[..25]);
        commit(t.path(), 3, b"");
        let aside = set_aside_damaged_log("events", t.path()).unwrap();
        assert_eq!(aside.len(), 2);
        let log = list(&t.path().join("_delta_log")).unwrap();
        assert_eq!(log.commits, [0, 1]);
        let kept: Vec<_> = std::fs::read_dir(t.path().join(ASIDE_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|n| n.starts_with("000000000000000000")));
        // A whole log is left alone.
        assert!(
            set_aside_damaged_log("events", t.path())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn an_empty_first_commit_leaves_no_table() {
        let t = tempfile::tempdir().unwrap();
        commit(t.path(), 0, b"");
        assert_eq!(set_aside_damaged_log("events", t.path()).unwrap().len(), 1);
        assert!(
            list(&t.path().join("_delta_log"))
                .unwrap()
                .commits
                .is_empty()
        );
        // No log at all: nothing to do.
        let none = tempfile::tempdir().unwrap();
        assert!(
            set_aside_damaged_log("events", none.path())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn damage_that_is_not_a_torn_tail_is_an_error_naming_the_file() {
        let t = tempfile::tempdir().unwrap();
        commit(t.path(), 0, WHOLE);
        commit(t.path(), 1, b"");
        commit(t.path(), 2, WHOLE);
        let e = set_aside_damaged_log("events", t.path()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("00000000000000000001.json"), "{text}");
        assert!(text.contains("empty"), "{text}");
        assert_eq!(
            list(&t.path().join("_delta_log")).unwrap().commits,
            [0, 1, 2]
        );
    }

    #[test]
    fn a_commit_under_a_checkpoint_is_not_set_aside() {
        let t = tempfile::tempdir().unwrap();
        commit(t.path(), 0, WHOLE);
        commit(t.path(), 1, b"");
        let cp = t
            .path()
            .join("_delta_log/00000000000000000001.checkpoint.parquet");
        std::fs::write(&cp, b"PAR1 footer PAR1").unwrap();
        let e = set_aside_damaged_log("events", t.path()).unwrap_err();
        assert!(e.to_string().contains("checkpoint covers it"), "{e}");
    }

    #[test]
    fn a_torn_checkpoint_and_its_hint_are_set_aside_when_the_commits_remain() {
        let t = tempfile::tempdir().unwrap();
        commit(t.path(), 0, WHOLE);
        commit(t.path(), 1, WHOLE);
        let log = t.path().join("_delta_log");
        std::fs::write(log.join("00000000000000000001.checkpoint.parquet"), b"PAR1").unwrap();
        std::fs::write(log.join("_last_checkpoint"), b"").unwrap();
        assert_eq!(set_aside_damaged_log("events", t.path()).unwrap().len(), 2);
        assert!(!log.join("_last_checkpoint").exists());
        assert_eq!(list(&log).unwrap().commits, [0, 1]);
    }
}
