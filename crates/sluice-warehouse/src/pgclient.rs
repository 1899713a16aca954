//! A small Postgres frontend (protocol 3.0, simple queries only) for the loader: connect, log in
//! with no password (trust) or a cleartext password, run SQL text, read rows as text.
//!
//! Why not a client library: the loader needs a handful of statements per micro-batch, all built
//! as SQL text with escaped literals ([`quote_literal`], [`quote_ident`]); this is about as much
//! code as wiring a library and adds nothing to the build. Not supported (a clear error, not a
//! hang): MD5 and SCRAM passwords, TLS. Bind parameters are never needed: every value goes
//! through [`quote_literal`].

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The longest message the client accepts from the server.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

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
    /// The server asked for something this client does not do, or sent nonsense.
    #[error("postgres protocol: {0}")]
    Protocol(String),
    /// Connecting or a statement took too long.
    #[error("postgres: timed out after {0:?}")]
    Timeout(Duration),
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
    /// Password for cleartext authentication, if the server asks.
    pub password: Option<String>,
    /// Database.
    pub database: String,
}

/// One open connection.
pub struct PgConnection {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

/// A query's result: rows of text values (`None` for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

impl PgConnection {
    /// Connects and logs in; every later statement must finish within `timeout`.
    pub async fn connect(target: &PgTarget, timeout: Duration) -> Result<Self, PgClientError> {
        tokio::time::timeout(timeout, Self::connect_inner(target, timeout))
            .await
            .map_err(|_| PgClientError::Timeout(timeout))?
    }

    async fn connect_inner(target: &PgTarget, timeout: Duration) -> Result<Self, PgClientError> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream: BufReader::new(stream),
            timeout,
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608_i32.to_be_bytes());
        for (k, v) in [
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
            ("client_encoding", "UTF8"),
            ("application_name", "sluice-loader"),
        ] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        conn.send(None, &body).await?;
        loop {
            let (kind, body) = conn.read_message().await?;
            match kind {
                b'R' => {
                    let code = be_i32(&body, 0)?;
                    match code {
                        0 => {}
                        3 => {
                            let Some(password) = &target.password else {
                                return Err(PgClientError::Protocol(
                                    "the server asks for a password and none is configured".into(),
                                ));
                            };
                            let mut pw = password.as_bytes().to_vec();
                            pw.push(0);
                            conn.send(Some(b'p'), &pw).await?;
                        }
                        other => {
                            return Err(PgClientError::Protocol(format!(
                                "authentication method {other} is not supported (trust and cleartext password are)"
                            )));
                        }
                    }
                }
                b'E' => return Err(server_error(&body)),
                b'Z' => return Ok(conn),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    async fn send(&mut self, kind: Option<u8>, body: &[u8]) -> Result<(), PgClientError> {
        let len = i32::try_from(body.len() + 4)
            .map_err(|_| PgClientError::Protocol("statement too large".into()))?;
        let mut message = Vec::with_capacity(body.len() + 5);
        if let Some(k) = kind {
            message.push(k);
        }
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(body);
        self.stream.get_mut().write_all(&message).await?;
        Ok(())
    }

    async fn read_message(&mut self) -> Result<(u8, Vec<u8>), PgClientError> {
        let kind = self.stream.read_u8().await?;
        let len = self.stream.read_i32().await?;
        let len = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_sub(4))
            .filter(|l| *l <= MAX_MESSAGE)
            .ok_or_else(|| PgClientError::Protocol(format!("bad message length {len}")))?;
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok((kind, body))
    }

    /// Runs `sql` (one or more statements separated by `;`) and returns the rows of the last
    /// statement that returned any. A server error is returned after the server is ready again,
    /// so the connection stays usable (inside a transaction, it is then aborted).
    pub async fn query(&mut self, sql: &str) -> Result<Rows, PgClientError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.query_inner(sql))
            .await
            .map_err(|_| PgClientError::Timeout(timeout))?
    }

    async fn query_inner(&mut self, sql: &str) -> Result<Rows, PgClientError> {
        if sql.contains('\0') {
            return Err(PgClientError::Protocol(
                "sql text contains a NUL byte".into(),
            ));
        }
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(Some(b'Q'), &body).await?;
        let mut rows = Vec::new();
        let mut current: Rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, body) = self.read_message().await?;
            match kind {
                b'T' => current.clear(),
                b'D' => current.push(data_row(&body)?),
                b'C' if !current.is_empty() => rows = std::mem::take(&mut current),
                b'E' => error = Some(server_error(&body)),
                b'Z' => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// Runs `sql` and ignores its rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), PgClientError> {
        self.query(sql).await.map(|_| ())
    }
}

fn be_i32(body: &[u8], at: usize) -> Result<i32, PgClientError> {
    body.get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| PgClientError::Protocol("short message".into()))
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, PgClientError> {
    let short = || PgClientError::Protocol("short data row".into());
    let count = body
        .get(0..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(short)?;
    let mut at = 2;
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = be_i32(body, at)?;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| short())?;
        let bytes = body.get(at..at + len).ok_or_else(short)?;
        out.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        at += len;
    }
    Ok(out)
}

fn server_error(body: &[u8]) -> PgClientError {
    let mut code = String::new();
    let mut message = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', rest)) => code = String::from_utf8_lossy(rest).into_owned(),
            Some((b'M', rest)) => message = String::from_utf8_lossy(rest).into_owned(),
            _ => {}
        }
    }
    PgClientError::Server { code, message }
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

    #[test]
    fn data_rows_decode_nulls_and_text() {
        let mut body = vec![0, 2];
        body.extend_from_slice(&(-1_i32).to_be_bytes());
        body.extend_from_slice(&2_i32.to_be_bytes());
        body.extend_from_slice(b"hi");
        assert_eq!(data_row(&body).unwrap(), vec![None, Some("hi".to_string())]);
        assert!(data_row(&body[..5]).is_err());
    }
}
