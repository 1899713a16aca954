//! The Postgres wire server: `psql`, DBeaver, Grafana and friends query the lake read-only
//! (datafusion-postgres 0.19 on pgwire 0.41).
//!
//! The server runs on its own DataFusion session that shares the warehouse's lake schema (so
//! tables are as fresh as for HTTP queries) and adds the `pg_catalog` shim clients inspect.
//! Read-only is enforced by [`ReadOnlyHook`], which sees every statement before anything else
//! does, in both the simple and the extended protocol: it lets through what the warehouse allows
//! over HTTP (see [`crate::query`]) plus the session chatter drivers send (`SET` of client
//! variables, `BEGIN`/`COMMIT`/`ROLLBACK`, cursors over queries), and answers everything else
//! with SQLSTATE 25006 (`read_only_sql_transaction`). `SET datafusion.…` is refused too: it would
//! change the shared session for every client. There is no authentication here: bind to
//! loopback, or put the server behind the admin-token check of `sluice serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use datafusion_postgres::auth::AuthManager;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::{QueryHook, ServerOptions};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Set, Statement};
use tokio_util::sync::CancellationToken;

use crate::query::{check_statement, refused};
use crate::{Warehouse, WarehouseError};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Serves the warehouse over the Postgres wire protocol on `addr` until `shutdown` is cancelled.
/// Returns an error if the address cannot be bound.
pub async fn serve_pg(
    warehouse: Arc<Warehouse>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), WarehouseError> {
    let context = Arc::new(warehouse.new_session()?);
    setup_pg_catalog(&context, "datafusion", Arc::new(AuthManager::default()))
        .map_err(WarehouseError::Query)?;
    let host = match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    let options = ServerOptions::new().with_host(host).with_port(addr.port());
    let mut hooks: Vec<Arc<dyn QueryHook>> = vec![Arc::new(ReadOnlyHook)];
    hooks.extend(default_hooks());
    tracing::info!(%addr, "postgres wire server listening");
    tokio::select! {
        result = datafusion_postgres::serve_with_hooks(context, &options, hooks) => {
            result.map_err(|e| WarehouseError::Invalid(format!("postgres wire server on {addr}: {e}")))
        }
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// The hooks `datafusion_postgres::serve` installs (cursors, `SET`/`SHOW`, transactions).
fn default_hooks() -> Vec<Arc<dyn QueryHook>> {
    use datafusion_postgres::hooks::cursor::CursorStatementHook;
    use datafusion_postgres::hooks::set_show::SetShowHook;
    use datafusion_postgres::hooks::transactions::TransactionStatementHook;
    vec![
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ]
}

/// Refuses every statement that is not a read or harmless session chatter.
#[derive(Debug)]
pub struct ReadOnlyHook;

impl ReadOnlyHook {
    fn check(statement: &Statement) -> Result<(), PgWireError> {
        let allowed = match statement {
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Close { .. }
            | Statement::Fetch { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCatalogs { .. } => Ok(()),
            Statement::Declare { stmts } => stmts
                .iter()
                .filter_map(|d| d.for_query.as_ref())
                .try_for_each(|q| check_statement(&Statement::Query(q.clone()))),
            Statement::Set(set) => match set {
                Set::SingleAssignment { variable, .. }
                    if variable
                        .to_string()
                        .to_ascii_lowercase()
                        .starts_with("datafusion.") =>
                {
                    Err(refused("SET datafusion"))
                }
                _ => Ok(()),
            },
            other => check_statement(other),
        };
        allowed.map_err(|e| {
            PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_string(),
                "25006".to_string(),
                e.to_string(),
            )))
        })
    }
}

// `QueryHook` is an `async_trait`; these are the signatures that macro would generate (the crate
// is not a dependency of ours). Every answer is immediate.
impl QueryHook for ReadOnlyHook {
    fn handle_simple_query<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        statement: &'life1 Statement,
        _session_context: &'life2 SessionContext,
        _client: &'life3 mut dyn HookClient,
    ) -> BoxFuture<'async_trait, Option<PgWireResult<Response>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        let answer = Self::check(statement).err().map(Err);
        Box::pin(std::future::ready(answer))
    }

    fn handle_extended_parse_query<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        statement: &'life1 Statement,
        _session_context: &'life2 SessionContext,
        _client: &'life3 (dyn ClientInfo + Send + Sync),
    ) -> BoxFuture<'async_trait, Option<PgWireResult<LogicalPlan>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        let answer = Self::check(statement).err().map(Err);
        Box::pin(std::future::ready(answer))
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_extended_query<'life0, 'life1, 'life2, 'life3, 'life4, 'life5, 'async_trait>(
        &'life0 self,
        statement: &'life1 Statement,
        _logical_plan: &'life2 LogicalPlan,
        _params: &'life3 ParamValues,
        _session_context: &'life4 SessionContext,
        _client: &'life5 mut dyn HookClient,
    ) -> BoxFuture<'async_trait, Option<PgWireResult<Response>>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        'life4: 'async_trait,
        'life5: 'async_trait,
        Self: 'async_trait,
    {
        // The parse phase already refused anything not allowed; this is the backstop.
        let answer = Self::check(statement).err().map(Err);
        Box::pin(std::future::ready(answer))
    }
}
