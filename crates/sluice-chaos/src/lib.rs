//! The chaos suite's library, never shipped: a Jepsen-style workload and checker, fault
//! injectors (SIGKILL, a power-cut file system, full disks, byte corruption, private Redis and
//! Postgres servers) and a deterministic body fuzzer. It drives the real `sluice` binary from
//! outside and observes it only through HTTP (`/v1/sql`, `/v1/profiles`, `/metrics`) and
//! Postgres, so it builds without the lake's dependencies. The scenarios live in
//! `crates/sluice-cli/tests/it/chaos.rs` (and the known holes in `chaos_holes.rs`).

pub mod checker;
pub mod fault;
pub mod fuzz;
pub mod harness;
pub mod observe;
pub mod powercut;
pub mod profile;
pub mod scorecard;
pub mod workload;

pub use checker::{History, Outcome, Sent, SinkReport};
pub use profile::Profile;
pub use scorecard::Scorecard;
