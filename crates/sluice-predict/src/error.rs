//! [`PredictError`]: how the prediction engine fails.

use sluice_event::ErrorKind;

/// A prediction-engine failure.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl PredictError {
    /// The error's family.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) => ErrorKind::Invalid,
            Self::Checkpoint { .. } => ErrorKind::Unavailable,
        }
    }
}
