//! [`DurableLocalStore`]: the object store of a local lake. object_store's `LocalFileSystem`
//! never fsyncs, so after a power cut a Delta commit it wrote can be an empty file under its
//! final name (the table is then unreadable) and a new directory can vanish with its files.
//! This store makes every write durable before it returns:
//!
//! - `put` (Delta commits, `_last_checkpoint`, small Parquet files): the bytes go to a staging
//!   file beside the target (`<name>#<n>`, a name object_store's listing skips), which is
//!   fsynced *before* it is linked (`PutMode::Create`, the commit's put-if-absent) or renamed
//!   (`Overwrite`) into place; then the directory is fsynced. No crash leaves a torn file under
//!   the final name.
//! - multipart uploads, copies and renames: done by `LocalFileSystem`, then the file and its
//!   directory are fsynced before the call returns.
//! - every directory between the lake root and the file is fsynced into its parent the first
//!   time this store writes below it (new partition directories, `_delta_log`), and remembered.
//!
//! A commit is acknowledged (its version returned) only after all of this, so a lake that
//! acknowledged a commit keeps it, and the txn versions the sinks resume from are durable.
//! Reads, lists and deletes go straight to `LocalFileSystem` (an undone delete only brings back
//! a file nothing refers to).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt as _, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result, UploadPart,
};
use futures::stream::BoxStream;
use sluice_journal::durable_fs::fsync_dir;

const STORE: &str = "DurableLocalStore";

/// `LocalFileSystem` (rooted at `/`) with every write made durable; see the module doc.
#[derive(Debug)]
pub struct DurableLocalStore {
    inner: LocalFileSystem,
    dirs: Arc<Dirs>,
}

/// Which directories under the lake root are known to be durable in their parents.
#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    synced: Mutex<HashSet<PathBuf>>,
}

impl DurableLocalStore {
    /// A store for the lake rooted at the directory `root` (which must itself be durable in
    /// its parent: the server creates it with `create_dir_all_durable`).
    pub fn new(root: &FsPath) -> Self {
        Self {
            inner: LocalFileSystem::new(),
            dirs: Arc::new(Dirs {
                root: root.to_path_buf(),
                synced: Mutex::default(),
            }),
        }
    }
}

impl std::fmt::Display for DurableLocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{STORE}({})", self.dirs.root.display())
    }
}

fn generic(error: io::Error) -> Error {
    Error::Generic {
        store: STORE,
        source: Box::new(error),
    }
}

fn parent(path: &FsPath) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("/"), FsPath::to_path_buf)
}

impl Dirs {
    /// Makes `dir` and every directory between the root and it durable in its parent, once per
    /// directory for the life of this store.
    fn settle_chain(&self, dir: &FsPath) -> io::Result<()> {
        let mut chain = Vec::new();
        {
            let synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
            let mut d = dir;
            while d != self.root && d.starts_with(&self.root) && !synced.contains(d) {
                chain.push(d.to_path_buf());
                let Some(up) = d.parent() else { break };
                d = up;
            }
        }
        // Top down; a directory counts as durable only once its parent was fsynced after it.
        for d in chain.iter().rev() {
            fsync_dir(&parent(d))?;
            self.synced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(d.clone());
        }
        Ok(())
    }

    /// After a name was made for `file` by someone else: fsync the file, the directories above
    /// it, and its directory.
    fn settle_file(&self, file: &FsPath) -> io::Result<()> {
        File::open(file)?.sync_all()?;
        let dir = parent(file);
        self.settle_chain(&dir)?;
        fsync_dir(&dir)
    }

    /// Writes `payload` to `path` durably (see the module doc).
    fn put(&self, path: &FsPath, payload: &PutPayload, mode: &PutMode) -> Result<()> {
        let dir = parent(path);
        std::fs::create_dir_all(&dir).map_err(generic)?;
        let (mut file, staging) = new_staging(path).map_err(generic)?;
        let written = payload
            .iter()
            .try_for_each(|chunk| file.write_all(chunk))
            .and_then(|()| file.sync_all());
        drop(file);
        let placed = written
            .map_err(generic)
            .and_then(|()| place(&staging, path, mode));
        if placed.is_err() || matches!(mode, PutMode::Create) {
            let _ = std::fs::remove_file(&staging);
        }
        placed?;
        self.settle_chain(&dir).map_err(generic)?;
        fsync_dir(&dir).map_err(generic)
    }
}

/// A new, empty staging file `<path>#<n>`.
fn new_staging(path: &FsPath) -> io::Result<(File, PathBuf)> {
    for n in 1u32.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!("#{n}"));
        let staging = PathBuf::from(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(f) => return Ok((f, staging)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free staging name"))
}

/// Puts the synced staging file in place: a hard link for put-if-absent, a rename otherwise.
fn place(staging: &FsPath, path: &FsPath, mode: &PutMode) -> Result<()> {
    match mode {
        PutMode::Overwrite => std::fs::rename(staging, path).map_err(generic),
        PutMode::Create => std::fs::hard_link(staging, path).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::AlreadyExists {
                    path: path.display().to_string(),
                    source: Box::new(e),
                }
            } else {
                generic(e)
            }
        }),
        PutMode::Update(_) => Err(Error::NotImplemented {
            operation: "`put_opts` with mode `PutMode::Update`".into(),
            implementer: STORE.into(),
        }),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| generic(io::Error::other(e)))?
}

#[async_trait]
impl ObjectStore for DurableLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if !opts.attributes.is_empty() {
            return Err(Error::NotImplemented {
                operation: "`put_opts` with `opts.attributes` specified".into(),
                implementer: STORE.into(),
            });
        }
        let path = self.inner.path_to_filesystem(location)?;
        let dirs = self.dirs.clone();
        blocking(move || dirs.put(&path, &payload, &opts.mode)).await?;
        let meta = self.inner.head(location).await?;
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let path = self.inner.path_to_filesystem(location)?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            inner,
            path,
            dirs: self.dirs.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        let path = self.inner.path_to_filesystem(to)?;
        let dirs = self.dirs.clone();
        blocking(move || dirs.settle_file(&path).map_err(generic)).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        let source_dir = parent(&self.inner.path_to_filesystem(from)?);
        let path = self.inner.path_to_filesystem(to)?;
        let dirs = self.dirs.clone();
        blocking(move || {
            dirs.settle_file(&path).map_err(generic)?;
            if source_dir != parent(&path) {
                fsync_dir(&source_dir).map_err(generic)?;
            }
            Ok(())
        })
        .await
    }
}

/// A `LocalFileSystem` upload whose completion waits for the file and its directories to be
/// durable.
#[derive(Debug)]
struct DurableUpload {
    inner: Box<dyn MultipartUpload>,
    path: PathBuf,
    dirs: Arc<Dirs>,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let done = self.inner.complete().await?;
        let (path, dirs) = (self.path.clone(), self.dirs.clone());
        blocking(move || dirs.settle_file(&path).map_err(generic)).await?;
        Ok(done)
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(root: &FsPath, rel: &str) -> Path {
        Path::from_absolute_path(root.join(rel)).unwrap()
    }

    fn names(dir: &FsPath) -> Vec<String> {
        let mut n: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn synced(store: &DurableLocalStore) -> Vec<String> {
        let root = &store.dirs.root;
        let mut s: Vec<_> = store
            .dirs
            .synced
            .lock()
            .unwrap()
            .iter()
            .map(|d| d.strip_prefix(root).unwrap().display().to_string())
            .collect();
        s.sort();
        s
    }

    #[tokio::test]
    async fn a_put_if_absent_lands_whole_once_and_its_new_directories_are_synced() {
        let t = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(t.path());
        let commit = loc(t.path(), "events/_delta_log/00000000000000000000.json");
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = store
            .put_opts(
                &commit,
                PutPayload::from_static(b"{\"a\":1}\n"),
                create.clone(),
            )
            .await
            .unwrap();
        assert!(put.e_tag.is_some());
        let again = store
            .put_opts(&commit, PutPayload::from_static(b"other"), create)
            .await
            .unwrap_err();
        assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
        let log = t.path().join("events/_delta_log");
        assert_eq!(
            std::fs::read(log.join("00000000000000000000.json")).unwrap(),
            b"{\"a\":1}\n"
        );
        assert_eq!(
            names(&log),
            ["00000000000000000000.json"],
            "no staging file is left"
        );
        // Each directory made on the way was fsynced into its parent, and is remembered.
        assert_eq!(synced(&store), ["events", "events/_delta_log"]);
    }

    #[tokio::test]
    async fn overwrites_uploads_copies_and_renames_are_settled() {
        let t = tempfile::tempdir().unwrap();
        let store = DurableLocalStore::new(t.path());
        let hint = loc(t.path(), "t/_delta_log/_last_checkpoint");
        store
            .put(&hint, PutPayload::from_static(b"1"))
            .await
            .unwrap();
        store
            .put(&hint, PutPayload::from_static(b"22"))
            .await
            .unwrap();
        assert_eq!(store.get(&hint).await.unwrap().bytes().await.unwrap(), "22");

        let part = loc(t.path(), "t/event_date=2026-12-03/part-1.parquet");
        let mut up = store
            .put_multipart_opts(&part, PutMultipartOptions::default())
            .await
            .unwrap();
        up.put_part(PutPayload::from_static(b"PAR1")).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(
            synced(&store),
            ["t", "t/_delta_log", "t/event_date=2026-12-03"]
        );

        let copy = loc(t.path(), "t/c/copy.parquet");
        store.copy(&part, &copy).await.unwrap();
        let moved = loc(t.path(), "t/m/moved.parquet");
        store.rename(&copy, &moved).await.unwrap();
        assert_eq!(
            std::fs::read(t.path().join("t/m/moved.parquet")).unwrap(),
            b"PAR1"
        );
        assert!(!t.path().join("t/c/copy.parquet").exists());
        assert!(synced(&store).contains(&"t/m".to_string()));
    }
}
