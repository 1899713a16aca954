//! The server: wires the stages into one process and speaks HTTP. The only crate with HTTP
//! types.
//!
//! [`Server::start`] opens the journal, creates the topics, and starts each role this node
//! runs: the collector's routes, the runner, the lake sink, the hot projection (with the online
//! models), the warehouse's SQL routes and Postgres wire server, and housekeeping. Shutdown is
//! ordered so that nothing acked is lost and nothing is left half-delivered: stop intake (HTTP
//! graceful shutdown, which lets in-flight appends finish) → drain the runner up to the `raw`
//! end → drain the lake sink up to the `good`/`bad` ends and commit, and the hot projection to
//! the `good` end (the models checkpoint) → stop upkeep and retention → return. The library
//! never exits the process: a failed journal is reported as [`ServerError::JournalFailed`].
//!
//! Modules depend one way: `pipeline` (wiring) → the route modules (`native`, `sql`, `ops`,
//! `cluster`, `deletions`, `schemas`, `functions`, `hot`, `segment`, `snowplow`, `kinesis`),
//! none of which uses another → `http` (state, answers, the guards, metering) → `access`
//! (roles and tokens), `stages` (health), `shared_functions` and `shared_schemas` (what a
//! shared journal shares), `replay` (used by `ops`), `privacy` (deletion requests, used by
//! `deletions`) → `auth` (write keys), `error`, `metrics`; `config` and `listen` sit beside
//! them, and `quota` (the per-address limit `pipeline` puts in front of the ingest routes,
//! answering in the Kinesis shape on its route) with `pipeline`. `cargo xtask tidy` checks
//! there is no cycle.

pub mod access;
pub mod auth;
mod cluster;
mod config;
mod declared;
mod deletions;
mod error;
mod functions;
mod holds;
mod hot;
mod http;
mod kinesis;
mod listen;
mod metrics;
mod native;
mod ops;
mod pipeline;
mod privacy;
mod quota;
mod replay;
mod schemas;
mod segment;
mod share;
mod shared_credentials;
mod shared_functions;
mod shared_schemas;
mod snowplow;
mod sql;
mod stage_runtime;
mod stages;
mod tls;
mod warnings;

pub use config::{Config, Roles, Settings};
pub use error::{ServerError, status_of};
pub use kinesis::KinesisConfig;
pub use listen::ListenerConfig;
pub use pipeline::{Running, Server};
pub use privacy::{Request as DeletionRequest, Status as DeletionStatus};
pub use replay::ReplayReport;
pub use snowplow::{SnowplowConfig, SnowplowSettings};
pub use tls::TlsConfig;
