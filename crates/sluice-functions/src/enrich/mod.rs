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

mod clock;
mod fingerprint;
mod geo;
mod pii;
mod session;
mod ua;
mod url;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_event::{BadKind, Enrichment, RawEvent};

use crate::canonical::{Draft, Failure};
pub use pii::{BadRowPseudonyms, pseudonym};
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
    /// Also pseudonymise these fields in the raw payload kept by bad rows, with the same key,
    /// where each protocol puts them ([`pii::BadRowPseudonyms`]). Default off.
    pub bad_rows: bool,
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
            bad_rows: false,
        };
        c
    }
}

/// One enricher: reads the draft and the event's [`Facts`], writes its own fields. `Err` is why
/// the event cannot be enriched: an `enrichment_failure` bad row naming the enricher.
pub(crate) trait Step: Send + Sync {
    /// Enriches one event.
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String>;
}

/// An enricher built from the config: `None` when it is switched off, `Err` when the config is
/// wrong.
pub(crate) type Built = Result<Option<Box<dyn Step>>, String>;
type Build = fn(&EnrichConfig) -> Built;

/// A duration in µs, saturating.
fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The step `make` builds, when it is `enabled`.
fn when<S: Step + 'static>(enabled: bool, make: impl FnOnce() -> S) -> Built {
    Ok(enabled.then(|| Box::new(make()) as Box<dyn Step>))
}

/// The enrichers in the order they run (the table above), by the name of their `[enrich.*]`
/// section, which their bad rows give as `enrich:<name>`. Adding one is a module and a line.
const ORDER: &[(&str, Build)] = &[
    ("clock_skew", clock::build),
    ("page", url::build_page),
    ("campaign", url::build_campaign),
    ("referer", url::build_referer),
    ("ua", ua::build_ua),
    ("bots", ua::build_bots),
    ("geo", geo::build),
    ("ip_anonymization", geo::build_anonymization),
    ("pii", pii::build),
    ("session", session::build),
    ("fingerprint", fingerprint::build),
];

/// What several enrichers read, worked out once per event before the first runs.
pub(crate) struct Facts<'a> {
    /// The raw record the event came from.
    pub(crate) raw: &'a RawEvent,
    /// The partition's sessions.
    pub(crate) sessions: &'a mut Sessions,
    /// `context.page.url`, else `properties.url`.
    pub(crate) page_url: Option<String>,
    /// `context.userAgent`, else the collector's.
    pub(crate) user_agent: Option<String>,
    /// `context.ip`, when it is an address.
    pub(crate) ip: Option<IpAddr>,
    agents: &'a ua::Agents,
    agent: Option<Arc<ua::Agent>>,
    parsed_page: Option<Option<::url::Url>>,
}

impl Facts<'_> {
    /// The user agent's `ua_*` fields, parsed once for every enricher that reads them (and
    /// once for every event with the same agent while it is among those seen lately).
    pub(crate) fn parsed_ua(&mut self) -> Option<&Enrichment> {
        self.agent().map(|a| &a.fields)
    }

    /// What is known of the user agent ([`ua::Agents`]), looked up once per event.
    pub(crate) fn agent(&mut self) -> Option<&Arc<ua::Agent>> {
        let text = self.user_agent.as_deref()?;
        let agents = self.agents;
        Some(self.agent.get_or_insert_with(|| agents.parsed(text)))
    }

    /// The page URL and its parse, when it is an http or https URL: parsed once for every
    /// enricher that reads it.
    pub(crate) fn page(&mut self) -> Option<(&str, &::url::Url)> {
        let text = self.page_url.as_deref()?;
        let parsed = self.parsed_page.get_or_insert_with(|| url::parse(text));
        Some((text, parsed.as_ref()?))
    }
}

/// An enricher failed: which, and why.
#[derive(Debug)]
pub(crate) struct Failed {
    /// The enricher's name.
    pub(crate) step: &'static str,
    /// The bad row's kind and reason.
    pub(crate) failure: Failure,
}

/// The enabled enrichers, built once from the config and shared by every partition.
pub(crate) struct Enrichers {
    steps: Vec<(&'static str, Box<dyn Step>)>,
    sessions: bool,
    agents: ua::Agents,
}

impl Enrichers {
    /// Builds the enabled enrichers; `Err` names what is wrong in the config.
    pub(crate) fn new(config: EnrichConfig) -> Result<Self, String> {
        let mut steps = Vec::new();
        for (name, build) in ORDER {
            steps.extend(build(&config)?.map(|step| (*name, step)));
        }
        Ok(Self {
            steps,
            sessions: config.session.enabled,
            agents: ua::Agents::new(),
        })
    }

    pub(crate) fn uses_sessions(&self) -> bool {
        self.sessions
    }

    /// Runs every enabled enricher on `draft`, in order.
    pub(crate) fn apply(
        &self,
        draft: &mut Draft,
        raw: &RawEvent,
        sessions: &mut Sessions,
    ) -> Result<(), Failed> {
        let ip_text = str_at(&draft.context, &["ip"]).map(str::to_string);
        let mut facts = Facts {
            raw,
            sessions,
            page_url: str_at(&draft.context, &["page", "url"])
                .or_else(|| str_at(&draft.properties, &["url"]))
                .map(str::to_string),
            user_agent: str_at(&draft.context, &["userAgent"])
                .map(str::to_string)
                .or_else(|| raw.user_agent.clone()),
            ip: ip_text.as_deref().and_then(geo::parse_ip),
            agents: &self.agents,
            agent: None,
            parsed_page: None,
        };
        // The address as sent is a column whatever runs; ip_anonymization and pii rewrite it.
        draft.enriched.ip = ip_text;
        for (name, step) in &self.steps {
            step.apply(draft, &mut facts).map_err(|reason| Failed {
                step: name,
                failure: Failure {
                    kind: BadKind::EnrichmentFailure,
                    reason: format!("enrich:{name}: {reason}"),
                },
            })?;
        }
        Ok(())
    }
}

/// `bytes` as lowercase hex digits (the pseudonyms' and fingerprints' text).
fn hex(bytes: &[u8]) -> String {
    let mut digits = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut digits).expect("two digits a byte");
    String::from_utf8(digits).expect("hex digits are ASCII")
}

pub(crate) fn str_at<'a>(map: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut m = map;
    for p in parents {
        m = m.get(*p)?.as_object()?;
    }
    m.get(*last)?.as_str().filter(|s| !s.is_empty())
}

pub(crate) fn value_at_mut<'a>(
    map: &'a mut Map<String, Value>,
    path: &str,
) -> Option<&'a mut Value> {
    let mut parts = path.split('.');
    let mut v = map.get_mut(parts.next()?)?;
    for p in parts {
        v = v.as_object_mut()?.get_mut(p)?;
    }
    Some(v)
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
    fn an_agents_bot_pattern_match_is_kept_and_answers_as_matching_does() {
        let mut config = EnrichConfig::all_on("0123456789abcdef0123");
        config.bots.patterns = vec!["^MyMonitor/".into()];
        config.bots.ip_ranges = vec!["10.0.0.0/8".into()];
        let enrichers = Enrichers::new(config.clone()).unwrap();
        let bots = ua::Bots::new(&config.bots.patterns, &config.bots.ip_ranges).unwrap();
        let parser = woothee::parser::Parser::new();
        let agents = [
            "MyMonitor/2.0 (+https://example.com/monitor)",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "python-requests/2.32 (a crawler)",
            "",
        ];
        for round in 0..3 {
            for (k, ua) in agents.iter().enumerate() {
                let ip = if k == 1 && round == 2 {
                    "10.1.2.3"
                } else {
                    "203.0.113.9"
                };
                let r = raw(json!({"event": "x", "context": {"userAgent": ua, "ip": ip}}));
                let pos = Position {
                    partition: 0,
                    offset: 1,
                };
                let mut d = crate::canonical::draft(&r, pos).unwrap();
                enrichers
                    .apply(&mut d, &r, &mut Sessions::default())
                    .unwrap();
                let mut parsed = Enrichment::default();
                ua::parse(&parser, ua, &mut parsed);
                let class = parsed.ua_device_class.as_deref();
                let want = bots.is_bot(Some(ua), class, ip.parse().ok());
                assert_eq!(d.enriched.is_bot, Some(want), "round {round}: {ua}");
            }
        }
        // Each agent was matched against the patterns once, and kept the answer.
        for ua in agents {
            let kept = enrichers.agents.parsed(ua);
            let class = kept.fields.ua_device_class.as_deref();
            if class != Some("bot") && !ua.is_empty() {
                assert_eq!(
                    kept.matches_pattern.get(),
                    Some(&bots.is_bot(Some(ua), None, None)),
                    "{ua}"
                );
            }
        }
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
        // A broken clock whose correction would leave the calendar keeps the device's time.
        let p = json!({"event": "x", "timestamp": "1900-01-02T00:00:00Z", "sentAt": "9999-12-30T00:00:00Z"});
        let device = sluice_event::parse_timestamp(&json!("1900-01-02T00:00:00Z")).unwrap();
        assert_eq!(t(true, p), device);
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
        let a = fingerprint::fingerprint(
            &raw(json!({"event": "x", "messageId": "1", "sentAt": "a", "p": 1})),
            &ex,
        );
        let b = fingerprint::fingerprint(
            &raw(json!({"p": 1, "event": "x", "messageId": "2", "sentAt": "b"})),
            &ex,
        );
        let c =
            fingerprint::fingerprint(&raw(json!({"event": "x", "messageId": "1", "p": 2})), &ex);
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
        assert!(Enrichers::new(c).err().unwrap().contains("ip_ranges"));
    }
}
