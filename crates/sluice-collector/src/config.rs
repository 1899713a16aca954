//! [`CollectorConfig`]: the collector's section of the config file, validated into
//! [`CollectorSettings`].

use std::time::Duration;

use serde::Deserialize;

use crate::quota::QuotaConfig;

/// The `[collector]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorConfig {
    /// Largest request body in bytes, after decompression. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Largest single event in bytes (its JSON text). Default 64 KiB.
    pub max_event_bytes: usize,
    /// Most events in one request. Default 10,000.
    pub max_events: usize,
    /// How long an (source, event_id) pair is remembered for dedupe. Default 24 h.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// Most (source, event_id) pairs the dedupe index holds (at most about 72 bytes each,
    /// 343 MiB at the default); past it the oldest eighth leaves. Default 5,000,000.
    pub dedupe_max_entries: usize,
    /// Unprocessed `raw` records above which ingest answers 503 with `Retry-After`.
    /// Default 5,000,000.
    pub max_backlog_events: u64,
    /// Rate quotas per source and per client address (`[collector.quotas]`); none by default.
    pub quotas: QuotaConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 << 20,
            max_event_bytes: 64 << 10,
            max_events: 10_000,
            dedupe_window: Duration::from_secs(24 * 3600),
            dedupe_max_entries: 5_000_000,
            max_backlog_events: 5_000_000,
            quotas: QuotaConfig::default(),
        }
    }
}

/// Validated collector settings.
#[derive(Clone, Debug)]
pub struct CollectorSettings {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_events: usize,
    pub(crate) dedupe_window_micros: i64,
    pub(crate) dedupe_max_entries: usize,
    pub(crate) max_backlog_events: u64,
    pub(crate) quotas: QuotaConfig,
}

impl CollectorConfig {
    /// Checks the values and turns them into settings.
    pub fn validate(&self) -> Result<CollectorSettings, String> {
        if self.max_body_bytes < 1024 {
            return Err("collector.max_body_bytes must be at least 1024".into());
        }
        if self.max_event_bytes == 0 || self.max_event_bytes > self.max_body_bytes {
            return Err("collector.max_event_bytes must be between 1 and max_body_bytes".into());
        }
        if self.max_events == 0 {
            return Err("collector.max_events must be at least 1".into());
        }
        self.quotas.validate()?;
        if self.dedupe_max_entries < 1000 {
            return Err("collector.dedupe_max_entries must be at least 1000".into());
        }
        let window = i64::try_from(self.dedupe_window.as_micros())
            .map_err(|_| "collector.dedupe_window is too long".to_string())?;
        Ok(CollectorSettings {
            max_body_bytes: self.max_body_bytes,
            max_event_bytes: self.max_event_bytes,
            max_events: self.max_events,
            dedupe_window_micros: window,
            dedupe_max_entries: self.dedupe_max_entries,
            max_backlog_events: self.max_backlog_events,
            quotas: self.quotas.clone(),
        })
    }
}

impl CollectorSettings {
    /// The largest decompressed body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// The most events accepted in one request.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    /// Unprocessed events above which intake answers 503: of `raw` for the runner, and of
    /// `good`/`bad` for each later stage.
    pub fn max_backlog_events(&self) -> u64 {
        self.max_backlog_events
    }

    /// The rate quotas.
    pub fn quotas(&self) -> &QuotaConfig {
        &self.quotas
    }
}
