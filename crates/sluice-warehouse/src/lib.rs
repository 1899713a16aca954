//! The warehouse: read-only SQL over the lake's Delta tables with DataFusion.
//!
//! [`Warehouse::open`] builds one long-lived DataFusion session whose default schema
//! (`datafusion.public`) is the lake ([`catalog::LakeSchema`]): every directory under the lake
//! root that holds a Delta log is a table named after the directory (`events`, `bad_rows`).
//! Tables are brought to their latest version whenever a statement uses them, so new commits and
//! new tables are visible to the next query without a restart; the warehouse works the same
//! while a server is writing the tables and with no server at all (`sluice sql --data-dir`).
//!
//! [`Warehouse::query`] accepts only reading statements (see [`query`] for the two gates) and
//! returns a [`QueryOutput`]; [`format`] renders it as a text table, CSV or NDJSON.

mod bounded;
pub mod catalog;
mod error;
pub mod format;
mod known;
pub mod loader;
pub mod pg;
pub mod pgclient;
pub mod pgtls;
mod query;

use std::sync::Arc;
use std::time::Duration;

use deltalake::datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use sluice_lake::LakeRoot;

pub use bounded::TooLarge;
pub use catalog::LakeSchema;
pub use error::WarehouseError;
pub use pg::{PgCredentials, PgLogin, PgTokens, serve_pg, serve_pg_login, serve_pg_with};
pub use query::QueryOutput;

/// Limits for queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarehouseOptions {
    /// A statement running longer than this is cancelled with [`WarehouseError::Timeout`].
    pub query_timeout: Duration,
    /// Memory all running queries may hold for sorts, joins and aggregations; past it a query
    /// fails with `Overloaded` instead of the process running out of memory. A function whose
    /// result size is set by an argument (`repeat`, `lpad`, `range`, …) may produce a quarter
    /// of it in one call; more is refused as `Invalid` ([`TooLarge`]). `None`: no limit.
    pub memory_limit: Option<usize>,
    /// Threads DataFusion may use per query (`target_partitions`); `None`: one per core.
    pub target_partitions: Option<usize>,
}

impl Default for WarehouseOptions {
    fn default() -> Self {
        Self {
            query_timeout: Duration::from_secs(300),
            memory_limit: Some(1 << 30),
            target_partitions: None,
        }
    }
}

/// Read-only SQL over the lake. Cheap to share (`Arc<Warehouse>`); queries may run concurrently.
pub struct Warehouse {
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    context: Arc<SessionContext>,
    schema: Arc<LakeSchema>,
    options: WarehouseOptions,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("root", &self.schema.root().to_string())
            .field("options", &self.options)
            .finish()
    }
}

impl Warehouse {
    /// A warehouse over the tables under `root`, with default limits. Reads nothing yet; a root
    /// that does not exist simply has no tables.
    pub fn open(root: LakeRoot) -> Result<Self, WarehouseError> {
        Self::open_with(root, WarehouseOptions::default())
    }

    /// A warehouse with explicit limits.
    pub fn open_with(root: LakeRoot, options: WarehouseOptions) -> Result<Self, WarehouseError> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public");
        if let Some(partitions) = options.target_partitions {
            config = config.with_target_partitions(partitions.max(1));
        }
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = options.memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let runtime = runtime.build_arc()?;
        let schema = Arc::new(LakeSchema::new(root));
        let context = Arc::new(session(&config, &runtime, &schema, &options)?);
        Ok(Self {
            config,
            runtime,
            context,
            schema,
            options,
        })
    }

    /// A new DataFusion session over the same lake schema, memory pool and settings (the
    /// Postgres wire server gets its own, so that what it registers stays out of this one).
    pub fn new_session(&self) -> Result<SessionContext, WarehouseError> {
        session(&self.config, &self.runtime, &self.schema, &self.options)
    }

    /// The lake tables that exist now, sorted.
    pub async fn tables(&self) -> Result<Vec<String>, WarehouseError> {
        self.schema.refresh_names().await
    }

    /// The DataFusion session queries run on. Its `public` schema is the lake.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.context
    }

    /// The lake schema.
    pub fn schema(&self) -> &Arc<LakeSchema> {
        &self.schema
    }

    /// The limits in force.
    pub fn options(&self) -> &WarehouseOptions {
        &self.options
    }
}

fn session(
    config: &SessionConfig,
    runtime: &Arc<RuntimeEnv>,
    schema: &Arc<LakeSchema>,
    options: &WarehouseOptions,
) -> Result<SessionContext, WarehouseError> {
    let context = SessionContext::new_with_config_rt(config.clone(), runtime.clone());
    let catalog = context.catalog("datafusion").ok_or_else(|| {
        WarehouseError::Invalid("the default datafusion catalog is missing".into())
    })?;
    // Replaces the default in-memory `public` schema: nothing else can be registered there.
    catalog.register_schema("public", schema.clone())?;
    bounded::install(&context, options.memory_limit)?;
    Ok(context)
}
