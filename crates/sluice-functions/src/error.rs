//! [`FunctionsError`]: why the runner stopped.

use sluice_event::ErrorKind;
use sluice_journal::JournalError;

/// A runner failure that stops it (per-event failures become bad rows instead).
#[derive(Debug, thiserror::Error)]
pub enum FunctionsError {
    /// `raw`, `good` and `bad` must have the same partition count (raw p feeds good p, bad p).
    #[error("topics raw, good and bad have different partition counts: {0:?}")]
    PartitionMismatch([u32; 3]),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The user functions deployed cannot all run on this node.
    #[error("user functions cannot run: {0}")]
    FunctionsBlocked(String),
}

impl FunctionsError {
    /// Classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::PartitionMismatch(_) => ErrorKind::Invalid,
            Self::Journal(e) => e.kind(),
            Self::FunctionsBlocked(_) => ErrorKind::Unavailable,
        }
    }
}
