//! [`Moto`]: a local S3-compatible store for the object-storage tests — moto's server mode, which
//! honours conditional puts (`If-None-Match: *`) under racing writers, as Delta commits need.
//!
//! The tool is installed by the tests themselves: once per moto version, a Python venv under
//! `$HOME/.cache/sluice-test-tools/moto-<version>/` (`python3 -m venv`, then `pip install
//! 'moto[server]==<version>'`), prepared under a file lock so parallel test processes do it one
//! at a time. Each [`Moto`] runs `moto_server` on a free loopback port, waits (with a deadline)
//! until it answers, and is killed when dropped. Without Python 3 or PyPI the test fails with a
//! message saying what could not be installed; it is never skipped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The moto release the tests run against.
pub const MOTO_VERSION: &str = "5.2.5";
/// The longest the one-time installation may take (a cold pip install).
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);
/// The longest a started server may take to answer.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// The keys every test uses (moto accepts any unless told to check them).
pub const ACCESS_KEY: &str = "sluice-test";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "sluice-test-secret";
/// The region moto serves by default.
pub const REGION: &str = "us-east-1";

/// A running `moto_server`, killed on drop.
pub struct Moto {
    child: Child,
    addr: SocketAddr,
    _log: tempfile::NamedTempFile,
}

impl Moto {
    /// Installs moto if needed, starts it on a free loopback port and waits until it answers.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with_env(&[])
    }

    /// Like [`Moto::start`] with extra environment for the server (e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0`, which makes it check credentials).
    pub fn start_with_env(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let bin = install()?;
        let port = free_port()?;
        let log = tempfile::NamedTempFile::new()?;
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.reopen()?)
            .stderr(log.reopen()?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut moto = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _log: log,
        };
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((status, _)) = moto.request("GET", "/moto-api/data.json")
                && status == 200
            {
                return Ok(moto);
            }
            if let Some(status) = moto.child.try_wait()? {
                let out = std::fs::read_to_string(moto._log.path()).unwrap_or_default();
                bail!("moto_server exited at start ({status}):\n{out}");
            }
            if Instant::now() > end {
                let out = std::fs::read_to_string(moto._log.path()).unwrap_or_default();
                bail!(
                    "moto_server did not answer on {} within {START_DEADLINE:?}:\n{out}",
                    moto.addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        let (status, body) = self.request("PUT", &format!("/{name}"))?;
        anyhow::ensure!(status == 200, "creating bucket {name}: {status} {body}");
        Ok(())
    }

    /// The keys of the objects in `bucket` under `prefix` (at most the first 1000).
    pub fn list(&self, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
        let (status, body) =
            self.request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"))?;
        anyhow::ensure!(status == 200, "listing {bucket}/{prefix}: {status} {body}");
        Ok(body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect())
    }

    /// The storage options of a lake in this store (endpoint, keys, region, plain http).
    pub fn storage_options(&self) -> std::collections::HashMap<String, String> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_access_key_id", ACCESS_KEY.to_string()),
            ("aws_secret_access_key", SECRET_KEY.to_string()),
            ("aws_region", REGION.to_string()),
            ("aws_allow_http", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// One unsigned HTTP/1.1 request; the status and the body.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/sluice-test-tools"))
}

/// Prepares the venv once; the path of its `moto_server`.
fn install() -> anyhow::Result<PathBuf> {
    let root = cache_dir()?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let _lock = crate::lock_exclusive(&root.join("moto.lock"))?;
    let dir = root.join(format!("moto-{MOTO_VERSION}"));
    let bin = dir.join("venv/bin/moto_server");
    let ready = dir.join("ready");
    if ready.exists() && bin.exists() {
        return Ok(bin);
    }
    if dir.exists() {
        // An installation that died halfway: start over.
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let venv = dir.join("venv");
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv (the S3 tests need Python 3 with venv to install moto)",
    )?;
    run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "-q",
            &format!("moto[server]=={MOTO_VERSION}"),
        ]),
        &format!("pip install moto[server]=={MOTO_VERSION} (the S3 tests need PyPI)"),
    )?;
    anyhow::ensure!(bin.exists(), "{} missing after the install", bin.display());
    std::fs::write(&ready, "")?;
    Ok(bin)
}

/// Runs a command to completion within [`INSTALL_DEADLINE`]; fails with its output otherwise.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = tempfile::NamedTempFile::new()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.reopen()?)
        .stderr(out.reopen()?)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let end = Instant::now() + INSTALL_DEADLINE;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let text = read(out.path());
            bail!("{what} failed ({status}):\n{text}");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what} did not finish within {INSTALL_DEADLINE:?}:\n{}",
                read(out.path())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
