//! [`HotConfig`] (the `[hot]` section of the config file) and its validated form,
//! [`HotSettings`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::HotError;
use crate::counter::{Aggregate, CounterSpec, FieldPath, WindowKind};

/// Which store holds the hot tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// fjall inside the process, under `dir`.
    #[default]
    Embedded,
    /// A Redis server at `redis_url`.
    Redis,
}

/// The `[hot]` section. Every field is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HotConfig {
    /// `embedded` (default) or `redis`.
    pub backend: Backend,
    /// Directory of the embedded store. Default `<data_dir>/hot`.
    pub dir: PathBuf,
    /// Sync every embedded batch to disk before going on. Default false: batches reach the OS
    /// at once and the disk later; a power loss can only lose whole batches with their
    /// positions, which are then projected again from the journal.
    pub fsync: bool,
    /// Redis server for `backend = "redis"`. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// Prefix of every Redis key. Default `sluice:`.
    pub redis_prefix: String,
    /// Events kept in a profile's `last_events`. Default 10.
    pub recent_events: usize,
    /// A gap longer than this between two events of a user starts a new session. Default 30m.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Events read and written per atomic batch, at most. Default 2000.
    pub batch_events: usize,
    /// The projection keeps the profiles and counter states it wrote last, decoded, so that
    /// the next events of the same users neither read nor decode them again: at most this
    /// many bytes of them, counted as stored. 0 turns the cache off. Default 32 MiB.
    pub cache_bytes: u64,
    /// Counters, each a `[[hot.counters]]` table.
    pub counters: Vec<CounterConfig>,
}

impl Default for HotConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            dir: PathBuf::new(),
            fsync: false,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "sluice:".into(),
            recent_events: 10,
            session_timeout: Duration::from_secs(30 * 60),
            batch_events: 2000,
            cache_bytes: 32 << 20,
            counters: Vec::new(),
        }
    }
}

/// One `[[hot.counters]]` table: a count, sum or top-K per key over a time window.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterConfig {
    /// Name in `GET /v1/counters/{name}/{key}`: letters, digits, `_` and `-`.
    pub name: String,
    /// Only events with these names count (default: every event).
    #[serde(default)]
    pub events: Vec<String>,
    /// What the counter is kept per: `user` (user id, else anonymous id; the default),
    /// `user_id`, `anonymous_id`, `event`, `event_type`, `source`, `properties.<path>` or
    /// `context.<path>`.
    #[serde(default = "default_key")]
    pub key: String,
    /// `count` (default), `sum` of `property`, or `top_k` values of `property`.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// For `sum` and `top_k`: a field path as in `key` (a bare name means `properties.<name>`).
    pub property: Option<String>,
    /// Window length, e.g. `1h` or `24h`.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// `tumbling` (default: fixed windows aligned to the epoch) or `sliding` (the last
    /// `window`, in steps of `step`).
    #[serde(default)]
    pub kind: WindowKind,
    /// Sliding windows only: the bucket width. Must divide `window`, at most 1440 buckets per
    /// window. Default `window / 60`.
    #[serde(default, with = "humantime_serde::option")]
    pub step: Option<Duration>,
    /// `top_k` only: how many values to report (1–1000, default 10).
    pub k: Option<usize>,
}

fn default_key() -> String {
    "user".into()
}

/// Validated hot-tier settings.
#[derive(Clone, Debug)]
pub struct HotSettings {
    /// See [`HotConfig::backend`].
    pub backend: Backend,
    /// See [`HotConfig::dir`] (filled in by the server).
    pub dir: PathBuf,
    /// See [`HotConfig::fsync`].
    pub fsync: bool,
    /// See [`HotConfig::redis_url`].
    pub redis_url: String,
    /// See [`HotConfig::redis_prefix`].
    pub redis_prefix: String,
    /// See [`HotConfig::recent_events`].
    pub recent_events: usize,
    /// See [`HotConfig::session_timeout`], in µs.
    pub session_timeout_us: i64,
    /// See [`HotConfig::batch_events`].
    pub batch_events: usize,
    /// See [`HotConfig::cache_bytes`].
    pub cache_bytes: usize,
    /// The counters.
    pub counters: Vec<CounterSpec>,
}

impl HotSettings {
    /// The counter named `name`.
    pub fn counter(&self, name: &str) -> Option<&CounterSpec> {
        self.counters.iter().find(|c| c.name == name)
    }
}

fn micros(d: Duration) -> Result<i64, HotError> {
    i64::try_from(d.as_micros()).map_err(|_| HotError::Config(format!("duration {d:?} too long")))
}

impl HotConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<HotSettings, HotError> {
        let err = |m: String| Err(HotError::Config(format!("[hot] {m}")));
        if self.recent_events > 1000 {
            return err("recent_events must be at most 1000".into());
        }
        if self.session_timeout.is_zero() {
            return err("session_timeout must be positive".into());
        }
        if self.batch_events == 0 || self.batch_events > 100_000 {
            return err("batch_events must be 1..=100000".into());
        }
        if self.backend == Backend::Redis && !self.redis_url.starts_with("redis://") {
            return err(format!(
                "redis_url {:?} must start with redis://",
                self.redis_url
            ));
        }
        let mut names = BTreeSet::new();
        let mut counters = Vec::new();
        for c in &self.counters {
            let spec = c
                .validate()
                .map_err(|m| HotError::Config(format!("[[hot.counters]] {:?}: {m}", c.name)))?;
            if !names.insert(c.name.clone()) {
                return err(format!("counter {:?} is declared twice", c.name));
            }
            counters.push(spec);
        }
        Ok(HotSettings {
            backend: self.backend,
            dir: self.dir.clone(),
            fsync: self.fsync,
            redis_url: self.redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
            recent_events: self.recent_events,
            session_timeout_us: micros(self.session_timeout)?,
            batch_events: self.batch_events,
            cache_bytes: usize::try_from(self.cache_bytes)
                .map_err(|_| HotError::Config("[hot] cache_bytes is too large".into()))?,
            counters,
        })
    }
}

impl CounterConfig {
    fn validate(&self) -> Result<CounterSpec, String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("name must be 1-64 letters, digits, '_' or '-'".into());
        }
        let key = FieldPath::parse(&self.key)?;
        let property = match (&self.aggregate, &self.property) {
            (Aggregate::Count, None) => None,
            (Aggregate::Count, Some(_)) => return Err("a count takes no property".into()),
            (_, None) => return Err("sum and top_k need a property".into()),
            (_, Some(p)) => Some(FieldPath::parse_property(p)?),
        };
        let window = micros(self.window).map_err(|e| e.to_string())?;
        if self.window < Duration::from_secs(1) {
            return Err("window must be at least 1s".into());
        }
        let step = match (self.kind, self.step) {
            (WindowKind::Tumbling, Some(_)) => {
                return Err("step applies to sliding windows only".into());
            }
            (WindowKind::Tumbling, None) => window,
            (WindowKind::Sliding, step) => {
                let step = match step {
                    Some(s) => micros(s).map_err(|e| e.to_string())?,
                    None => window / 60,
                };
                if step <= 0 || window % step != 0 {
                    return Err("step must be positive and divide window".into());
                }
                if window / step > 1440 {
                    return Err("at most 1440 steps per window".into());
                }
                step
            }
        };
        let k = match (self.aggregate, self.k) {
            (Aggregate::TopK, None) => 10,
            (Aggregate::TopK, Some(k)) if (1..=1000).contains(&k) => k,
            (Aggregate::TopK, Some(_)) => return Err("k must be 1..=1000".into()),
            (_, Some(_)) => return Err("k applies to top_k only".into()),
            (_, None) => 0,
        };
        Ok(CounterSpec {
            name: self.name.clone(),
            events: self.events.iter().cloned().collect(),
            key,
            aggregate: self.aggregate,
            property,
            kind: self.kind,
            window_us: window,
            step_us: step,
            k,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hot(json: &str) -> Result<HotSettings, HotError> {
        let c: HotConfig =
            serde_json::from_str(json).map_err(|e| HotError::Config(e.to_string()))?;
        c.validate()
    }

    #[test]
    fn counters_validate() {
        let s = hot(r#"{"counters":[{"name":"views","window":"1h","kind":"sliding"}]}"#).unwrap();
        assert_eq!(s.counters[0].step_us, 60_000_000);
        for (bad, why) in [
            (
                r#"{"counters":[{"name":"x","window":"1h","aggregate":"sum"}]}"#,
                "sum and top_k need a property",
            ),
            (
                r#"{"counters":[{"name":"x y","window":"1h"}]}"#,
                "name must be 1-64 letters",
            ),
            (
                r#"{"counters":[{"name":"x","window":"1h","kind":"sliding","step":"7m"}]}"#,
                "step must be positive and divide window",
            ),
            (
                r#"{"counters":[{"name":"x","window":"1h","key":"nope"}]}"#,
                "unknown field \"nope\"",
            ),
            (
                r#"{"counters":[{"name":"x","windw":"1h"}]}"#,
                "unknown field `windw`",
            ),
            (
                r#"{"counters":[{"name":"x","window":"1h"},{"name":"x","window":"2h"}]}"#,
                "declared twice",
            ),
            (r#"{"batch_events":0}"#, "batch_events must be 1..=100000"),
            (
                r#"{"backend":"redis","redis_url":"http://x"}"#,
                "must start with redis://",
            ),
        ] {
            let e = hot(bad).unwrap_err();
            assert!(
                matches!(e, HotError::Config(ref m) if m.contains(why)),
                "{bad}: {e}"
            );
        }
    }
}
