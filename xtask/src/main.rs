//! Project automation: `cargo xtask tidy` checks conventions that rustfmt and clippy cannot;
//! `cargo xtask chaos` runs the chaos scenarios (see `chaos.rs`).
//!
//! - every Rust file opens with a `//!` doc comment saying what it owns;
//! - no crate outside `sluice-server` and `sluice-cli` (and the bench in the CLI) names axum,
//!   so HTTP types stay in one crate;
//! - DataFusion is reached only through `deltalake`'s re-export, so the Arrow family cannot drift.

use std::path::{Path, PathBuf};

mod chaos;

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "tidy" => tidy(),
        "chaos" => chaos::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => anyhow::bail!("usage: cargo xtask tidy | cargo xtask chaos [--full] [--holes]"),
    }
}

fn tidy() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut files = Vec::new();
    for top in ["crates", "xtask"] {
        collect(&root.join(top), &mut files)?;
    }
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{rel}: does not open with a //! comment"));
        }
        let http_ok =
            rel.starts_with("crates/sluice-server/") || rel.starts_with("crates/sluice-cli/");
        // The needles are split so that this file does not match itself.
        if !http_ok && text.contains(concat!("use ", "axum")) {
            problems.push(format!("{rel}: HTTP types belong in sluice-server"));
        }
        if text.contains(concat!("use ", "datafusion::"))
            || text.contains(concat!("use ", "arrow::"))
        {
            problems.push(format!(
                "{rel}: use the deltalake::{{datafusion, arrow}} re-exports"
            ));
        }
    }
    if problems.is_empty() {
        println!("tidy: {} files ok", files.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        anyhow::bail!("tidy: {} problems", problems.len())
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if !dir.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "target" || n == "node_modules")
            {
                continue;
            }
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}
