//! The HTTP layer every route module builds on, and which depends on none of them: the
//! handlers' shared state ([`AppState`]), the error answer ([`error_response`]), the guards
//! ([`Admin`], [`Reader`], [`MetricsReader`]) and the one refusal answer ([`refuse`]), request
//! metrics ([`metered`]) and the finished router ([`router`]).
//!
//! Route modules (`native`, `sql`, `ops`, `cluster`, `deletions`, `schemas`, `functions`, `hot`,
//! `segment`, `snowplow`, `kinesis`) each return a `Router<AppState>`; they depend on this
//! module and on the modules below it (`access`, `auth`, `replay`, `privacy`, `error`,
//! `metrics`), never on each other. `pipeline.rs` lists them.

mod admin;
mod answer;
mod router;
mod state;

pub(crate) use admin::{Admin, MetricsReader, Reader, refuse};
pub(crate) use answer::{
    collect_error, collector_of, content_encoding, error_response, header_str,
};
pub(crate) use router::{RouteLabel, label, metered, router};
pub(crate) use state::{AppState, ClusterView, NodeCard, PipelineParts};
