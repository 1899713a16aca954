//! Verification of the data files a table's current version references: `sluice lake verify`
//! ([`verify_all`]) and the scheduled scrub of [`crate::Upkeep`] (`[upkeep] verify_interval`).
//!
//! Each file is read whole, once: its length and CRC32C are compared with the `add` tags
//! written with it ([`crate::checksum`]), when it has them, and it is decoded as Parquet to the
//! last row (files without tags, such as compaction output, are checked by that alone). A file
//! that is missing, has another length or checksum, or does not decode is *damaged*; the report
//! names it with what was expected and what was found. Nothing is changed: what an operator
//! does about a damaged file is in `docs/recovery.md`.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use deltalake::DeltaTable;
use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt as _};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::checksum::FileSum;
use crate::upkeep::{open_table, selected};
use crate::{LakeError, LakeRoot};

/// A data file that failed verification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// Table name.
    pub table: String,
    /// Path relative to the table's directory, as in the Delta log.
    pub path: String,
    /// What the log records: the tagged checksum and length, or the size alone.
    pub expected: String,
    /// What the file holds instead.
    pub found: String,
}

/// What verification found in one table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Table name.
    pub table: String,
    /// The table version verified.
    pub version: Option<u64>,
    /// Data files read.
    pub files_checked: u64,
    /// Of those, files with no checksum tags (checked by length and decoding only).
    pub files_without_checksum: u64,
    /// Damaged files.
    pub damaged: Vec<DamagedFile>,
}

/// One file to check, taken from the table's snapshot.
struct Listed {
    path: String,
    location: deltalake::Path,
    size: i64,
    sum: Option<FileSum>,
}

fn listed(table: &DeltaTable, name: &str) -> Result<Vec<Listed>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(|e| LakeError::delta(name, "reading the snapshot", e))?;
    #[allow(deprecated)] // the only public way to a file's tags in this delta-rs
    let files = snapshot
        .log_data()
        .iter()
        .map(|f| Listed {
            path: f.path().to_string(),
            location: f.object_store_path(),
            size: f.size(),
            sum: FileSum::from_tags(f.add_action().tags.as_ref()),
        })
        .collect();
    Ok(files)
}

/// Compares `bytes` with what the log records and decodes them; `Err` describes the damage
/// (`expected`, `found`).
fn check(file: &Listed, bytes: Bytes) -> Result<(), (String, String)> {
    let found = FileSum::of(&bytes);
    if let Some(expected) = file.sum
        && expected != found
    {
        return Err((expected.to_string(), found.to_string()));
    }
    if i64::try_from(found.length).ok() != Some(file.size) {
        return Err((format!("{} bytes", file.size), found.to_string()));
    }
    let expected = || match file.sum {
        Some(sum) => sum.to_string(),
        None => format!("{} bytes of Parquet", file.size),
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| (expected(), format!("not readable as Parquet: {e}")))?;
    for batch in reader {
        batch.map_err(|e| (expected(), format!("not readable as Parquet: {e}")))?;
    }
    Ok(())
}

/// Verifies every data file the current version of table `name` references.
pub async fn verify_table(root: &LakeRoot, name: &str) -> Result<VerifyReport, LakeError> {
    let Some(table) = open_table(root, name).await? else {
        return Err(LakeError::Location {
            location: format!("{root}{name}"),
            reason: "no such table".into(),
        });
    };
    let store = table.object_store();
    let mut report = VerifyReport {
        table: name.to_string(),
        version: table.version(),
        ..VerifyReport::default()
    };
    for file in listed(&table, name)? {
        report.files_checked += 1;
        if file.sum.is_none() {
            report.files_without_checksum += 1;
        }
        let path = file.path.clone();
        let size = file.size;
        let outcome = match read(store.as_ref(), &file.location).await {
            Err(found) => Err((format!("{size} bytes"), found)),
            Ok(bytes) => tokio::task::spawn_blocking(move || check(&file, bytes))
                .await
                .map_err(|e| LakeError::Task {
                    table: name.to_string(),
                    reason: e.to_string(),
                })?,
        };
        if let Err((expected, found)) = outcome {
            report.damaged.push(DamagedFile {
                table: name.to_string(),
                path,
                expected,
                found,
            });
        }
    }
    Ok(report)
}

async fn read(store: &dyn ObjectStore, location: &deltalake::Path) -> Result<Bytes, String> {
    let got = store.get(location).await.map_err(|e| match e {
        deltalake::ObjectStoreError::NotFound { .. } => "missing".to_string(),
        e => format!("not readable: {e}"),
    })?;
    got.bytes().await.map_err(|e| format!("not readable: {e}"))
}

/// [`verify_table`] for every table (or those named); a failure on one table does not stop the
/// others.
pub async fn verify_all(
    root: &LakeRoot,
    only: &[String],
) -> Result<Vec<Result<VerifyReport, LakeError>>, LakeError> {
    let tables = selected(root, only).await?;
    let mut out = Vec::with_capacity(tables.len());
    for name in tables {
        out.push(verify_table(root, &name).await);
    }
    Ok(out)
}

/// The damaged files the latest scrub found, shared with whoever reports them (the server's
/// `/health`). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Damage(Arc<Mutex<Vec<DamagedFile>>>);

impl Damage {
    fn lock(&self) -> MutexGuard<'_, Vec<DamagedFile>> {
        // Plain data, always consistent: a panic elsewhere cannot tear it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The damaged files the latest scrub found (empty before the first).
    pub fn files(&self) -> Vec<DamagedFile> {
        self.lock().clone()
    }

    /// Replaces what table `table` holds with `damaged`.
    pub(crate) fn set(&self, table: &str, damaged: &[DamagedFile]) {
        let mut files = self.lock();
        files.retain(|f| f.table != table);
        files.extend_from_slice(damaged);
    }
}
