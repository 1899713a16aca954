//! Error classification shared by all crates, and per-event rejections.

use serde::{Deserialize, Serialize};

/// What a failure means to the caller. Every library error maps to one of these; the server maps
/// these to HTTP status codes in one place. Stages' retry loops key on
/// [`ErrorKind::is_retryable`]; HTTP clients are asked to retry only what
/// [`ErrorKind::is_transient`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is malformed or violates a rule; retrying the same input cannot succeed.
    Invalid,
    /// The input is larger than a configured limit.
    TooLarge,
    /// A media type or content encoding that is not supported.
    Unsupported,
    /// Missing or unknown credentials.
    Unauthorized,
    /// The addressed thing does not exist.
    NotFound,
    /// A concurrent change got there first.
    Conflict,
    /// A dependency (disk, store) cannot take the request now; retry later.
    Unavailable,
    /// The system is over a load limit; retry later.
    Overloaded,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorKind {
    /// Whether the same operation may succeed later, by itself or once the state it met has
    /// changed: a stage retries these. A conflict is one (another writer's change, a lake log
    /// an operator repairs), but only a stage that looks again after each wait should retry it.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable | Self::Overloaded | Self::Conflict)
    }

    /// Whether the condition passes by itself, so that a client sending the same request
    /// again later may succeed: the 429 and 503 answers, sent with `Retry-After`. A conflict
    /// is not: the same request succeeds only once someone changed the state.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::Overloaded)
    }

    /// The lowercase name used in JSON answers and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::TooLarge => "too_large",
            Self::Unsupported => "unsupported",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::Internal => "internal",
        }
    }
}

/// One event of a batch that was not accepted, with the reason. Reported to the client in the
/// ingest answer; the rest of the batch is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Index of the event within the request body (0-based).
    pub index: usize,
    /// The event id, when the event had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Classification.
    pub kind: ErrorKind,
    /// Lowercase human-readable reason.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conflict_is_retried_by_stages_but_not_transient_for_clients() {
        assert!(ErrorKind::Conflict.is_retryable());
        assert!(!ErrorKind::Conflict.is_transient());
        for kind in [ErrorKind::Unavailable, ErrorKind::Overloaded] {
            assert!(kind.is_retryable() && kind.is_transient(), "{kind:?}");
        }
        for kind in [ErrorKind::Invalid, ErrorKind::NotFound, ErrorKind::Internal] {
            assert!(!kind.is_retryable() && !kind.is_transient(), "{kind:?}");
        }
    }
}
