//! Functions: the stage between `raw` and `good`/`bad`.
//!
//! Today it holds the canonicalisation of each protocol's raw events ([`canonicalize`]) and the
//! [`Runner`], which drives every `raw` partition through the chain with an exactly-once effect
//! on `good` and `bad`. Validation, enrichment and user functions plug into the same runner.
//!
//! The exactly-once protocol (raw partition p feeds good p and bad p):
//! - every output record carries the raw position it came from;
//! - per batch, bad records are appended (and durable) before good ones;
//! - on start the runner resumes after the last raw position found in `good` p, and skips
//!   writing bad rows for raw positions at or below the last one found in `bad` p.
//!
//! Because each output topic is written in raw order, "already written" is exactly "at or below
//! the last raw position in that topic", so a crash anywhere re-produces only what is missing.

mod canonical;
mod config;
mod error;
mod metrics;
mod runner;
mod snowplow;

pub use canonical::{Failure, canonicalize};
pub use config::{RunnerConfig, RunnerSettings};
pub use error::FunctionsError;
pub use runner::{Progress, Runner};
