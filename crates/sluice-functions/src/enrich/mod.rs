//! The built-in enrichers, each switched on and configured in the `[enrich.*]` sections.
//!
//! They run in this order on every event that passed validation (an enricher reads what the
//! ones before it wrote):
//!
//! | enricher | reads | writes |
//! |---|---|---|
//! | `clock_skew` | timestamp, device_timestamp, sent_at, received_at | timestamp |
//! | `page` | `context.page.url`, else `properties.url` | page_url, page_host, page_path |
//! | `campaign` | the page URL's query, else `context.campaign` | mkt_* |
//! | `referer` | `context.page.referrer`, else `properties.referrer` | refr_* |
//! | `ua` | `context.userAgent` | ua_* |
//! | `bots` | user agent, ua_device_class, client address | is_bot |
//! | `geo` | `context.ip` | geo_* |
//! | `ip_anonymization` | `context.ip` | `context.ip`, ip |
//! | `pii` | the configured fields | those fields (keyed HMAC-SHA256, hex) |
//! | `session` | the tracker's session, else the user and timestamp | session_id, session_index |
//! | `fingerprint` | the raw payload minus per-send fields | event_fingerprint |
//!
//! An enricher that finds nothing to read leaves its fields empty. One that fails (a geo
//! database record that does not decode) makes the event an `enrichment_failure` bad row naming
//! the enricher.

mod geo;
mod session;
mod ua;
mod url;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use sluice_event::{BadKind, RawEvent};

use crate::canonical::{Draft, Failure};
pub use session::Sessions;
pub(crate) use session::{load as load_sessions, save as save_sessions};

/// An enricher with nothing to configure but whether it runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toggle {
    /// Whether it runs.
    pub enabled: bool,
}

impl Default for Toggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `[enrich.clock_skew]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockSkewConfig {
    /// Whether the tracker's clock skew is removed (`timestamp = received_at − (sent_at −
    /// device_timestamp)`). Off: `timestamp` is the device's time as sent. Default on.
    pub enabled: bool,
    /// A timestamp further than this in the future of `received_at` is replaced by
    /// `received_at`. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
}

impl Default for ClockSkewConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_future: Duration::from_secs(600),
        }
    }
}

/// `[enrich.campaign]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CampaignConfig {
    /// Whether it runs. Default on.
    pub enabled: bool,
    /// More click-id parameters: parameter → network name.
    pub click_ids: BTreeMap<String, String>,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            click_ids: BTreeMap::new(),
        }
    }
}

/// `[enrich.referer]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefererConfig {
    /// Whether it runs. Default on.
    pub enabled: bool,
    /// Domains (with their subdomains) that are the site itself: a referer there is `internal`.
    /// The page's own host always is.
    pub internal_domains: Vec<String>,
}

impl Default for RefererConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            internal_domains: Vec::new(),
        }
    }
}

/// `[enrich.bots]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotsConfig {
    /// Whether it runs. Default on.
    pub enabled: bool,
    /// More user-agent regexes (case-insensitive).
    pub patterns: Vec<String>,
    /// Client address ranges whose events are bots (`10.0.0.0/8`, a monitoring host...).
    pub ip_ranges: Vec<String>,
}

impl Default for BotsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            patterns: Vec::new(),
            ip_ranges: Vec::new(),
        }
    }
}

/// `[enrich.geo]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// Whether it runs. Default off (it needs a database).
    pub enabled: bool,
    /// A MaxMind-format database: GeoIP2/GeoLite2 City or Country (`.mmdb`).
    pub database: Option<PathBuf>,
}

/// `[enrich.ip_anonymization]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpAnonymizationConfig {
    /// Whether it runs. Default off.
    pub enabled: bool,
    /// IPv4 octets zeroed from the end (1-4). Default 1.
    pub ipv4_octets: u8,
    /// IPv6 16-bit segments zeroed from the end (1-8). Default 4.
    pub ipv6_segments: u8,
}

impl Default for IpAnonymizationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ipv4_octets: 1,
            ipv6_segments: 4,
        }
    }
}

/// `[enrich.pii]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    /// Whether it runs. Default off.
    pub enabled: bool,
    /// The HMAC key: the text itself, or `env:NAME` to read it from an environment variable.
    /// At least 16 bytes.
    pub key: Option<String>,
    /// The fields to pseudonymise: `user_id`, `anonymous_id`, `ip`, `properties.<path>` or
    /// `context.<path>` (dotted).
    pub fields: Vec<String>,
}

/// `[enrich.session]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Whether it runs. Default on.
    pub enabled: bool,
    /// The inactivity gap that ends a session. Default 30 minutes.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A user idle for this long is forgotten (their next session is number 1 again).
    /// Default 30 days.
    #[serde(with = "humantime_serde")]
    pub forget_after: Duration,
    /// Most users remembered per partition. Default 1,000,000.
    pub max_users: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_secs(30 * 60),
            forget_after: Duration::from_secs(30 * 86_400),
            max_users: 1_000_000,
        }
    }
}

/// The payload keys a fingerprint leaves out by default: what differs between two sends of the
/// same event.
pub const FINGERPRINT_EXCLUDE: &[&str] = &[
    "messageId",
    "event_id",
    "eventId",
    "sentAt",
    "sent_at",
    "writeKey",
    "_metadata",
    "eid",
    "stm",
    "nuid",
    "cv",
];

/// `[enrich.fingerprint]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Whether it runs. Default on.
    pub enabled: bool,
    /// Top-level payload keys left out of the hash.
    pub exclude: Vec<String>,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            exclude: FINGERPRINT_EXCLUDE.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The `[enrich]` section of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// Clock-skew correction.
    pub clock_skew: ClockSkewConfig,
    /// Page URL parts.
    pub page: Toggle,
    /// Campaign attribution.
    pub campaign: CampaignConfig,
    /// Referer parsing.
    pub referer: RefererConfig,
    /// User-agent parsing.
    pub ua: Toggle,
    /// Bot and spider detection.
    pub bots: BotsConfig,
    /// IP geolocation.
    pub geo: GeoConfig,
    /// IP anonymisation.
    pub ip_anonymization: IpAnonymizationConfig,
    /// PII pseudonymisation.
    pub pii: PiiConfig,
    /// Sessionisation.
    pub session: SessionConfig,
    /// Event fingerprint.
    pub fingerprint: FingerprintConfig,
}

impl EnrichConfig {
    /// Every enricher on, as far as it can be without outside data: what `sluice bench --chain`
    /// measures (geo needs a database, given separately).
    pub fn all_on(pii_key: &str) -> Self {
        let mut c = Self::default();
        c.ip_anonymization.enabled = true;
        c.pii = PiiConfig {
            enabled: true,
            key: Some(pii_key.to_string()),
            fields: vec![
                "user_id".into(),
                "properties.email".into(),
                "context.traits.email".into(),
            ],
        };
        c
    }
}

/// The enrichers, built once from the config and shared by every partition.
pub(crate) struct Enrichers {
    config: EnrichConfig,
    ua: Option<woothee::parser::Parser>,
    bots: Option<ua::Bots>,
    geo: Option<geo::Geo>,
    pii_key: Option<Vec<u8>>,
}

impl Enrichers {
    pub(crate) fn new(config: EnrichConfig) -> Result<Self, String> {
        let ua = (config.ua.enabled || config.bots.enabled).then(woothee::parser::Parser::new);
        let bots = if config.bots.enabled {
            Some(ua::Bots::new(
                &config.bots.patterns,
                &config.bots.ip_ranges,
            )?)
        } else {
            None
        };
        let geo = if config.geo.enabled {
            let path = config
                .geo
                .database
                .as_ref()
                .ok_or("enrich.geo is enabled but enrich.geo.database is not set")?;
            Some(geo::Geo::open(path)?)
        } else {
            None
        };
        let a = &config.ip_anonymization;
        if a.enabled && (!(1..=4).contains(&a.ipv4_octets) || !(1..=8).contains(&a.ipv6_segments)) {
            return Err(
                "enrich.ip_anonymization: ipv4_octets must be 1-4 and ipv6_segments 1-8".into(),
            );
        }
        let pii_key = if config.pii.enabled {
            let key = config
                .pii
                .key
                .as_deref()
                .ok_or("enrich.pii is enabled but enrich.pii.key is not set")?;
            let key = match key.strip_prefix("env:") {
                Some(var) => std::env::var(var).map_err(|_| {
                    format!("enrich.pii.key: environment variable {var} is not set")
                })?,
                None => key.to_string(),
            };
            if key.len() < 16 {
                return Err("enrich.pii.key must be at least 16 bytes".into());
            }
            for f in &config.pii.fields {
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
            Some(key.into_bytes())
        } else {
            None
        };
        let s = &config.session;
        if s.enabled && (s.timeout.is_zero() || s.max_users == 0) {
            return Err("enrich.session: timeout and max_users must be above zero".into());
        }
        Ok(Self {
            config,
            ua,
            bots,
            geo,
            pii_key,
        })
    }

    pub(crate) fn uses_sessions(&self) -> bool {
        self.config.session.enabled
    }

    /// Runs every enabled enricher on `draft`.
    pub(crate) fn apply(
        &self,
        draft: &mut Draft,
        raw: &RawEvent,
        sessions: &mut Sessions,
    ) -> Result<(), Failure> {
        let c = &self.config;
        if c.clock_skew.enabled {
            let max_future = i64::try_from(c.clock_skew.max_future.as_micros()).unwrap_or(i64::MAX);
            if draft.timestamp > draft.received_at.saturating_add(max_future) {
                draft.timestamp = draft.received_at;
            }
        } else if let Some(t) = draft.device_timestamp {
            draft.timestamp = t;
        }

        let page_url = str_at(&draft.context, &["page", "url"])
            .or_else(|| str_at(&draft.properties, &["url"]))
            .map(str::to_string);
        if c.page.enabled
            && let Some(u) = &page_url
        {
            url::page(u, &mut draft.enriched);
        }
        if c.campaign.enabled {
            let found = page_url
                .as_deref()
                .is_some_and(|u| url::campaign(u, &c.campaign.click_ids, &mut draft.enriched));
            if !found && let Some(Value::Object(camp)) = draft.context.get("campaign") {
                let e = &mut draft.enriched;
                let get = |k: &str| {
                    camp.get(k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                };
                e.mkt_source = get("source");
                e.mkt_medium = get("medium");
                e.mkt_campaign = get("name");
                e.mkt_term = get("term");
                e.mkt_content = get("content");
            }
        }
        if c.referer.enabled {
            let refr = str_at(&draft.context, &["page", "referrer"])
                .or_else(|| str_at(&draft.properties, &["referrer"]));
            if let Some(r) = refr {
                // The page enricher has parsed the URL already when it ran.
                let host = draft.enriched.page_host.clone().or_else(|| {
                    page_url
                        .as_deref()
                        .and_then(|u| ::url::Url::parse(u).ok())
                        .and_then(|u| u.host_str().map(str::to_string))
                });
                url::referer(
                    r,
                    host.as_deref(),
                    &c.referer.internal_domains,
                    &mut draft.enriched,
                );
            }
        }

        let user_agent = str_at(&draft.context, &["userAgent"])
            .map(str::to_string)
            .or_else(|| raw.user_agent.clone());
        let ip_text = str_at(&draft.context, &["ip"]).map(str::to_string);
        let ip = ip_text.as_deref().and_then(geo::parse_ip);
        if let (Some(parser), Some(ua_text)) = (&self.ua, user_agent.as_deref()) {
            let mut parsed = sluice_event::Enrichment::default();
            ua::parse(parser, ua_text, &mut parsed);
            if c.bots.enabled
                && let Some(bots) = &self.bots
            {
                draft.enriched.is_bot =
                    Some(bots.is_bot(Some(ua_text), parsed.ua_device_class.as_deref(), ip));
            }
            if c.ua.enabled {
                let e = &mut draft.enriched;
                e.ua_browser = parsed.ua_browser;
                e.ua_browser_version = parsed.ua_browser_version;
                e.ua_os = parsed.ua_os;
                e.ua_os_version = parsed.ua_os_version;
                e.ua_vendor = parsed.ua_vendor;
                e.ua_device_class = parsed.ua_device_class;
            }
        } else if let Some(bots) = &self.bots {
            draft.enriched.is_bot = Some(bots.is_bot(None, None, ip));
        }

        if let (Some(g), Some(ip)) = (&self.geo, ip) {
            g.lookup(ip, &mut draft.enriched)
                .map_err(|reason| Failure {
                    kind: BadKind::EnrichmentFailure,
                    reason: format!("enrich:geo: {reason}"),
                })?;
        }
        draft.enriched.ip = ip_text;
        let a = &c.ip_anonymization;
        if a.enabled
            && let Some(ip) = ip
        {
            let masked = geo::anonymize(ip, a.ipv4_octets, a.ipv6_segments).to_string();
            draft
                .context
                .insert("ip".into(), Value::String(masked.clone()));
            draft.enriched.ip = Some(masked);
        } else if a.enabled {
            // Not an address: nothing can be kept safely.
            if draft.context.remove("ip").is_some() {
                draft.enriched.ip = None;
            }
        }

        if let Some(key) = &self.pii_key {
            self.pseudonymise(key, draft);
        }

        if c.session.enabled {
            let tracker = str_at(&draft.context, &["snowplow", "domain_sessionid"])
                .map(str::to_string)
                .or_else(|| match draft.context.get("sessionId") {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                });
            if let Some(id) = tracker {
                draft.enriched.session_id = Some(id);
                draft.enriched.session_index = match draft
                    .context
                    .get("snowplow")
                    .and_then(|s| s.get("domain_sessionidx"))
                {
                    Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
            } else {
                let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                let user = draft.routing_key().to_string();
                let (id, index) = sessions.assign(
                    &user,
                    draft.timestamp,
                    micros(c.session.timeout),
                    micros(c.session.forget_after),
                    c.session.max_users,
                );
                draft.enriched.session_id = Some(id);
                draft.enriched.session_index = Some(index);
            }
        }

        if c.fingerprint.enabled {
            draft.enriched.event_fingerprint = Some(fingerprint(raw, &c.fingerprint.exclude));
        }
        Ok(())
    }

    fn pseudonymise(&self, key: &[u8], draft: &mut Draft) {
        let hash = |v: &str| -> String {
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
                .expect("hmac takes keys of any length");
            mac.update(v.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        };
        for field in &self.config.pii.fields {
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
    }
}

fn str_at<'a>(map: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut m = map;
    for p in parents {
        m = m.get(*p)?.as_object()?;
    }
    m.get(*last)?.as_str().filter(|s| !s.is_empty())
}

fn value_at_mut<'a>(map: &'a mut Map<String, Value>, path: &str) -> Option<&'a mut Value> {
    let mut parts = path.split('.');
    let mut v = map.get_mut(parts.next()?)?;
    for p in parts {
        v = v.as_object_mut()?.get_mut(p)?;
    }
    Some(v)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sluice_event::{Position, Protocol};

    fn raw(payload: Value) -> RawEvent {
        RawEvent {
            event_id: "e1".into(),
            source: "web".into(),
            protocol: Protocol::Native,
            received_at: 1_800_000_000_000_000,
            ip: Some("203.0.113.195".into()),
            user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1".into()),
            network_user_id: None,
            partition_key: None,
            replay_of: None,
            payload: serde_json::value::to_raw_value(&payload).unwrap(),
        }
    }

    fn run(config: EnrichConfig, payload: Value) -> Draft {
        let r = raw(payload);
        let mut d = crate::canonical::draft(
            &r,
            Position {
                partition: 0,
                offset: 1,
            },
        )
        .unwrap();
        let e = Enrichers::new(config).unwrap();
        e.apply(&mut d, &r, &mut Sessions::default()).unwrap();
        d
    }

    #[test]
    fn every_enricher_fills_its_fields() {
        let d = run(
            EnrichConfig::all_on("0123456789abcdef0123"),
            json!({
                "type": "page", "userId": "u1", "name": "Shoes",
                "properties": {"email": "ann@example.com"},
                "context": {
                    "page": {"url": "https://shop.example.com/p/shoes?utm_source=news&utm_medium=email&gclid=G1", "referrer": "https://www.google.de/search?q=laufschuhe"},
                    "traits": {"email": "ann@example.com"}
                }
            }),
        );
        let e = &d.enriched;
        assert_eq!(e.page_host.as_deref(), Some("shop.example.com"));
        assert_eq!(e.page_path.as_deref(), Some("/p/shoes"));
        assert_eq!(e.mkt_source.as_deref(), Some("news"));
        assert_eq!(e.mkt_network.as_deref(), Some("Google"));
        assert_eq!(e.refr_medium.as_deref(), Some("search"));
        assert_eq!(e.refr_term.as_deref(), Some("laufschuhe"));
        assert_eq!(e.ua_os.as_deref(), Some("iPhone"));
        assert_eq!(e.ua_device_class.as_deref(), Some("mobile"));
        assert_eq!(e.is_bot, Some(false));
        assert_eq!(e.ip.as_deref(), Some("203.0.113.0"));
        assert_eq!(d.context["ip"], json!("203.0.113.0"));
        assert_eq!(e.session_index, Some(1));
        assert_eq!(e.event_fingerprint.as_ref().map(String::len), Some(32));
        // PII: hex HMAC-SHA256, the same for the same input, nowhere the plain text.
        let uid = d.user_id.clone().unwrap();
        assert_eq!(uid.len(), 64);
        assert_eq!(d.properties["email"], d.context["traits"]["email"]);
        let all = format!("{:?}{:?}", d.properties, d.context);
        assert!(!all.contains("ann@example.com"), "{all}");
    }

    #[test]
    fn clock_skew_is_removed_or_not_and_the_future_is_clamped() {
        let t = |enabled: bool, payload: Value| {
            let mut c = EnrichConfig::default();
            c.clock_skew.enabled = enabled;
            run(c, payload).timestamp
        };
        let received = 1_800_000_000_000_000_i64;
        // Device clock 1 h behind: sent 10 s after it happened.
        let p = json!({"event": "x", "timestamp": "2027-01-15T07:00:00Z", "sentAt": "2027-01-15T07:00:10Z"});
        assert_eq!(t(true, p.clone()), received - 10_000_000);
        let device = sluice_event::parse_timestamp(&json!("2027-01-15T07:00:00Z")).unwrap();
        assert_eq!(t(false, p), device);
        // A timestamp a day in the future (no sentAt to correct it) becomes received_at.
        assert_eq!(
            t(
                true,
                json!({"event": "x", "timestamp": "2030-01-01T00:00:00Z"})
            ),
            received
        );
    }

    #[test]
    fn fingerprints_ignore_per_send_fields_only() {
        let ex: Vec<String> = FINGERPRINT_EXCLUDE.iter().map(|s| s.to_string()).collect();
        let a = fingerprint(
            &raw(json!({"event": "x", "messageId": "1", "sentAt": "a", "p": 1})),
            &ex,
        );
        let b = fingerprint(
            &raw(json!({"p": 1, "event": "x", "messageId": "2", "sentAt": "b"})),
            &ex,
        );
        let c = fingerprint(&raw(json!({"event": "x", "messageId": "1", "p": 2})), &ex);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let mut c = EnrichConfig::default();
        c.geo.enabled = true;
        assert!(
            Enrichers::new(c.clone())
                .err()
                .unwrap()
                .contains("database")
        );
        c.geo.database = Some("/nonexistent.mmdb".into());
        assert!(Enrichers::new(c).err().unwrap().contains("nonexistent"));
        let mut c = EnrichConfig::all_on("short");
        assert!(
            Enrichers::new(c.clone())
                .err()
                .unwrap()
                .contains("16 bytes")
        );
        c.pii.key = Some("0123456789abcdef".into());
        c.pii.fields = vec!["password".into()];
        assert!(Enrichers::new(c).err().unwrap().contains("password"));
        let mut c = EnrichConfig::default();
        c.bots.ip_ranges = vec!["x".into()];
        assert!(Enrichers::new(c).is_err());
    }
}
