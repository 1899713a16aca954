//! The lake's `events` and typed-table sinks, each alone (`sluice_bench::lake`):
//! `cargo bench -p sluice-bench --bench lake [-- USERS]` (default 5,000 users, about 60,000
//! events).

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), sluice_predict::bench::BenchError> {
    sluice_predict::bench::bench_main(5_000, |root, users| async move {
        sluice_bench::lake::sinks_alone(&root, users).await
    })
}
