//! `sluice functions deploy|list|show|rollback|delete|logs|stats|reseal`: user JavaScript
//! functions in a running server (`--server`, with `--admin-token` when the server has one). A
//! deploy or a rollback takes effect from the runner's next batch, without a restart; a reseal
//! seals every stored secret with the server's current key, so that the key it replaced can go.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::remote::AdminApi as Api;

/// Arguments of `sluice functions`.
#[derive(clap::Args, Debug)]
pub struct FunctionsArgs {
    #[command(subcommand)]
    command: FunctionsCommand,
    #[command(flatten)]
    server: crate::remote::AdminServer,
}

#[derive(clap::Subcommand, Debug)]
enum FunctionsCommand {
    /// Deploys FILE (an ES module exporting `process(events, ctx)` or `transform(event, ctx)`)
    /// as a new version of NAME and makes it run. Settings not given take their defaults.
    Deploy(Box<DeployArgs>),
    /// Lists the deployed functions.
    List,
    /// Shows a function: versions, settings (secrets hidden) and the running code.
    Show {
        /// Function name.
        name: String,
    },
    /// Runs the version that ran before the current one, or `--to` a given one.
    Rollback {
        /// Function name.
        name: String,
        /// The version to run.
        #[arg(long)]
        to: Option<u32>,
    },
    /// Removes a function and its versions.
    Delete {
        /// Function name.
        name: String,
    },
    /// Prints what a function logged (`console.log`, `ctx.log`, its failures).
    Logs {
        /// Function name.
        name: String,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
    },
    /// Metering per function and version: invocations, errors, durations, GB-seconds and the
    /// cost of the same work on AWS Lambda.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Seals every stored secret of every version (those sealed with a previous key, and those
    /// stored before there was a key) with the server's current `secrets_key_file`, in place:
    /// no version is created. Afterwards the previous keys can be removed.
    Reseal {
        /// Only say what would be resealed and which keys the stored secrets use.
        #[arg(long)]
        dry_run: bool,
        /// Print the server's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct DeployArgs {
    /// Function name (a-z, 0-9, - and _).
    name: String,
    /// The module file.
    file: PathBuf,
    /// Where it runs: after `canonicalize`, `validate`, `enrich` (default) or a function.
    #[arg(long)]
    after: Option<String>,
    /// Most events per invocation (default 100).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Longest wait to fill a batch, ms (default 0).
    #[arg(long)]
    batch_window: Option<u64>,
    /// Longest invocation, ms (default 3000).
    #[arg(long)]
    timeout: Option<u64>,
    /// Memory limit, MiB (default 128).
    #[arg(long)]
    memory: Option<u32>,
    /// Invocations of one partition's events at a time (default 1).
    #[arg(long)]
    parallelism: Option<u32>,
    /// Retries of a failed batch that cannot be split further (default 2).
    #[arg(long)]
    max_retries: Option<u32>,
    /// Do not split failed batches in two.
    #[arg(long)]
    no_bisect: bool,
    /// Events older than this many seconds are not invoked again (default: no limit).
    #[arg(long)]
    max_record_age: Option<u64>,
    /// `bad` (default): failed events become bad rows; `skip`: they go on unchanged.
    #[arg(long)]
    on_failure: Option<String>,
    /// `ctx.config`: a JSON object, or @FILE.
    #[arg(long)]
    config: Option<String>,
    /// `ctx.secrets.KEY`, repeatable: KEY=VALUE.
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secrets: Vec<String>,
}

/// Runs `sluice functions`.
pub async fn run(args: FunctionsArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server);
    match args.command {
        FunctionsCommand::Deploy(d) => deploy(&api, *d).await,
        FunctionsCommand::List => list(&api).await,
        FunctionsCommand::Show { name } => show(&api, &name).await,
        FunctionsCommand::Rollback { name, to } => rollback(&api, &name, to).await,
        FunctionsCommand::Delete { name } => delete(&api, &name).await,
        FunctionsCommand::Logs {
            name,
            lines,
            follow,
        } => logs(&api, &name, lines, follow).await,
        FunctionsCommand::Stats { json } => stats(&api, json).await,
        FunctionsCommand::Reseal { dry_run, json } => reseal(&api, dry_run, json).await,
    }
}

/// `sluice functions list`: a table of the deployed functions.
async fn list(api: &Api) -> anyhow::Result<()> {
    let v = api
        .call(reqwest::Method::GET, "/v1/functions", None)
        .await?;
    let list = v["functions"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no functions deployed");
        return Ok(());
    }
    println!(
        "{:<24} {:>7} {:<6} {:<16} {:>8}  deployed",
        "name", "version", "mode", "after", "versions"
    );
    for f in list {
        println!(
            "{:<24} {:>7} {:<6} {:<16} {:>8}  {}",
            f["name"].as_str().unwrap_or_default(),
            f["version"],
            f["mode"].as_str().unwrap_or_default(),
            f["after"].as_str().unwrap_or_default(),
            f["versions"],
            f["deployed_at"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// `sluice functions show`: a function's settings, then the code of its active version.
async fn show(api: &Api, name: &str) -> anyhow::Result<()> {
    let v = api
        .call(reqwest::Method::GET, &format!("/v1/functions/{name}"), None)
        .await?;
    let mut meta = v.clone();
    if let Some(o) = meta.as_object_mut() {
        o.remove("code");
    }
    println!("{}", serde_json::to_string_pretty(&meta)?);
    println!("--- code (v{}) ---", v["active"]);
    println!("{}", v["code"].as_str().unwrap_or_default());
    Ok(())
}

/// `sluice functions rollback`: makes an earlier version the active one.
async fn rollback(api: &Api, name: &str, to: Option<u32>) -> anyhow::Result<()> {
    let body = json!({ "to": to });
    let v = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/functions/{name}/rollback"),
            Some(body),
        )
        .await?;
    println!("{name} now runs v{}", v["version"]);
    Ok(())
}

/// `sluice functions delete`: removes a function and its versions.
async fn delete(api: &Api, name: &str) -> anyhow::Result<()> {
    api.call(
        reqwest::Method::DELETE,
        &format!("/v1/functions/{name}"),
        None,
    )
    .await?;
    println!("{name} deleted");
    Ok(())
}

/// `sluice functions stats`: each function's invocations, errors, events, latency and cost,
/// as a table or as JSON.
async fn stats(api: &Api, json: bool) -> anyhow::Result<()> {
    let v = api
        .call(reqwest::Method::GET, "/v1/functions/stats", None)
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v["stats"])?);
        return Ok(());
    }
    let stats = v["stats"].as_array().cloned().unwrap_or_default();
    println!(
        "{:<20} {:>4} {:>11} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9} {:>11} {:>12}",
        "function",
        "ver",
        "invocations",
        "errors",
        "events in",
        "out",
        "failed",
        "p50 ms",
        "p99 ms",
        "GB-s",
        "Lambda USD"
    );
    for s in stats {
        let errors: u64 = s["errors"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        println!(
            "{:<20} {:>4} {:>11} {:>7} {:>10} {:>10} {:>8} {:>9} {:>9} {:>11.4} {:>12.6}",
            s["function"].as_str().unwrap_or_default(),
            s["version"],
            s["invocations"],
            errors,
            s["events_in"],
            s["events_out"],
            s["events_failed"],
            s["duration_p50_ms"],
            s["duration_p99_ms"],
            s["gb_seconds"].as_f64().unwrap_or(0.0),
            s["lambda_cost_usd"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// `sluice functions reseal`: every stored secret sealed with the current key; prints what was
/// resealed per function and the keys in use afterwards (with `--dry-run`: what would be, and
/// the keys in use now).
async fn reseal(api: &Api, dry_run: bool, json: bool) -> anyhow::Result<()> {
    let path = match dry_run {
        true => "/v1/functions:reseal?dry_run=true",
        false => "/v1/functions:reseal",
    };
    let v = api.call(reqwest::Method::POST, path, None).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", reseal_summary(&v));
    Ok(())
}

/// The summary `sluice functions reseal` prints of the server's answer `v`.
fn reseal_summary(v: &Value) -> String {
    let key = v["key"].as_str().unwrap_or_default();
    let dry_run = v["dry_run"].as_bool().unwrap_or(false);
    let (verb, state) = match dry_run {
        true => ("would reseal", "in use now"),
        false => ("resealed", "in use"),
    };
    let mut out = format!(
        "{verb} {} with key {key}{}\n",
        counted(&v["resealed"]),
        origin(&v["resealed"])
    );
    for f in v["functions"].as_array().into_iter().flatten() {
        let versions: Vec<String> = f["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| format!("v{n}"))
            .collect();
        let which = match versions.is_empty() {
            true => "nothing to reseal".to_string(),
            false => format!("{}{}", versions.join(" "), origin(&f["resealed"])),
        };
        out += &format!("  {:<24} {which}\n", f["name"].as_str().unwrap_or_default());
    }
    out += &format!("keys {state}: {}\n", keys_in_use(&v["in_use"]));
    for why in v["refused"].as_array().into_iter().flatten() {
        out += &format!("refused: {}\n", why.as_str().unwrap_or_default());
    }
    out
}

/// `N secret value(s)` of counts `c` (`{"by_key": {id: n}, "plain": n}`).
fn counted(c: &Value) -> String {
    let by_key: u64 = c["by_key"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let n = by_key + c["plain"].as_u64().unwrap_or(0);
    format!("{n} secret value{}", if n == 1 { "" } else { "s" })
}

/// ` (N from key K, …, N stored as given)`, or nothing when `c` counts none.
fn origin(c: &Value) -> String {
    let from = |k: &str, n| format!("{n} from key {k}");
    let parts = count_parts(c, from, |n| format!("{n} stored as given"));
    match parts.is_empty() {
        true => String::new(),
        false => format!(" ({})", parts.join(", ")),
    }
}

/// `K (N), …, as given (N)`, or `none` when `c` counts nothing.
fn keys_in_use(c: &Value) -> String {
    let parts = count_parts(
        c,
        |k, n| format!("{k} ({n})"),
        |n| format!("as given ({n})"),
    );
    match parts.is_empty() {
        true => "none".to_string(),
        false => parts.join(", "),
    }
}

/// Counts `c` (`{"by_key": {id: n}, "plain": n}`), each key's written by `key` and the plain
/// ones by `plain`; a count of 0 is left out.
fn count_parts(
    c: &Value,
    key: impl Fn(&str, u64) -> String,
    plain: impl Fn(u64) -> String,
) -> Vec<String> {
    let by_key = c["by_key"].as_object().into_iter().flatten();
    let mut parts: Vec<String> = by_key
        .filter_map(|(k, n)| n.as_u64().filter(|n| *n > 0).map(|n| key(k, n)))
        .collect();
    match c["plain"].as_u64().unwrap_or(0) {
        0 => {}
        n => parts.push(plain(n)),
    }
    parts
}

async fn deploy(api: &Api, d: DeployArgs) -> anyhow::Result<()> {
    let code = std::fs::read_to_string(&d.file)
        .with_context(|| format!("reading {}", d.file.display()))?;
    let mut body = serde_json::Map::new();
    body.insert("code".into(), Value::String(code));
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    set("after", d.after.map(Value::from));
    set("batch_size", d.batch_size.map(Value::from));
    set("batch_window_ms", d.batch_window.map(Value::from));
    set("timeout_ms", d.timeout.map(Value::from));
    set("memory_mb", d.memory.map(Value::from));
    set("parallelism", d.parallelism.map(Value::from));
    set("max_retries", d.max_retries.map(Value::from));
    set("bisect_on_error", d.no_bisect.then_some(Value::Bool(false)));
    set("max_record_age_s", d.max_record_age.map(Value::from));
    set("on_failure", d.on_failure.map(Value::from));
    let config = match d.config {
        Some(c) => {
            let text = match c.strip_prefix('@') {
                Some(path) => {
                    std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
                }
                None => c,
            };
            Some(serde_json::from_str::<Value>(&text).context("--config is not JSON")?)
        }
        None => None,
    };
    set("config", config);
    if !d.secrets.is_empty() {
        let mut secrets = serde_json::Map::new();
        for s in &d.secrets {
            let Some((k, v)) = s.split_once('=') else {
                bail!("--secret takes KEY=VALUE, got {s:?}");
            };
            secrets.insert(k.to_string(), Value::String(v.to_string()));
        }
        set("secrets", Some(Value::Object(secrets)));
    }
    let v = api
        .call(
            reqwest::Method::PUT,
            &format!("/v1/functions/{}", d.name),
            Some(Value::Object(body)),
        )
        .await?;
    println!(
        "{} v{} {} ({} mode)",
        d.name,
        v["version"],
        v["outcome"].as_str().unwrap_or_default(),
        v["mode"].as_str().unwrap_or_default()
    );
    Ok(())
}

async fn logs(api: &Api, name: &str, lines: usize, follow: bool) -> anyhow::Result<()> {
    async fn fetch(api: &Api, name: &str, n: usize) -> anyhow::Result<Value> {
        api.call(
            reqwest::Method::GET,
            &format!("/v1/functions/{name}/logs?lines={n}"),
            None,
        )
        .await
    }
    let text = |v: &Value| -> Vec<String> {
        v["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect()
    };
    let mut seen = text(&fetch(api, name, lines).await?);
    for l in &seen {
        println!("{l}");
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = text(&fetch(api, name, 1000).await?);
        // Print what follows the last line already printed.
        let start = seen
            .last()
            .and_then(|last| now.iter().rposition(|l| l == last).map(|i| i + 1))
            .unwrap_or(0);
        for l in &now[start..] {
            println!("{l}");
        }
        if !now.is_empty() {
            seen = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reseal_summary_says_what_was_resealed_and_which_keys_are_in_use() {
        let answer = json!({
            "key": "bbbbbbbb",
            "dry_run": false,
            "functions": [
                {"name": "salted", "versions": [1, 2],
                 "resealed": {"by_key": {"aaaaaaaa": 3}, "plain": 0},
                 "in_use": {"by_key": {"bbbbbbbb": 3}, "plain": 0}},
                {"name": "tier", "versions": [],
                 "resealed": {"by_key": {}, "plain": 0},
                 "in_use": {"by_key": {}, "plain": 0}},
                {"name": "early", "versions": [1],
                 "resealed": {"by_key": {}, "plain": 1},
                 "in_use": {"by_key": {"bbbbbbbb": 1}, "plain": 0}}
            ],
            "resealed": {"by_key": {"aaaaaaaa": 3}, "plain": 1},
            "in_use": {"by_key": {"bbbbbbbb": 4}, "plain": 0},
            "refused": []
        });
        assert_eq!(
            reseal_summary(&answer),
            "resealed 4 secret values with key bbbbbbbb (3 from key aaaaaaaa, 1 stored as given)\n\
             \x20 salted                   v1 v2 (3 from key aaaaaaaa)\n\
             \x20 tier                     nothing to reseal\n\
             \x20 early                    v1 (1 stored as given)\n\
             keys in use: bbbbbbbb (4)\n"
        );
        let dry = json!({
            "key": "bbbbbbbb",
            "dry_run": true,
            "functions": [],
            "resealed": {"by_key": {}, "plain": 0},
            "in_use": {"by_key": {"aaaaaaaa": 1, "cccccccc": 1}, "plain": 2},
            "refused": ["secret \"K\" of function \"f\" v3 is sealed with key \"cccccccc\""]
        });
        assert_eq!(
            reseal_summary(&dry),
            "would reseal 0 secret values with key bbbbbbbb\n\
             keys in use now: aaaaaaaa (1), cccccccc (1), as given (2)\n\
             refused: secret \"K\" of function \"f\" v3 is sealed with key \"cccccccc\"\n"
        );
    }
}
