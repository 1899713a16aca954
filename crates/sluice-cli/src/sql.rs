//! `sluice sql`: read-only SQL over the lake, straight from the data directory or a config file's
//! `[lake] root` (server running or not) or through a server's `POST /v1/sql`.

use std::path::PathBuf;

use anyhow::Context;
use sluice_warehouse::Warehouse;

/// Arguments of `sluice sql`.
#[derive(clap::Args, Debug)]
pub struct SqlArgs {
    /// Data directory whose lake to query. Default ./sluice-data.
    #[arg(long, conflicts_with = "server")]
    data_dir: Option<PathBuf>,
    /// The server's config file: its `[lake]` section says where the lake is (an `s3://`
    /// root with its endpoint and credentials).
    #[arg(long, conflicts_with = "server")]
    config: Option<PathBuf>,
    /// Query a running server instead (e.g. http://127.0.0.1:8080). Unlike the other
    /// commands, `sql` reads the data directory unless this is given, so `SLUICE_SERVER` does
    /// not apply.
    #[arg(long, alias = "url", value_name = "URL")]
    server: Option<String>,
    /// A reader or admin token for `--server` (needed once the server has any token).
    #[arg(long, env = "SLUICE_TOKEN", requires = "server")]
    token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The query (SELECT, EXPLAIN or SHOW).
    query: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Format {
    Table,
    Csv,
    Json,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Self::Table => "table",
            Self::Csv => "csv",
            Self::Json => "json",
        }
    }
}

/// Runs the query and prints the result.
pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let text = match &args.server {
        Some(url) => remote(url, args.token.as_deref(), &args.query, args.format).await?,
        None => {
            let root = crate::lake::root(args.config.as_deref(), args.data_dir, false).await?;
            let warehouse = Warehouse::open(root)?;
            let output = warehouse.query(&args.query).await?;
            match args.format {
                Format::Table => sluice_warehouse::format::to_table(&output)?,
                Format::Csv => sluice_warehouse::format::to_csv(&output)?,
                Format::Json => sluice_warehouse::format::to_json_lines(&output)?,
            }
        }
    };
    print!("{text}");
    if !text.is_empty() && !text.ends_with('\n') {
        println!();
    }
    Ok(())
}

async fn remote(
    url: &str,
    token: Option<&str>,
    query: &str,
    format: Format,
) -> anyhow::Result<String> {
    let endpoint = format!(
        "{}/v1/sql?format={}",
        url.trim_end_matches('/'),
        format.name()
    );
    let mut req = reqwest::Client::new()
        .post(&endpoint)
        .header("content-type", "text/plain")
        .body(query.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {endpoint}"))?;
    let status = resp.status();
    let body = resp.text().await.context("cannot read the answer")?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or(body);
        anyhow::bail!("{status}: {reason}");
    }
    Ok(body)
}
