//! Stages of the pipeline measured alone, as the server runs them but with nothing else on the
//! cores, each built with only the crates it needs: the quick loop for profiling a stage
//! without building the whole server.
//!
//! - [`chain`]: the function chain per core, built-in stages and user functions, next to
//!   Node.js (`node.rs`) when it is installed (`sluice bench --chain`, or
//!   `cargo bench -p sluice-bench --bench chain`);
//! - [`lake`]: the `events` and typed-table sinks (`cargo bench -p sluice-bench --bench lake`).
//!
//! The hot projection's is `sluice_predict::bench` (`sluice bench --projection`, or
//! `cargo bench -p sluice-predict --bench projection`).

// A benchmark's report is its output.
#![allow(clippy::print_stdout)]

pub mod chain;
#[cfg(feature = "lake")]
pub mod lake;
mod node;
