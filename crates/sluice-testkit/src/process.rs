//! [`SluiceProcess`]: the real `sluice serve` binary in a data directory, on an ephemeral
//! loopback port, with SIGKILL, SIGTERM and restart for crash tests.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long a server may take to print its address.
const START_DEADLINE: Duration = Duration::from_secs(120);

/// A running `sluice serve` process.
pub struct SluiceProcess {
    child: Child,
    /// The HTTP address it listens on.
    pub addr: SocketAddr,
    /// `http`, or `https` when the server has `[tls]`.
    pub scheme: &'static str,
    bin: PathBuf,
    data_dir: PathBuf,
    extra: Vec<String>,
}

impl SluiceProcess {
    /// Starts `bin serve --data-dir DIR --http 127.0.0.1:0 --pg 127.0.0.1:0 EXTRA...` (without
    /// the `--pg` when EXTRA has one) and waits for its address.
    pub fn spawn(bin: &Path, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr, scheme) = start(bin, data_dir, &extra)?;
        Ok(Self {
            child,
            addr,
            scheme,
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            extra,
        })
    }

    /// Runs `bin serve` as [`SluiceProcess::spawn`] does, expecting it to fail at start: its
    /// standard error. An error if it reports an address, exits 0, panics, or is still running
    /// after the start deadline.
    pub fn expect_start_failure(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        Self::expect_start_failure_without(bin, data_dir, extra, &[])
    }

    /// [`SluiceProcess::expect_start_failure`] with the environment variables `unset` removed
    /// (credentials the machine may have, that the config file must not be able to lean on).
    pub fn expect_start_failure_without(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        unset: &[&str],
    ) -> anyhow::Result<String> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut cmd = serve_command(bin, data_dir, &extra);
        for var in unset {
            cmd.env_remove(var);
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("sluice listening on ") {
                    let _ = tx.send(());
                }
                text.push_str(&line);
                text.push('\n');
            }
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = BufReader::new(stderr).read_to_string(&mut text);
            text
        });
        let end = Instant::now() + START_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            let started = rx.try_recv().is_ok();
            if started || Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                match started {
                    true => anyhow::bail!("the server started"),
                    false => anyhow::bail!(
                        "the server neither started nor failed within {START_DEADLINE:?}"
                    ),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = out
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
        let stderr = err
            .join()
            .map_err(|_| anyhow::anyhow!("stderr reader panicked"))?;
        anyhow::ensure!(
            !stdout.contains("sluice listening on "),
            "the server started: {stdout}"
        );
        anyhow::ensure!(!status.success(), "the server exited 0: {stderr}");
        anyhow::ensure!(
            !stderr.contains("panicked"),
            "the server panicked: {stderr}"
        );
        Ok(stderr)
    }

    /// `http://ADDR` (`https://ADDR` with `[tls]`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap: a crash with no chance to clean up.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("kill -9")?;
        self.child.wait().context("reap")?;
        Ok(())
    }

    /// SIGTERM, then wait for the exit (bounded).
    pub fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        anyhow::ensure!(rc == 0, "kill SIGTERM: {}", std::io::Error::last_os_error());
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                anyhow::bail!("server did not exit within {deadline:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`libc::SIGSTOP`, `libc::SIGCONT`, …) to the process.
    pub fn signal(&self, signal: i32) -> anyhow::Result<()> {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        anyhow::ensure!(
            rc == 0,
            "kill {signal}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Waits until the process exits by itself (bounded), and how.
    pub fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < end,
                "the server did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory (a new port).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let (child, addr, scheme) = start(&self.bin, &self.data_dir, &self.extra)?;
        self.child = child;
        self.addr = addr;
        self.scheme = scheme;
        Ok(())
    }
}

impl Drop for SluiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `bin serve --data-dir DIR --http 127.0.0.1:0 --pg 127.0.0.1:0 EXTRA...` (without the `--pg`
/// when EXTRA has one), with no standard input and its standard output piped.
fn serve_command(bin: &Path, data_dir: &Path, extra: &[String]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http", "127.0.0.1:0"])
        // The caller may name the Postgres wire port, to connect to it.
        .args(match extra.iter().any(|a| a == "--pg") {
            true => &[][..],
            false => &["--pg", "127.0.0.1:0"][..],
        })
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    cmd
}

fn start(
    bin: &Path,
    data_dir: &Path,
    extra: &[String],
) -> anyhow::Result<(Child, SocketAddr, &'static str)> {
    let mut child = serve_command(bin, data_dir, extra)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix("sluice listening on http://") {
                let _ = tx.send((addr.trim().to_string(), "http"));
            } else if let Some(addr) = line.strip_prefix("sluice listening on https://") {
                let _ = tx.send((addr.trim().to_string(), "https"));
            }
        }
    });
    match rx.recv_timeout(START_DEADLINE) {
        Ok((addr, scheme)) => Ok((child, addr.parse().context("bad address line")?, scheme)),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            anyhow::bail!(
                "server did not report its address within {START_DEADLINE:?} (exit: {status:?})"
            )
        }
    }
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub fn wait_until<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > end {
            match last_err {
                Some(e) => anyhow::bail!("timed out waiting for {what}: last error: {e:#}"),
                None => anyhow::bail!("timed out waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `bin ARGS...` to completion; its stdout, or an error with its stderr when it fails.
pub fn run_cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}
