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
//! Authentication ([`PgLogin`]): with [`PgCredentials`], a connection that logs in as that user
//! must give that password, by SCRAM-SHA-256 (the password never crosses the wire; psql,
//! psycopg, the `pg` npm client, JDBC all speak it). With [`PgTokens`], any other login gives a
//! token as its password (any user name), in cleartext, since only the token's hash is known
//! here; the server asks for it whenever [`PgTokens::required`] says so. Without either, any
//! user name is accepted with no password, which [`serve_pg_login`] allows on loopback
//! addresses only.
//!
//! TLS ([`PgLogin::tls`]): the server answers `SSLRequest` (and direct TLS, ALPN `postgresql`)
//! with the given acceptor, so `sslmode=verify-full` works. A client on a non-loopback address
//! that does not use TLS is then refused before it is asked for a password (SQLSTATE 28000), so
//! a password or token never crosses the network in the clear; loopback clients may still
//! connect without TLS.

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
    self as auth, AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::api::{
    PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::{DfSessionService, QueryHook, ServerOptions};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::{Set, Statement};
use futures::{Sink, SinkExt};
use std::fmt::Debug;
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

/// Tokens the Postgres wire server takes as passwords, checked by the caller (which keeps them
/// hashed and may change them while the server runs).
pub trait PgTokens: Send + Sync + 'static {
    /// Whether a login is needed now: when not, and there are no [`PgCredentials`], any login
    /// is accepted with no password.
    fn required(&self) -> bool;
    /// Whether `password` is a token that may read.
    fn accepts(&self, password: &str) -> bool;
}

/// Who may log in to the Postgres wire server.
#[derive(Clone, Default)]
pub struct PgLogin {
    /// The one SCRAM-SHA-256 user and password.
    pub credentials: Option<PgCredentials>,
    /// Tokens taken as cleartext passwords for any other user name.
    pub tokens: Option<Arc<dyn PgTokens>>,
    /// TLS for the connections that ask for it; when set, non-loopback clients must use it.
    pub tls: Option<TlsAcceptor>,
}

/// The acceptor of TLS connections (tokio-rustls, as pgwire takes it).
pub type TlsAcceptor = datafusion_postgres::pgwire::tokio::TlsAcceptor;

/// Whether a connection from `peer` that did (`secure`) or did not use TLS must be refused.
fn plaintext_refused(require_tls: bool, secure: bool, peer: SocketAddr) -> bool {
    require_tls && !secure && !peer.ip().to_canonical().is_loopback()
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
    let login = PgLogin {
        credentials,
        tokens: None,
        tls: None,
    };
    serve_pg_login(warehouse, addr, login, shutdown).await
}

/// Serves the warehouse over the Postgres wire protocol on `addr`, with the logins of `login`.
/// With neither credentials nor tokens a non-loopback address is refused.
pub async fn serve_pg_login(
    warehouse: Arc<Warehouse>,
    addr: SocketAddr,
    login: PgLogin,
    shutdown: CancellationToken,
) -> Result<(), WarehouseError> {
    let open = login.credentials.is_none() && login.tokens.is_none();
    if open && !addr.ip().is_loopback() {
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
    tracing::info!(%addr, authentication = !open, "postgres wire server listening");
    let failed =
        |e: std::io::Error| WarehouseError::Invalid(format!("postgres wire server on {addr}: {e}"));
    if open && login.tls.is_none() {
        return tokio::select! {
            result = datafusion_postgres::serve_with_hooks(context, &options, hooks) => result.map_err(failed),
            _ = shutdown.cancelled() => Ok(()),
        };
    }
    let handlers = Arc::new(LoginHandlers {
        service: Arc::new(DfSessionService::new_with_hooks(context, hooks)),
        parameters: Arc::new(DefaultServerParameterProvider::default()),
        source: login
            .credentials
            .as_ref()
            .map(|c| Arc::new(ScramSource::new(c))),
        tokens: login.tokens,
        require_tls: login.tls.is_some(),
    });
    let Some(tls) = login.tls else {
        return tokio::select! {
            result = datafusion_postgres::serve_with_handlers(handlers, &options) => result.map_err(failed),
            _ = shutdown.cancelled() => Ok(()),
        };
    };
    // datafusion-postgres' own loop would read the certificate again (and run without TLS
    // if it could not): this one takes the acceptor made at start.
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(failed)?;
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres wire accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let (handlers, tls, stop) = (handlers.clone(), tls.clone(), shutdown.clone());
        connections.spawn(async move {
            tokio::select! {
                r = datafusion_postgres::pgwire::tokio::process_socket(socket, Some(tls), handlers) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "postgres wire connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
    connections.close();
    Ok(())
}

/// The handlers of an authenticated server: datafusion-postgres' query service behind a
/// [`LoginStartup`] (a new one per connection: it holds the exchange's state).
struct LoginHandlers {
    service: Arc<DfSessionService>,
    parameters: Arc<DefaultServerParameterProvider>,
    source: Option<Arc<ScramSource>>,
    tokens: Option<Arc<dyn PgTokens>>,
    /// Refuse non-loopback clients without TLS.
    require_tls: bool,
}

impl PgWireServerHandlers for LoginHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        let scram = self.source.as_ref().map(|source| {
            let mut scram = ScramAuth::new(source.clone());
            scram.set_iterations(SCRAM_ITERATIONS);
            (
                source.user.clone(),
                SASLAuthStartupHandler::new(self.parameters.clone()).with_scram(scram),
            )
        });
        Arc::new(LoginStartup {
            scram,
            require_tls: self.require_tls,
            tokens: self.tokens.clone(),
            parameters: self.parameters.clone(),
            mode: std::sync::Mutex::new(Mode::Start),
        })
    }
}

/// How one connection logs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing received yet.
    Start,
    /// The SCRAM user: the SCRAM exchange.
    Scram,
    /// Anyone else: a token as a cleartext password.
    Token,
}

/// The startup of one connection: SCRAM for the configured user, a token for anyone else, or
/// no password at all when neither is needed.
struct LoginStartup {
    /// The SCRAM user and the exchange.
    scram: Option<(
        String,
        SASLAuthStartupHandler<DefaultServerParameterProvider>,
    )>,
    tokens: Option<Arc<dyn PgTokens>>,
    require_tls: bool,
    parameters: Arc<DefaultServerParameterProvider>,
    mode: std::sync::Mutex<Mode>,
}

impl LoginStartup {
    /// The mode of a connection whose startup names `user`, or `None` to let it in at once.
    fn choose(&self, user: Option<&str>) -> Option<Mode> {
        match (&self.scram, &self.tokens) {
            (Some((u, _)), _) if user == Some(u.as_str()) => Some(Mode::Scram),
            (None, Some(t)) if !t.required() => None,
            (_, Some(_)) => Some(Mode::Token),
            // The SCRAM exchange refuses any other user, as a wrong password.
            (Some(_), None) => Some(Mode::Scram),
            (None, None) => None,
        }
    }

    async fn handle<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mode = *self.mode.lock().unwrap_or_else(|e| e.into_inner());
        match (mode, message) {
            (Mode::Start, PgWireFrontendMessage::Startup(_))
                if plaintext_refused(self.require_tls, client.is_secure(), client.socket_addr()) =>
            {
                Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".to_string(),
                    "28000".to_string(),
                    "this server requires TLS from non-loopback clients: connect with sslmode=require or stronger".to_string(),
                ))))
            }
            (Mode::Start, PgWireFrontendMessage::Startup(startup)) => {
                let user = startup.parameters.get("user").map(String::as_str);
                let chosen = self.choose(user);
                if let Some(m) = chosen {
                    *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = m;
                }
                match (chosen, &self.scram) {
                    (Some(Mode::Scram), Some((_, scram))) => {
                        scram
                            .on_startup(client, PgWireFrontendMessage::Startup(startup))
                            .await
                    }
                    (Some(_), _) => {
                        auth::protocol_negotiation(client, &startup).await?;
                        auth::save_startup_parameters_to_metadata(client, &startup);
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        let ask = Authentication::CleartextPassword;
                        client
                            .send(PgWireBackendMessage::Authentication(ask))
                            .await?;
                        Ok(())
                    }
                    (None, _) => {
                        auth::protocol_negotiation(client, &startup).await?;
                        auth::save_startup_parameters_to_metadata(client, &startup);
                        self.finish(client).await
                    }
                }
            }
            (Mode::Scram, message) => match &self.scram {
                Some((_, scram)) => scram.on_startup(client, message).await,
                None => Ok(()),
            },
            (Mode::Token, PgWireFrontendMessage::PasswordMessageFamily(pwd)) => {
                let given = pwd.into_password()?.password;
                if self.tokens.as_ref().is_some_and(|t| t.accepts(&given)) {
                    self.finish(client).await
                } else {
                    let user = LoginInfo::from_client_info(client)
                        .user()
                        .unwrap_or_default()
                        .to_string();
                    Err(PgWireError::InvalidPassword(user))
                }
            }
            _ => Ok(()),
        }
    }

    /// Lets the connection in.
    async fn finish<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret_key) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret_key);
        auth::finish_authentication(client, self.parameters.as_ref()).await
    }
}

// `StartupHandler` is an `async_trait`; this is the signature that macro would generate.
impl StartupHandler for LoginStartup {
    fn on_startup<'life0, 'life1, 'async_trait, C>(
        &'life0 self,
        client: &'life1 mut C,
        message: PgWireFrontendMessage,
    ) -> BoxFuture<'async_trait, PgWireResult<()>>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync + 'async_trait,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.handle(client, message))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_is_refused_only_off_loopback_and_only_with_tls_configured() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        assert!(plaintext_refused(true, false, remote));
        assert!(!plaintext_refused(true, true, remote));
        assert!(!plaintext_refused(true, false, local));
        assert!(!plaintext_refused(true, false, mapped));
        assert!(!plaintext_refused(false, false, remote));
    }
}
