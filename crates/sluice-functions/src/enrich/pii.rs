//! `pii`: the configured fields pseudonymised with a keyed HMAC-SHA256 (hex), so that they still
//! join and count but no longer read. `anonymous_id` covers Snowplow's copies of the ids it is
//! chosen from (`context.snowplow.domain_userid`, `network_userid` and `unknown.nuid`).

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Built, Draft, EnrichConfig, Facts, PiiConfig, Step, value_at_mut};

/// Where a Snowplow event's context keeps the ids its anonymous id is chosen from: `duid`, the
/// network user id, and the collector's `nuid` parameter (kept as sent among the parameters the
/// mapping does not read).
const SNOWPLOW_ANONYMOUS_IDS: &[&str] = &[
    "snowplow.domain_userid",
    "snowplow.network_userid",
    "snowplow.unknown.nuid",
];

struct Pii {
    keyed: Pseudonyms,
    fields: Vec<String>,
}

pub(super) fn build(c: &EnrichConfig) -> Built {
    if !c.pii.enabled {
        return Ok(None);
    }
    let key = c.pii.resolved_key()?;
    for f in &c.pii.fields {
        let ok = matches!(f.as_str(), "user_id" | "anonymous_id" | "ip")
            || f.strip_prefix("properties.")
                .or_else(|| f.strip_prefix("context."))
                .is_some_and(|p| !p.is_empty() && !p.split('.').any(str::is_empty));
        if !ok {
            return Err(format!(
                "enrich.pii.fields: {f:?} is not user_id, anonymous_id, ip, properties.<path> or context.<path>"
            ));
        }
    }
    Ok(Some(Box::new(Pii {
        keyed: Pseudonyms::new(&key),
        fields: c.pii.fields.clone(),
    })))
}

/// The pseudonym of `value` under `key`: HMAC-SHA256, hex. The one definition, so that a value
/// gets the same pseudonym wherever Sluice writes or looks for it.
pub fn pseudonym(key: &[u8], value: &str) -> String {
    Pseudonyms::new(key).of(value)
}

/// [`pseudonym`] under one key, many times: the HMAC keyed once (its inner and outer key
/// blocks are two of the four SHA-256 blocks a short value's pseudonym takes).
#[derive(Clone)]
pub(crate) struct Pseudonyms {
    keyed: Hmac<Sha256>,
}

impl Pseudonyms {
    pub(crate) fn new(key: &[u8]) -> Self {
        Self {
            keyed: <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("hmac takes keys of any length"),
        }
    }

    /// The pseudonym of `value`.
    pub(crate) fn of(&self, value: &str) -> String {
        let mut mac = self.keyed.clone();
        mac.update(value.as_bytes());
        super::hex(&mac.finalize().into_bytes())
    }
}

impl PiiConfig {
    /// The HMAC key: `key` itself, or the environment variable `env:NAME` names; at least 16
    /// bytes.
    pub fn resolved_key(&self) -> Result<Vec<u8>, String> {
        let key = self
            .key
            .as_deref()
            .ok_or("enrich.pii is enabled but enrich.pii.key is not set")?;
        let key = match key.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map_err(|_| format!("enrich.pii.key: environment variable {var} is not set"))?,
            None => key.to_string(),
        };
        if key.len() < 16 {
            return Err("enrich.pii.key must be at least 16 bytes".into());
        }
        Ok(key.into_bytes())
    }
}

impl Step for Pii {
    fn apply(&self, draft: &mut Draft, _: &mut Facts<'_>) -> Result<(), String> {
        let hash = |v: &str| self.keyed.of(v);
        for field in &self.fields {
            match field.as_str() {
                "user_id" => draft.user_id = draft.user_id.as_deref().map(hash),
                "anonymous_id" => {
                    draft.anonymous_id = draft.anonymous_id.as_deref().map(hash);
                    // Snowplow keeps the ids its anonymous id is chosen from in the context too.
                    for path in SNOWPLOW_ANONYMOUS_IDS {
                        if let Some(Value::String(s)) = value_at_mut(&mut draft.context, path) {
                            *s = hash(s);
                        }
                    }
                }
                "ip" => {
                    if let Some(Value::String(s)) = draft.context.get_mut("ip") {
                        *s = hash(s);
                    }
                    draft.enriched.ip = draft.enriched.ip.as_deref().map(hash);
                }
                f => {
                    let (map, path) = match f.split_once('.') {
                        Some(("properties", p)) => (&mut draft.properties, p),
                        Some(("context", p)) => (&mut draft.context, p),
                        _ => continue,
                    };
                    if let Some(v) = value_at_mut(map, path)
                        && !v.is_null()
                    {
                        let text = match &*v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        *v = Value::String(hash(&text));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `[enrich.pii] bad_rows = true`: the configured fields pseudonymised in the raw payload a bad
/// row keeps, with the key and HMAC of the `enrich.pii` step, so a value has the same pseudonym
/// in `bad_rows` as in `events`. Where each field is, per protocol of the raw record:
///
/// | field | the raw record | native, Kinesis (a JSON object) | Segment | Snowplow |
/// |---|---|---|---|---|
/// | `user_id` | | `user_id`, `userId` | `userId` | `uid` |
/// | `anonymous_id` | `network_user_id` (Snowplow's cookie) | `anonymous_id`, `anonymousId` | `anonymousId` | `duid`, `tnuid`, `nuid` |
/// | `ip` | `ip` (the client address the collector recorded) | `context.ip` | `context.ip` | `ip` |
/// | `properties.<p>`, `context.<p>` | | the same path | the same path; `context.traits.<p>` also `traits.<p>` | — |
///
/// A payload that is not a raw event as JSON, or a Kinesis record that is not a JSON object,
/// cannot be searched: it is replaced by a note with its length.
pub struct BadRowPseudonyms {
    keyed: Pseudonyms,
    fields: Vec<String>,
}

impl BadRowPseudonyms {
    /// `Some` when `[enrich.pii]` is enabled with `bad_rows = true`.
    pub fn new(c: &PiiConfig) -> Result<Option<Self>, String> {
        if !(c.enabled && c.bad_rows) {
            return Ok(None);
        }
        Ok(Some(Self {
            keyed: Pseudonyms::new(&c.resolved_key()?),
            fields: c.fields.clone(),
        }))
    }

    fn hash(&self, v: &mut Value) {
        let text = match &*v {
            Value::Null => return,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        *v = Value::String(self.keyed.of(&text));
    }

    fn at(&self, map: &mut serde_json::Map<String, Value>, path: &str) {
        if let Some(v) = value_at_mut(map, path) {
            self.hash(v);
        }
    }

    /// The payload of a bad row (a raw event as JSON) with the fields pseudonymised.
    pub fn payload(&self, payload: &str) -> String {
        let note = |what: &str| {
            Value::String(format!(
                "withheld by enrich.pii.bad_rows: {} bytes of {what}",
                payload.len()
            ))
            .to_string()
        };
        let Ok(Value::Object(mut raw)) = serde_json::from_str::<Value>(payload) else {
            return note("a payload that is not a raw event");
        };
        let protocol = raw
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(Value::Object(body)) = raw.get_mut("payload") else {
            if let Some(v) = raw.get_mut("payload") {
                *v = serde_json::from_str(&note("a record that is not a JSON object"))
                    .unwrap_or(Value::Null);
            }
            self.outer(&mut raw);
            return Value::Object(raw).to_string();
        };
        let snowplow = protocol == "snowplow";
        for field in &self.fields {
            let paths: &[&str] = match (field.as_str(), snowplow) {
                ("user_id", false) => &["user_id", "userId"],
                ("user_id", true) => &["uid"],
                ("anonymous_id", false) => &["anonymous_id", "anonymousId"],
                ("anonymous_id", true) => &["duid", "tnuid", "nuid"],
                ("ip", false) => &["context.ip"],
                ("ip", true) => &["ip"],
                (_, true) => &[],
                (f, false) => {
                    self.at(body, f);
                    if let Some(trait_path) = f.strip_prefix("context.traits.") {
                        self.at(body, &format!("traits.{trait_path}"));
                    }
                    &[]
                }
            };
            for path in paths {
                // Snowplow parameters are flat: `value_at_mut` on a one-part path.
                self.at(body, path);
            }
        }
        self.outer(&mut raw);
        Value::Object(raw).to_string()
    }

    /// The raw record's own fields: the recorded client address and Snowplow's cookie id.
    fn outer(&self, raw: &mut serde_json::Map<String, Value>) {
        for field in &self.fields {
            match field.as_str() {
                "ip" => self.at(raw, "ip"),
                "anonymous_id" => self.at(raw, "network_user_id"),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "a-key-of-sixteen-bytes-or-more";

    #[test]
    fn a_key_made_once_gives_hmac_sha256_every_time() {
        // RFC 4231, test cases 1 and 2, each asked twice of one keyed state.
        let cases = [
            (
                vec![0x0b; 20],
                "Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                "what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
        ];
        for (key, value, want) in cases {
            let keyed = Pseudonyms::new(&key);
            assert_eq!(keyed.of(value), want);
            assert_eq!(keyed.of(value), want, "a second use is the same");
            assert_eq!(pseudonym(&key, value), want);
        }
        let keyed = Pseudonyms::new(KEY.as_bytes());
        assert_ne!(keyed.of("a"), keyed.of("b"));
        assert_eq!(keyed.of("a"), pseudonym(KEY.as_bytes(), "a"));
    }

    fn pii() -> BadRowPseudonyms {
        let c = PiiConfig {
            enabled: true,
            key: Some(KEY.into()),
            fields: vec![
                "user_id".into(),
                "anonymous_id".into(),
                "ip".into(),
                "properties.email".into(),
                "context.traits.email".into(),
            ],
            bad_rows: true,
        };
        BadRowPseudonyms::new(&c).unwrap().unwrap()
    }

    fn h(v: &str) -> Value {
        Value::String(pseudonym(KEY.as_bytes(), v))
    }

    fn raw(protocol: &str, payload: Value) -> Value {
        json!({"event_id": "e1", "source": "web", "protocol": protocol, "received_at": 1,
               "ip": "203.0.113.9", "user_agent": "UA", "payload": payload})
    }

    fn run(v: &Value) -> Value {
        serde_json::from_str(&pii().payload(&v.to_string())).unwrap()
    }

    #[test]
    fn each_protocol_gets_the_events_pseudonyms_and_nothing_else_changes() {
        let native = raw(
            "native",
            json!({"event": "Buy", "user_id": "u1", "anonymous_id": "a1",
                   "context": {"ip": "198.51.100.1", "page": "/x"},
                   "properties": {"email": "x@example.com", "plan": "pro"}}),
        );
        let mut want = native.clone();
        want["ip"] = h("203.0.113.9");
        want["payload"]["user_id"] = h("u1");
        want["payload"]["anonymous_id"] = h("a1");
        want["payload"]["context"]["ip"] = h("198.51.100.1");
        want["payload"]["properties"]["email"] = h("x@example.com");
        assert_eq!(run(&native), want);

        let segment = raw(
            "segment",
            json!({"type": "identify", "userId": "u1", "anonymousId": "a1",
                   "context": {"ip": "198.51.100.1", "traits": {"email": "t@example.com"}},
                   "traits": {"email": "t@example.com", "name": "kept"}}),
        );
        let mut want = segment.clone();
        want["ip"] = h("203.0.113.9");
        want["payload"]["userId"] = h("u1");
        want["payload"]["anonymousId"] = h("a1");
        want["payload"]["context"]["ip"] = h("198.51.100.1");
        want["payload"]["context"]["traits"]["email"] = h("t@example.com");
        want["payload"]["traits"]["email"] = h("t@example.com");
        assert_eq!(run(&segment), want);

        let mut snowplow = raw(
            "snowplow",
            json!({"e": "pv", "uid": "u1", "duid": "d1", "tnuid": "n1", "nuid": "q1",
                   "ip": "198.51.100.1", "aid": "shop"}),
        );
        snowplow["network_user_id"] = json!("cookie");
        let mut want = snowplow.clone();
        want["ip"] = h("203.0.113.9");
        want["network_user_id"] = h("cookie");
        want["payload"]["uid"] = h("u1");
        want["payload"]["duid"] = h("d1");
        want["payload"]["tnuid"] = h("n1");
        want["payload"]["nuid"] = h("q1");
        want["payload"]["ip"] = h("198.51.100.1");
        assert_eq!(run(&snowplow), want);
    }

    #[test]
    fn snowplow_ids_in_the_context_get_the_anonymous_ids_pseudonym() {
        use crate::enrich::{Enrichers, Sessions};
        use sluice_event::{Position, Protocol, RawEvent};

        let c = EnrichConfig {
            pii: PiiConfig {
                enabled: true,
                key: Some(KEY.into()),
                fields: vec!["anonymous_id".into()],
                bad_rows: false,
            },
            ..EnrichConfig::default()
        };
        let enrichers = Enrichers::new(c).unwrap();
        for (payload, anonymous_id) in [
            (json!({"e": "pv", "uid": "u1", "duid": "d1"}), "d1"),
            (json!({"e": "pv", "uid": "u1", "nuid": "cookie"}), "cookie"),
        ] {
            let raw = RawEvent {
                event_id: "e1".into(),
                source: "web".into(),
                protocol: Protocol::Snowplow,
                received_at: 1_800_000_000_000_000,
                ip: None,
                user_agent: None,
                network_user_id: Some("cookie".into()),
                partition_key: None,
                replay_of: None,
                payload: serde_json::value::to_raw_value(&payload).unwrap(),
            };
            let pos = Position {
                partition: 0,
                offset: 1,
            };
            let mut d = crate::canonical::draft(&raw, pos).unwrap();
            enrichers
                .apply(&mut d, &raw, &mut Sessions::default())
                .unwrap();
            assert_eq!(d.anonymous_id.map(Value::String), Some(h(anonymous_id)));
            let snowplow = &d.context["snowplow"];
            assert_eq!(snowplow["network_userid"], h("cookie"), "{snowplow}");
            if anonymous_id == "d1" {
                assert_eq!(snowplow["domain_userid"], h("d1"), "{snowplow}");
            } else {
                assert_eq!(snowplow["unknown"]["nuid"], h("cookie"), "{snowplow}");
            }
            let text = serde_json::to_string(&d.context).unwrap();
            assert!(
                !text.contains("\"d1\"") && !text.contains("\"cookie\""),
                "{text}"
            );
        }
    }

    #[test]
    fn what_cannot_be_searched_is_replaced_by_a_note() {
        let out = pii().payload("\"not a raw event\"");
        assert!(
            out.contains("withheld") && out.contains("17 bytes"),
            "{out}"
        );
        let kinesis = raw("kinesis", json!("bm90IGpzb24="));
        let got = run(&kinesis);
        assert!(
            got["payload"].as_str().unwrap().contains("withheld"),
            "{got}"
        );
        assert_eq!(got["ip"], h("203.0.113.9"));
        assert_eq!(got["event_id"], "e1");
    }

    #[test]
    fn off_unless_enabled_with_bad_rows() {
        let mut c = PiiConfig {
            enabled: true,
            key: Some(KEY.into()),
            ..PiiConfig::default()
        };
        assert!(BadRowPseudonyms::new(&c).unwrap().is_none());
        c.bad_rows = true;
        c.enabled = false;
        assert!(BadRowPseudonyms::new(&c).unwrap().is_none());
    }
}
