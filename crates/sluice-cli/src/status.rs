//! `sluice status`: what a running server reports at `GET /v1/cluster` — the nodes (on a shared
//! journal: every node that announced itself, standing by or running), the pipeline lease and,
//! per topic partition, its end and each consumer's position and lag.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::remote::ServerArg;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    server: ServerArg,
    /// A reader or admin token (needed once the server has any token, unless on loopback).
    #[arg(long, env = "SLUICE_TOKEN")]
    token: Option<String>,
    /// Print the server's JSON answer as it is.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let url = format!("{}/v1/cluster", args.server.base());
    let mut req = reqwest::Client::new().get(&url);
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("the answer is not JSON")?;
    if !status.is_success() {
        bail!("{status}: {}", body["error"].as_str().unwrap_or_default());
    }
    if args.json {
        println!("{body}");
    } else {
        print!("{}", render(&body));
    }
    Ok(())
}

/// The answer as three tables: nodes, leases, partitions.
fn render(c: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let _ = writeln!(
        out,
        "journal {} (asked node {})\n",
        text(&c["backend"]),
        text(&c["node"])
    );
    let mut nodes = vec![row(["NODE", "STATE", "ROLES", "HTTP", "SEEN"])];
    for n in c["nodes"].as_array().into_iter().flatten() {
        let roles = n["roles"]
            .as_array()
            .map(|r| r.iter().map(&text).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let seen = format!("{}s ago", text(&n["seen_s_ago"]));
        nodes.push(row([
            text(&n["name"]),
            text(&n["state"]),
            roles,
            text(&n["http"]),
            seen,
        ]));
    }
    table(&mut out, &nodes);
    let leases = c["leases"].as_array().map_or(&[][..], Vec::as_slice);
    if !leases.is_empty() {
        let mut rows = vec![row(["LEASE", "HOLDER"])];
        rows.extend(
            leases
                .iter()
                .map(|l| row([text(&l["name"]), text(&l["holder"])])),
        );
        table(&mut out, &rows);
    }
    let mut parts = vec![row([
        "TOPIC",
        "PARTITION",
        "END",
        "CONSUMER",
        "NEXT",
        "LAG",
    ])];
    for p in c["partitions"].as_array().into_iter().flatten() {
        let head = [text(&p["topic"]), text(&p["partition"]), text(&p["end"])];
        let consumers = p["consumers"].as_object();
        if consumers.is_none_or(|c| c.is_empty()) {
            parts.push(row([&head[0], &head[1], &head[2], "-", "-", "-"]));
        }
        for (group, at) in consumers.into_iter().flatten() {
            let (next, lag) = (text(&at["next"]), text(&at["lag"]));
            parts.push(row([&head[0], &head[1], &head[2], group, &next, &lag]));
        }
    }
    table(&mut out, &parts);
    out
}

fn row<S: AsRef<str>, const N: usize>(cells: [S; N]) -> Vec<String> {
    cells.iter().map(|c| c.as_ref().to_string()).collect()
}

/// `rows` as columns padded to their widest cell, and a blank line after.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render;

    #[test]
    fn renders_nodes_leases_and_lag_per_partition() {
        let answer = json!({
            "backend": "jetstream", "node": "n1",
            "nodes": [
                {"name": "n1", "state": "running", "roles": ["collector", "runner"],
                 "http": "10.0.0.1:8080", "seen_s_ago": 0.4},
                {"name": "n2", "state": "standby", "roles": ["runner"], "http": null,
                 "seen_s_ago": 2.1},
            ],
            "leases": [{"name": "pipeline", "holder": "n1"}],
            "partitions": [
                {"topic": "raw", "partition": 0, "start": 0, "end": 120,
                 "consumers": {"functions": {"next": 100, "lag": 20}}},
                {"topic": "bad", "partition": 0, "start": 0, "end": 0, "consumers": {}},
            ],
        });
        let text = render(&answer);
        let expected = "\
journal jetstream (asked node n1)

NODE  STATE    ROLES             HTTP           SEEN
n1    running  collector,runner  10.0.0.1:8080  0.4s ago
n2    standby  runner            -              2.1s ago

LEASE     HOLDER
pipeline  n1

TOPIC  PARTITION  END  CONSUMER   NEXT  LAG
raw    0          120  functions  100   20
bad    0          0    -          -     -

";
        assert_eq!(text, expected);
    }
}
