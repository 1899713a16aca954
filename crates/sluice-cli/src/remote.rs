//! Which running server a command talks to: `--server <URL>` (or `SLUICE_SERVER`) for every
//! command that asks a server, with `--url` kept as a hidden alias; admin commands add
//! `--admin-token` (or `SLUICE_ADMIN_TOKEN`), and [`AdminApi`] asks with them.

use anyhow::{Context, bail};
use serde_json::Value;

/// The server a command asks when none is named.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `--server`.
#[derive(clap::Args, Debug)]
pub struct ServerArg {
    /// URL of the running server.
    #[arg(
        long = "server",
        alias = "url",
        value_name = "URL",
        global = true,
        env = "SLUICE_SERVER",
        default_value = DEFAULT_SERVER
    )]
    pub url: String,
}

impl ServerArg {
    /// The URL without a trailing slash, to append paths to.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// `--server` and `--admin-token`, for admin requests.
#[derive(clap::Args, Debug)]
pub struct AdminServer {
    #[command(flatten)]
    pub server: ServerArg,
    /// An admin token (the config's `admin_token` or one from `sluice tokens create --role
    /// admin`).
    #[arg(long, global = true, env = "SLUICE_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
}

/// The admin API of a running server: one JSON request at a time, with the admin token, and
/// the server's `error` text as the failure.
pub struct AdminApi {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl AdminApi {
    /// The server and token of `server`.
    pub fn new(server: &AdminServer) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: server.server.base().to_string(),
            token: server.admin_token.clone(),
        }
    }

    /// `method path` with `body` as JSON; the answer's JSON (null when it has none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        // A JSON content type even without a body: an admin POST with none (or a form's) is
        // refused from an unauthenticated local client, as a browser could send it.
        req = match body {
            Some(b) => req.json(&b),
            None => req.header(reqwest::header::CONTENT_TYPE, "application/json"),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("asking {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let reason = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            bail!("{status}: {reason}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}
