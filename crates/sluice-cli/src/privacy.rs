//! `sluice privacy delete --user ID [--wait]` and `sluice privacy status [REQUEST] [--user ID]`:
//! deletion requests to a running server (`/v1/privacy/deletions`; the rules are in
//! `sluice-server/src/privacy/mod.rs`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_server::{DeletionRequest, DeletionStatus};

/// Arguments of `sluice privacy`.
#[derive(clap::Args, Debug)]
pub struct PrivacyArgs {
    #[command(subcommand)]
    command: PrivacyCommand,
    #[command(flatten)]
    server: crate::remote::AdminServer,
}

#[derive(clap::Subcommand, Debug)]
enum PrivacyCommand {
    /// Deletes a person's events, bad rows, hot-tier state and loaded rows, and drops their
    /// new events from now on.
    Delete {
        /// A user id or anonymous id (matched against both); repeat for several.
        #[arg(long = "user", alias = "id", value_name = "ID", required = true)]
        ids: Vec<String>,
        /// Wait until the request is done and print what was deleted.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (the request goes on).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Shows one request, or every request (those naming a person with --user).
    Status {
        /// The request id (`del_…`).
        request: Option<String>,
        /// Only requests naming this id.
        #[arg(long = "user", alias = "id", value_name = "ID")]
        id: Option<String>,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `sluice privacy`.
pub async fn run(args: PrivacyArgs) -> anyhow::Result<()> {
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("{}/v1/privacy/deletions", args.server.server.base()),
        token: args.server.admin_token.clone(),
    };
    match args.command {
        PrivacyCommand::Delete { ids, wait, timeout } => {
            let body = serde_json::json!({ "ids": ids });
            let r: DeletionRequest = client.send(client.post(&body)).await?;
            println!(
                "{} {} ({} ids)",
                r.id,
                status_name(r.status),
                r.subjects.len()
            );
            if wait {
                let done = client.wait(&r.id, timeout).await?;
                print_request(&done);
            }
            Ok(())
        }
        PrivacyCommand::Status { request, id, json } => {
            let list: Vec<DeletionRequest> = match request {
                Some(r) => vec![client.send(client.get(&format!("/{r}"), None)).await?],
                None => {
                    let v: serde_json::Value = client.send(client.get("", id.as_deref())).await?;
                    serde_json::from_value(v["requests"].clone()).context("reading the requests")?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no deletion requests");
            }
            if !json {
                list.iter().for_each(print_request);
            }
            Ok(())
        }
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn post(&self, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.auth(self.http.post(&self.base).json(body))
    }

    fn get(&self, path: &str, id: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(id) = id {
            req = req.query(&[("id", id)]);
        }
        self.auth(req)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("asking {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("{status} {text}");
        }
        serde_json::from_str(&text).context("reading the answer")
    }

    /// Polls request `id` until it is done, printing each change of step.
    async fn wait(&self, id: &str, timeout: Duration) -> anyhow::Result<DeletionRequest> {
        let deadline = Instant::now() + timeout;
        let mut shown = String::new();
        loop {
            let r: DeletionRequest = self.send(self.get(&format!("/{id}"), None)).await?;
            if r.status == DeletionStatus::Done {
                return Ok(r);
            }
            let line = match (&r.waiting_for, &r.last_error) {
                (_, Some(e)) => format!("{} (attempt {}: {e})", status_name(r.status), r.attempts),
                (Some(w), None) => format!("{} for {w}", status_name(r.status)),
                (None, None) => status_name(r.status).to_string(),
            };
            if line != shown {
                eprintln!("{id}: {line}");
                shown = line;
            }
            if Instant::now() >= deadline {
                bail!("{id} is not done after {timeout:?} ({shown}); it goes on in the server");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn status_name(s: DeletionStatus) -> &'static str {
    match s {
        DeletionStatus::Suppressed => "suppressed",
        DeletionStatus::Waiting => "waiting",
        DeletionStatus::Erasing => "erasing",
        DeletionStatus::Done => "done",
    }
}

fn print_request(r: &DeletionRequest) {
    println!(
        "{} · {} · requested {} by {} · {} ids",
        r.id,
        status_name(r.status),
        r.requested_at,
        r.requested_by,
        r.subjects.len()
    );
    for t in r.lake.iter().filter(|t| t.rows_deleted > 0) {
        println!("  lake {}: {} rows", t.table, t.rows_deleted);
    }
    for t in &r.loader {
        println!("  loader {}: {} rows", t.table, t.rows_deleted);
    }
    if r.status == DeletionStatus::Done {
        println!("  hot tier: {} keys", r.hot_keys_deleted);
    }
    for n in &r.not_covered {
        println!("  not covered: {n}");
    }
    if let Some(t) = &r.purge_after {
        println!("  old file versions removed by the first vacuum after {t}");
    }
    if let Some(e) = &r.last_error {
        println!("  retrying after: {e}");
    }
}
