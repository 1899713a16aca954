//! Fault injectors other than the power cut: size-limited tmpfs mounts (full disks), byte
//! corruption of files, and private Redis and Postgres servers on free ports that a scenario
//! may kill and restart (the shared ones on 6379/5432 are never touched).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Whether this process may mount file systems (root).
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A tmpfs of a fixed size, unmounted on drop: writes past the size fail with ENOSPC.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `path` (created if absent).
    pub fn mount(path: &Path, bytes: u64) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .status()
            .context("mount tmpfs")?;
        anyhow::ensure!(
            status.success(),
            "mount -t tmpfs at {} failed",
            path.display()
        );
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the free space with a file `name` (writes until ENOSPC); the bytes written.
    pub fn fill(&self, name: &str) -> anyhow::Result<u64> {
        fill_dir(&self.path.join(name))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `file` until the file system is full; the bytes written.
pub fn fill_dir(file: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(file)?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Fill the last partial block too.
    for _ in 0..4096 {
        match f.write(&[0u8]) {
            Ok(1) => written += 1,
            _ => break,
        }
    }
    Ok(written)
}

/// XORs `len` bytes of `path` at `offset` with 0xff (clamped to the file).
pub fn flip_bytes(path: &Path, offset: u64, len: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let size = f.metadata()?.len();
    anyhow::ensure!(offset < size, "{} has only {size} bytes", path.display());
    let len = len.min((size - offset) as usize);
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset)?;
    for b in &mut buf {
        *b ^= 0xff;
    }
    f.write_all_at(&buf, offset)?;
    f.sync_all()?;
    Ok(())
}

/// Every file under `dir` whose path matches `pred`, sorted.
pub fn files_under(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if pred(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A child process killed with SIGKILL on demand and on drop.
#[derive(Debug, Default)]
struct Daemon(Option<Child>);

impl Daemon {
    fn kill9(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until `port` accepts connections.
    fn started(&mut self, child: Child, port: u16, what: &str) -> anyhow::Result<()> {
        self.0 = Some(child);
        sluice_testkit::wait_until(Duration::from_secs(30), what, || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()
                .then_some(()))
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A private `redis-server` with an fsynced append-only file, so a SIGKILL loses nothing it
/// acknowledged.
#[derive(Debug)]
pub struct RedisServer {
    daemon: Daemon,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Whether `redis-server` is installed.
    pub fn available() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts one on a free port with its files in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut s = Self {
            daemon: Daemon::default(),
            port: free_port()?,
            dir: dir.to_path_buf(),
        };
        s.restart()?;
        Ok(s)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts it again (after [`Self::kill9`]) on the same port and files; waits until it
    /// accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start redis-server")?;
        self.daemon.started(child, self.port, "redis accepting")
    }
}

/// A private PostgreSQL cluster (initdb in a temporary directory, run as the `postgres` user
/// when this process is root, since Postgres refuses to run as root).
#[derive(Debug)]
pub struct PostgresServer {
    daemon: Daemon,
    /// Its port.
    pub port: u16,
    dir: PathBuf,
}

impl PostgresServer {
    /// Whether `initdb` and `postgres` are installed.
    pub fn available() -> bool {
        which("initdb").is_some() && which("postgres").is_some()
    }

    /// Initialises a cluster in `dir` and starts it on a free port.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let data = dir.join("pgdata");
        as_postgres_owner(dir)?;
        let out = postgres_cmd("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .context("initdb")?;
        anyhow::ensure!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut s = Self {
            daemon: Daemon::default(),
            port: free_port()?,
            dir: dir.to_path_buf(),
        };
        s.restart()?;
        Ok(s)
    }

    /// A tokio-postgres connection string.
    pub fn conn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// SIGKILL of the postmaster (the backends exit when they notice).
    pub fn kill9(&mut self) {
        self.daemon.kill9();
    }

    /// Starts it again on the same port and data; waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let data = self.dir.join("pgdata");
        // A killed postmaster leaves its pid file; a stale one would stop the start.
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let child = postgres_cmd("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start postgres")?;
        self.daemon.started(child, self.port, "postgres accepting")
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(bin))
            .find(|p| p.is_file())
    })
}

fn postgres_cmd(bin: &str) -> Command {
    if can_mount() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(which(bin).unwrap_or_else(|| bin.into()));
        c
    } else {
        Command::new(bin)
    }
}

/// Hands `dir` (and its parents' search permission) to the `postgres` user when we are root.
fn as_postgres_owner(dir: &Path) -> anyhow::Result<()> {
    if !can_mount() {
        return Ok(());
    }
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(status.success(), "chown {}", dir.display());
    let mut p = dir.parent();
    while let Some(d) = p {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(d) {
            let mode = m.permissions().mode();
            if mode & 0o001 == 0 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001));
            }
        }
        p = d.parent();
    }
    Ok(())
}
