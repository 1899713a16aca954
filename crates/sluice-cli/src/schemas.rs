//! `sluice schemas push|list|show`: the Iglu-compatible schema registry.
//!
//! By default these talk to a running server (`--server`, with `--admin-token` when the server has
//! one); with `--data-dir` they work on the registry folder directly (no server needed; a
//! running server sees pushed schemas within a second).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sluice_functions::registry::{PushOutcome, Registry, SchemaKey, schema_files, self_key};

/// Arguments of `sluice schemas`.
#[derive(clap::Args, Debug)]
pub struct SchemasArgs {
    #[command(subcommand)]
    command: SchemasCommand,
    #[command(flatten)]
    server: crate::remote::AdminServer,
    /// Work on this data directory's registry instead of a server.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum SchemasCommand {
    /// Pushes a schema file, or every schema under a folder (a static Iglu repository is
    /// imported as is).
    Push {
        /// A self-describing JSON schema file, or a folder of them.
        path: PathBuf,
    },
    /// Lists the URIs of every schema.
    List,
    /// Prints one schema.
    Show {
        /// `iglu:vendor/name/jsonschema/M-R-A`.
        uri: String,
    },
}

/// Runs `sluice schemas`.
pub async fn run(args: SchemasArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.data_dir {
        return local(dir, args.command);
    }
    let client = reqwest::Client::new();
    let base = args.server.server.base();
    match args.command {
        SchemasCommand::Push { path } => {
            let files = files_of(&path)?;
            let mut failed = 0;
            for file in &files {
                let body =
                    std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
                let key = serde_json::from_slice(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|v| self_key(&v));
                let key = match key {
                    Ok(k) => k,
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        failed += 1;
                        continue;
                    }
                };
                let mut req = client
                    .put(format!("{base}/v1/schemas/{}", key.path()))
                    .header("content-type", "application/json")
                    .body(body);
                if let Some(t) = &args.server.admin_token {
                    req = req.bearer_auth(t);
                }
                let resp = req
                    .send()
                    .await
                    .with_context(|| format!("pushing to {base}"))?;
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.is_success() {
                    let outcome = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .and_then(|v| v["outcome"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    println!("{} {outcome}", key.uri());
                } else {
                    eprintln!("{}: {status} {text}", key.uri());
                    failed += 1;
                }
            }
            if failed > 0 {
                bail!("{failed} of {} schemas were not pushed", files.len());
            }
            Ok(())
        }
        SchemasCommand::List => {
            let token = args.server.admin_token.as_deref();
            let v = get_json(&client, &format!("{base}/v1/schemas"), token).await?;
            for uri in v["schemas"].as_array().into_iter().flatten() {
                println!("{}", uri.as_str().unwrap_or_default());
            }
            Ok(())
        }
        SchemasCommand::Show { uri } => {
            let key = SchemaKey::parse_uri(&uri).map_err(anyhow::Error::msg)?;
            let mut req = client.get(format!("{base}/v1/schemas/{}", key.path()));
            if let Some(t) = &args.server.admin_token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.with_context(|| format!("asking {base}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("{status} {text}");
            }
            println!("{text}");
            Ok(())
        }
    }
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("asking {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

fn files_of(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let files = schema_files(path);
        if files.is_empty() {
            bail!("no schema files under {}", path.display());
        }
        Ok(files)
    } else if path.is_file() {
        Ok(vec![path.to_path_buf()])
    } else {
        bail!("{} is neither a file nor a folder", path.display())
    }
}

fn local(data_dir: &Path, command: SchemasCommand) -> anyhow::Result<()> {
    let registry = Registry::open(data_dir.join("schemas")).map_err(anyhow::Error::msg)?;
    match command {
        SchemasCommand::Push { path } => {
            let files = files_of(&path)?;
            let mut failed = 0;
            for file in &files {
                let result = std::fs::read(file)
                    .map_err(|e| e.to_string())
                    .and_then(|b| registry.push(None, &b).map_err(|e| e.to_string()));
                match result {
                    Ok((key, PushOutcome::Created)) => println!("{} created", key.uri()),
                    Ok((key, PushOutcome::Unchanged)) => println!("{} unchanged", key.uri()),
                    Err(e) => {
                        eprintln!("{}: {e}", file.display());
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} schemas were not pushed", files.len());
            }
        }
        SchemasCommand::List => {
            for uri in registry.list().map_err(anyhow::Error::msg)? {
                println!("{uri}");
            }
        }
        SchemasCommand::Show { uri } => {
            let key = SchemaKey::parse_uri(&uri).map_err(anyhow::Error::msg)?;
            match registry.get(&key).map_err(anyhow::Error::msg)? {
                Some(text) => println!("{text}"),
                None => bail!("no schema {uri}"),
            }
        }
    }
    Ok(())
}
