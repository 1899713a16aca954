//! [`CollectError`]: why a whole request was refused.

use sluice_event::ErrorKind;

/// A request-level failure. Per-event problems are [`sluice_event::Rejection`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is not valid JSON / NDJSON.
    #[error("malformed json: {0}")]
    Malformed(String),
    /// The body, after decompression, is over the limit.
    #[error("body exceeds {limit} bytes after decompression")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// More events than allowed in one request.
    #[error("{count} events exceed the limit of {limit} per request")]
    TooManyEvents {
        /// Events found (at least).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Well-formed JSON that breaks the protocol's rules.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// An empty body.
    #[error("no events in request body")]
    Empty,
    /// A content encoding we do not decode.
    #[error("unsupported content encoding {0} (use gzip, deflate or none)")]
    UnsupportedEncoding(String),
    /// More than one content coding (`gzip, gzip`).
    #[error("nested content encodings ({0}) are not accepted: compress once, with gzip or deflate")]
    NestedEncoding(String),
    /// The compressed stream is broken.
    #[error("cannot decompress body: {0}")]
    BadCompression(String),
    /// The journal cannot take the events now (disk full, backlog over the limit, failed).
    #[error("cannot accept events now: {0}")]
    Unavailable(String),
    /// A quota refuses the request now; it passes after `retry_after_secs`.
    #[error("{reason}")]
    Throttled {
        /// The quota, in words.
        reason: String,
        /// Seconds until it would pass.
        retry_after_secs: u64,
    },
    /// An unexpected failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CollectError {
    /// Classification for the HTTP mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Malformed(_) | Self::Invalid(_) | Self::Empty | Self::BadCompression(_) => {
                ErrorKind::Invalid
            }
            Self::UnsupportedEncoding(_) | Self::NestedEncoding(_) => ErrorKind::Unsupported,
            Self::BodyTooLarge { .. } | Self::TooManyEvents { .. } => ErrorKind::TooLarge,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Throttled { .. } => ErrorKind::Overloaded,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Seconds a client should wait before retrying, when the error says.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Throttled {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl From<crate::quota::Throttle> for CollectError {
    fn from(t: crate::quota::Throttle) -> Self {
        Self::Throttled {
            reason: t.reason,
            retry_after_secs: t.retry_after_secs,
        }
    }
}
