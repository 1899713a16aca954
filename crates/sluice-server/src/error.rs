//! [`ServerError`] and the one place where an [`ErrorKind`] becomes an HTTP status.

use axum::http::StatusCode;
use sluice_event::ErrorKind;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A stage failed to start or failed while running.
    #[error("{stage}: {message}")]
    Stage {
        /// Which stage.
        stage: &'static str,
        /// What happened.
        message: String,
    },
    /// The journal failed (an fsync or write error): the state on disk is unknown, so the
    /// process must stop without draining and recover from disk on restart. The CLI exits
    /// with code 70 on it.
    #[error("journal failed (fsync or write error); restart to recover from disk")]
    JournalFailed,
    /// On a shared journal, this node could not renew its lease on the stages after the
    /// journal in time, or another node took it: another node may run them now, so this one
    /// stops at once, without draining. The CLI exits with code 75 on it; started again, the
    /// node stands by.
    #[error("this node lost its lease on the pipeline; another node runs it now")]
    LeaseLost,
    /// The node was shut down while it stood by for the pipeline lease.
    #[error("shut down while standing by for the pipeline lease")]
    Cancelled,
    /// Binding a socket failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ServerError {
    pub(crate) fn stage(stage: &'static str, e: impl std::fmt::Display) -> Self {
        Self::Stage {
            stage,
            message: e.to_string(),
        }
    }
}

/// The HTTP status for an error kind. 4xx = permanent (the client must not retry), 409
/// included: the same request succeeds only once the state changed; 429/503 = retry later
/// (sent with `Retry-After`).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}
