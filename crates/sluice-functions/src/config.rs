//! [`RunnerConfig`]: the `[functions]` section of the config file.

use serde::Deserialize;

/// The `[functions]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunnerConfig {
    /// Most raw records processed (and appended to good/bad) as one batch. Default 2,000.
    pub batch_size: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self { batch_size: 2000 }
    }
}

/// Validated runner settings.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    pub(crate) batch_size: usize,
}

impl RunnerConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<RunnerSettings, String> {
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return Err("functions.batch_size must be between 1 and 100000".into());
        }
        Ok(RunnerSettings {
            batch_size: self.batch_size,
        })
    }
}
