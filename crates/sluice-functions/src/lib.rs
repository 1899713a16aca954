//! Functions: the stage between `raw` and `good`/`bad`.
//!
//! The [`Chain`] every raw record goes through: canonicalisation of each protocol's raw events
//! ([`canonicalize`]), validation against the Iglu-compatible schema [`Registry`]
//! (`validate.rs`), the built-in enrichers (`enrich/`), the user JavaScript functions deployed
//! after any of those stages ([`udf`]) and a size check. The [`Runner`] drives
//! every `raw` partition through the chain with an exactly-once effect on `good` and `bad`.
//!
//! The exactly-once protocol (raw partition p feeds good p and bad p):
//! - every output record carries the raw position it came from;
//! - per batch, bad records are appended (and durable) before good ones;
//! - on start the runner resumes after the last raw position found in `good` p (or at its
//!   consumer group's committed offset, when that is further: it is written only after a
//!   batch's outputs are durable), and skips writing bad rows for raw positions at or below the
//!   last one found in `bad` p;
//! - a raw record a user function split into `n` events writes them with `"part":[k,n]`; when
//!   the last good record is part `k < n-1`, the runner resumes at that raw record and skips
//!   its first `k+1` events (this assumes the function gives the same events when run again).
//!
//! Because each output topic is written in raw order, "already written" is exactly "at or below
//! the last raw position in that topic", so a crash anywhere re-produces only what is missing.

mod canonical;
mod chain;
mod config;
mod enrich;
mod error;
mod metrics;
pub mod mmdb;
pub mod registry;
mod runner;
mod snowplow;
pub mod udf;
mod validate;

pub use canonical::{Draft, Failure, canonicalize, draft};
pub use chain::{Chain, DEFAULT_MAX_EVENT_BYTES, Outcome};
pub use config::{EventTimeWindow, RunnerConfig, RunnerSettings};
pub use enrich::{
    BotsConfig, CampaignConfig, ClockSkewConfig, EnrichConfig, FINGERPRINT_EXCLUDE,
    FingerprintConfig, GeoConfig, IpAnonymizationConfig, PiiConfig, RefererConfig, SessionConfig,
    Toggle, pseudonym,
};
pub use error::FunctionsError;
pub use registry::{Registry, RegistryError, SchemaKey};
pub use runner::{Runner, RunnerProgress, RunnerStatus};
pub use sluice_event::suppress::{Suppressed, subject_hash};
pub use udf::{FunctionSpec, Functions, OnFailure, UdfError};
pub use validate::{OnInvalid, OnUnknown, SourcePolicy, ValidationConfig};

/// Per-partition state of the chain (the sessions), for callers that drive [`Chain::process`]
/// themselves (benchmarks, tests).
pub type ChainState = enrich::Sessions;
