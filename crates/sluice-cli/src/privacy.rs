//! `sluice privacy delete --user ID [--wait]` and `sluice privacy status [REQUEST] [--user ID]`:
//! deletion requests to a running server (`/v1/privacy/deletions`; the rules are in
//! `sluice-server/src/privacy/mod.rs`).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::Method;
use sluice_server::{DeletionRequest, DeletionStatus};

use crate::remote::AdminApi;

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
    let api = AdminApi::new(&args.server);
    match args.command {
        PrivacyCommand::Delete { ids, wait, timeout } => {
            let body = serde_json::json!({ "ids": ids });
            let r: DeletionRequest = read(api.call(Method::POST, PATH, Some(body)).await?)?;
            println!(
                "{} {} ({} ids)",
                r.id,
                status_name(r.status),
                r.subjects.len()
            );
            if wait {
                let done = wait_done(&api, &r.id, timeout).await?;
                print_request(&done);
            }
            Ok(())
        }
        PrivacyCommand::Status { request, id, json } => {
            let list: Vec<DeletionRequest> = match (request, id) {
                (Some(r), _) => vec![read(
                    api.call(Method::GET, &format!("{PATH}/{r}"), None).await?,
                )?],
                (None, id) => {
                    let path = match id {
                        Some(id) => format!("{PATH}?{}", query("id", &id)),
                        None => PATH.to_string(),
                    };
                    let mut v = api.call(Method::GET, &path, None).await?;
                    read(v["requests"].take())?
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

const PATH: &str = "/v1/privacy/deletions";

fn read<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("reading the answer")
}

/// `name=value`, percent-encoded.
fn query(name: &str, value: &str) -> String {
    let mut url = reqwest::Url::parse("http://localhost/").expect("a valid url");
    url.query_pairs_mut().append_pair(name, value);
    url.query().unwrap_or_default().to_string()
}

/// Polls request `id` until it is done, printing each change of step.
async fn wait_done(api: &AdminApi, id: &str, timeout: Duration) -> anyhow::Result<DeletionRequest> {
    let deadline = Instant::now() + timeout;
    let mut shown = String::new();
    loop {
        let r: DeletionRequest = read(api.call(Method::GET, &format!("{PATH}/{id}"), None).await?)?;
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
