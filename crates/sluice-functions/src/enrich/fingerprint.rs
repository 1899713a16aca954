//! `fingerprint`: a hash of the payload minus its per-send fields, the same for every send of
//! one event.

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
/// a tenth of the runner's work. What is hashed is laid out in one buffer and hashed at once,
/// which gives what hashing its pieces one after another gives.
pub(crate) fn fingerprint(raw: &RawEvent, exclude: &[String]) -> String {
    let payload = raw.payload.get().as_bytes();
    let mut text = Vec::with_capacity(raw.source.len() + payload.len() + 64);
    text.extend_from_slice(raw.source.as_bytes());
    text.push(0xff);
    match sluice_event::object_members(payload) {
        Some(mut members) => {
            // Stable: a key given twice keeps its order, and the last one is hashed.
            members.sort_by(|a, b| a.0.cmp(b.0));
            let mut members = members.into_iter().peekable();
            while let Some((k, v)) = members.next() {
                let later = members.peek().is_some_and(|(next, _)| *next == k);
                if later || exclude.iter().any(|e| e.as_bytes() == k) {
                    continue;
                }
                text.extend_from_slice(k);
                text.push(0xfe);
                text.extend_from_slice(v);
                text.push(0xff);
            }
        }
        None => text.extend_from_slice(payload),
    }
    super::hex(&xxhash_rust::xxh3::xxh3_128(&text).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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
            r#"{"ab":1,"a":2,"b":3,"a":4,"sentAt":5,"a":6,"sentAt":7,"":8}"#,
            r#"{"k\u0065y":1,"p":2}"#,
            r#"{"é→":"ü","s":"a\"b\\","messageId":{"nested":1}}"#,
            "{\n\t\"p\"\r\n:\n\"x\"\n}",
            r#""a base64 string""#,
            r#"[1,2]"#,
            r#"12"#,
        ];
        // Every length class of xxh3 (up to 16, 128 and 240 bytes, and longer than its
        // 256-byte stream buffer, several times over).
        let long = |n: usize| {
            let members: Vec<String> = (0..n).map(|i| format!("\"k{}\":\"{i}\"", n - i)).collect();
            format!("{{{}}}", members.join(","))
        };
        let longer: Vec<String> = [1, 4, 12, 40, 200].map(long).to_vec();
        for payload in payloads
            .into_iter()
            .chain(longer.iter().map(String::as_str))
        {
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
