//! The server: wires the stages into one process and speaks HTTP. The only crate with HTTP
//! types.
//!
//! [`Server::start`] opens the journal, creates the topics, and starts the collector's routes,
//! the functions runner, the lake sink, the hot projection (with the online models) and
//! housekeeping. Shutdown is ordered so that nothing
//! acked is lost and nothing is left half-delivered: stop intake (HTTP graceful shutdown, which
//! lets in-flight appends finish) → drain the runner up to the `raw` end → drain the lake sink up
//! to the `good`/`bad` ends and commit, and the hot projection to the `good` end (the models
//! checkpoint) → return.

pub mod auth;
mod config;
mod declared;
mod error;
mod functions;
mod hot;
mod http;
mod kinesis;
mod listen;
mod metrics;
mod pipeline;
mod replay;
mod schemas;
mod segment;
mod snowplow;

pub use config::{Config, Roles, Settings};
pub use error::{ServerError, status_of};
pub use kinesis::KinesisConfig;
pub use listen::ListenerConfig;
pub use pipeline::{Running, Server};
pub use replay::ReplayReport;
pub use snowplow::{SnowplowConfig, SnowplowSettings};
