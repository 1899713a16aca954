//! [`EmbeddedStore`]: the hot store inside the process, on fjall (an LSM tree).
//!
//! Two keyspaces: `values` (profiles, counters) and `positions` (one JSON map per consumer). A
//! [`WriteBatch`] becomes one fjall batch across both keyspaces, which fjall commits atomically
//! through its journal: after a crash either the values and the positions of a batch are there,
//! or neither is. Batches go to the OS on commit (`PersistMode::Buffer`: fjall would otherwise
//! keep them in its own buffer, where a later failed flush loses them); with `fsync = false`
//! (the default) a power loss can drop the latest batches, but always with their positions, so
//! they are projected again from the journal. A mutex serialises writers so that the position
//! check and the commit are one step.
//!
//! A failed commit (a full disk, an I/O error) poisons a fjall database for good: every later
//! write fails. So after one the store drops the database and opens it again before the next
//! write; fjall's recovery replays its journal, which holds whole batches only, so the failed
//! batch is absent (or whole, if its bytes reached the file on the way out: the projection's
//! retry then finds its own positions) and the retry lands once space is back. While the
//! reopen itself fails, reads and writes answer an `Embedded` error (retryable).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::HotError;
use crate::store::{BoxFuture, HotStore, Positions, WriteBatch, check_positions};

fn embedded(e: impl std::fmt::Display) -> HotError {
    HotError::Embedded(e.to_string())
}

/// The block cache: recently read profile and counter blocks (fjall's default, made explicit
/// so the memory ceiling is known).
const CACHE_BYTES: u64 = 32 << 20;
/// A keyspace's active memtable is sealed and flushed past this size (fjall's default).
const MEMTABLE_BYTES: u64 = 64 << 20;

/// What the embedded store holds in memory at most, about: the values keyspace's active
/// memtable and one sealed memtable being flushed, and the block cache.
pub const MEMORY_CEILING_BYTES: u64 = 2 * MEMTABLE_BYTES + CACHE_BYTES;

/// One open fjall database and its two keyspaces.
struct Db {
    db: Database,
    values: Keyspace,
    positions: Keyspace,
}

impl Db {
    fn open(dir: &Path) -> Result<Self, HotError> {
        let db = Database::builder(dir)
            .cache_size(CACHE_BYTES)
            .open()
            .map_err(embedded)?;
        let values = db
            .keyspace("values", || {
                KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
            })
            .map_err(embedded)?;
        let positions = db
            .keyspace("positions", KeyspaceCreateOptions::default)
            .map_err(embedded)?;
        Ok(Self {
            db,
            values,
            positions,
        })
    }

    fn read_positions(&self, consumer: &str) -> Result<Positions, HotError> {
        match self.positions.get(consumer).map_err(embedded)? {
            None => Ok(Positions::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| HotError::Corrupt {
                key: consumer.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

struct Inner {
    dir: PathBuf,
    fsync: bool,
    /// `None` between dropping a poisoned database and a successful reopen.
    open: RwLock<Option<Arc<Db>>>,
    /// The last commit failed: reopen before the next write.
    poisoned: AtomicBool,
    write_lock: Mutex<()>,
    /// `delete` calls finished.
    deletions: AtomicU64,
    /// Test hook: the next commit panics, as fjall's does on a short journal write.
    #[cfg(test)]
    panic_next_commit: AtomicBool,
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
        let open = Db::open(dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                fsync,
                open: RwLock::new(Some(Arc::new(open))),
                poisoned: AtomicBool::new(false),
                write_lock: Mutex::new(()),
                deletions: AtomicU64::new(0),
                #[cfg(test)]
                panic_next_commit: AtomicBool::new(false),
            }),
        })
    }

    /// The open database, or an error while it is being reopened.
    fn current(&self) -> Result<Arc<Db>, HotError> {
        let open = self.inner.open.read().unwrap_or_else(|e| e.into_inner());
        open.clone().ok_or_else(|| {
            HotError::Embedded("the store is being reopened after a failed write".into())
        })
    }

    /// Drops the (poisoned) database and opens it again. Waits for nothing: a reader that
    /// still holds the old one keeps its lock file, so this attempt fails and the next retries.
    fn reopen(&self) -> Result<(), HotError> {
        let mut slot = self.inner.open.write().unwrap_or_else(|e| e.into_inner());
        drop(slot.take());
        let open = Db::open(&self.inner.dir)?;
        *slot = Some(Arc::new(open));
        self.inner.poisoned.store(false, Ordering::Release);
        tracing::info!(dir = %self.inner.dir.display(), "embedded hot store reopened after a failed write");
        Ok(())
    }

    /// The write lock and the open database, reopened first after a failed write.
    fn for_writing(&self) -> Result<(std::sync::MutexGuard<'_, ()>, Arc<Db>), HotError> {
        let guard = match self.inner.write_lock.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                // A commit panicked (fjall asserts on a short journal write when the disk is
                // full): treated as a failed commit, so the database is reopened, not the lock
                // left poisoned for every later write.
                self.inner.write_lock.clear_poison();
                self.inner.poisoned.store(true, Ordering::Release);
                poisoned.into_inner()
            }
        };
        if self.inner.poisoned.load(Ordering::Acquire) {
            self.reopen()?;
        }
        Ok((guard, self.current()?))
    }

    fn write_now(&self, batch: &WriteBatch) -> Result<(), HotError> {
        let (_guard, open) = self.for_writing()?;
        let stored = open.read_positions(&batch.consumer)?;
        let next = check_positions(batch, &stored)?;
        // Without a mode fjall keeps the batch in its journal's user-space buffer; a failure
        // to flush it later (ENOSPC) would lose batches already acknowledged. `Buffer` hands
        // every batch to the OS before `commit` returns, so only the failing batch can fail.
        let mode = match self.inner.fsync {
            true => PersistMode::SyncData,
            false => PersistMode::Buffer,
        };
        let mut fb = open.db.batch().durability(Some(mode));
        for (key, value) in &batch.puts {
            fb.insert(&open.values, key.as_str(), value.as_slice());
        }
        for key in &batch.deletes {
            fb.remove(&open.values, key.as_str());
        }
        if !batch.positions.is_empty() {
            let encoded = serde_json::to_vec(&next).map_err(embedded)?;
            fb.insert(&open.positions, batch.consumer.as_str(), encoded);
        }
        #[cfg(test)]
        assert!(
            !self.inner.panic_next_commit.swap(false, Ordering::AcqRel),
            "a commit panicked"
        );
        fb.commit().map_err(|e| {
            // fjall refuses every write after this one; reopen before the next.
            self.inner.poisoned.store(true, Ordering::Release);
            embedded(e)
        })?;
        crate::metrics::store_memory(
            open.db.write_buffer_size() + open.db.cache_size(),
            MEMORY_CEILING_BYTES,
        );
        Ok(())
    }

    /// Removes `keys` in one durable batch, then flushes and fully compacts the values, so the
    /// old values leave the store's files too (a deletion request is rare; compaction rewrites
    /// the values once).
    fn delete_now(&self, keys: &[String]) -> Result<usize, HotError> {
        let (_guard, open) = self.for_writing()?;
        let mut fb = open.db.batch().durability(Some(PersistMode::SyncData));
        let mut existed = 0;
        for key in keys {
            if open.values.contains_key(key).map_err(embedded)? {
                existed += 1;
                fb.remove(&open.values, key.as_str());
            }
        }
        fb.commit().map_err(|e| {
            self.inner.poisoned.store(true, Ordering::Release);
            embedded(e)
        })?;
        if existed > 0 {
            open.values.rotate_memtable_and_wait().map_err(embedded)?;
            open.values.major_compact().map_err(embedded)?;
        }
        Ok(existed)
    }

    /// Syncs everything written so far to disk.
    pub fn persist(&self) -> Result<(), HotError> {
        self.current()?
            .db
            .persist(PersistMode::SyncAll)
            .map_err(embedded)
    }

    /// Test hook: behave as after a failed commit (the next write reopens the database).
    #[doc(hidden)]
    pub fn mark_poisoned(&self) {
        self.inner.poisoned.store(true, Ordering::Release);
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
            let open = self.current()?;
            keys.iter()
                .map(|k| {
                    open.values
                        .get(k)
                        .map(|v| v.map(|v| v.to_vec()))
                        .map_err(embedded)
                })
                .collect()
        })
    }

    fn positions<'a>(&'a self, consumer: &'a str) -> BoxFuture<'a, Result<Positions, HotError>> {
        Box::pin(async move { self.current()?.read_positions(consumer) })
    }

    fn write(&self, batch: Arc<WriteBatch>) -> BoxFuture<'_, Result<(), HotError>> {
        // A commit writes the fjall journal (and may fsync): off the async threads.
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.write_now(&batch))
                .await
                .map_err(|e| HotError::Embedded(format!("write task failed: {e}")))?
        })
    }

    fn delete<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<usize, HotError>> {
        let this = self.clone();
        let keys = keys.to_vec();
        Box::pin(async move {
            let result = tokio::task::spawn_blocking(move || this.delete_now(&keys))
                .await
                .map_err(|e| HotError::Embedded(format!("delete task failed: {e}")))?;
            self.inner.deletions.fetch_add(1, Ordering::AcqRel);
            result
        })
    }

    fn keys_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, HotError>> {
        Box::pin(async move {
            let open = self.current()?;
            open.values
                .prefix(prefix)
                .map(|guard| {
                    let key = guard.key().map_err(embedded)?;
                    String::from_utf8(key.to_vec())
                        .map_err(|_| HotError::Embedded("a key that is not UTF-8".into()))
                })
                .collect()
        })
    }

    fn deletions(&self) -> u64 {
        self.inner.deletions.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn batch(expected: Option<u64>, new: u64, value: &str) -> Arc<WriteBatch> {
        Arc::new(WriteBatch {
            consumer: "hot/good".into(),
            positions: BTreeMap::from([(0, (expected, new))]),
            puts: vec![("p:u1".into(), value.as_bytes().to_vec())],
            ..WriteBatch::default()
        })
    }

    #[tokio::test]
    async fn after_a_failed_commit_the_store_reopens_and_keeps_its_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), false).unwrap();
        store.write(batch(None, 5, "a")).await.unwrap();
        store.mark_poisoned();
        store.write(batch(Some(5), 9, "b")).await.unwrap();
        assert!(!store.inner.poisoned.load(Ordering::Acquire));
        let positions = store.positions("hot/good").await.unwrap();
        assert_eq!(positions.get(&0), Some(&9));
        let values = store.get_many(&["p:u1".to_string()]).await.unwrap();
        assert_eq!(values, vec![Some(b"b".to_vec())]);
        // The compare-and-set still holds across the reopen.
        store.mark_poisoned();
        let stale = store.write(batch(Some(5), 12, "c")).await;
        assert!(matches!(stale, Err(HotError::Conflict { .. })), "{stale:?}");
        drop(store);
        let again = EmbeddedStore::open(dir.path(), false).unwrap();
        assert_eq!(again.positions("hot/good").await.unwrap().get(&0), Some(&9));
    }

    #[tokio::test]
    async fn a_commit_that_panicked_leaves_the_store_writable_and_its_batch_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), false).unwrap();
        store.write(batch(None, 5, "a")).await.unwrap();
        store.inner.panic_next_commit.store(true, Ordering::Release);
        let panicked = store.write(batch(Some(5), 9, "b")).await;
        assert!(
            matches!(&panicked, Err(HotError::Embedded(m)) if m.contains("write task failed")),
            "{panicked:?}"
        );
        assert!(store.inner.write_lock.is_poisoned());
        // The retry of the same batch lands: the lock is taken back and the database reopened.
        store.write(batch(Some(5), 9, "b")).await.unwrap();
        assert!(!store.inner.write_lock.is_poisoned());
        assert!(!store.inner.poisoned.load(Ordering::Acquire));
        assert_eq!(store.positions("hot/good").await.unwrap().get(&0), Some(&9));
        let values = store.get_many(&["p:u1".to_string()]).await.unwrap();
        assert_eq!(values, vec![Some(b"b".to_vec())]);
        store.write(batch(Some(9), 12, "c")).await.unwrap();
        drop(store);
        let again = EmbeddedStore::open(dir.path(), false).unwrap();
        assert_eq!(
            again.positions("hot/good").await.unwrap().get(&0),
            Some(&12)
        );
    }
}
