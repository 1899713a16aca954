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

/// xxh3-128 of the payload's top-level members minus `exclude`, in key order (the last of a
/// key given twice), as 32 hex digits. A payload that is not an object, or has a key written
/// with an escape, is hashed whole. The members are found by `sluice_event::object_members`
/// (the payload is valid JSON, checked when the raw record was read): parsing it again here was
/// a tenth of the runner's work.
pub(crate) fn fingerprint(raw: &RawEvent, exclude: &[String]) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(raw.source.as_bytes());
    h.update(&[0xff]);
    let payload = raw.payload.get().as_bytes();
    match sluice_event::object_members(payload) {
        Some(members) => {
            let members: BTreeMap<&[u8], &[u8]> = members.into_iter().collect();
            for (k, v) in members {
                if exclude.iter().any(|e| e.as_bytes() == k) {
                    continue;
                }
                h.update(k);
                h.update(&[0xfe]);
                h.update(v);
                h.update(&[0xff]);
            }
        }
        None => h.update(payload),
    }
    format!("{:032x}", h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint as it was computed before, with the members parsed by `serde_json`:
    /// every stored fingerprint was made this way.
    fn parsed(raw: &RawEvent, exclude: &[String]) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(raw.source.as_bytes());
        h.update(&[0xff]);
        let payload = raw.payload.get();
        match serde_json::from_str::<BTreeMap<&str, &serde_json::value::RawValue>>(payload) {
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
            Err(_) => h.update(payload.as_bytes()),
        }
        format!("{:032x}", h.digest128())
    }

    #[test]
    fn fingerprints_are_the_ones_parsing_the_payload_gave() {
        let exclude: Vec<String> = ["messageId", "sentAt"].map(String::from).to_vec();
        let payloads = [
            r#"{"event":"x","messageId":"1","sentAt":"a","p":1}"#,
            r#"{}"#,
            r#" { "b" : [1, {"c": "}\"]"}] , "a":-1.5e3,"t":true,"n":null } "#,
            r#"{"event":"x","event":"y","p":{"q":[[],{}]}}"#,
            r#"{"k\u0065y":1,"p":2}"#,
            r#"{"é→":"ü","s":"a\"b\\","messageId":{"nested":1}}"#,
            "{\n\t\"p\"\r\n:\n\"x\"\n}",
            r#""a base64 string""#,
            r#"[1,2]"#,
            r#"12"#,
        ];
        for payload in payloads {
            let raw: RawEvent = serde_json::from_value(serde_json::json!({
                "event_id": "e", "source": "web", "protocol": "native", "received_at": 1,
                "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap(),
            }))
            .unwrap();
            let mut raw = raw;
            // The payload exactly as written, whitespace and escapes included.
            raw.payload = serde_json::from_str(payload).unwrap();
            assert_eq!(
                fingerprint(&raw, &exclude),
                parsed(&raw, &exclude),
                "{payload}"
            );
        }
    }
}
