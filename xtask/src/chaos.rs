//! `cargo xtask chaos [--full] [--holes]`: runs the chaos scenarios of
//! `crates/sluice-cli/tests/it/chaos.rs` with the chosen profile (quick unless `--full`), or the
//! known-holes scenarios of `chaos_holes.rs` with `--holes`, then prints the scorecard: one
//! JSON line per scenario, also kept in `target/chaos-scorecard.jsonl`.

// The scorecard is this command's output.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::process::Command;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let full = args.iter().any(|a| a == "--full");
    let holes = args.iter().any(|a| a == "--holes");
    if let Some(other) = args.iter().find(|a| *a != "--full" && *a != "--holes") {
        anyhow::bail!("unknown argument {other:?}; usage: cargo xtask chaos [--full] [--holes]");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    std::fs::create_dir_all(&target)?;
    let card = target.join("chaos-scorecard.jsonl");
    let _ = std::fs::remove_file(&card);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .args(["nextest", "run", "-p", "sluice-cli", "--no-fail-fast"])
        .args(["--success-output", "final", "--failure-output", "final"])
        .env("SLUICE_CHAOS_PROFILE", if full { "full" } else { "quick" })
        .env("SLUICE_CHAOS_SCORECARD", &card);
    if holes {
        cmd.args(["--features", "chaos-holes", "--test", "it"])
            .args(["-E", "test(/^chaos_holes::/)", "--no-tests", "pass"]);
    } else {
        cmd.args(["--test", "it", "-E", "test(/^chaos::/)"]);
    }
    let status = cmd.status()?;
    println!("\n== chaos scorecard ({})", card.display());
    let text = std::fs::read_to_string(&card).unwrap_or_default();
    for line in text.lines() {
        println!("{line}");
    }
    if holes && text.is_empty() && status.success() {
        println!("\nholes: no hole scenario is open");
        return Ok(());
    }
    anyhow::ensure!(
        !text.is_empty(),
        "no scenario wrote a scorecard (did the build fail?)"
    );
    if holes {
        // A failing hole scenario is a hole still open: that is the expected answer today.
        println!(
            "\nholes: each failing scenario above is a hole still open (its message says what \
             it found); a passing one is fixed and belongs in chaos.rs."
        );
        return Ok(());
    }
    anyhow::ensure!(status.success(), "chaos scenarios failed");
    Ok(())
}
