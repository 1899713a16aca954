//! [`PredictConfig`] (the `[predict]` section) and its validated form, [`PredictSettings`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::PredictError;
use crate::ftrl::FtrlParams;

/// The `[predict]` section. Every field is optional; with no model nothing is trained.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PredictConfig {
    /// Where model checkpoints live. Default `<data_dir>/models`.
    pub dir: PathBuf,
    /// How often each model is checkpointed (and at shutdown). Default 60s.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// The models, each a `[[predict.models]]` table.
    pub models: Vec<ModelConfig>,
}

impl Default for PredictConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            checkpoint_interval: Duration::from_secs(60),
            models: Vec::new(),
        }
    }
}

/// One online logistic regression: "does this user do `outcome` within `horizon` of this
/// event?".
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name in `GET /v1/predictions/{model}/{id}` and in profiles: letters, digits, `_`, `-`.
    pub name: String,
    /// The event name that makes the label positive (e.g. `Order Completed`).
    pub outcome: String,
    /// How long after an event its outcome may come. Default 30m.
    #[serde(default = "default_horizon", with = "humantime_serde")]
    pub horizon: Duration,
    /// Event names that become training examples. Default: every event but the outcome.
    #[serde(default)]
    pub examples: Vec<String>,
    /// log2 of the hashed feature table (10–26). Default 20.
    #[serde(default = "default_bits")]
    pub bits: u32,
    /// FTRL learning rate. Default 0.1.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// FTRL smoothing. Default 1.
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// L1 regularisation. Default 0.
    #[serde(default)]
    pub l1: f64,
    /// L2 regularisation. Default 1.
    #[serde(default = "default_l2")]
    pub l2: f64,
    /// Examples waiting for their label, at most; past it the oldest is labeled negative
    /// early. Default 1,000,000.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_horizon() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_bits() -> u32 {
    20
}
fn default_alpha() -> f64 {
    0.1
}
fn default_beta() -> f64 {
    1.0
}
fn default_l2() -> f64 {
    1.0
}
fn default_max_pending() -> usize {
    1_000_000
}

/// A validated model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Its name.
    pub name: String,
    /// The outcome event name.
    pub outcome: String,
    /// The horizon, µs.
    pub horizon_us: i64,
    /// Event names that are examples (empty: every one but the outcome).
    pub examples: BTreeSet<String>,
    /// FTRL parameters.
    pub params: FtrlParams,
    /// See [`ModelConfig::max_pending`].
    pub max_pending: usize,
}

impl ModelSpec {
    /// Whether an event named `event` becomes a training example.
    pub fn is_example(&self, event: &str) -> bool {
        event != self.outcome && (self.examples.is_empty() || self.examples.contains(event))
    }
}

/// Validated `[predict]` settings.
#[derive(Clone, Debug)]
pub struct PredictSettings {
    /// Checkpoint directory (filled in by the server).
    pub dir: PathBuf,
    /// Checkpoint interval.
    pub checkpoint_interval: Duration,
    /// The models.
    pub models: Vec<ModelSpec>,
}

impl PredictSettings {
    /// The model named `name`.
    pub fn model(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }
}

impl ModelConfig {
    /// Validates one model.
    pub fn validate(&self) -> Result<ModelSpec, PredictError> {
        let err = |m: &str| {
            Err(PredictError::Config(format!(
                "[[predict.models]] {:?}: {m}",
                self.name
            )))
        };
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return err("name must be 1-64 letters, digits, '_' or '-'");
        }
        if self.outcome.is_empty() {
            return err("outcome must name an event");
        }
        if !(10..=26).contains(&self.bits) {
            return err("bits must be 10..=26");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !positive(self.alpha)
            || !non_negative(self.beta)
            || !non_negative(self.l1)
            || !non_negative(self.l2)
        {
            return err("alpha must be > 0; beta, l1 and l2 >= 0");
        }
        if self.horizon.is_zero() {
            return err("horizon must be positive");
        }
        if self.max_pending == 0 {
            return err("max_pending must be positive");
        }
        let horizon_us = i64::try_from(self.horizon.as_micros())
            .map_err(|_| PredictError::Config("horizon too long".into()))?;
        Ok(ModelSpec {
            name: self.name.clone(),
            outcome: self.outcome.clone(),
            horizon_us,
            examples: self.examples.iter().cloned().collect(),
            params: FtrlParams {
                bits: self.bits,
                alpha: self.alpha,
                beta: self.beta,
                l1: self.l1,
                l2: self.l2,
            },
            max_pending: self.max_pending,
        })
    }
}

impl PredictConfig {
    /// Validates the section.
    pub fn validate(&self) -> Result<PredictSettings, PredictError> {
        if self.checkpoint_interval < Duration::from_secs(1) {
            return Err(PredictError::Config(
                "[predict] checkpoint_interval must be at least 1s".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut models = Vec::new();
        for m in &self.models {
            let spec = m.validate()?;
            if !names.insert(spec.name.clone()) {
                return Err(PredictError::Config(format!(
                    "[[predict.models]] {:?} is declared twice",
                    spec.name
                )));
            }
            models.push(spec);
        }
        Ok(PredictSettings {
            dir: self.dir.clone(),
            checkpoint_interval: self.checkpoint_interval,
            models,
        })
    }
}
