//! [`Disk`]: every write, fsync and atomic small-file replacement the journal makes goes through
//! here, so each fsync is counted and timed in one place, failures are classified in one place
//! (out of space: roll back and report; fsync failed: poison, never retry), and tests can inject
//! faults at exactly these calls.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::durable_fs::{self, Syncer};
use crate::metrics;

/// Why a storage operation failed, in the terms the caller acts on.
#[derive(Debug)]
pub(crate) enum StorageError {
    /// Out of space (ENOSPC, EDQUOT, EFBIG): nothing durable changed; retry later.
    Space(io::Error),
    /// An fsync failed: the kernel may have dropped dirty pages and will not report it again
    /// (fsyncgate), so the on-disk state is unknown. The journal must stop.
    Sync(io::Error),
    /// Anything else.
    Other(io::Error),
}

impl StorageError {
    /// Classifies an error from a write or create.
    pub(crate) fn from_write(error: io::Error) -> Self {
        if is_space_error(&error) {
            Self::Space(error)
        } else {
            Self::Other(error)
        }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Space(e) => write!(f, "out of space: {e}"),
            Self::Sync(e) => write!(f, "fsync failed: {e}"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// Whether a write error means "no space" rather than a broken device.
pub(crate) fn is_space_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

/// Counters a test (and `LocalJournal::stats`) can read.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub fsyncs: AtomicU64,
    pub group_commits: AtomicU64,
    pub appends: AtomicU64,
    pub records: AtomicU64,
    /// fdatasyncs of segment data (group commits, recovery, interval flushes).
    pub data_syncs: AtomicU64,
}

/// Faults a test arms; each fires on the next matching call and counts down.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Segment writes to fail with ENOSPC (after writing half of the bytes, as a real short
    /// write would).
    pub enospc_writes: std::sync::atomic::AtomicU32,
    /// fdatasyncs of segment data (the group commit's, not the floor's or a directory's) to
    /// fail with EIO.
    pub eio_data_syncs: std::sync::atomic::AtomicU32,
    /// Fail the fsync that brings `Counters::fsyncs` to this number (0: off).
    pub eio_at_fsync: AtomicU64,
}

#[cfg(test)]
fn take_fault(counter: &std::sync::atomic::AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// The journal's door to the file system.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    pub counters: Counters,
    #[cfg(test)]
    pub faults: Faults,
}

impl Disk {
    /// Writes all of `buf` at `pos` (pwrite: the position is explicit, so a failed write can be
    /// rolled back by truncating to `pos`).
    pub(crate) fn write_at(&self, file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
        #[cfg(test)]
        if take_fault(&self.faults.enospc_writes) {
            file.write_all_at(&buf[..buf.len() / 2], pos)?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        file.write_all_at(buf, pos)
    }

    /// fdatasync: the data and the metadata needed to read it back (the file size).
    pub(crate) fn sync_data(&self, file: &File) -> Result<(), StorageError> {
        self.counters.data_syncs.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if take_fault(&self.faults.eio_data_syncs) {
            self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
            return Err(StorageError::Sync(io::Error::from_raw_os_error(libc::EIO)));
        }
        self.timed_sync(|| file.sync_data())
    }

    /// fsync of a file, metadata included (used once, when a segment is created).
    pub(crate) fn sync_all(&self, file: &File) -> Result<(), StorageError> {
        self.timed_sync(|| file.sync_all())
    }

    /// fsync of a directory, which makes entries created, renamed or removed in it durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> Result<(), StorageError> {
        let handle = File::open(dir).map_err(StorageError::Other)?;
        self.timed_sync(|| handle.sync_all())
    }

    fn timed_sync(&self, sync: impl FnOnce() -> io::Result<()>) -> Result<(), StorageError> {
        let _count = self.counters.fsyncs.fetch_add(1, Ordering::Relaxed) + 1;
        #[cfg(test)]
        if self.faults.eio_at_fsync.load(Ordering::SeqCst) == _count {
            return Err(StorageError::Sync(io::Error::from_raw_os_error(libc::EIO)));
        }
        let started = Instant::now();
        let result = sync();
        metrics::record_fsync(started.elapsed());
        result.map_err(StorageError::Sync)
    }

    /// Replaces `dir/name` with `bytes` atomically and durably: write `name.tmp`, fsync it,
    /// rename it over `name`, fsync the directory. A crash leaves the old or the new content,
    /// never a mix; a leftover `.tmp` is removed on the next open.
    pub(crate) fn write_atomic(
        &self,
        dir: &Path,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let tmp = dir.join(format!("{name}.tmp"));
        durable_fs::write_atomic_with(self, &dir.join(name), &tmp, bytes, None)
    }

    /// Creates `dir` and its missing parents, each fsynced into its parent.
    pub(crate) fn create_dir_all(&self, dir: &Path) -> Result<(), StorageError> {
        durable_fs::create_dir_all_with(self, dir)
    }

    /// Writes a new file that nothing refers to yet (inside a directory that is renamed into
    /// place afterwards) and fsyncs it.
    pub(crate) fn write_new(&self, path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(StorageError::from_write)?;
        file.write_all(bytes).map_err(StorageError::from_write)?;
        self.sync_all(&file)
    }
}

impl Syncer for Disk {
    type Error = StorageError;

    fn sync_file(&self, file: &File) -> Result<(), StorageError> {
        self.sync_all(file)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), StorageError> {
        Disk::sync_dir(self, dir)
    }

    fn io_error(&self, error: io::Error) -> StorageError {
        StorageError::from_write(error)
    }
}
