//! A power-cut file system: a FUSE passthrough over a real backing directory that remembers
//! what has not been made durable, so a "power cut" can take it back. Bytes written to a file
//! count only once the file is fsynced; a create, link, unlink, mkdir, rmdir or rename counts
//! only once every directory it touched is fsynced. [`PowerCutFs::power_cut`] (after the
//! writer was SIGKILLed) unmounts, reverts every unsynced change on the backing directory —
//! overwritten bytes restored from an undo log, files cut back to their durable length,
//! unsynced names undone in reverse order — and mounts again.
//!
//! The model follows LazyFS and Vector's disk-buffer test file system. In
//! [`Mode::DataOnly`] names are kept and only unsynced bytes are dropped (what LazyFS does: an
//! fsynced rename of an unsynced file leaves an empty file); [`Mode::Strict`] drops unsynced
//! names too. Both are outcomes a real power loss can produce.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

/// What a power cut drops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unsynced bytes and unsynced directory entries.
    Strict,
    /// Unsynced bytes only; names survive (LazyFS's model).
    DataOnly,
}

/// What the last power cut took back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutStats {
    /// Files whose unsynced bytes were dropped.
    pub files_reverted: usize,
    /// Bytes cut off the ends of files.
    pub bytes_dropped: u64,
    /// Overwrites undone.
    pub overwrites_undone: usize,
    /// Directory operations undone.
    pub names_undone: usize,
}

/// Unsynced state of one file.
#[derive(Debug)]
struct Unsynced {
    /// Length at the last fsync (or when first written after mount).
    durable_len: u64,
    /// Old bytes of every overwrite below `durable_len`, oldest first.
    undo: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
enum NameOp {
    /// A new name (file, directory or link): undone by removing it.
    Created(PathBuf),
    /// A removed name, its object moved to the stash: undone by moving it back.
    Removed { path: PathBuf, stash: PathBuf },
    /// A rename, and what it replaced (in the stash).
    Renamed {
        from: PathBuf,
        to: PathBuf,
        displaced: Option<PathBuf>,
    },
}

#[derive(Debug)]
struct PendingName {
    op: NameOp,
    /// Directories (inode numbers) that still need an fsync for this to count.
    dirs: Vec<u64>,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    root: PathBuf,
    stash: PathBuf,
    stash_seq: u64,
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    handles: HashMap<u64, (u64, File, bool)>,
    next_fh: u64,
    files: HashMap<u64, Unsynced>,
    names: Vec<PendingName>,
    fsyncs: u64,
}

impl State {
    fn new(root: &Path, stash: &Path, mode: Mode) -> Self {
        let mut s = Self {
            mode,
            root: root.to_path_buf(),
            stash: stash.to_path_buf(),
            stash_seq: 0,
            paths: HashMap::new(),
            inos: HashMap::new(),
            next_ino: 2,
            handles: HashMap::new(),
            next_fh: 1,
            files: HashMap::new(),
            names: Vec::new(),
            fsyncs: 0,
        };
        s.paths.insert(fuser::FUSE_ROOT_ID, root.to_path_buf());
        s.inos.insert(root.to_path_buf(), fuser::FUSE_ROOT_ID);
        s
    }

    fn ino_of(&mut self, path: &Path) -> u64 {
        if let Some(i) = self.inos.get(path) {
            return *i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(path.to_path_buf(), i);
        self.paths.insert(i, path.to_path_buf());
        i
    }

    fn path(&self, ino: u64) -> Result<PathBuf, i32> {
        self.paths.get(&ino).cloned().ok_or(libc::ENOENT)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, i32> {
        Ok(self.path(parent)?.join(name))
    }

    fn stash_path(&mut self) -> PathBuf {
        self.stash_seq += 1;
        self.stash.join(self.stash_seq.to_string())
    }

    /// Moves every name under `from` to `to` in the maps.
    fn move_names(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .inos
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (p, i) in moved {
            self.inos.remove(&p);
            let rel = p.strip_prefix(from).unwrap_or(Path::new(""));
            let np = if rel.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rel)
            };
            self.inos.insert(np.clone(), i);
            self.paths.insert(i, np);
        }
    }

    fn record(&mut self, op: NameOp, dirs: Vec<u64>) {
        if self.mode == Mode::Strict {
            self.names.push(PendingName { op, dirs });
        } else {
            finalize(op);
        }
    }

    /// Before bytes at `[off, off+len)` of `ino` change: remember what the power cut must
    /// restore.
    fn before_write(&mut self, ino: u64, file: &File, off: u64, len: u64) {
        let u = self.files.entry(ino).or_insert_with(|| Unsynced {
            durable_len: file.metadata().map(|m| m.len()).unwrap_or(0),
            undo: Vec::new(),
        });
        if off < u.durable_len {
            let end = (off + len).min(u.durable_len);
            let mut old = vec![0u8; (end - off) as usize];
            if file.read_exact_at(&mut old, off).is_ok() {
                u.undo.push((off, old));
            }
        }
    }
}

/// Makes an undone-able operation permanent (the stash copy is no longer needed).
fn finalize(op: NameOp) {
    let drop_stash = |p: &Path| {
        let _ = std::fs::remove_file(p).or_else(|_| std::fs::remove_dir_all(p));
    };
    match op {
        NameOp::Created(_) => {}
        NameOp::Removed { stash, .. } => drop_stash(&stash),
        NameOp::Renamed { displaced, .. } => {
            if let Some(d) = displaced {
                drop_stash(&d)
            }
        }
    }
}

fn attr(ino: u64, m: &std::fs::Metadata) -> FileAttr {
    let t = |s: i64, ns: i64| {
        UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    };
    let ft = m.file_type();
    FileAttr {
        ino,
        size: m.len(),
        blocks: m.blocks(),
        atime: t(m.atime(), m.atime_nsec()),
        mtime: t(m.mtime(), m.mtime_nsec()),
        ctime: t(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        },
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Nothing is cached by the kernel: after a power cut every answer must come from the
/// reverted backing directory.
const TTL: Duration = Duration::ZERO;

struct Fs {
    state: Arc<Mutex<State>>,
}

impl Fs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, path: &Path) -> Result<FileAttr, i32> {
        let m = std::fs::symlink_metadata(path).map_err(|e| errno(&e))?;
        let ino = self.lock().ino_of(path);
        Ok(attr(ino, &m))
    }

    fn open_backing(path: &Path, flags: i32, create: bool, mode: u32) -> std::io::Result<File> {
        let acc = flags & libc::O_ACCMODE;
        let mut o = OpenOptions::new();
        // Always readable: an overwrite must read the old bytes for the undo log.
        o.read(true)
            .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
            .custom_flags(flags & (libc::O_APPEND | libc::O_EXCL));
        if flags & libc::O_APPEND != 0 {
            o.append(true);
        }
        if create {
            o.create(true).mode(mode);
            if acc == libc::O_RDONLY {
                o.write(true);
            }
        }
        o.open(path)
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let path = match self.lock().child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.entry(&path) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, fh: Option<u64>, reply: ReplyAttr) {
        let st = self.lock();
        let m = match fh.and_then(|fh| st.handles.get(&fh)) {
            Some((_, f, _)) => f.metadata(),
            None => match st.path(ino) {
                Ok(p) => std::fs::symlink_metadata(p),
                Err(e) => return reply.error(e),
            },
        };
        match m {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let mut st = self.lock();
        let path = match st.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Some(mode) = mode
            && let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        {
            return reply.error(errno(&e));
        }
        if let Some(size) = size {
            let file = match fh.and_then(|fh| st.handles.get(&fh)) {
                Some((_, f, _)) => f.try_clone(),
                None => OpenOptions::new().read(true).write(true).open(&path),
            };
            let file = match file {
                Ok(f) => f,
                Err(e) => return reply.error(errno(&e)),
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if size < len {
                st.before_write(ino, &file, size, len - size);
            } else {
                st.before_write(ino, &file, len, 0);
            }
            if let Err(e) = file.set_len(size) {
                return reply.error(errno(&e));
            }
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) => reply.attr(&TTL, &attr(ino, &m)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.lock().child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = std::fs::create_dir(&path) {
            return reply.error(errno(&e));
        }
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask));
        self.lock()
            .record(NameOp::Created(path.clone()), vec![parent]);
        match self.entry(&path) {
            Ok(a) => reply.entry(&TTL, &a, 0),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let path = match st.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let stash = st.stash_path();
        if let Err(e) = std::fs::rename(&path, &stash) {
            return reply.error(errno(&e));
        }
        if let Some(ino) = st.inos.remove(&path) {
            // Another hard link may still name the object; otherwise it lives in the stash.
            let other = st
                .inos
                .iter()
                .find(|(_, i)| **i == ino)
                .map(|(p, _)| p.clone());
            st.paths.insert(ino, other.unwrap_or_else(|| stash.clone()));
        }
        st.record(NameOp::Removed { path, stash }, vec![parent]);
        reply.ok();
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.lock();
        let path = match st.child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match std::fs::read_dir(&path).map(|mut d| d.next().is_some()) {
            Ok(true) => return reply.error(libc::ENOTEMPTY),
            Ok(false) => {}
            Err(e) => return reply.error(errno(&e)),
        }
        let stash = st.stash_path();
        if let Err(e) = std::fs::rename(&path, &stash) {
            return reply.error(errno(&e));
        }
        st.move_names(&path, &stash);
        st.record(NameOp::Removed { path, stash }, vec![parent]);
        reply.ok();
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let (from, to) = match (st.child(parent, name), st.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if flags & libc::RENAME_EXCHANGE != 0 {
            return reply.error(libc::EINVAL);
        }
        let exists = std::fs::symlink_metadata(&to).is_ok();
        if exists && flags & libc::RENAME_NOREPLACE != 0 {
            return reply.error(libc::EEXIST);
        }
        let displaced = if exists {
            let stash = st.stash_path();
            if let Err(e) = std::fs::rename(&to, &stash) {
                return reply.error(errno(&e));
            }
            st.move_names(&to, &stash);
            Some(stash)
        } else {
            None
        };
        if let Err(e) = std::fs::rename(&from, &to) {
            if let Some(d) = &displaced {
                let _ = std::fs::rename(d, &to);
                st.move_names(d, &to);
            }
            return reply.error(errno(&e));
        }
        st.move_names(&from, &to);
        let mut dirs = vec![parent];
        if newparent != parent {
            dirs.push(newparent);
        }
        st.record(
            NameOp::Renamed {
                from,
                to,
                displaced,
            },
            dirs,
        );
        reply.ok();
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut st = self.lock();
        let (src, dst) = match (st.path(ino), st.child(newparent, newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        if let Err(e) = std::fs::hard_link(&src, &dst) {
            return reply.error(errno(&e));
        }
        st.inos.insert(dst.clone(), ino);
        st.paths.insert(ino, dst.clone());
        st.record(NameOp::Created(dst.clone()), vec![newparent]);
        match std::fs::symlink_metadata(&dst) {
            Ok(m) => reply.entry(&TTL, &attr(ino, &m), 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let mut st = self.lock();
        let path = match st.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match Fs::open_backing(&path, flags, false, 0) {
            Ok(f) => {
                let fh = st.next_fh;
                st.next_fh += 1;
                st.handles.insert(fh, (ino, f, flags & libc::O_APPEND != 0));
                reply.opened(fh, 0);
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.lock().child(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let existed = std::fs::symlink_metadata(&path).is_ok();
        let file = match Fs::open_backing(&path, flags, true, mode & !umask) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        let m = match file.metadata() {
            Ok(m) => m,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut st = self.lock();
        let ino = st.ino_of(&path);
        if !existed {
            st.files.insert(
                ino,
                Unsynced {
                    durable_len: 0,
                    undo: Vec::new(),
                },
            );
            st.record(NameOp::Created(path), vec![parent]);
        }
        let fh = st.next_fh;
        st.next_fh += 1;
        st.handles
            .insert(fh, (ino, file, flags & libc::O_APPEND != 0));
        reply.created(&TTL, &attr(ino, &m), 0, fh, 0);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let st = self.lock();
        let Some((_, f, _)) = st.handles.get(&fh) else {
            return reply.error(libc::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut n = 0;
        while n < buf.len() {
            match f.read_at(&mut buf[n..], offset as u64 + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..n]);
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let mut st = self.lock();
        let Some((ino, f, append)) = st.handles.get(&fh).map(|(i, f, a)| (*i, f.try_clone(), *a))
        else {
            return reply.error(libc::EBADF);
        };
        let f = match f {
            Ok(f) => f,
            Err(e) => return reply.error(errno(&e)),
        };
        if append {
            // An append never overwrites; only its length must be remembered.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            st.before_write(ino, &f, len, 0);
        } else {
            st.before_write(ino, &f, offset as u64, data.len() as u64);
        }
        drop(st);
        match f.write_all_at(data, offset as u64) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lo: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh);
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The backing file need not reach the disk: durability is what this model says.
        let mut st = self.lock();
        st.files.remove(&ino);
        st.fsyncs += 1;
        reply.ok();
    }

    fn opendir(&mut self, _req: &Request<'_>, _ino: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(0, 0);
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let path = match self.lock().path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let rd = match std::fs::read_dir(&path) {
            Ok(rd) => rd,
            Err(e) => return reply.error(errno(&e)),
        };
        let mut names: Vec<(String, bool)> = rd
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    e.file_type().map(|t| t.is_dir()).unwrap_or(false),
                )
            })
            .collect();
        names.sort();
        let mut entries = vec![
            (ino, FileType::Directory, ".".to_string()),
            (ino, FileType::Directory, "..".to_string()),
        ];
        {
            let mut st = self.lock();
            for (n, dir) in names {
                let i = st.ino_of(&path.join(&n));
                let kind = if dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((i, kind, n));
            }
        }
        for (k, (i, kind, n)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(i, (k + 1) as i64, kind, n) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        st.fsyncs += 1;
        let mut kept = Vec::new();
        for mut p in std::mem::take(&mut st.names) {
            p.dirs.retain(|d| *d != ino);
            if p.dirs.is_empty() {
                finalize(p.op);
            } else {
                kept.push(p);
            }
        }
        st.names = kept;
        reply.ok();
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let root = self.lock().root.clone();
        let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `s` a valid, writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return reply.error(libc::EIO);
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut st = self.lock();
        let Some(f) = st.handles.get(&fh).and_then(|(_, f, _)| f.try_clone().ok()) else {
            return reply.error(libc::EBADF);
        };
        st.before_write(ino, &f, offset as u64, length as u64);
        // SAFETY: fallocate on a descriptor we own.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset, length) };
        if rc == 0 {
            reply.ok()
        } else {
            reply.error(errno(&std::io::Error::last_os_error()))
        }
    }
}

/// A mounted power-cut file system.
pub struct PowerCutFs {
    backing: PathBuf,
    stash: PathBuf,
    mountpoint: PathBuf,
    mode: Mode,
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

impl PowerCutFs {
    /// Mounts `backing` (created if absent) at `mountpoint`. Needs root and `/dev/fuse`.
    pub fn mount(backing: &Path, mountpoint: &Path, mode: Mode) -> anyhow::Result<Self> {
        std::fs::create_dir_all(backing)?;
        std::fs::create_dir_all(mountpoint)?;
        let backing = backing.canonicalize()?;
        let stash = backing.with_extension("stash");
        std::fs::create_dir_all(&stash)?;
        let mut fs = Self {
            state: Arc::new(Mutex::new(State::new(&backing, &stash, mode))),
            backing,
            stash,
            mountpoint: mountpoint.to_path_buf(),
            mode,
            session: None,
        };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> anyhow::Result<()> {
        let state = Arc::new(Mutex::new(State::new(
            &self.backing,
            &self.stash,
            self.mode,
        )));
        self.state = state.clone();
        let session = fuser::spawn_mount2(
            Fs { state },
            &self.mountpoint,
            &[MountOption::FSName("powercut".into()), MountOption::RW],
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot mount the power-cut file system (root and /dev/fuse needed): {e}"
            )
        })?;
        self.session = Some(session);
        Ok(())
    }

    /// The mount point, where the process under test keeps its data.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// fsync and fsyncdir calls seen since the last mount (proves the model was exercised).
    pub fn fsyncs(&self) -> u64 {
        self.state.lock().map(|s| s.fsyncs).unwrap_or(0)
    }

    /// The power cut. Every process writing here must be dead first (SIGKILL it): unmounts,
    /// drops every unsynced change, mounts again.
    pub fn power_cut(&mut self) -> anyhow::Result<CutStats> {
        self.session.take();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut stats = CutStats::default();
        for (ino, u) in std::mem::take(&mut st.files) {
            let Some(path) = st.paths.get(&ino) else {
                continue;
            };
            let Ok(f) = OpenOptions::new().write(true).open(path) else {
                continue;
            };
            stats.files_reverted += 1;
            for (off, old) in u.undo.iter().rev() {
                if f.write_all_at(old, *off).is_ok() {
                    stats.overwrites_undone += 1;
                }
            }
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if len > u.durable_len {
                stats.bytes_dropped += len - u.durable_len;
            }
            let _ = f.set_len(u.durable_len);
        }
        for p in std::mem::take(&mut st.names).into_iter().rev() {
            stats.names_undone += 1;
            match p.op {
                NameOp::Created(path) => {
                    let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir_all(&path));
                }
                NameOp::Removed { path, stash } => {
                    let _ = std::fs::rename(&stash, &path);
                }
                NameOp::Renamed {
                    from,
                    to,
                    displaced,
                } => {
                    let _ = std::fs::rename(&to, &from);
                    if let Some(d) = displaced {
                        let _ = std::fs::rename(&d, &to);
                    }
                }
            }
        }
        drop(st);
        // What stays in the stash was removed for good.
        let _ = std::fs::remove_dir_all(&self.stash);
        std::fs::create_dir_all(&self.stash)?;
        self.attach()?;
        Ok(stats)
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        self.session.take();
        let _ = std::fs::remove_dir_all(&self.stash);
    }
}
