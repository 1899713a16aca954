//! [`EmbeddedStore`]: the hot store inside the process, on fjall (an LSM tree).
//!
//! Two keyspaces: `values` (profiles, counters) and `positions` (one JSON map per consumer). A
//! [`WriteBatch`] becomes one fjall batch across both keyspaces, which fjall commits atomically
//! through its journal: after a crash either the values and the positions of a batch are there,
//! or neither is. Batches go to the OS on commit; with `fsync = false` (the default) a power
//! loss can drop the latest batches, but always with their positions, so they are projected
//! again from the journal. A mutex serialises writers so that the position check and the commit
//! are one step.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::HotError;
use crate::store::{BoxFuture, HotStore, Positions, WriteBatch, check_positions};

fn embedded(e: impl std::fmt::Display) -> HotError {
    HotError::Embedded(e.to_string())
}

struct Inner {
    db: Database,
    values: Keyspace,
    positions: Keyspace,
    fsync: bool,
    write_lock: Mutex<()>,
}

/// The embedded backend. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`. With `fsync`, every batch is synced to disk
    /// before `write` returns.
    pub fn open(dir: &Path, fsync: bool) -> Result<Self, HotError> {
        sluice_journal::durable_fs::create_dir_all_durable(dir)
            .map_err(|e| HotError::Embedded(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::builder(dir).open().map_err(embedded)?;
        let values = db
            .keyspace("values", KeyspaceCreateOptions::default)
            .map_err(embedded)?;
        let positions = db
            .keyspace("positions", KeyspaceCreateOptions::default)
            .map_err(embedded)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                values,
                positions,
                fsync,
                write_lock: Mutex::new(()),
            }),
        })
    }

    fn read_positions(&self, consumer: &str) -> Result<Positions, HotError> {
        match self.inner.positions.get(consumer).map_err(embedded)? {
            None => Ok(Positions::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| HotError::Corrupt {
                key: consumer.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn write_now(&self, batch: WriteBatch) -> Result<(), HotError> {
        let _guard = self
            .inner
            .write_lock
            .lock()
            .map_err(|_| HotError::Embedded("a writer panicked".into()))?;
        let stored = self.read_positions(&batch.consumer)?;
        let next = check_positions(&batch, &stored)?;
        let mode = self.inner.fsync.then_some(PersistMode::SyncData);
        let mut fb = self.inner.db.batch().durability(mode);
        for (key, value) in batch.puts {
            fb.insert(&self.inner.values, key, value);
        }
        if !batch.positions.is_empty() {
            let encoded = serde_json::to_vec(&next).map_err(embedded)?;
            fb.insert(&self.inner.positions, batch.consumer.as_str(), encoded);
        }
        fb.commit().map_err(embedded)
    }

    /// Syncs everything written so far to disk.
    pub fn persist(&self) -> Result<(), HotError> {
        self.inner
            .db
            .persist(PersistMode::SyncAll)
            .map_err(embedded)
    }
}

impl HotStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, HotError>> {
        // Point reads hit the memtable or the block cache: microseconds, so they run inline.
        Box::pin(async move {
            keys.iter()
                .map(|k| {
                    self.inner
                        .values
                        .get(k)
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(embedded)
                })
                .collect()
        })
    }

    fn positions<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<Positions, HotError>> {
        Box::pin(async move { self.read_positions(consumer) })
    }

    fn write(&self, batch: WriteBatch) -> BoxFuture<'_, Result<(), HotError>> {
        // A commit writes the fjall journal (and may fsync): off the async threads.
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.write_now(batch))
                .await
                .map_err(|e| HotError::Embedded(format!("write task failed: {e}")))?
        })
    }
}
