//! The hot projection alone (`sluice_predict::bench`), built with only the crates the stage
//! needs: `cargo bench -p sluice-predict --bench projection [-- USERS]` (default 20,000 users).
//! The same figures as `sluice bench --projection`, without building the whole server.

#![allow(clippy::print_stdout)] // A benchmark's report is its output.

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), sluice_predict::bench::BenchError> {
    let users = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("USERS must be a number, not {arg:?}: {e}"))?,
        None => 20_000,
    };
    let root = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let runs = runtime.block_on(sluice_predict::bench::projection_alone(root.path(), users))?;
    for run in runs {
        println!("{run}");
    }
    Ok(())
}
