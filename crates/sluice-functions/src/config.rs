//! [`RunnerConfig`]: the `[functions]` section of the config file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::udf::{Keyring, SecretsKey};

/// The `[functions]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Most raw records processed (and appended to good/bad) as one batch. Default 2,000.
    pub batch_size: usize,
    /// The largest good record, after enrichment; a larger event becomes a `size` bad row.
    /// Default 1 MiB.
    pub max_event_bytes: usize,
    /// The event times accepted, around when the collector received each event; an event
    /// outside becomes an `event_time` bad row instead of a partition of its own.
    pub event_time_window: EventTimeWindow,
    /// A file holding 64 hex digits (`openssl rand -hex 32`): user functions' secrets are
    /// stored sealed with this key. Every runner node of a cluster needs the same file; without
    /// it, a node on a shared journal refuses to deploy secrets. Read at start.
    pub secrets_key_file: Option<PathBuf>,
    /// Keys `secrets_key_file` held before: they open what they sealed, never seal. Put the
    /// old key here when you set a new one, until every function with secrets was deployed
    /// again.
    pub previous_secrets_key_files: Vec<PathBuf>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            max_event_bytes: crate::chain::DEFAULT_MAX_EVENT_BYTES,
            event_time_window: EventTimeWindow::default(),
            secrets_key_file: None,
            previous_secrets_key_files: Vec::new(),
        }
    }
}

/// `[functions.event_time_window]`: an event's `timestamp` (after clock-skew correction and the
/// user functions) must lie within `[received_at − past, received_at + future]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventTimeWindow {
    /// How far before its receipt an event may have happened (offline devices, backfills).
    /// Default 5 years.
    #[serde(with = "humantime_serde")]
    pub past: Duration,
    /// How far after its receipt an event may claim to have happened (clocks running ahead).
    /// Default 1 day.
    #[serde(with = "humantime_serde")]
    pub future: Duration,
}

impl Default for EventTimeWindow {
    fn default() -> Self {
        /// 365.25 days, as humantime reads `1y`.
        const YEAR: u64 = 31_557_600;
        Self {
            past: Duration::from_secs(5 * YEAR),
            future: Duration::from_secs(86_400),
        }
    }
}

impl EventTimeWindow {
    /// Why `timestamp` (µs) is outside the window around `received_at` (µs); `None` inside.
    pub fn violation(&self, timestamp: i64, received_at: i64) -> Option<String> {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let earliest = received_at.saturating_sub(micros(self.past));
        let latest = received_at.saturating_add(micros(self.future));
        let (edge, side, bound) = if timestamp < earliest {
            ("before", "past", self.past)
        } else if timestamp > latest {
            ("after", "future", self.future)
        } else {
            return None;
        };
        let fmt = sluice_event::format_micros;
        Some(format!(
            "event time {} is more than {} {edge} it was received ({}); \
             functions.event_time_window.{side} bounds it",
            fmt(timestamp),
            humantime_serde::re::humantime::format_duration(bound),
            fmt(received_at),
        ))
    }
}

/// Validated runner settings.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    pub(crate) batch_size: usize,
    /// See [`RunnerConfig::max_event_bytes`].
    pub max_event_bytes: usize,
    /// See [`RunnerConfig::event_time_window`].
    pub event_time_window: EventTimeWindow,
    /// The keys read from [`RunnerConfig::secrets_key_file`] and
    /// [`RunnerConfig::previous_secrets_key_files`].
    pub secrets_keys: Option<Arc<Keyring>>,
}

impl RunnerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<RunnerSettings, String> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err("functions.batch_size must be between 1 and 100000".into());
        }
        if self.max_event_bytes < 1024 {
            return Err("functions.max_event_bytes must be at least 1024".into());
        }
        let w = self.event_time_window;
        if w.past.is_zero() && w.future.is_zero() {
            return Err("functions.event_time_window must not be empty (past and future 0)".into());
        }
        let secrets_keys = self.keyring()?.map(Arc::new);
        Ok(RunnerSettings {
            batch_size: self.batch_size,
            max_event_bytes: self.max_event_bytes,
            event_time_window: w,
            secrets_keys,
        })
    }

    /// The keys of the config's key files, read now.
    fn keyring(&self) -> Result<Option<Keyring>, String> {
        let read = |setting: &str, path: &std::path::Path| {
            SecretsKey::read(path).map_err(|e| format!("functions.{setting}: {e}"))
        };
        let previous = self
            .previous_secrets_key_files
            .iter()
            .map(|p| read("previous_secrets_key_files", p))
            .collect::<Result<Vec<_>, _>>()?;
        match &self.secrets_key_file {
            Some(path) => Ok(Some(Keyring::new(
                read("secrets_key_file", path)?,
                previous,
            ))),
            None if previous.is_empty() => Ok(None),
            None => Err(
                "functions.previous_secrets_key_files needs functions.secrets_key_file, the key \
                 that seals now"
                    .into(),
            ),
        }
    }
}
