//! The function chain per core (`sluice_bench::chain`, the same figures as `sluice bench
//! --chain`): `cargo bench -p sluice-bench --bench chain [-- EVENTS]` (default 100,000 events
//! of about 500 B, as `sluice bench --chain`'s defaults).

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let events =
        sluice_predict::bench::number_argument("EVENTS", 100_000).map_err(anyhow::Error::msg)?;
    let root = tempfile::tempdir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    // The chain's batch path waits on the runtime from this thread, as the runner's does.
    let _entered = runtime.enter();
    sluice_bench::chain::run(events, 500, root.path())
}
