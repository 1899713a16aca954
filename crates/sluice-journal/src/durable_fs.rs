//! Durable file-system steps every crate uses: a name (a file, a directory, a rename) counts
//! only once the directory holding it is fsynced, and a file's bytes only once the file is.
//! A power cut keeps neither otherwise: on ext4 a new directory that was never fsynced into its
//! parent can vanish with everything in it, fsynced files included.
//!
//! - [`create_dir_all_durable`]: creates the missing directories of a path and fsyncs the
//!   parent of each one it created (top down), so the whole chain survives a power cut.
//! - [`write_atomic`] / [`write_atomic_private`]: the content of a small file replaced whole:
//!   write `.<name>.tmp`, fsync it, rename it over `<name>`, fsync the directory (created
//!   durably first if missing). A crash leaves the old or the new content, never a mix.
//! - [`rename_durable`]: a rename whose source and destination directories are both fsynced.
//! - [`fsync_dir`]: one directory fsync.
//!
//! The journal's own door to the disk (`Disk`) runs the same steps through [`Syncer`], which
//! lets it count and time each fsync, classify its errors and inject faults in tests.
//!
//! Directory fsyncs happen only where a name is made, never per append: callers on a hot path
//! create their directories once.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// How the steps below make things durable, and how they report IO errors.
pub(crate) trait Syncer {
    /// The error every step returns.
    type Error;
    /// fsync of a file (data and metadata).
    fn sync_file(&self, file: &File) -> Result<(), Self::Error>;
    /// fsync of a directory: makes the names created, renamed or removed in it durable.
    fn sync_dir(&self, dir: &Path) -> Result<(), Self::Error>;
    /// An error of anything but a sync (create, write, rename).
    fn io_error(&self, error: io::Error) -> Self::Error;
}

/// The plain syncer: real fsyncs, errors as they come.
struct Fsync;

impl Syncer for Fsync {
    type Error = io::Error;

    fn sync_file(&self, file: &File) -> io::Result<()> {
        file.sync_all()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fsync_dir(dir)
    }

    fn io_error(&self, error: io::Error) -> io::Error {
        error
    }
}

/// fsync of the directory `dir`.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `std::fs::create_dir_all`, durably: the parent of every directory it creates is fsynced.
/// Costs one `stat` when `dir` already exists.
pub fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    create_dir_all_with(&Fsync, dir)
}

/// Replaces the content of `path` atomically and durably (see the module doc).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_public(path, bytes, None)
}

/// [`write_atomic`] for a file only its owner may read (mode 0600: secrets, keys).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_public(path, bytes, Some(0o600))
}

/// Renames `from` to `to` and fsyncs both directories (one when they are the same).
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    let to_dir = parent(to);
    fsync_dir(&to_dir)?;
    let from_dir = parent(from);
    if from_dir != to_dir {
        fsync_dir(&from_dir)?;
    }
    Ok(())
}

fn write_atomic_public(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    create_dir_all_durable(&parent(path))?;
    let tmp = parent(path).join(format!(".{}.tmp", name.to_string_lossy()));
    write_atomic_with(&Fsync, path, &tmp, bytes, mode)
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`create_dir_all_durable`] through `s`.
pub(crate) fn create_dir_all_with<S: Syncer>(s: &S, dir: &Path) -> Result<(), S::Error> {
    let mut missing = Vec::new();
    let mut cur = dir.to_path_buf();
    loop {
        match std::fs::metadata(&cur) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(s.io_error(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a directory", cur.display()),
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let up = parent(&cur);
                missing.push(cur);
                if up == Path::new(".") && !Path::new(".").exists() {
                    break;
                }
                cur = up;
            }
            Err(e) => return Err(s.io_error(e)),
        }
    }
    // Top down: a directory must exist before its parent's fsync can record it.
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Made by someone else meanwhile: its parent is fsynced below all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(s.io_error(e)),
        }
    }
    for d in missing.iter().rev() {
        s.sync_dir(&parent(d))?;
    }
    Ok(())
}

/// Replaces `path` with `bytes` through the temporary file `tmp` (same directory, which must
/// exist): write, fsync, rename, fsync the directory. A failed write removes `tmp`.
pub(crate) fn write_atomic_with<S: Syncer>(
    s: &S,
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: Option<u32>,
) -> Result<(), S::Error> {
    debug_assert_eq!(parent(path), parent(tmp), "tmp must be beside the file");
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if let Some(mode) = mode {
        options.mode(mode);
    }
    let mut file = options.open(tmp).map_err(|e| s.io_error(e))?;
    if let Err(error) = file.write_all(bytes) {
        drop(file);
        let _ = std::fs::remove_file(tmp);
        return Err(s.io_error(error));
    }
    s.sync_file(&file)?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|e| s.io_error(e))?;
    s.sync_dir(&parent(path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Mutex;

    use super::*;

    /// Records each step (and does it), so a test sees what was made durable, in order.
    #[derive(Default)]
    struct Recorder {
        steps: Mutex<Vec<String>>,
        root: PathBuf,
    }

    impl Recorder {
        fn new(root: &Path) -> Self {
            Self {
                steps: Mutex::default(),
                root: root.to_path_buf(),
            }
        }

        fn rel(&self, p: &Path) -> String {
            let r = p
                .strip_prefix(&self.root)
                .unwrap_or(p)
                .display()
                .to_string();
            if r.is_empty() { ".".into() } else { r }
        }

        fn steps(&self) -> Vec<String> {
            self.steps.lock().unwrap().clone()
        }
    }

    impl Syncer for Recorder {
        type Error = io::Error;

        fn sync_file(&self, file: &File) -> io::Result<()> {
            let len = file.metadata()?.len();
            self.steps
                .lock()
                .unwrap()
                .push(format!("file({len} bytes)"));
            file.sync_all()
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            // What the directory holds when it is synced: those names are now durable.
            let mut names: Vec<String> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<_>>()?;
            names.sort();
            let step = format!("dir({}: {})", self.rel(dir), names.join(","));
            self.steps.lock().unwrap().push(step);
            fsync_dir(dir)
        }

        fn io_error(&self, error: io::Error) -> io::Error {
            error
        }
    }

    #[test]
    fn every_created_directory_is_synced_into_its_parent_top_down() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("a")).unwrap();
        let r = Recorder::new(root.path());
        create_dir_all_with(&r, &root.path().join("a/b/c/d")).unwrap();
        assert!(root.path().join("a/b/c/d").is_dir());
        assert_eq!(r.steps(), ["dir(a: b)", "dir(a/b: c)", "dir(a/b/c: d)"]);
        // Existing: nothing to make durable.
        let again = Recorder::new(root.path());
        create_dir_all_with(&again, &root.path().join("a/b")).unwrap();
        assert!(again.steps().is_empty());
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"x").unwrap();
        let err = create_dir_all_durable(&root.path().join("f")).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let below = create_dir_all_durable(&root.path().join("f/g")).unwrap_err();
        assert_eq!(below.kind(), std::io::ErrorKind::NotADirectory, "{below}");
        assert!(root.path().join("f").is_file());
    }

    #[test]
    fn an_atomic_write_syncs_the_file_before_the_rename_and_the_directory_after() {
        let root = tempfile::tempdir().unwrap();
        let r = Recorder::new(root.path());
        let path = root.path().join("state.json");
        let tmp = root.path().join(".state.json.tmp");
        write_atomic_with(&r, &path, &tmp, b"{\"n\":1}", None).unwrap();
        // The file is synced with its bytes under the temporary name; the directory is synced
        // once the final name is in it and the temporary one is gone.
        assert_eq!(r.steps(), ["file(7 bytes)", "dir(.: state.json)"]);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"n\":1}");
    }

    #[test]
    fn write_atomic_creates_missing_directories_durably_and_replaces_whole() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("x/y/keys.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic_private(&path, b"new content").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        let names: Vec<_> = std::fs::read_dir(root.path().join("x/y"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keys.json"], "no temporary file is left behind");
    }

    #[test]
    fn a_private_write_is_readable_by_its_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("secret");
        write_atomic_private(&path, b"k").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn rename_durable_moves_across_directories() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("a")).unwrap();
        std::fs::create_dir(root.path().join("b")).unwrap();
        std::fs::write(root.path().join("a/f"), b"x").unwrap();
        rename_durable(&root.path().join("a/f"), &root.path().join("b/g")).unwrap();
        assert!(!root.path().join("a/f").exists());
        assert_eq!(std::fs::read(root.path().join("b/g")).unwrap(), b"x");
    }
}
