//! `sluice replay --bad | --raw`: asks a running server to re-drive bad rows, or a range of raw
//! records, through today's function chain, without duplicating what is already good
//! (`POST /v1/replay`; the rules are in `sluice-server/src/replay.rs`).

use anyhow::{Context, bail};
use sluice_server::ReplayReport;

/// Arguments of `sluice replay`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["bad", "raw"])))]
pub struct ReplayArgs {
    /// Re-drive the bad rows.
    #[arg(long)]
    bad: bool,
    /// Re-drive raw records (with --from/--to).
    #[arg(long)]
    raw: bool,
    /// Only bad rows of this kind: size, parse, schema_violation, enrichment_failure,
    /// function_failure, event_time.
    #[arg(long)]
    kind: Option<String>,
    /// Only events received at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only events received before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Count what would be replayed; append nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    server: crate::remote::AdminServer,
}

/// Runs `sluice replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "bad": args.bad,
        "raw": args.raw,
        "kind": args.kind,
        "from": args.from,
        "to": args.to,
        "dry_run": args.dry_run,
    });
    let url = format!("{}/v1/replay", args.server.server.base());
    let mut req = reqwest::Client::new().post(&url).json(&body);
    if let Some(t) = &args.server.admin_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("asking {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{status} {text}");
    }
    let r: ReplayReport = serde_json::from_str(&text).context("reading the answer")?;
    println!(
        "scanned {} · candidates {} · already good {} · unreplayable {} · {} {}",
        r.scanned,
        r.candidates,
        r.already_good,
        r.unreplayable,
        if r.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        if r.dry_run {
            r.candidates - r.already_good
        } else {
            r.replayed
        },
    );
    Ok(())
}
