//! Shared by the tests that drive PyPI and npm packages: the pinned toolchain of
//! `compat/warehouse/`, installed once per content hash under `~/.cache/sluice-compat/`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn compat_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../compat/warehouse")
}

pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The venv and node_modules of `compat/warehouse`, prepared once per content hash.
pub fn toolchain() -> PathBuf {
    let compat = compat_dir();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for name in ["requirements.txt", "package.json", "package-lock.json"] {
        for b in std::fs::read(compat.join(name)).unwrap() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let dir = home.join(format!(".cache/sluice-compat/warehouse-{hash:016x}"));
    std::fs::create_dir_all(home.join(".cache/sluice-compat")).unwrap();
    // Tests run as parallel processes: one prepares, the others wait and reuse.
    let _lock =
        sluice_testkit::lock_exclusive(&home.join(".cache/sluice-compat/warehouse.lock")).unwrap();
    if !dir.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("node")).unwrap();
        run(
            Command::new("python3")
                .args(["-m", "venv"])
                .arg(dir.join("venv")),
            "python3 -m venv",
        );
        run(
            Command::new(dir.join("venv/bin/pip"))
                .args(["install", "--disable-pip-version-check", "-q", "-r"])
                .arg(compat.join("requirements.txt")),
            "pip install",
        );
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(compat.join(name), dir.join("node").join(name)).unwrap();
        }
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(dir.join("node")),
            "npm ci",
        );
        std::fs::write(dir.join("ready"), "").unwrap();
    }
    dir
}
