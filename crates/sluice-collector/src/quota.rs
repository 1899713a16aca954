//! Quotas: per source, events/s and bytes/s; per client address, requests/s. Each is a token
//! bucket that refills at its rate and holds at most `burst` of it. A request takes what it
//! needs from every bucket it touches, or from none: a refused request costs nothing, and its
//! answer says how long until it would pass (`Retry-After`). A request larger than a whole
//! burst passes when the bucket is full and leaves it in debt, so no request size is refused
//! for ever.
//!
//! Memory is bounded: sources are the configured ones, and the per-address table forgets
//! addresses whose bucket has refilled once it holds [`MAX_ADDRESSES`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Client addresses tracked at most; beyond, idle ones are forgotten (and, if none is idle, all).
pub const MAX_ADDRESSES: usize = 65_536;

/// `[collector.quotas]`: every rate is per second; 0 means no limit.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Events per second per source.
    pub events_per_sec: f64,
    /// Request bytes (events' JSON) per second per source.
    pub bytes_per_sec: f64,
    /// Ingest requests per second per client address.
    pub requests_per_sec_per_ip: f64,
    /// How much unused rate a bucket keeps for a burst. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub burst: Duration,
    /// Per-source rates that replace the defaults above.
    pub sources: BTreeMap<String, SourceQuota>,
}

/// One source's own rates (`[collector.quotas.sources.<name>]`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SourceQuota {
    /// Events per second; unset: the default.
    pub events_per_sec: Option<f64>,
    /// Bytes per second; unset: the default.
    pub bytes_per_sec: Option<f64>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            events_per_sec: 0.0,
            bytes_per_sec: 0.0,
            requests_per_sec_per_ip: 0.0,
            burst: Duration::from_secs(2),
            sources: BTreeMap::new(),
        }
    }
}

impl QuotaConfig {
    /// Checks every rate and the burst.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("events_per_sec", Some(self.events_per_sec)),
            ("bytes_per_sec", Some(self.bytes_per_sec)),
            (
                "requests_per_sec_per_ip",
                Some(self.requests_per_sec_per_ip),
            ),
        ];
        let per_source = self.sources.values().flat_map(|q| {
            [
                ("sources.*.events_per_sec", q.events_per_sec),
                ("sources.*.bytes_per_sec", q.bytes_per_sec),
            ]
        });
        for (name, rate) in rates.into_iter().chain(per_source) {
            if rate.is_some_and(|r| !r.is_finite() || r < 0.0) {
                return Err(format!(
                    "collector.quotas.{name} must be a number of at least 0"
                ));
            }
        }
        if self.burst < Duration::from_millis(100) || self.burst > Duration::from_secs(3600) {
            return Err("collector.quotas.burst must be between 100ms and 1h".into());
        }
        Ok(())
    }
}

/// Why a request waits: the quota it would exceed, and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct Throttle {
    /// The quota, in words.
    pub reason: String,
    /// Until the request would pass, rounded up to whole seconds (at least 1).
    pub retry_after_secs: u64,
}

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A rate and the most a bucket of it holds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    per_sec: f64,
    cap: f64,
}

impl Rate {
    fn new(per_sec: f64, burst: Duration) -> Option<Self> {
        (per_sec > 0.0).then(|| Self {
            per_sec,
            cap: (per_sec * burst.as_secs_f64()).max(1.0),
        })
    }
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.cap,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.cap);
        self.at = now;
    }

    /// `None` when `n` may be taken now, else how long until it may.
    fn wait_for(&self, n: f64, rate: Rate) -> Option<Duration> {
        let need = n.min(rate.cap);
        (self.tokens < need).then(|| Duration::from_secs_f64((need - self.tokens) / rate.per_sec))
    }
}

fn throttle(reason: String, wait: Duration) -> Throttle {
    Throttle {
        reason,
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    }
}

/// One source's two buckets.
#[derive(Debug)]
struct SourceBuckets {
    events: Option<(Rate, Bucket)>,
    bytes: Option<(Rate, Bucket)>,
}

/// The per-source quotas.
#[derive(Debug)]
pub struct SourceQuotas {
    config: QuotaConfig,
    buckets: Mutex<HashMap<Arc<str>, SourceBuckets>>,
}

/// What one request asks of one source.
#[derive(Clone, Debug, PartialEq)]
pub struct Demand {
    /// The source.
    pub source: Arc<str>,
    /// Events.
    pub events: u64,
    /// Bytes of the events.
    pub bytes: u64,
}

impl SourceQuotas {
    /// Quotas from a validated config.
    pub fn new(config: QuotaConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether any source quota is set.
    pub fn enabled(&self) -> bool {
        self.config.events_per_sec > 0.0
            || self.config.bytes_per_sec > 0.0
            || self.config.sources.values().any(|q| {
                q.events_per_sec.is_some_and(|r| r > 0.0)
                    || q.bytes_per_sec.is_some_and(|r| r > 0.0)
            })
    }

    fn buckets_for(&self, source: &str, now: Instant) -> SourceBuckets {
        let own = self.config.sources.get(source).copied().unwrap_or_default();
        let burst = self.config.burst;
        let events = Rate::new(
            own.events_per_sec.unwrap_or(self.config.events_per_sec),
            burst,
        );
        let bytes = Rate::new(
            own.bytes_per_sec.unwrap_or(self.config.bytes_per_sec),
            burst,
        );
        SourceBuckets {
            events: events.map(|r| (r, Bucket::full(r, now))),
            bytes: bytes.map(|r| (r, Bucket::full(r, now))),
        }
    }

    /// Takes every demand of one request, or none of them.
    pub fn admit(&self, demands: &[Demand], now: Instant) -> Result<(), Throttle> {
        let mut all = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        for d in demands {
            let b = all
                .entry(d.source.clone())
                .or_insert_with(|| self.buckets_for(&d.source, now));
            for (what, n, slot) in [
                ("events", d.events, &mut b.events),
                ("bytes", d.bytes, &mut b.bytes),
            ] {
                let Some((rate, bucket)) = slot else { continue };
                bucket.refill(*rate, now);
                if let Some(wait) = bucket.wait_for(n as f64, *rate) {
                    crate::metrics::throttled(what);
                    let reason = format!(
                        "source {:?} is over its quota of {} {what}/s; retry later",
                        &*d.source, rate.per_sec
                    );
                    return Err(throttle(reason, wait));
                }
            }
        }
        for d in demands {
            let b = all
                .get_mut(&d.source)
                .expect("every demand's buckets were made above");
            for (n, slot) in [(d.events, &mut b.events), (d.bytes, &mut b.bytes)] {
                if let Some((_, bucket)) = slot {
                    bucket.tokens -= n as f64;
                }
            }
        }
        Ok(())
    }
}

/// Requests per second per client address.
#[derive(Debug)]
pub struct AddressQuota {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AddressQuota {
    /// The per-address quota of a validated config (none when its rate is 0).
    pub fn new(config: &QuotaConfig) -> Self {
        Self {
            rate: Rate::new(config.requests_per_sec_per_ip, config.burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the quota is set.
    pub fn enabled(&self) -> bool {
        self.rate.is_some()
    }

    /// Takes one request of `ip`'s allowance.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Throttle> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut all = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= MAX_ADDRESSES && !all.contains_key(&ip) {
            forget_idle(&mut all, rate, now);
        }
        let bucket = all.entry(ip).or_insert_with(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        if let Some(wait) = bucket.wait_for(1.0, rate) {
            crate::metrics::throttled("requests");
            let reason = format!(
                "client {ip} is over its quota of {} requests/s; retry later",
                rate.per_sec
            );
            return Err(throttle(reason, wait));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Drops the addresses whose bucket has refilled (they would start full anyway); if every one
/// is busy, drops them all: a bound on memory matters more than a moment's exactness.
fn forget_idle(all: &mut HashMap<IpAddr, Bucket>, rate: Rate, now: Instant) {
    all.retain(|_, b| {
        let mut b = *b;
        b.refill(rate, now);
        b.tokens < rate.cap
    });
    if all.len() >= MAX_ADDRESSES {
        all.clear();
    }
    debug_assert!(all.len() < MAX_ADDRESSES);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(events: f64, bytes: f64) -> QuotaConfig {
        QuotaConfig {
            events_per_sec: events,
            bytes_per_sec: bytes,
            ..QuotaConfig::default()
        }
    }

    fn demand(source: &str, events: u64, bytes: u64) -> Demand {
        Demand {
            source: Arc::from(source),
            events,
            bytes,
        }
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let q = SourceQuotas::new(config(100.0, 0.0));
        let t0 = Instant::now();
        assert_eq!(q.admit(&[demand("web", 200, 0)], t0), Ok(()));
        let refused = q.admit(&[demand("web", 50, 0)], t0).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        assert!(
            refused
                .reason
                .contains("\"web\" is over its quota of 100 events/s")
        );
        assert_eq!(
            q.admit(&[demand("web", 50, 0)], t0 + Duration::from_millis(500)),
            Ok(())
        );
    }

    #[test]
    fn sources_do_not_share_buckets_and_overrides_apply() {
        let mut c = config(10.0, 0.0);
        c.sources.insert(
            "big".into(),
            SourceQuota {
                events_per_sec: Some(1000.0),
                bytes_per_sec: None,
            },
        );
        let q = SourceQuotas::new(c);
        let t0 = Instant::now();
        assert!(
            q.admit(&[demand("small", 100, 0)], t0).is_ok(),
            "a full bucket takes any size"
        );
        let throttled = q.admit(&[demand("small", 1, 0)], t0).unwrap_err();
        assert!(throttled.retry_after_secs >= 1, "{throttled:?}");
        assert_eq!(q.admit(&[demand("big", 2000, 0)], t0), Ok(()));
        assert_eq!(q.admit(&[demand("other", 20, 0)], t0), Ok(()));
    }

    #[test]
    fn a_refused_request_takes_nothing_from_any_bucket() {
        let q = SourceQuotas::new(config(100.0, 1000.0));
        let t0 = Instant::now();
        assert!(q.admit(&[demand("a", 10, 2000)], t0).is_ok());
        // Events would pass, bytes do not: neither is taken.
        let e = q.admit(&[demand("a", 10, 10)], t0).unwrap_err();
        assert!(e.reason.contains("bytes/s"), "{}", e.reason);
        assert_eq!(e.retry_after_secs, 1);
        // Had the events been taken, 180 would be left.
        assert_eq!(q.admit(&[demand("a", 190, 0)], t0), Ok(()));
    }

    #[test]
    fn debt_sets_the_wait() {
        let q = SourceQuotas::new(config(10.0, 0.0));
        let t0 = Instant::now();
        assert!(q.admit(&[demand("a", 100, 0)], t0).is_ok());
        // 100 taken from a bucket of 20: 80 owed, then 20 more to refill: 10 s at 10/s.
        assert_eq!(
            q.admit(&[demand("a", 20, 0)], t0)
                .unwrap_err()
                .retry_after_secs,
            10
        );
    }

    #[test]
    fn per_address_requests_are_limited_and_memory_is_bounded() {
        let c = QuotaConfig {
            requests_per_sec_per_ip: 5.0,
            burst: Duration::from_secs(1),
            ..QuotaConfig::default()
        };
        let q = AddressQuota::new(&c);
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(q.admit(ip, t0), Ok(()));
        }
        assert!(
            q.admit(ip, t0)
                .unwrap_err()
                .reason
                .contains("client 10.0.0.1 is over")
        );
        assert_eq!(q.admit("10.0.0.2".parse().unwrap(), t0), Ok(()));
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            let _ = q.admit(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(q.tracked() <= MAX_ADDRESSES, "{}", q.tracked());
    }

    #[test]
    fn zero_means_no_limit_and_bad_values_are_refused() {
        assert!(!SourceQuotas::new(QuotaConfig::default()).enabled());
        let q = AddressQuota::new(&QuotaConfig::default());
        assert!(q.admit("10.0.0.1".parse().unwrap(), Instant::now()).is_ok());
        assert!(
            config(-1.0, 0.0)
                .validate()
                .unwrap_err()
                .contains("events_per_sec")
        );
        assert!(
            config(f64::NAN, 0.0)
                .validate()
                .unwrap_err()
                .contains("at least 0")
        );
        let short = QuotaConfig {
            burst: Duration::from_millis(1),
            ..QuotaConfig::default()
        };
        assert!(short.validate().unwrap_err().contains("burst"));
    }
}
