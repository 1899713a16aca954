//! `clock_skew`: the event's time, with the tracker's clock skew removed or as the device sent it.

use super::{Built, ClockSkewConfig, Draft, EnrichConfig, Facts, Step, micros, when};

/// Always built: switched off, it still decides the timestamp (the device's).
pub(super) fn build(c: &EnrichConfig) -> Built {
    when(true, || c.clock_skew.clone())
}

impl Step for ClockSkewConfig {
    fn apply(&self, draft: &mut Draft, _: &mut Facts<'_>) -> Result<(), String> {
        if !self.enabled {
            if let Some(t) = draft.device_timestamp {
                draft.timestamp = t;
            }
        } else if draft.timestamp > draft.received_at.saturating_add(micros(self.max_future)) {
            draft.timestamp = draft.received_at;
        }
        Ok(())
    }
}
