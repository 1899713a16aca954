//! [`LakeRoot`]: where the lake lives — a local directory or an object-store URL — and how a
//! table's location is derived from it (`<root>/<table>/`).
//!
//! Local paths become absolute `file://` URLs; the directory is not created here (readers such as
//! `sluice sql` must not create anything), only by a sink when it creates a table.
//!
//! Writers open tables through [`LakeRoot::table`]: on a local root it writes through
//! [`DurableLocalStore`] (every file and directory fsynced before a write returns) and first
//! sets aside a damaged end of the Delta log (`repair.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::{DeltaTable, DeltaTableBuilder};
use sluice_journal::durable_fs;
use url::Url;

use crate::LakeError;
use crate::durable_store::DurableLocalStore;

/// The root of the lake: every table is a directory directly below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LakeRoot {
    url: Url,
    storage_options: HashMap<String, String>,
}

impl LakeRoot {
    /// A local directory or a URL (`file:///…`, `s3://bucket/prefix`, `memory:///`). Anything
    /// without `://` is taken as a path, relative to the current directory if not absolute.
    pub fn parse(location: &str) -> Result<Self, LakeError> {
        let location = location.trim();
        if location.is_empty() {
            return Err(LakeError::Location {
                location: location.to_string(),
                reason: "empty".into(),
            });
        }
        if location.contains("://") {
            let url = Url::parse(location).map_err(|e| LakeError::Location {
                location: location.to_string(),
                reason: e.to_string(),
            })?;
            Ok(Self::from_url(url))
        } else {
            Self::from_path(Path::new(location))
        }
    }

    /// A local directory.
    pub fn from_path(path: &Path) -> Result<Self, LakeError> {
        let bad = |reason: String| LakeError::Location {
            location: path.display().to_string(),
            reason,
        };
        let absolute = std::path::absolute(path).map_err(|e| bad(e.to_string()))?;
        let url = Url::from_directory_path(&absolute)
            .map_err(|()| bad("not representable as a file url".into()))?;
        Ok(Self::from_url(url))
    }

    /// A URL; a trailing `/` is added so that table names join below it.
    pub fn from_url(mut url: Url) -> Self {
        if matches!(url.scheme(), "s3" | "s3a") {
            register_s3();
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Self {
            url,
            storage_options: HashMap::new(),
        }
    }

    /// Object-store options (credentials, endpoint, `allow_http`, …) passed to delta-rs.
    pub fn with_storage_options(mut self, options: HashMap<String, String>) -> Self {
        self.storage_options = options;
        self
    }

    /// The root URL, ending in `/`.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object-store options.
    pub fn storage_options(&self) -> &HashMap<String, String> {
        &self.storage_options
    }

    /// The URL of table `name`, ending in `/`.
    pub fn table_url(&self, name: &str) -> Result<Url, LakeError> {
        self.url
            .join(&format!("{name}/"))
            .map_err(|e| LakeError::Location {
                location: format!("{}{name}", self.url),
                reason: e.to_string(),
            })
    }

    /// Table `name` for writing (not loaded). On a local root: writes are durable
    /// ([`DurableLocalStore`]), and damaged files at the end of its log (left by a power cut
    /// before writes were durable) are set aside first, or reported as an error naming them.
    pub fn table(&self, name: &str) -> Result<DeltaTable, LakeError> {
        let url = self.table_url(name)?;
        let opening = |e| LakeError::delta(name, "opening", e);
        let builder = DeltaTableBuilder::from_url(url.clone())
            .map_err(opening)?
            .with_storage_options(self.storage_options.clone());
        let builder = match self.local_path() {
            Some(root) => {
                crate::repair::set_aside_damaged_log(name, &root.join(name))?;
                builder.with_storage_backend(Arc::new(DurableLocalStore::new(&root)), url)
            }
            None => builder,
        };
        builder.build().map_err(opening)
    }

    /// Creates the directory of table `name` on a local root, durably (delta-rs' local store
    /// needs it to exist before it can list it). Nothing to do on an object store.
    pub fn create_table_dir(&self, name: &str) -> Result<(), LakeError> {
        let Some(root) = self.local_path() else {
            return Ok(());
        };
        let dir = root.join(name);
        durable_fs::create_dir_all_durable(&dir).map_err(|e| LakeError::Location {
            location: dir.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Checks that an object-store root answers: the store is reachable, the credentials are
    /// accepted and the bucket exists (a listing of the root), and that no unsafe commit mode
    /// is configured through the environment. With `write`, also that an object can be written
    /// and deleted below the root. A local root is not checked (its directory may not exist
    /// yet). Each request is retried briefly, not for the minutes a sink would.
    pub async fn check(&self, write: bool) -> Result<(), LakeError> {
        if self.local_path().is_some() {
            return Ok(());
        }
        for var in ["AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_S3_LOCKING_PROVIDER"] {
            if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
                return Err(self.unusable(format!(
                    "{var} is set in the environment: commits go through a conditional put, never an unsafe rename or a lock table; unset it"
                )));
            }
        }
        let mut options = self.storage_options.clone();
        for (key, value) in [
            ("max_retries", "2"),
            ("retry_timeout", "20s"),
            ("connect_timeout", "5s"),
            ("timeout", "20s"),
        ] {
            options
                .entry(key.to_string())
                .or_insert_with(|| value.to_string());
        }
        let store = DeltaTableBuilder::from_url(self.url.clone())
            .and_then(|b| b.with_storage_options(options).build())
            .map_err(|e| self.unusable(format!("cannot open the store: {e}")))?
            .object_store();
        let probe = async {
            store
                .list_with_delimiter(None)
                .await
                .map_err(|e| self.unusable(format!("cannot list it: {}", describe(&e))))?;
            if write {
                let path = deltalake::Path::from(format!("_sluice_probe/{}", uuid_like()));
                store
                    .put(&path, bytes::Bytes::from_static(b"probe").into())
                    .await
                    .map_err(|e| self.unusable(format!("cannot write to it: {}", describe(&e))))?;
                store.delete(&path).await.map_err(|e| {
                    self.unusable(format!("cannot delete from it: {}", describe(&e)))
                })?;
            }
            Ok(())
        };
        match tokio::time::timeout(std::time::Duration::from_secs(60), probe).await {
            Ok(result) => result,
            Err(_) => Err(self.unusable("no answer within 60s".into())),
        }
    }

    fn unusable(&self, reason: String) -> LakeError {
        LakeError::Location {
            location: self.url.to_string(),
            reason,
        }
    }

    /// The local directory of the root, if it is on the local file system.
    pub fn local_path(&self) -> Option<std::path::PathBuf> {
        (self.url.scheme() == "file")
            .then(|| self.url.to_file_path().ok())
            .flatten()
    }
}

/// Whole objects below a directory of an object-store root (model checkpoints), read and
/// written synchronously from inside the runtime (the callers are synchronous hooks). A put is
/// whole or absent: the atomic replacement a local file needs a rename for.
#[derive(Clone)]
pub struct ObjectFiles {
    store: Arc<dyn deltalake::ObjectStore>,
    url: Url,
}

impl std::fmt::Debug for ObjectFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectFiles({})", self.url)
    }
}

impl LakeRoot {
    /// The objects below `<root>/<dir>/` (an object-store root; a local one has directories).
    pub fn files(&self, dir: &str) -> Result<ObjectFiles, LakeError> {
        let url = self.table_url(dir)?;
        let store = DeltaTableBuilder::from_url(url.clone())
            .and_then(|b| b.with_storage_options(self.storage_options.clone()).build())
            .map_err(|e| LakeError::delta(dir, "opening", e))?
            .object_store();
        Ok(ObjectFiles { store, url })
    }
}

impl ObjectFiles {
    /// The URL of `name`.
    pub fn location(&self, name: &str) -> String {
        format!("{}{name}", self.url)
    }

    /// The content of `name`, or `None` if there is no such object.
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = deltalake::Path::from(name);
        block(async {
            match self.store.get(&path).await {
                Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })?
        .map_err(|e| describe(&e))
    }

    /// Replaces `name` with `bytes`.
    pub fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = deltalake::Path::from(name);
        let payload = bytes::Bytes::copy_from_slice(bytes);
        block(self.store.put(&path, payload.into()))?
            .map(|_| ())
            .map_err(|e| describe(&e))
    }

    /// Deletes every object below these files' directory; the number deleted.
    pub fn delete_all(&self) -> Result<u64, String> {
        use futures::{StreamExt, TryStreamExt};
        block(async {
            let listed: Vec<deltalake::Path> = self
                .store
                .list(None)
                .map_ok(|meta| meta.location)
                .try_collect()
                .await?;
            let count = listed.len() as u64;
            let paths = futures::stream::iter(listed.into_iter().map(Ok)).boxed();
            self.store
                .delete_stream(paths)
                .try_collect::<Vec<_>>()
                .await?;
            Ok::<_, deltalake::ObjectStoreError>(count)
        })?
        .map_err(|e| describe(&e))
    }

    /// Renames `from` to `to` (a copy and a delete).
    pub fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        let (from, to) = (deltalake::Path::from(from), deltalake::Path::from(to));
        block(self.store.rename(&from, &to))?.map_err(|e| describe(&e))
    }
}

/// Runs `f` to completion from synchronous code inside the multi-threaded runtime.
fn block<F: std::future::Future>(f: F) -> Result<F::Output, String> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| "object-store access outside the async runtime".to_string())?;
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return Err("object-store access needs the multi-threaded runtime".into());
    }
    Ok(tokio::task::block_in_place(|| handle.block_on(f)))
}

/// Registers delta-rs' S3 handlers (`s3://`, `s3a://`) once per process.
fn register_s3() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| deltalake::aws::register_handlers(None));
}

/// An object-store error with its whole chain of causes (the store's answer is at the end:
/// `NoSuchBucket`, `InvalidAccessKeyId`, `Connection refused`, …).
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    if text.contains("169.254.169.254") {
        // object_store fell back to the instance metadata service: nothing else had keys.
        text.push_str(
            " (no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [lake.storage_options] aws_access_key_id and aws_secret_access_key)",
        );
    }
    text
}

/// A name unique enough for a probe object: the process id and the time in nanoseconds.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

impl std::fmt::Display for LakeRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.url.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_urls_get_a_trailing_slash_and_join_tables() {
        let root = LakeRoot::parse("/data/lake").unwrap();
        assert_eq!(root.url().as_str(), "file:///data/lake/");
        assert_eq!(
            root.table_url("events").unwrap().as_str(),
            "file:///data/lake/events/"
        );
        assert_eq!(
            root.local_path().unwrap(),
            std::path::PathBuf::from("/data/lake")
        );
        let s3 = LakeRoot::parse("s3://bucket/prefix").unwrap();
        assert_eq!(
            s3.table_url("bad_rows").unwrap().as_str(),
            "s3://bucket/prefix/bad_rows/"
        );
        assert!(s3.local_path().is_none());
        assert!(
            matches!(LakeRoot::parse(""), Err(LakeError::Location { reason, .. }) if reason == "empty")
        );
        assert!(
            LakeRoot::parse("relative/dir")
                .unwrap()
                .url()
                .as_str()
                .starts_with("file:///")
        );
    }
}
