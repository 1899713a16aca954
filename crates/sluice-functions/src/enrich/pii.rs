//! `pii`: the configured fields pseudonymised with a keyed HMAC-SHA256 (hex), so that they still
//! join and count but no longer read.

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{Built, Draft, EnrichConfig, Facts, PiiConfig, Step, value_at_mut};

struct Pii {
    key: Vec<u8>,
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
        key,
        fields: c.pii.fields.clone(),
    })))
}

/// The pseudonym of `value` under `key`: HMAC-SHA256, hex. The one definition, so that a value
/// gets the same pseudonym wherever Sluice writes or looks for it.
pub fn pseudonym(key: &[u8], value: &str) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("hmac takes keys of any length");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
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
        let hash = |v: &str| pseudonym(&self.key, v);
        for field in &self.fields {
            match field.as_str() {
                "user_id" => draft.user_id = draft.user_id.as_deref().map(hash),
                "anonymous_id" => draft.anonymous_id = draft.anonymous_id.as_deref().map(hash),
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
