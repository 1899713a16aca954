//! The function chain per core (`sluice_bench::chain`, the same figures as `sluice bench
//! --chain`): `cargo bench -p sluice-bench --bench chain [-- EVENTS]` (default 100,000 events
//! of about 500 B, as `sluice bench --chain`'s defaults). It needs none of the lake's crates:
//! `cargo bench -p sluice-bench --no-default-features --bench chain` builds only the chain's.

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    // Cargo passes `--bench` itself; the first other argument is the number of events.
    let events = match std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        Some(arg) => arg
            .parse()
            .map_err(|e| anyhow::anyhow!("EVENTS must be a number, not {arg:?}: {e}"))?,
        None => 100_000,
    };
    let root = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    // The chain's batch path waits on the runtime from this thread, as the runner's does.
    let _entered = runtime.enter();
    sluice_bench::chain::run(events, 500, root.path())
}
