//! [`HotError`]: every way the hot tier can fail, each with its [`ErrorKind`].

use sluice_event::ErrorKind;

/// A hot-tier failure.
#[derive(Debug, thiserror::Error)]
pub enum HotError {
    /// The embedded store failed (IO, corruption).
    #[error("embedded hot store: {0}")]
    Embedded(String),
    /// The Redis server failed or could not be reached.
    #[error("redis: {0}")]
    Redis(String),
    /// Another writer moved a position this projection expected to own.
    #[error("position conflict for {consumer}: {detail}")]
    Conflict {
        /// The projection's consumer name.
        consumer: String,
        /// What was expected and found.
        detail: String,
    },
    /// A stored value does not decode.
    #[error("stored value {key:?} does not decode: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] sluice_journal::JournalError),
    /// An unknown counter, model or profile.
    #[error("{0}")]
    NotFound(String),
    /// A bad read request (key too long, bad time).
    #[error("{0}")]
    Invalid(String),
    /// Invalid configuration.
    #[error("{0}")]
    Config(String),
    /// The projection stopped before the awaited positions.
    #[error(transparent)]
    Stopped(#[from] sluice_journal::ProgressError),
}

impl HotError {
    /// The error's family, which decides the HTTP status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Embedded(_) | Self::Redis(_) | Self::Journal(_) | Self::Stopped(_) => {
                ErrorKind::Unavailable
            }
            Self::Conflict { .. } => ErrorKind::Conflict,
            Self::Corrupt { .. } => ErrorKind::Internal,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Invalid(_) | Self::Config(_) => ErrorKind::Invalid,
        }
    }
}
