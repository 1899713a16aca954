//! The collector: everything between an HTTP request body and a durable append to `raw`, with no
//! HTTP types (the server crate owns those).
//!
//! Per request: decompress (limits apply to the decompressed size) → split the body into events
//! (one object, an array, or NDJSON) → check each event (object, size, required fields) →
//! stamp `event_id`, `received_at`, `source` → dedupe on (source, event_id) → route each event to
//! a `raw` partition by user id / anonymous id / event id → append every partition's share and
//! wait for the group commit's fsync → answer. An answer of [`IngestOutcome`] therefore means
//! every accepted event is durable.
//!
//! Invariants:
//! - Nothing is acked before it is durable; an event whose append failed is not remembered by
//!   the dedupe index, so the client's retry is not taken for a duplicate.
//! - The dedupe index is rebuilt from `raw` on start, so the window survives restarts.
//! - A per-event problem rejects that event only (reported with its index and reason); a
//!   problem with the body as a whole (malformed JSON, over a limit) rejects the request with
//!   nothing written.

mod config;
mod decode;
mod dedupe;
mod error;
mod follow;
mod ingest;
mod metrics;
mod native;
mod quota;
mod segment;
pub mod snowplow;

pub use config::{CollectorConfig, CollectorSettings};
pub use decode::{Encoding, decompress, split_events};
pub use error::CollectError;
pub use ingest::{
    Collector, Gate, IngestOutcome, IngestRequest, Item, Origin, Placement, RUNNER_GROUP,
    Submitted, decode_raw,
};
pub use native::{MAX_DEPTH, NativeHead, check_native, json_depth};
pub use quota::{
    AddressQuota, Demand, MAX_ADDRESSES, QuotaConfig, SourceQuota, SourceQuotas, Throttle,
};
pub use segment::{
    SEGMENT_MAX_BATCH, SEGMENT_MAX_BODY_BYTES, SEGMENT_MAX_MESSAGE_BYTES, SegmentBody,
    SegmentRoute, decode_segment,
};
pub use snowplow::{
    SnowplowEvent, decode_post as decode_snowplow_post, decode_query as decode_snowplow_query,
};
