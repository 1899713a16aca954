//! Project automation: `cargo xtask tidy` checks what rustfmt and clippy cannot (the checks are
//! in `tidy.rs`, which `cargo test -p xtask` runs as a test too);
//! `cargo xtask chaos [--full] [--holes]` runs the chaos scenarios (`chaos.rs`).

mod chaos;
mod tidy;

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "tidy" => {
            let problems = tidy::check(&tidy::workspace_root())?;
            if problems.is_empty() {
                eprintln!("tidy: ok");
                Ok(())
            } else {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::bail!("tidy: {} problems", problems.len())
            }
        }
        "chaos" => chaos::run(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => anyhow::bail!("usage: cargo xtask tidy | cargo xtask chaos [--full] [--holes]"),
    }
}
