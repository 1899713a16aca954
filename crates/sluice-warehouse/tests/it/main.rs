//! The warehouse's integration tests, in one binary (linking DataFusion and delta-rs once, not
//! once per file). `clients` and `loader*` need PyPI packages or the Postgres on this machine and
//! are `#[ignore]`d (the whole-suite command runs them with `--run-ignored all`).

mod clients;
mod evolution;
mod loader;
mod loader_auth;
mod pg;
mod support;
mod upkeep;
mod warehouse;
