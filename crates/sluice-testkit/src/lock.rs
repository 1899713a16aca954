//! [`lock_exclusive`]: a file lock, so that test processes running side by side prepare a
//! shared cache (a venv, node_modules) one at a time.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, ensure};

/// Holds an exclusive `flock` until dropped.
pub struct FileLock(#[allow(dead_code)] File);

/// Waits for and takes an exclusive lock on `path` (created if missing).
pub fn lock_exclusive(path: &Path) -> anyhow::Result<FileLock> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns for the lifetime of the lock.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    ensure!(
        rc == 0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok(FileLock(file))
}
