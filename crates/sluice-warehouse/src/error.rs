//! [`WarehouseError`]: why a query failed, classified by [`WarehouseError::kind`] so the server
//! can answer 400 for bad SQL, 404 for an unknown table and 503 when the lake is unreadable.

use std::time::Duration;

use deltalake::datafusion::error::DataFusionError;
use sluice_event::ErrorKind;

/// A warehouse failure.
#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    /// The SQL does not parse, does not plan, or is not a read-only query.
    #[error("{0}")]
    Invalid(String),
    /// The query names a table the lake does not have.
    #[error("table {name} not found; tables: {}", list_or_none(.available))]
    TableNotFound {
        /// The name as written in the query.
        name: String,
        /// The tables that exist.
        available: Vec<String>,
    },
    /// The query ran longer than the configured limit.
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    /// A lake table could not be read.
    #[error("lake table {table}: {source}")]
    Lake {
        /// Table name.
        table: String,
        /// The delta-rs error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The lake location is not usable.
    #[error("{0}")]
    Location(#[from] sluice_lake::LakeError),
    /// DataFusion failed while planning or running the query.
    #[error("query failed: {0}")]
    Query(#[from] Box<DataFusionError>),
    /// Rendering the result failed.
    #[error("formatting result: {0}")]
    Format(String),
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none yet".to_string()
    } else {
        names.join(", ")
    }
}

impl From<DataFusionError> for WarehouseError {
    fn from(e: DataFusionError) -> Self {
        Self::Query(Box::new(e))
    }
}

impl WarehouseError {
    /// Classification for callers and HTTP mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::TableNotFound { .. } => ErrorKind::NotFound,
            Self::Timeout(_) => ErrorKind::Overloaded,
            Self::Lake { .. } => ErrorKind::Unavailable,
            Self::Location(e) => e.kind(),
            Self::Query(e) => classify(e),
            Self::Format(_) => ErrorKind::Internal,
        }
    }
}

/// User mistakes (syntax, unknown columns, bad casts, a result too large to build) are
/// `Invalid`; running out of the memory pool is `Overloaded`; storage trouble is `Unavailable`.
fn classify(e: &DataFusionError) -> ErrorKind {
    match e.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::ArrowError(..) => ErrorKind::Invalid,
        DataFusionError::External(e) if e.is::<crate::TooLarge>() => ErrorKind::Invalid,
        DataFusionError::ResourcesExhausted(_) => ErrorKind::Overloaded,
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}
