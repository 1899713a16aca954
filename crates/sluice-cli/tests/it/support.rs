//! What several test modules ask of the binary: run a command, read a query's rows.

use std::path::Path;

use sluice_testkit::process::run_cli;

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Runs `sluice ARGS` and returns its standard output.
pub(crate) fn sluice(args: &[&str]) -> anyhow::Result<String> {
    run_cli(Path::new(BIN), args)
}

/// The rows of `query`, read with `sluice sql` from the data directory.
pub(crate) fn sql(data: &Path, query: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let data = data.to_str().expect("utf-8 path");
    let out = sluice(&["sql", "--format", "json", "--data-dir", data, query])?;
    out.lines()
        .map(|l| serde_json::from_str(l).map_err(Into::into))
        .collect()
}

/// The column `n` of the first row of `query` (-1 when there is none).
pub(crate) fn count(data: &Path, query: &str) -> anyhow::Result<i64> {
    let rows = sql(data, query)?;
    Ok(rows.first().and_then(|r| r["n"].as_i64()).unwrap_or(-1))
}
