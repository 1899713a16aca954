//! [`DeltaTarget`]: one lake table as the delivery loop sees it — open or create it, read its
//! transaction versions, write Parquet files, commit them together with `txn` actions, and
//! checkpoint.
//!
//! The exactly-once bookkeeping lives in the Delta log itself: every commit carries one
//! `txn { appId: "<table>/<partition>", version: <last journal offset included> }` per journal
//! partition it covers, atomically with the `add` actions of the rows. The table is therefore the
//! only state; nothing is kept on the local disk.
//!
//! Invariants:
//! - The in-memory snapshot a commit is built on is one whose txn versions the caller knows:
//!   the one it read them from, or a later one reached only by its own commits. delta-rs'
//!   conflict checker rejects a commit if any commit since that snapshot touched one of its app
//!   ids (`ConcurrentTransaction`), so a second writer on the same partitions cannot make us
//!   write a row twice; we reload and read the versions again. When a commit of ours lands
//!   after commits of others (on other app ids, so the checker let it through), the snapshot
//!   now includes theirs: [`Committed::others_committed`] tells the caller to read the txn
//!   versions again before it trusts its positions. (A test with two concurrent sinks found the
//!   duplicates this prevents.)
//! - Checkpoints are taken by this module (never by the post-commit hook), so that a checkpoint
//!   failure can never be mistaken for a commit failure.
//! - Log cleanup runs only after a checkpoint, not after every commit (it lists the whole log).

use std::future::Future;
use std::marker::PhantomData;

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, TableProperty};
use sluice_journal::Journal;

use crate::schema::{TableSpec, app_id, check_compatible, delta_columns, missing_columns};
use crate::{LakeError, LakeRoot};

/// How often delta-rs may retry a commit internally when another writer took the version (it
/// re-checks conflicts each time). Our own loop retries beyond that.
const COMMIT_MAX_RETRIES: usize = 10;

/// How many of the newest commits [`DeltaTarget::check_txn_history`] reads back.
const TXN_HISTORY_COMMITS: u64 = 100;

/// The properties of a sink's commit: its txns, and `isBlindAppend`, which is true of it (it
/// adds files and reads none), so that a delete or a compaction that read the table before it
/// (a deletion request, retention) is rebased over it instead of failing with a conflict under
/// `WriteSerializable` isolation ([`WRITE_SERIALIZABLE`]).
pub(crate) fn append_properties(txns: Vec<Transaction>, max_retries: usize) -> CommitProperties {
    CommitProperties::default()
        .with_application_transactions(txns)
        .with_max_retries(max_retries)
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
        .with_metadata([("isBlindAppend".to_string(), serde_json::Value::Bool(true))])
}

/// `delta.isolationLevel` of every table Sluice writes: write-serializable (delta-rs defaults to
/// serializable), under which a sink's blind append never conflicts with a delete or a
/// compaction that read the table before it; under serializable a deletion request or retention
/// on a busy table would fail each time a sink committed meanwhile. Spelled as delta-rs parses it
/// (camel case; `WriteSerializable` would be read as unset).
pub(crate) const WRITE_SERIALIZABLE: &str = "writeSerializable";

/// Sets `delta.isolationLevel` to [`WRITE_SERIALIZABLE`] on a table created before it was set
/// (a metadata commit; a concurrent writer doing the same wins and we reload).
pub(crate) async fn write_serializable(
    table: &mut DeltaTable,
    name: &str,
) -> Result<(), LakeError> {
    let key = TableProperty::IsolationLevel.as_ref();
    let set = table
        .snapshot()
        .map_err(|e| LakeError::delta(name, "reading metadata", e))?
        .metadata()
        .configuration()
        .get(key)
        .is_some_and(|v| v == WRITE_SERIALIZABLE);
    if set {
        return Ok(());
    }
    let properties =
        std::collections::HashMap::from([(key.to_string(), WRITE_SERIALIZABLE.to_string())]);
    match table
        .clone()
        .set_tbl_properties()
        .with_properties(properties)
        .await
    {
        Ok(t) => {
            *table = t;
            tracing::info!(table = name, "set delta.isolationLevel = writeSerializable");
        }
        Err(e) => {
            tracing::warn!(table = name, error = %e, "setting the isolation level failed; reloading");
            table
                .update_state()
                .await
                .map_err(|e| LakeError::delta(name, "reloading", e))?;
        }
    }
    Ok(())
}

/// Runs a future on the blocking pool, so that CPU-heavy work inside it (Parquet encoding, kernel
/// log replay, checkpoint writing) does not stall the async worker threads.
pub(crate) async fn run_blocking<F, T>(table: &str, future: F) -> Result<T, LakeError>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(future))
        .await
        .map_err(|e| LakeError::Task {
            table: table.to_string(),
            reason: e.to_string(),
        })
}

/// A landed commit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Committed {
    /// The table version it created.
    pub(crate) version: u64,
    /// Other writers committed between our snapshot and this commit, and the snapshot now
    /// includes their commits: the caller must read the txn versions again before it relies on
    /// its in-memory positions (another writer may have delivered some of our partitions).
    pub(crate) others_committed: bool,
}

/// An opened (and, if it was absent, created) lake table.
pub(crate) struct DeltaTarget<S: TableSpec> {
    table: DeltaTable,
    _spec: PhantomData<S>,
}

impl<S: TableSpec> DeltaTarget<S> {
    /// Opens table `S` under `root`, creating it if it does not exist yet, and checks that its
    /// schema is the one this version writes.
    pub(crate) async fn open(root: &LakeRoot, checkpoint_interval: u64) -> Result<Self, LakeError> {
        root.create_table_dir(S::TABLE)?;
        let delta = |context, e| LakeError::delta(S::TABLE, context, e);
        let mut table = root.table(S::TABLE)?;
        // Checking first keeps the kernel from logging an ERROR about an empty log.
        let exists = table
            .verify_deltatable_existence()
            .await
            .map_err(|e| delta("checking existence", e))?;
        if exists {
            if let Err(e) = table.load().await {
                let dir = root.local_path().map(|d| d.join(S::TABLE));
                let aside = dir
                    .as_deref()
                    .and_then(|d| set_aside_checkpoint(S::TABLE, d));
                let Some(moved) = aside else {
                    return Err(delta("loading", e));
                };
                if let Err(again) = table.load().await {
                    // Not the checkpoint's fault (or the commits it summarises are gone).
                    restore(&moved);
                    tracing::warn!(table = S::TABLE, error = %again, "loading without the checkpoint failed too; put it back");
                    return Err(delta("loading", e));
                }
                tracing::error!(
                    table = S::TABLE,
                    error = %e,
                    moved = ?moved.iter().map(|(_, to)| to.display().to_string()).collect::<Vec<_>>(),
                    "the table's newest checkpoint did not load: set it aside and loaded the \
                     JSON commits instead"
                );
            }
        } else {
            let created = table
                .create()
                .with_table_name(S::TABLE)
                .with_comment(format!(
                    "sluice {} table, fed from the {} topic",
                    S::TABLE,
                    S::TOPIC
                ))
                .with_columns(delta_columns(S::COLUMNS))
                .with_partition_columns([S::PARTITION_COLUMN])
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(checkpoint_interval.to_string()),
                )
                .with_configuration_property(
                    TableProperty::IsolationLevel,
                    Some(WRITE_SERIALIZABLE.to_string()),
                )
                .await;
            match created {
                Ok(t) => table = t,
                Err(create_error) => {
                    // Another writer may have created it between our check and our commit.
                    let exists = table
                        .verify_deltatable_existence()
                        .await
                        .map_err(|e| delta("checking existence", e))?;
                    if !exists {
                        return Err(delta("creating", create_error));
                    }
                    table.load().await.map_err(|e| delta("loading", e))?;
                }
            }
            tracing::info!(table = S::TABLE, url = %table.table_url(), "created lake table");
        }
        let mut target = Self {
            table,
            _spec: PhantomData,
        };
        target.evolve().await?;
        write_serializable(&mut target.table, S::TABLE).await?;
        target.check_schema()?;
        Ok(target)
    }

    /// Adds the nullable columns this version writes that the table lacks (a table made by an
    /// older version). Additive only: existing columns and files are untouched, and readers of
    /// older files see nulls. Another writer adding the same columns at the same time makes our
    /// commit fail; the table is then reloaded and checked again.
    async fn evolve(&mut self) -> Result<(), LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(S::TABLE, "reading metadata", e))?;
        let missing = missing_columns(S::COLUMNS, &snapshot.schema());
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = missing.iter().map(|f| f.name().to_string()).collect();
        match self.table.clone().add_columns().with_fields(missing).await {
            Ok(t) => {
                self.table = t;
                tracing::info!(table = S::TABLE, columns = ?names, "added columns to the lake table");
            }
            Err(e) => {
                tracing::warn!(table = S::TABLE, error = %e, "adding columns failed; reloading");
                self.table
                    .update_state()
                    .await
                    .map_err(|e| LakeError::delta(S::TABLE, "reloading", e))?;
                let snapshot = self
                    .table
                    .snapshot()
                    .map_err(|e| LakeError::delta(S::TABLE, "reading metadata", e))?;
                if !missing_columns(S::COLUMNS, &snapshot.schema()).is_empty() {
                    return Err(LakeError::delta(S::TABLE, "adding columns", e));
                }
            }
        }
        Ok(())
    }

    fn check_schema(&self) -> Result<(), LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(S::TABLE, "reading metadata", e))?;
        let schema = snapshot.schema();
        check_compatible(
            S::COLUMNS,
            &schema,
            snapshot.metadata().partition_columns(),
            S::PARTITION_COLUMN,
        )
        .map_err(|reason| LakeError::SchemaMismatch {
            table: S::TABLE.to_string(),
            reason,
        })
    }

    /// The loaded table version.
    pub(crate) fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The table (for writing files against its schema and store).
    pub(crate) fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// Reloads the table to its latest version. Used after a failed or ambiguous commit.
    pub(crate) async fn reload(&mut self) -> Result<(), LakeError> {
        self.table
            .update_state()
            .await
            .map_err(|e| LakeError::delta(S::TABLE, "reloading", e))?;
        self.check_schema()
    }

    /// The txn version (last delivered journal offset) of each of `partitions`, as recorded in
    /// the loaded snapshot.
    pub(crate) async fn txn_versions(
        &self,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<(u32, Option<u64>)>, LakeError> {
        self.txn_versions_as(S::TABLE, partitions).await
    }

    /// Like [`DeltaTarget::txn_versions`], for the app ids `<app>/<partition>` of another writer
    /// of this table (the typed-table sink writes its bad rows under `bad_rows/typed/<p>`).
    pub(crate) async fn txn_versions_as(
        &self,
        app: &str,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Result<Vec<(u32, Option<u64>)>, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(S::TABLE, "reading transactions", e))?;
        let log_store = self.table.log_store();
        let mut out = Vec::new();
        for partition in partitions {
            let version = snapshot
                .transaction_version(log_store.as_ref(), app_id(app, partition))
                .await
                .map_err(|e| LakeError::delta(S::TABLE, "reading transactions", e))?;
            // A negative version was not written by us; treat it as nothing delivered.
            out.push((partition, version.and_then(|v| u64::try_from(v).ok())));
        }
        Ok(out)
    }

    /// Checks that the txn versions of app ids `<app>/<p>` never decrease over the newest
    /// commits of the log; see [`check_txn_history`].
    pub(crate) async fn check_txn_history(&self, app: &str) -> Result<(), LakeError> {
        check_txn_history(&self.table, S::TABLE, app).await
    }

    /// Commits `adds` together with one txn action per `(partition, last offset)`. On success the
    /// in-memory snapshot is advanced to the new version.
    pub(crate) async fn commit(
        &mut self,
        adds: Vec<Add>,
        delivered: &[(u32, u64)],
    ) -> Result<Committed, LakeError> {
        self.commit_as(S::TABLE, adds, delivered).await
    }

    /// Like [`DeltaTarget::commit`], with the txn app ids `<app>/<partition>`.
    pub(crate) async fn commit_as(
        &mut self,
        app: &str,
        adds: Vec<Add>,
        delivered: &[(u32, u64)],
    ) -> Result<Committed, LakeError> {
        let base = self.table.version();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let txns: Vec<Transaction> = delivered
            .iter()
            .map(|(p, last)| {
                Transaction::new_with_last_update(
                    app_id(app, *p),
                    i64::try_from(*last).unwrap_or(i64::MAX),
                    Some(now_ms),
                )
            })
            .collect();
        let properties = append_properties(txns, COMMIT_MAX_RETRIES);
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(vec![S::PARTITION_COLUMN.to_string()]),
            predicate: None,
        };
        let snapshot = self
            .table
            .snapshot()
            .map_err(|e| LakeError::delta(S::TABLE, "committing", e))?;
        let finalized = CommitBuilder::from(properties)
            .with_actions(adds.into_iter().map(Action::Add).collect())
            .build(
                Some(snapshot as &dyn TableReference),
                self.table.log_store(),
                operation,
            )
            .await
            .map_err(|e| LakeError::delta(S::TABLE, "committing", e))?;
        let version = finalized.version();
        match self.table.update_incremental(Some(version)).await {
            Ok(()) => Ok(Committed {
                version,
                others_committed: base.is_none_or(|base| version != base + 1),
            }),
            Err(e) => {
                // The commit landed. The snapshot stayed where our positions are known, and the
                // next commit built on it fails its conflict check (our own app ids) and makes
                // the caller reload, so this is not an error of the commit.
                tracing::warn!(table = S::TABLE, version, error = %e, "could not advance the table snapshot after a commit");
                Ok(Committed {
                    version,
                    others_committed: false,
                })
            }
        }
    }

    /// Writes a checkpoint at the loaded version, then removes log files past the table's log
    /// retention (`delta.logRetentionDuration`, 30 days by default).
    pub(crate) async fn checkpoint(&self) -> Result<(), LakeError> {
        let table = self.table.clone();
        run_blocking(S::TABLE, async move {
            deltalake::checkpoints::create_checkpoint(&table, None).await?;
            deltalake::checkpoints::cleanup_metadata(&table, None).await
        })
        .await?
        .map(|_| ())
        .map_err(|e| LakeError::delta(S::TABLE, "checkpointing", e))
    }
}

/// Checks that the txn versions of app ids `<app>/<p>` of `table` (named `name`) never decrease
/// from one commit to a later one over the newest [`TXN_HISTORY_COMMITS`] commits of the log:
/// each commit records the last journal offset delivered, which only grows. A lower version
/// later means a damaged (or hand-edited) commit; trusting it would deliver the offsets in
/// between a second time, so the caller refuses to deliver instead
/// ([`LakeError::TxnRegressed`]).
pub(crate) async fn check_txn_history(
    table: &DeltaTable,
    name: &str,
    app: &str,
) -> Result<(), LakeError> {
    let Some(latest) = table.version() else {
        return Ok(());
    };
    let log_store = table.log_store();
    let prefix = format!("{app}/");
    // app id -> (commit, highest version so far)
    let mut seen: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    for commit in latest.saturating_sub(TXN_HISTORY_COMMITS - 1)..=latest {
        let bytes = log_store
            .read_commit_entry(commit)
            .await
            .map_err(|e| LakeError::delta(name, "reading the log", e))?;
        let Some(bytes) = bytes else { continue };
        for (app_id, version) in txns_in_commit(&bytes, &prefix) {
            match seen.get(&app_id) {
                Some(&(earlier_commit, earlier)) if version < earlier => {
                    let e = LakeError::TxnRegressed {
                        table: name.to_string(),
                        app_id,
                        commit,
                        version,
                        earlier_commit,
                        earlier,
                    };
                    crate::metrics::txn_regressed(name);
                    tracing::error!(table = name, error = %e, "refusing to deliver into a table whose log went backwards");
                    return Err(e);
                }
                _ => {
                    seen.insert(app_id, (commit, version));
                }
            }
        }
    }
    Ok(())
}

/// Checks that no recorded txn version `<app>/<p>` of table `name` lies at or past the end of
/// partition `p` of `topic` in `journal`. A sink delivers only durable records, and a
/// partition's end never goes back (recovery resumes at the durable floor), so every version
/// is below the end. One that is not was raised by damage (or an edit, or the journal is not
/// the one the table was fed from): resuming after it would skip the offsets in between
/// without a trace, so the caller refuses to deliver ([`LakeError::TxnPastJournalEnd`]).
/// A partition whose end cannot be read (quarantined) is left to the reader, which reports it.
pub(crate) fn check_txns_within_journal(
    name: &str,
    app: &str,
    versions: impl IntoIterator<Item = (u32, u64)>,
    journal: &dyn Journal,
    topic: &str,
) -> Result<(), LakeError> {
    for (partition, version) in versions {
        let Ok(end) = journal.end(topic, partition) else {
            continue;
        };
        let recorded = version.saturating_add(1);
        if recorded > end {
            crate::metrics::txn_past_journal_end(name, partition);
            let e = LakeError::TxnPastJournalEnd {
                table: name.to_string(),
                app_id: app_id(app, partition),
                topic: topic.to_string(),
                partition,
                recorded,
                end,
            };
            tracing::error!(
                table = name,
                topic,
                partition,
                recorded,
                journal_end = end,
                error = %e,
                "refusing to deliver: the table records an offset past the journal's end"
            );
            return Err(e);
        }
    }
    Ok(())
}

/// Moves the newest checkpoint of the local table in `dir` (the files of the version
/// `_last_checkpoint` names, and `_last_checkpoint` itself) aside, the way the repair on open
/// sets damaged log files aside ([`crate::repair::move_aside`]), so the table loads from its
/// JSON commits. Returns the moves made, none if there was no checkpoint.
fn set_aside_checkpoint(
    table: &str,
    dir: &std::path::Path,
) -> Option<Vec<(std::path::PathBuf, std::path::PathBuf)>> {
    let log = dir.join("_delta_log");
    let last = std::fs::read(log.join("_last_checkpoint")).ok()?;
    let version = serde_json::from_slice::<serde_json::Value>(&last)
        .ok()?
        .get("version")?
        .as_u64()?;
    let prefix = format!("{version:020}.checkpoint");
    let mut moved = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.push("_last_checkpoint".into());
    for name in names {
        let from = log.join(&name);
        let why = "the newest checkpoint does not load";
        if let Ok(to) = crate::repair::move_aside(table, dir, &from, why) {
            moved.push((from, to));
        }
    }
    (!moved.is_empty()).then_some(moved)
}

/// Undoes [`set_aside_checkpoint`].
fn restore(moved: &[(std::path::PathBuf, std::path::PathBuf)]) {
    for (from, to) in moved {
        let _ = std::fs::rename(to, from);
    }
}

/// The `txn` actions of one JSON commit whose app id starts with `prefix`: (app id, version).
/// Lines that are not JSON are skipped here (loading the table reports them).
fn txns_in_commit(bytes: &[u8], prefix: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        let Some(txn) = action.get("txn") else {
            continue;
        };
        if let (Some(app_id), Some(version)) = (
            txn.get("appId").and_then(|v| v.as_str()),
            txn.get("version").and_then(serde_json::Value::as_i64),
        ) && app_id.starts_with(prefix)
        {
            out.push((app_id.to_string(), version));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txns_are_read_from_a_json_commit() {
        let commit = b"{\"commitInfo\":{}}\n{\"txn\":{\"appId\":\"events/0\",\"version\":9}}\nnot json\n{\"txn\":{\"appId\":\"bad_rows/1\",\"version\":3}}\n";
        assert_eq!(
            txns_in_commit(commit, "events/"),
            vec![("events/0".to_string(), 9)]
        );
        assert!(txns_in_commit(b"", "events/").is_empty());
    }
}
