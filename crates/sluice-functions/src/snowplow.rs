//! Snowplow tracker-protocol events → canonical events (see ARCHITECTURE.md, "canonical event").

use sluice_event::{Event, Position, RawEvent};

use crate::canonical::{Failure, parse_err};

/// Makes the canonical event for a Snowplow raw record.
pub(crate) fn canonicalize(raw: &RawEvent, raw_pos: Position) -> Result<Event, Failure> {
    let _ = (raw, raw_pos);
    Err(parse_err("snowplow events are not read yet"))
}
