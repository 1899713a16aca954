//! Table upkeep: small-file compaction (`OPTIMIZE`), Delta checkpoints and `VACUUM` of files no
//! longer referenced, for every table under the lake root — on a schedule ([`Upkeep::run`]) and
//! on demand (`sluice lake optimize|vacuum`, through [`optimize_all`] and [`vacuum_all`]); and
//! the scrub that verifies every data file ([`crate::verify`], `[upkeep] verify_interval`).
//!
//! Why it is safe while sinks write and queries read:
//! - Compaction is a Delta commit that removes small files and adds their rows back in larger
//!   ones, with `dataChange = false`; it never touches the sinks' txn actions, so exactly-once is
//!   unaffected, and delta-rs rebases it over concurrent appends (snapshot isolation). A reader
//!   works on one table version: before the compaction commit it reads the small files, after it
//!   the large ones, never both.
//! - Vacuum deletes only files that no version younger than the retention still references
//!   (and, in full mode, files no commit ever referenced, such as the Parquet files of a flush
//!   whose commit failed). A query holding an older snapshot keeps working as long as it is
//!   younger than the retention; the retention is therefore never below [`MIN_RETENTION`], far
//!   above the query timeout.
//! - A checkpoint is written after each compaction, so readers and restarts replay few commits.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::{DeltaTable, DeltaTableBuilder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::commit::run_blocking;
use crate::typed::CONTROL_TABLE;
use crate::verify::{Damage, verify_all};
use crate::{LakeError, LakeRoot};

/// The shortest vacuum retention accepted on a schedule: well above the longest query.
pub const MIN_RETENTION: Duration = Duration::from_secs(3600);
/// How often expired partitions are looked for, with `[lake] retention`.
pub const EXPIRE_EVERY: Duration = Duration::from_secs(3600);
/// Compacted files aim at this size.
pub const TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;

/// `[upkeep]`: when tables are compacted and vacuumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpkeepConfig {
    /// Compact small files and checkpoint every table this often ("1h"); "0s" turns it off.
    #[serde(with = "humantime_serde")]
    pub optimize_interval: Duration,
    /// Vacuum every table this often ("24h"); "0s" turns it off.
    #[serde(with = "humantime_serde")]
    pub vacuum_interval: Duration,
    /// Files no longer referenced are deleted once they have been unreferenced this long
    /// (at least 1h, so that running queries keep their snapshot).
    #[serde(with = "humantime_serde")]
    pub vacuum_retention: Duration,
    /// Verify every data file of every table (checksum, length, Parquet decoding) this often
    /// ("24h"); "0s" turns it off. Damage is logged at error level, counted in
    /// `sluice_lake_damaged_files` and shown in `/health`.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
}

impl Default for UpkeepConfig {
    fn default() -> Self {
        Self {
            optimize_interval: Duration::from_secs(3600),
            vacuum_interval: Duration::from_secs(24 * 3600),
            vacuum_retention: Duration::from_secs(7 * 24 * 3600),
            verify_interval: Duration::from_secs(24 * 3600),
        }
    }
}

impl UpkeepConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<Self, LakeError> {
        if self.vacuum_retention < MIN_RETENTION {
            return Err(LakeError::Config(
                "upkeep.vacuum_retention must be at least 1h".into(),
            ));
        }
        Ok(self.clone())
    }
}

/// What compaction did to one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptimizeReport {
    /// Table name (a directory under the root).
    pub table: String,
    /// Files written.
    pub files_added: u64,
    /// Small files replaced.
    pub files_removed: u64,
    /// Table version afterwards.
    pub version: Option<u64>,
}

/// What vacuum did (or would do) to one table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VacuumReport {
    /// Table name.
    pub table: String,
    /// Files deleted (or, in a dry run, that would be).
    pub files_deleted: usize,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
}

fn delta_err(
    table: &str,
    context: &'static str,
) -> impl Fn(deltalake::DeltaTableError) -> LakeError {
    move |e| LakeError::delta(table, context, e)
}

/// The tables under `root`: every directory holding a Delta log, plus the typed tables'
/// control table. Sorted.
pub async fn list_tables(root: &LakeRoot) -> Result<Vec<String>, LakeError> {
    let mut candidates: Vec<String> = Vec::new();
    if let Some(dir) = root.local_path() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(LakeError::Location {
                    location: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        };
        candidates.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('_') && !n.starts_with('.')),
        );
    } else {
        let store = DeltaTableBuilder::from_url(root.url().clone())
            .and_then(|b| {
                b.with_storage_options(root.storage_options().clone())
                    .build()
            })
            .map_err(delta_err("", "listing the lake"))?
            .object_store();
        let listing = store
            .list_with_delimiter(None)
            .await
            .map_err(|e| LakeError::delta("", "listing the lake", e))?;
        candidates.extend(
            listing
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .filter(|n| !n.starts_with('_') && !n.starts_with('.')),
        );
    }
    candidates.push(CONTROL_TABLE.to_string());
    let mut tables = Vec::new();
    for name in candidates {
        if open_table(root, &name).await?.is_some() {
            tables.push(name);
        }
    }
    tables.sort();
    Ok(tables)
}

/// Table `name` loaded, or `None` when there is no table there.
pub(crate) async fn open_table(
    root: &LakeRoot,
    name: &str,
) -> Result<Option<DeltaTable>, LakeError> {
    let mut table = root.table(name)?;
    if !table
        .verify_deltatable_existence()
        .await
        .map_err(delta_err(name, "checking existence"))?
    {
        return Ok(None);
    }
    table.load().await.map_err(delta_err(name, "loading"))?;
    Ok(Some(table))
}

/// Compacts the small files of table `name` (per date partition) and writes a checkpoint.
pub async fn optimize_table(
    root: &LakeRoot,
    name: &str,
    zstd_level: i32,
) -> Result<OptimizeReport, LakeError> {
    let Some(table) = open_table(root, name).await? else {
        return Err(LakeError::Location {
            location: format!("{root}{name}"),
            reason: "no such table".into(),
        });
    };
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| LakeError::Config(format!("zstd level {zstd_level}: {e}")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
        .build();
    let table_name = name.to_string();
    let (table, metrics) = run_blocking(name, async move {
        table
            .optimize()
            .with_target_size(NonZeroU64::new(TARGET_FILE_BYTES).unwrap_or(NonZeroU64::MIN))
            .with_writer_properties(properties)
            .with_max_concurrent_tasks(1)
            .await
    })
    .await?
    .map_err(delta_err(&table_name, "optimizing"))?;
    if metrics.num_files_removed > 0 {
        let t = table.clone();
        run_blocking(name, async move {
            deltalake::checkpoints::create_checkpoint(&t, None).await
        })
        .await?
        .map_err(delta_err(name, "checkpointing"))?;
    }
    Ok(OptimizeReport {
        table: name.to_string(),
        files_added: metrics.num_files_added,
        files_removed: metrics.num_files_removed,
        version: table.version(),
    })
}

/// Deletes the files of table `name` unreferenced for longer than `retention` (also files no
/// commit ever referenced). `retention` is not checked here: the CLI lets an operator go below
/// [`MIN_RETENTION`] on purpose.
pub async fn vacuum_table(
    root: &LakeRoot,
    name: &str,
    retention: Duration,
    dry_run: bool,
) -> Result<VacuumReport, LakeError> {
    let Some(table) = open_table(root, name).await? else {
        return Err(LakeError::Location {
            location: format!("{root}{name}"),
            reason: "no such table".into(),
        });
    };
    let retention = chrono::Duration::from_std(retention)
        .map_err(|e| LakeError::Config(format!("vacuum retention: {e}")))?;
    let (_, metrics) = table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .with_dry_run(dry_run)
        .await
        .map_err(delta_err(name, "vacuuming"))?;
    Ok(VacuumReport {
        table: name.to_string(),
        files_deleted: metrics.files_deleted.len(),
        dry_run,
    })
}

/// [`optimize_table`] for every table (or those named); a failure on one table does not stop
/// the others.
pub async fn optimize_all(
    root: &LakeRoot,
    only: &[String],
    zstd_level: i32,
) -> Result<Vec<Result<OptimizeReport, LakeError>>, LakeError> {
    let tables = selected(root, only).await?;
    let mut out = Vec::with_capacity(tables.len());
    for name in tables {
        out.push(optimize_table(root, &name, zstd_level).await);
    }
    Ok(out)
}

/// [`vacuum_table`] for every table (or those named).
pub async fn vacuum_all(
    root: &LakeRoot,
    only: &[String],
    retention: Duration,
    dry_run: bool,
) -> Result<Vec<Result<VacuumReport, LakeError>>, LakeError> {
    let tables = selected(root, only).await?;
    let mut out = Vec::with_capacity(tables.len());
    for name in tables {
        out.push(vacuum_table(root, &name, retention, dry_run).await);
    }
    Ok(out)
}

pub(crate) async fn selected(root: &LakeRoot, only: &[String]) -> Result<Vec<String>, LakeError> {
    let tables = list_tables(root).await?;
    if only.is_empty() {
        return Ok(tables);
    }
    for name in only {
        if !tables.contains(name) {
            return Err(LakeError::Location {
                location: format!("{root}{name}"),
                reason: format!("no such table (tables: {})", tables.join(", ")),
            });
        }
    }
    Ok(only.to_vec())
}

/// Runs compaction and vacuum on their intervals until shutdown.
#[derive(Clone, Debug)]
pub struct Upkeep {
    root: LakeRoot,
    config: UpkeepConfig,
    zstd_level: i32,
    /// `[lake] retention`: expired partitions are deleted before each compaction.
    retention: Option<Duration>,
    damage: Damage,
}

impl Upkeep {
    /// Upkeep of every table under `root`.
    pub fn new(root: LakeRoot, config: UpkeepConfig, zstd_level: i32) -> Self {
        Self {
            root,
            config,
            zstd_level,
            retention: None,
            damage: Damage::default(),
        }
    }

    /// The damaged files the latest scrub found, for `/health`.
    pub fn damage(&self) -> Damage {
        self.damage.clone()
    }

    /// Also deletes every table's partitions older than `retention`, hourly and before each
    /// compaction.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Runs until `shutdown` is cancelled. Failures are logged and retried at the next
    /// interval; they never stop the process.
    pub async fn run(self, shutdown: CancellationToken) {
        let start = tokio::time::Instant::now();
        let every = |d: Duration| (!d.is_zero()).then(|| start + d);
        let mut next_optimize = every(self.config.optimize_interval);
        let mut next_vacuum = every(self.config.vacuum_interval);
        let mut next_verify = every(self.config.verify_interval);
        let mut next_expire = self.retention.map(|_| start);
        loop {
            let wake = [next_optimize, next_vacuum, next_verify, next_expire]
                .into_iter()
                .flatten()
                .min();
            let Some(wake) = wake else {
                shutdown.cancelled().await;
                return;
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = tokio::time::Instant::now();
            if let Some(retention) = self.retention
                && next_expire.is_some_and(|t| t <= now)
            {
                self.expire_once(retention).await;
                next_expire = Some(now + EXPIRE_EVERY);
            }
            if next_optimize.is_some_and(|t| t <= now) {
                self.optimize_once().await;
                next_optimize = Some(now + self.config.optimize_interval);
            }
            if next_vacuum.is_some_and(|t| t <= now) {
                self.vacuum_once().await;
                next_vacuum = Some(now + self.config.vacuum_interval);
            }
            if next_verify.is_some_and(|t| t <= now) {
                self.verify_once().await;
                next_verify = Some(tokio::time::Instant::now() + self.config.verify_interval);
            }
        }
    }

    async fn optimize_once(&self) {
        match optimize_all(&self.root, &[], self.zstd_level).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(r) => {
                            tracing::info!(table = %r.table, files_removed = r.files_removed, files_added = r.files_added, "lake table compacted")
                        }
                        Err(e) => tracing::warn!(error = %e, "lake compaction failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lake compaction failed"),
        }
    }

    async fn verify_once(&self) {
        let results = match verify_all(&self.root, &[]).await {
            Ok(results) => results,
            Err(e) => {
                tracing::warn!(error = %e, "lake verification failed");
                return;
            }
        };
        for r in results {
            match r {
                Ok(r) => {
                    crate::metrics::damaged_files(&r.table, r.damaged.len());
                    for d in &r.damaged {
                        tracing::error!(table = %d.table, path = %d.path, expected = %d.expected, found = %d.found, "lake data file damaged");
                    }
                    tracing::info!(table = %r.table, files = r.files_checked, without_checksum = r.files_without_checksum, damaged = r.damaged.len(), "lake table verified");
                    self.damage.set(&r.table, &r.damaged);
                }
                Err(e) => tracing::warn!(error = %e, "lake verification failed"),
            }
        }
    }

    async fn expire_once(&self, retention: Duration) {
        let cutoff = crate::retention::cutoff(chrono::Utc::now().date_naive(), retention);
        match crate::retention::expire_all(&self.root, cutoff).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(r) if r.files_removed > 0 => {
                            crate::metrics::expired(&r.table, r.files_removed);
                            tracing::info!(table = %r.table, column = %r.column, %cutoff, files_removed = r.files_removed, rows = ?r.rows_deleted, "lake partitions past retention deleted")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "lake retention failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lake retention failed"),
        }
    }

    async fn vacuum_once(&self) {
        match vacuum_all(&self.root, &[], self.config.vacuum_retention, false).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(r) => {
                            tracing::info!(table = %r.table, files_deleted = r.files_deleted, "lake table vacuumed")
                        }
                        Err(e) => tracing::warn!(error = %e, "lake vacuum failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "lake vacuum failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_below_an_hour_is_refused() {
        assert!(UpkeepConfig::default().validate().is_ok());
        let short = UpkeepConfig {
            vacuum_retention: Duration::from_secs(60),
            ..UpkeepConfig::default()
        };
        let err = short.validate().unwrap_err().to_string();
        assert!(
            err.contains("vacuum_retention must be at least 1h"),
            "{err}"
        );
    }
}
