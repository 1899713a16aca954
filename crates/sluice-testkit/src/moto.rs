//! [`Moto`]: a local S3-compatible store for the object-storage tests — moto's server mode, which
//! honours conditional puts (`If-None-Match: *`) under racing writers, as Delta commits need.
//!
//! The tool is installed by the tests themselves: once per moto version, a Python venv under
//! `$HOME/.cache/sluice-test-tools/moto-<version>/` (`pip install 'moto[server]==<version>'`,
//! see [`crate::tools`]). Each [`Moto`] runs `moto_server` on a free loopback port, waits (with a
//! deadline) until it answers, and is killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The moto release the tests run against.
pub const MOTO_VERSION: &str = "5.2.5";
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
        let bin = crate::tools::pip_tool(
            &format!("moto-{MOTO_VERSION}"),
            &format!("moto[server]=={MOTO_VERSION}"),
            "moto_server",
            "the S3 tests",
        )?;
        let port = crate::tools::free_port()?;
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
