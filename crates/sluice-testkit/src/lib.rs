//! Test support, never shipped: an in-memory journal, and a handle that starts the real
//! `sluice` binary in a temporary directory for end-to-end and crash tests.

pub mod mem_journal;
pub mod process;

pub use process::{SluiceProcess, wait_until};
