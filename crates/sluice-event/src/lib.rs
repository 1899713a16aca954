//! The vocabulary every stage shares: events as they travel through the journal, positions,
//! identifiers, rejections and the error classification.
//!
//! This crate does no IO and knows nothing of tokio or HTTP. Its types are the contract between
//! stages: the collector writes [`RawEvent`]s into the `raw` topic, the runner turns them into
//! canonical [`Event`]s on `good` or [`BadRow`]s on `bad`, and the sinks read those back. Each of
//! them is stored as one JSON document per journal record; field names are part of the on-disk
//! format, so renaming one is a format change (see `docs/formats/records.md`).

mod error;
mod event;
pub mod json;
pub mod skim;
mod swar;
mod time;

pub mod suppress;

pub use error::{ErrorKind, Rejection};
pub use event::{
    BadKind, BadRow, Enrichment, Event, EventOf, EventType, Protocol, RawEvent, RawEventRef,
    routing_key,
};
pub use skim::object_members;
pub use time::{date_of, format_micros, now_micros, parse_timestamp, skew_corrected};

use serde::{Deserialize, Serialize};

/// The three topics of the pipeline.
pub mod topic {
    /// Events as the collector accepted them, one [`crate::RawEvent`] per record.
    pub const RAW: &str = "raw";
    /// Canonical, enriched events, one [`crate::Event`] per record.
    pub const GOOD: &str = "good";
    /// Typed failures with the original payload, one [`crate::BadRow`] per record.
    pub const BAD: &str = "bad";
}

/// A coordinate in the journal: partition and offset within one topic.
///
/// Offsets are dense from 0 per partition and are never reissued, even after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Partition number, `0..partitions`.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// The identifier of an event, chosen by the tracker (Segment `messageId`, Snowplow `eid`) or
/// stamped by the collector as a UUIDv7.
pub type EventId = String;

/// The name of a source: which write key (and so which tracker deployment) sent an event.
/// Dedupe is scoped by source.
pub type SourceId = String;

/// The source name of events sent with no write key (open ingest on loopback).
pub const DEFAULT_SOURCE: &str = "default";
