//! `clock_skew`: the event's time, with the tracker's clock skew removed or as the device sent it.

use super::{Built, Draft, EnrichConfig, Facts, Step};

struct ClockSkew {
    enabled: bool,
    /// Furthest a timestamp may lie after `received_at`, µs.
    max_future: i64,
}

/// Always built: switched off, it still decides the timestamp (the device's).
pub(super) fn build(c: &EnrichConfig) -> Built {
    Ok(Some(Box::new(ClockSkew {
        enabled: c.clock_skew.enabled,
        max_future: i64::try_from(c.clock_skew.max_future.as_micros()).unwrap_or(i64::MAX),
    })))
}

impl Step for ClockSkew {
    fn apply(&self, draft: &mut Draft, _: &mut Facts<'_>) -> Result<(), String> {
        if !self.enabled {
            if let Some(t) = draft.device_timestamp {
                draft.timestamp = t;
            }
        } else if draft.timestamp > draft.received_at.saturating_add(self.max_future) {
            draft.timestamp = draft.received_at;
        }
        Ok(())
    }
}
