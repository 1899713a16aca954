//! `fingerprint`: a hash of the payload minus its per-send fields, the same for every send of
//! one event.

use std::collections::BTreeMap;

use sluice_event::RawEvent;

use super::{Built, Draft, EnrichConfig, Facts, FingerprintConfig, Step, when};

pub(super) fn build(c: &EnrichConfig) -> Built {
    when(c.fingerprint.enabled, || c.fingerprint.clone())
}

impl Step for FingerprintConfig {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        draft.enriched.event_fingerprint = Some(fingerprint(facts.raw, &self.exclude));
        Ok(())
    }
}

/// xxh3-128 of the payload's top-level members minus `exclude`, in key order, as 32 hex digits.
/// A payload that is not an object is hashed whole.
pub(crate) fn fingerprint(raw: &RawEvent, exclude: &[String]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(raw.source.as_bytes());
    h.update(&[0xff]);
    match serde_json::from_str::<BTreeMap<&str, &serde_json::value::RawValue>>(raw.payload.get()) {
        Ok(members) => {
            for (k, v) in members {
                if exclude.iter().any(|e| e == k) {
                    continue;
                }
                h.update(k.as_bytes());
                h.update(&[0xfe]);
                h.update(v.get().as_bytes());
                h.update(&[0xff]);
            }
        }
        Err(_) => h.update(raw.payload.get().as_bytes()),
    }
    format!("{:032x}", h.digest128())
}
