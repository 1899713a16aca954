//! Whether a bad row's payload belongs to a person: some value in it equals one of their ids.
//!
//! Payloads are what the collector received: JSON (native and Segment events, Snowplow POST
//! bodies, the collector's raw record around them), querystrings (Snowplow GET, form posts) and
//! base64 inside those (Snowplow `ue_px`/`cx`). The check decodes each layer and compares whole
//! values, so an id that merely occurs inside a longer text does not match; candidates come from a
//! substring search in SQL ([`needle`]) and only those are decoded.

use base64::Engine;
use serde_json::Value;

/// Nesting levels decoded at most (JSON in a string in a querystring is three).
const MAX_DEPTH: u8 = 6;

/// What a SQL substring search looks for to find every payload that may mention `id`, however
/// encoded: its longest run of ASCII letters and digits (JSON escaping, percent-encoding and
/// nesting keep those), or the id itself when it has none.
pub(crate) fn needle(id: &str) -> &str {
    id.split(|c: char| !c.is_ascii_alphanumeric())
        .max_by_key(|run| run.len())
        .filter(|run| !run.is_empty())
        .unwrap_or(id)
}

/// Whether some value in `payload` equals one of `ids`.
pub(crate) fn mentions(payload: &str, ids: &[String]) -> bool {
    text_mentions(payload, ids, 0)
}

fn text_mentions(text: &str, ids: &[String], depth: u8) -> bool {
    if ids.iter().any(|id| id == text) {
        return true;
    }
    if depth >= MAX_DEPTH {
        return false;
    }
    let trimmed = text.trim_start();
    if (trimmed.starts_with('{') || trimmed.starts_with('[') || trimmed.starts_with('"'))
        && let Ok(v) = serde_json::from_str::<Value>(text)
    {
        return value_mentions(&v, ids, depth + 1);
    }
    if text.contains('=') {
        return form_urlencoded::parse(text.trim_start_matches('?').as_bytes())
            .any(|(k, v)| field_mentions(&k, &v, ids, depth + 1));
    }
    false
}

fn value_mentions(v: &Value, ids: &[String], depth: u8) -> bool {
    match v {
        Value::String(s) => text_mentions(s, ids, depth),
        Value::Number(n) => ids.iter().any(|id| *id == n.to_string()),
        Value::Array(items) => items.iter().any(|i| value_mentions(i, ids, depth)),
        Value::Object(map) => map.iter().any(|(k, v)| match v {
            Value::String(s) => field_mentions(k, s, ids, depth),
            other => value_mentions(other, ids, depth),
        }),
        Value::Null | Value::Bool(_) => false,
    }
}

/// A named value: Snowplow's base64 fields are decoded first.
fn field_mentions(key: &str, value: &str, ids: &[String], depth: u8) -> bool {
    if text_mentions(value, ids, depth) {
        return true;
    }
    if matches!(key, "ue_px" | "cx") {
        let engines = [
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
            base64::engine::general_purpose::URL_SAFE,
        ];
        let decoded = engines
            .iter()
            .find_map(|e| e.decode(value.trim_end_matches('=')).ok())
            .or_else(|| base64::engine::general_purpose::STANDARD.decode(value).ok());
        if let Some(text) = decoded.and_then(|b| String::from_utf8(b).ok()) {
            return text_mentions(&text, ids, depth + 1);
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_needle_survives_every_encoding() {
        assert_eq!(needle("alice@example.com"), "example");
        assert_eq!(needle("u-42"), "42");
        assert_eq!(needle("user_12345"), "12345");
        assert_eq!(needle("@@"), "@@");
    }

    #[test]
    fn whole_values_match_at_any_depth_and_substrings_do_not() {
        let who = ids(&["alice@example.com"]);
        // A native event in the collector's raw record.
        let native = r#"{"payload":{"event":"x","user_id":"alice@example.com"}}"#;
        assert!(mentions(native, &who));
        // A Segment batch with the id as a trait.
        let segment = r#"{"batch":[{"userId":"7","traits":{"email":"alice@example.com"}}]}"#;
        assert!(mentions(segment, &who));
        // JSON inside a string (a body kept as text).
        let nested = serde_json::json!({"body": native}).to_string();
        assert!(mentions(&nested, &who));
        // A Snowplow GET querystring, percent-encoded.
        let get = serde_json::json!({"query": "e=pv&uid=alice%40example.com&p=web"}).to_string();
        assert!(mentions(&get, &who));
        // A Snowplow self-describing event, base64 in ue_px.
        let ue = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"data":{"data":{"email":"alice@example.com"}}}"#);
        let post = serde_json::json!({"data": [{"e": "ue", "ue_px": ue}]}).to_string();
        assert!(mentions(&post, &who));
        // Longer texts that contain the id are someone else's.
        let other = r#"{"user_id":"malice@example.com","note":"write to alice@example.com"}"#;
        assert!(!mentions(other, &who));
        assert!(mentions(r#"{"user_id":42}"#, &ids(&["42"])));
        assert!(!mentions(r#"{"user_id":420}"#, &ids(&["42"])));
    }

    #[test]
    fn deep_or_unreadable_payloads_do_not_panic() {
        let mut deep = "\"alice\"".to_string();
        for _ in 0..20 {
            deep = serde_json::to_string(&deep).unwrap();
        }
        assert!(!mentions(&deep, &ids(&["alice"])));
        assert!(!mentions("{not json", &ids(&["alice"])));
        assert!(!mentions("ue_px=%%%", &ids(&["alice"])));
    }
}
