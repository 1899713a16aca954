//! [`RunnerConfig`]: the `[functions]` section of the config file.

use serde::Deserialize;

/// The `[functions]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Most raw records processed (and appended to good/bad) as one batch. Default 2,000.
    pub batch_size: usize,
    /// The largest good record, after enrichment; a larger event becomes a `size` bad row.
    /// Default 1 MiB.
    pub max_event_bytes: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            batch_size: 2000,
            max_event_bytes: crate::chain::DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// Validated runner settings.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    pub(crate) batch_size: usize,
    /// See [`RunnerConfig::max_event_bytes`].
    pub max_event_bytes: usize,
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
        Ok(RunnerSettings {
            batch_size: self.batch_size,
            max_event_bytes: self.max_event_bytes,
        })
    }
}
