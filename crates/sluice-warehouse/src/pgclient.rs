//! The loader's Postgres connection: tokio-postgres underneath (trust, cleartext, MD5 and
//! SCRAM-SHA-256 logins; TLS by `sslmode` through [`crate::pgtls`]), used through a narrow
//! interface — run SQL text, read rows as text — with a deadline on connecting and on every
//! statement.
//!
//! Every statement is SQL text with escaped literals ([`quote_literal`], [`quote_ident`]) sent
//! as a simple query: the loader's statements are built per micro-batch (multi-row INSERTs,
//! additive ALTERs), so prepared statements would buy nothing. Not supported: client
//! certificates, and SCRAM channel binding (SCRAM-SHA-256-PLUS).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::pgtls::{MakeRustls, SslMode, client_config};

/// A failure talking to Postgres.
#[derive(Debug, thiserror::Error)]
pub enum PgClientError {
    /// The connection failed or broke.
    #[error("postgres connection: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered with an error.
    #[error("postgres error {code}: {message}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server asked for something this client does not do, or the client failed.
    #[error("postgres protocol: {0}")]
    Protocol(String),
    /// Connecting or a statement took too long.
    #[error("postgres: timed out after {0:?}")]
    Timeout(Duration),
}

impl From<tokio_postgres::Error> for PgClientError {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            return Self::Server {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            };
        }
        match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()) {
            // The io error says why (a TLS handshake's names the certificate problem).
            Some(io) => Self::Io(std::io::Error::new(io.kind(), format!("{e}: {io}"))),
            None => Self::Protocol(e.to_string()),
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password, if the server asks (cleartext, MD5 or SCRAM-SHA-256).
    pub password: Option<String>,
    /// Database.
    pub database: String,
    /// TLS: `disable`, `prefer`, `require` or `verify-full`.
    pub sslmode: SslMode,
    /// The root certificates (PEM) that `verify-full` checks the server against.
    pub sslrootcert: Option<PathBuf>,
}

/// One open connection. Dropping it closes the connection.
pub struct PgConnection {
    client: tokio_postgres::Client,
    timeout: Duration,
}

/// A query's result: rows of text values (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

impl PgConnection {
    /// Connects and logs in; every later statement must finish within `timeout`.
    pub async fn connect(target: &PgTarget, timeout: Duration) -> Result<Self, PgClientError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&target.host)
            .port(target.port)
            .user(&target.user)
            .dbname(&target.database)
            .application_name("sluice-loader")
            .connect_timeout(timeout);
        if let Some(p) = &target.password {
            config.password(p);
        }
        let tls = client_config(target.sslmode, target.sslrootcert.as_deref())
            .map_err(PgClientError::Protocol)?;
        let late = |_| PgClientError::Timeout(timeout);
        let client = match tls {
            None => {
                let (client, connection) =
                    tokio::time::timeout(timeout, config.connect(tokio_postgres::NoTls))
                        .await
                        .map_err(late)??;
                drive(connection);
                client
            }
            Some(tls) => {
                config.ssl_mode(match target.sslmode {
                    SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                    _ => tokio_postgres::config::SslMode::Require,
                });
                let (client, connection) =
                    tokio::time::timeout(timeout, config.connect(MakeRustls(tls)))
                        .await
                        .map_err(late)??;
                drive(connection);
                client
            }
        };
        Ok(Self { client, timeout })
    }

    /// Runs `sql` (one or more statements separated by `;`) and returns the rows of the last
    /// statement that returned any. After a server error the connection stays usable (inside a
    /// transaction, the transaction is then aborted).
    pub async fn query(&mut self, sql: &str) -> Result<Rows, PgClientError> {
        let messages = self.simple(sql).await?;
        let mut rows = Vec::new();
        let mut current: Rows = Vec::new();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(_) => current.clear(),
                SimpleQueryMessage::Row(row) => current.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                SimpleQueryMessage::CommandComplete(_) if !current.is_empty() => {
                    rows = std::mem::take(&mut current);
                }
                _ => {}
            }
        }
        Ok(rows)
    }

    /// Runs `sql` and ignores its rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), PgClientError> {
        self.query(sql).await.map(|_| ())
    }

    /// Runs one statement and returns the rows it affected (Postgres and Redshift report it
    /// for `INSERT`, `UPDATE` and `DELETE`; `RETURNING` is not Redshift's).
    pub async fn affected(&mut self, sql: &str) -> Result<u64, PgClientError> {
        let messages = self.simple(sql).await?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .sum())
    }

    async fn simple(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, PgClientError> {
        if sql.contains('\0') {
            return Err(PgClientError::Protocol(
                "sql text contains a NUL byte".into(),
            ));
        }
        let timeout = self.timeout;
        Ok(tokio::time::timeout(timeout, self.client.simple_query(sql))
            .await
            .map_err(|_| PgClientError::Timeout(timeout))??)
    }
}

/// Runs a connection's IO until it ends (when its client is dropped).
fn drive<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
}

/// A string literal for SQL text: single quotes doubled, NUL characters (which Postgres text
/// cannot hold) replaced by U+FFFD. Correct with `standard_conforming_strings = on` (the
/// Postgres default since 9.1), which the loader sets on every connection.
pub fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\0' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted identifier: double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('\0', "").replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_escaped() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\0b"), "'a\u{fffd}b'");
        assert_eq!(quote_literal(r"back\slash"), r"'back\slash'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
