//! Test support, never shipped: an in-memory journal, a handle that starts the real `sluice`
//! binary in a temporary directory for end-to-end and crash tests, and HTTP helpers.

pub mod http;
pub mod lock;
pub mod mem_journal;
pub mod process;

pub use lock::lock_exclusive;
pub use process::{SluiceProcess, wait_until};
