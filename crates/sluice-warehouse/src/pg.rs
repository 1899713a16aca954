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
//! change the shared session for every client.
//!
//! Authentication: with [`PgCredentials`] every connection must log in as that user with that
//! password, by SCRAM-SHA-256 (the password never crosses the wire; psql, psycopg, the `pg` npm
//! client, JDBC all speak it). Without credentials any user name is accepted with no password,
//! which [`serve_pg_with`] allows on loopback addresses only.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use datafusion_postgres::auth::AuthManager;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{
    SCRAM_ITERATIONS, ScramAuth, gen_salted_password, random_nonce,
};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::{DfSessionService, QueryHook, ServerOptions};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Set, Statement};
use tokio_util::sync::CancellationToken;

use crate::query::{check_statement, refused};
use crate::{Warehouse, WarehouseError};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The one login the Postgres wire server accepts.
#[derive(Clone)]
pub struct PgCredentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for PgCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCredentials")
            .field("user", &self.user)
            .field("password", &"…")
            .finish()
    }
}

/// Serves the warehouse over the Postgres wire protocol on `addr` until `shutdown` is cancelled,
/// without authentication (loopback addresses only). Returns an error if the address cannot be
/// bound.
pub async fn serve_pg(
    warehouse: Arc<Warehouse>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), WarehouseError> {
    serve_pg_with(warehouse, addr, None, shutdown).await
}

/// Serves the warehouse over the Postgres wire protocol on `addr`, requiring `credentials`
/// when given. Without credentials a non-loopback address is refused.
pub async fn serve_pg_with(
    warehouse: Arc<Warehouse>,
    addr: SocketAddr,
    credentials: Option<PgCredentials>,
    shutdown: CancellationToken,
) -> Result<(), WarehouseError> {
    if credentials.is_none() && !addr.ip().is_loopback() {
        return Err(WarehouseError::Invalid(format!(
            "refusing to serve the postgres wire protocol on {addr} without a password"
        )));
    }
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
    tracing::info!(%addr, authentication = credentials.is_some(), "postgres wire server listening");
    let failed =
        |e: std::io::Error| WarehouseError::Invalid(format!("postgres wire server on {addr}: {e}"));
    match credentials {
        None => tokio::select! {
            result = datafusion_postgres::serve_with_hooks(context, &options, hooks) => result.map_err(failed),
            _ = shutdown.cancelled() => Ok(()),
        },
        Some(credentials) => {
            let handlers = Arc::new(ScramHandlers {
                service: Arc::new(DfSessionService::new_with_hooks(context, hooks)),
                parameters: Arc::new(DefaultServerParameterProvider::default()),
                source: Arc::new(ScramSource::new(&credentials)),
            });
            tokio::select! {
                result = datafusion_postgres::serve_with_handlers(handlers, &options) => result.map_err(failed),
                _ = shutdown.cancelled() => Ok(()),
            }
        }
    }
}

/// The handlers of an authenticated server: datafusion-postgres' query service behind a SCRAM
/// startup handler (a new one per connection: it holds the exchange's state).
struct ScramHandlers {
    service: Arc<DfSessionService>,
    parameters: Arc<DefaultServerParameterProvider>,
    source: Arc<ScramSource>,
}

impl PgWireServerHandlers for ScramHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let mut scram = ScramAuth::new(self.source.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        Arc::new(SASLAuthStartupHandler::new(self.parameters.clone()).with_scram(scram))
    }
}

/// The salted password of the one user (computed once: SCRAM's key derivation is slow on
/// purpose).
struct ScramSource {
    user: String,
    salt: Vec<u8>,
    salted: Vec<u8>,
}

impl std::fmt::Debug for ScramSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramSource")
            .field("user", &self.user)
            .finish()
    }
}

impl ScramSource {
    fn new(credentials: &PgCredentials) -> Self {
        let salt = random_nonce().into_bytes();
        let salted = gen_salted_password(&credentials.password, &salt, SCRAM_ITERATIONS);
        Self {
            user: credentials.user.clone(),
            salt,
            salted,
        }
    }
}

// `AuthSource` is an `async_trait`; this is the signature that macro would generate.
impl AuthSource for ScramSource {
    fn get_password<'life0, 'life1, 'async_trait>(
        &'life0 self,
        login: &'life1 LoginInfo<'_>,
    ) -> BoxFuture<'async_trait, PgWireResult<Password>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        let answer = if login.user() == Some(self.user.as_str()) {
            Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
        } else {
            // The same answer as a wrong password: no telling which users exist.
            Err(PgWireError::InvalidPassword(
                login.user().unwrap_or_default().to_string(),
            ))
        };
        Box::pin(std::future::ready(answer))
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
