//! The `sluice` binary: command-line parsing, the tracing subscriber, exit codes.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr); 2 a usage error (from clap); 70
//! (`EX_SOFTWARE`) `serve` stopped because the journal failed (an fsync or write error): the
//! state on disk is unknown, so it exits at once without draining, and the next start
//! recovers from disk; 75 (`EX_TEMPFAIL`) `serve` on a shared journal lost its lease on the
//! pipeline (another node runs it now), so it exits at once without draining, and started
//! again it stands by.

// Printing results is what a CLI is for; the workspace denies it elsewhere.
#![allow(clippy::print_stdout)]

mod bench;
mod bench_hot;
mod bench_protocols;
mod bench_sustained;
mod functions;
mod keys;
mod lake;
mod privacy;
mod remote;
mod replay;
mod schemas;
mod send;
mod sql;
mod status;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_server::{Config, Server, ServerError};

/// The exit code of `serve` when the journal failed.
const EXIT_JOURNAL_FAILED: i32 = 70;
/// The exit code of `serve` when this node lost its lease on the pipeline.
const EXIT_LEASE_LOST: i32 = 75;

/// Sluice: a self-hosted event data pipeline in one binary.
#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about,
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 70 the journal failed \
                  (serve; restart to recover from disk), 75 the node lost its lease on the \
                  pipeline to another node (serve; restart to stand by)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the pipeline: collector, runner, lake delivery, hot tier and SQL.
    Serve(ServeArgs),
    /// Runs a read-only SQL query over the lake.
    Sql(sql::SqlArgs),
    /// Sends NDJSON events to a server, with batching, retries and a local spool.
    Send(send::SendArgs),
    /// Measures durable ingest against the machine's baselines.
    Bench(bench::BenchArgs),
    /// Creates, lists and revokes write keys.
    Keys(keys::KeysArgs),
    /// Creates, lists and revokes reader and admin tokens.
    Tokens(tokens::TokensArgs),
    /// Pushes, lists and shows schemas of the registry.
    Schemas(schemas::SchemasArgs),
    /// Deploys, rolls back, lists and meters user JavaScript functions.
    Functions(functions::FunctionsArgs),
    /// Re-drives bad rows or raw records through today's pipeline.
    Replay(replay::ReplayArgs),
    /// Lake table upkeep: `optimize` (compaction), `vacuum`, `expire` and `verify`.
    Lake(lake::LakeArgs),
    /// Deletes a person's data everywhere and suppresses their new events (GDPR, CCPA).
    Privacy(privacy::PrivacyArgs),
    /// Shows the nodes, the pipeline lease and each partition's consumers and lag.
    Status(status::StatusArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Config file (TOML); every field is optional.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (journal and lake). Default ./sluice-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address. Default 127.0.0.1:8080.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Postgres wire listen address. Default 127.0.0.1:5433.
    #[arg(long)]
    pg: Option<SocketAddr>,
    /// Roles to run, comma separated: collector, runner, lake, warehouse, hot, predict
    /// (default all; predict needs hot; `functions` is an older name of runner).
    #[arg(long, value_delimiter = ',')]
    role: Vec<String>,
}

/// Rust allocations go to jemalloc: with glibc's malloc, resident memory under steady load grew
/// by 230–460 bytes an event beyond everything the process still held, its arenas keeping
/// what they freed; with jemalloc it stays flat (`sluice bench --sustained`, README).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Caps glibc's malloc, which C libraries still use, at one arena per core (its default is
/// eight per core), unless `MALLOC_ARENA_MAX` says otherwise. Runs before any thread starts.
fn bound_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable; no thread has started, and a refusal (0) leaves
        // glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

#[allow(clippy::exit)] // the one place that turns errors into exit codes
fn main() {
    bound_malloc_arenas();
    let cli = Cli::parse();
    init_tracing();
    report_caught_upload_panics();
    // Two TLS stacks end up in the dependency tree; pick one explicitly so that no TLS
    // handshake panics for want of a process-level provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Sql(args) => sql::run(args).await,
            Command::Send(args) => send::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Keys(args) => keys::run(args),
            Command::Tokens(args) => tokens::run(args),
            Command::Schemas(args) => schemas::run(args).await,
            Command::Functions(args) => functions::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Lake(args) => lake::run(args).await,
            Command::Privacy(args) => privacy::run(args).await,
            Command::Status(args) => status::run(args).await,
        }
    });
    // The runtime is still alive here: exiting does not wait for its tasks, which after a
    // journal failure may never finish.
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(match e.downcast_ref() {
            Some(ServerError::JournalFailed) => EXIT_JOURNAL_FAILED,
            Some(ServerError::LeaseLost) => EXIT_LEASE_LOST,
            _ => 1,
        });
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    // The Delta kernel logs a harmless ERROR when it looks for a table that does not exist yet.
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        EnvFilter::new("info,buoyant_kernel=off,deltalake=warn,datafusion=warn")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// A failed Parquet upload (a full disk) leaves object_store's `BufWriter` shut down, and its
/// `abort` then panics by design ("Already shut down"); delta-rs catches that panic and returns
/// the upload's own error, which the lake sink retries. The default hook would still print the
/// caught panic, with a backtrace hint, on every retry: this one logs it as the warning it is
/// and leaves every other panic to the default hook.
fn report_caught_upload_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_buffered_writer = info.location().is_some_and(|l| {
            l.file().contains("object_store") && l.file().ends_with("buffered.rs")
        });
        let message = info.payload().downcast_ref::<&str>().copied();
        if in_buffered_writer && message == Some("Already shut down") {
            tracing::warn!(
                "a failed lake upload could not be aborted (its parts, if any, are left for \
                 vacuum); the write is retried"
            );
            return;
        }
        default(info);
    }));
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(h) = args.http {
        config.http = h;
    }
    if let Some(p) = args.pg {
        config.pg = p;
    }
    if !args.role.is_empty() {
        config.roles = args.role;
    }
    let settings = config.validate()?;
    let mut running = Server::start(settings).await?;
    if let Some(addr) = running.http_addr {
        // Tests and scripts read this line to learn the port when listening on port 0.
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        println!("sluice listening on {scheme}://{addr}");
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let stage_error = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = sigterm.recv() => None,
        e = running.stopped() => Some(e),
    };
    if let Some(e @ (ServerError::JournalFailed | ServerError::LeaseLost)) = stage_error {
        // Nothing can be made durable any more, or another node is the one to do it: exit
        // without draining.
        tracing::error!(error = %e, "exiting without draining");
        running.abandon().await;
        return Err(e.into());
    }
    if let Some(e) = &stage_error {
        tracing::error!(error = %e, "a stage stopped; shutting down");
    }
    tracing::info!("shutting down");
    running.shutdown().await?;
    match stage_error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
