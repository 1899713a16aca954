//! [`TestServer`]: the server in this process, with every stage the config names, in a
//! temporary data directory on ephemeral loopback ports, and a client to talk to it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_server::{Config, Running, Server, Settings};

/// How long a start may be retried: after an in-process shutdown, connection tasks may hold the
/// journal and the hot store for a moment longer.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A server started in this process.
pub struct TestServer {
    running: Option<Running>,
    /// `http://ADDR` of its HTTP listener.
    pub base: String,
    /// A client for the tests' requests.
    pub client: reqwest::Client,
    /// The reader or admin token [`TestServer::get_json`], [`TestServer::sql`] and
    /// [`TestServer::sql_rows`] send, if any.
    pub token: Option<String>,
    data_dir: PathBuf,
    toml: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// Starts a server in a new temporary directory. `toml` is the config file without
    /// `data_dir`, `http` and `pg`, which are set here (its top-level keys come first, as in
    /// any TOML file).
    pub async fn start(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut server = Self::start_in(dir.path(), toml).await;
        server._dir = Some(dir);
        server
    }

    /// Starts a server on the data directory `data_dir` (kept by the caller, for restarts).
    pub async fn start_in(data_dir: &Path, toml: &str) -> Self {
        let running = start(data_dir, toml).await;
        Self {
            base: base_of(&running),
            running: Some(running),
            client: reqwest::Client::new(),
            token: None,
            data_dir: data_dir.to_path_buf(),
            toml: toml.to_string(),
            _dir: None,
        }
    }

    /// Starts a server on `toml` (as [`TestServer::start`] takes it) in a new temporary
    /// directory, expecting the start to fail: the error. Panics if the server starts.
    pub async fn start_error(toml: &str) -> sluice_server::ServerError {
        let dir = tempfile::tempdir().expect("temporary directory");
        match Server::start(settings(dir.path(), toml)).await {
            Ok(running) => {
                let _ = running.shutdown().await;
                panic!("the server started on:\n{toml}")
            }
            Err(e) => e,
        }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `GET path` as JSON, asserting a 2xx.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get_ok(path).await.json().await.expect("a JSON body")
    }

    /// `GET path` as text (`/metrics`), asserting a 2xx.
    pub async fn get_text(&self, path: &str) -> String {
        self.get_ok(path).await.text().await.expect("a text body")
    }

    /// `GET path` with the admin token, asserting a 2xx.
    async fn get_ok(&self, path: &str) -> reqwest::Response {
        let url = self.url(path);
        let resp = self
            .authorized(self.client.get(&url))
            .send()
            .await
            .expect("GET");
        assert!(resp.status().is_success(), "{url}: {}", resp.status());
        resp
    }

    /// `query` over `/v1/sql` once, asserting a 2xx: its rows.
    pub async fn sql(&self, query: &str) -> Vec<Value> {
        let req = self.client.post(self.url("/v1/sql?format=json"));
        let resp = self
            .authorized(req)
            .body(query.to_string())
            .send()
            .await
            .expect("POST /v1/sql");
        let ok = resp.status().is_success();
        let text = resp.text().await.expect("an answer");
        assert!(ok, "{query}: {text}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{query}: {l:?}: {e}")))
            .collect()
    }

    /// `query` over `/v1/sql` until it returns at least `n` rows (see
    /// [`crate::http::sql_rows`]).
    pub async fn sql_rows(&self, query: &str, n: usize) -> Vec<Value> {
        let token = self.token.as_deref();
        crate::http::sql_rows_as(&self.client, &self.base, token, query, n).await
    }

    /// `req` with the bearer token, if there is one.
    pub fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Shuts down in order (drains every stage) and asserts it went cleanly.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
    }

    /// Resolves when the server stopped by itself ([`Running::stopped`]), with why.
    pub async fn stopped(&mut self) -> sluice_server::ServerError {
        self.running
            .as_mut()
            .expect("a running server")
            .stopped()
            .await
    }

    /// Stops without draining, as `serve` does once [`TestServer::stopped`] gave a journal
    /// failure or a lost lease ([`Running::abandon`]).
    pub async fn abandon(mut self) {
        if let Some(r) = self.running.take() {
            r.abandon().await;
        }
    }

    /// The journal the server writes ([`Running::journal`]).
    pub fn journal(&self) -> std::sync::Arc<dyn sluice_journal::Journal> {
        self.running.as_ref().expect("the server runs").journal()
    }

    /// Shuts down and starts again on the same data directory and config; the address changes.
    pub async fn restart(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.expect("clean shutdown");
        }
        let running = start(&self.data_dir, &self.toml).await;
        self.base = base_of(&running);
        self.running = Some(running);
    }
}

/// The settings of `toml` on `data_dir` and ephemeral loopback ports; panics if they are not
/// valid.
fn settings(data_dir: &Path, toml: &str) -> Settings {
    let text = format!(
        "data_dir = {:?}\nhttp = \"127.0.0.1:0\"\npg = \"127.0.0.1:0\"\n{toml}",
        data_dir.display().to_string()
    );
    Config::from_toml(&text)
        .and_then(|c| c.validate())
        .unwrap_or_else(|e| panic!("config: {e}\n{text}"))
}

async fn start(data_dir: &Path, toml: &str) -> Running {
    let settings = settings(data_dir, toml);
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        match Server::start(settings.clone()).await {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < deadline, "server does not start: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn base_of(running: &Running) -> String {
    format!("http://{}", running.http_addr.expect("an HTTP listener"))
}
