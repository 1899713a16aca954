//! The lake's `events` and typed-table sinks, each alone (`sluice_bench::lake`):
//! `cargo bench -p sluice-bench --bench lake [-- USERS]` (default 5,000 users, about 120,000
//! events).

#![allow(clippy::print_stdout)] // A benchmark's report is its output.

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), sluice_predict::bench::BenchError> {
    let users = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(arg) => arg
            .parse()
            .map_err(|e| format!("USERS must be a number, not {arg:?}: {e}"))?,
        None => 5_000,
    };
    let root = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let runs = runtime.block_on(sluice_bench::lake::sinks_alone(root.path(), users))?;
    for run in runs {
        println!("{run}");
    }
    Ok(())
}
