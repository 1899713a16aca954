//! The hot projection alone (`sluice_predict::bench`), built with only the crates the stage
//! needs: `cargo bench -p sluice-predict --bench projection [-- USERS]` (default 20,000 users).
//! The same figures as `sluice bench --projection`, without building the whole server.

/// The allocator `sluice` ships with, so the figures are the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> Result<(), sluice_predict::bench::BenchError> {
    sluice_predict::bench::bench_main(20_000, |root, users| async move {
        sluice_predict::bench::projection_alone(&root, users).await
    })
}
