//! `sluice lake optimize|vacuum|expire|verify`: table upkeep by hand, on the data directory's lake or the
//! `[lake] root` of a config file (safe while a server runs: compaction and vacuum are Delta
//! commits like any other writer's).

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_lake::LakeRoot;

/// Arguments of `sluice lake`.
#[derive(clap::Args, Debug)]
pub struct LakeArgs {
    #[command(subcommand)]
    command: LakeCommand,
}

/// Where the lake is, the same for every subcommand.
#[derive(clap::Args, Debug)]
struct Lake {
    /// Data directory. Default ./sluice-data.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's config file: its `[lake]` section says where the lake is (an `s3://` root
    /// with its endpoint and credentials).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Lake {
    async fn root(self, write: bool) -> anyhow::Result<LakeRoot> {
        root(self.config.as_deref(), self.data_dir, write).await
    }
}

#[derive(clap::Subcommand, Debug)]
enum LakeCommand {
    /// Compacts small files into large ones and writes a checkpoint, per table.
    Optimize {
        #[command(flatten)]
        lake: Lake,
        /// Only these tables (repeatable). Default: every table.
        #[arg(long)]
        table: Vec<String>,
        /// zstd level of the compacted files.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
    },
    /// Deletes files no table version younger than the retention references.
    Vacuum {
        #[command(flatten)]
        lake: Lake,
        /// Only these tables (repeatable). Default: every table.
        #[arg(long)]
        table: Vec<String>,
        /// Keep files unreferenced for less than this ("7d", "24h"). Below 1h, queries that
        /// are running may lose their files: needs --force.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// Allow a retention below 1h.
        #[arg(long)]
        force: bool,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Reads every data file the current version of each table references: checks its length
    /// and CRC32C against its `add` tags, where it has them, and that it decodes as Parquet.
    /// Exits non-zero when a file is damaged.
    Verify {
        #[command(flatten)]
        lake: Lake,
        /// Only these tables (repeatable). Default: every table.
        #[arg(long)]
        table: Vec<String>,
    },
    /// Deletes every table's date partitions older than the retention (what `[lake]
    /// retention` does hourly); `vacuum` then removes their files.
    Expire {
        #[command(flatten)]
        lake: Lake,
        /// Keep this many days back from today, UTC ("30d"; at least 1d).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Duration,
    },
}

/// The lake of `config` (its `[lake] root`, else `<data_dir>/lake`), with `data_dir` overriding
/// the config's; an object-store root is checked to answer (for writing, with `write`).
pub async fn root(
    config: Option<&Path>,
    data_dir: Option<PathBuf>,
    write: bool,
) -> anyhow::Result<LakeRoot> {
    let mut config = match config {
        Some(path) => sluice_server::Config::from_file(path)?,
        None => sluice_server::Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    let root = config.lake_root()?;
    match root.local_path() {
        Some(lake) if !lake.is_dir() => {
            anyhow::bail!(
                "no lake under {} (start `sluice serve` there first)",
                config.data_dir.display()
            )
        }
        Some(_) => {}
        None => root.check(write).await?,
    }
    Ok(root)
}

/// Runs the subcommand; prints one line per table; fails if any table failed.
pub async fn run(args: LakeArgs) -> anyhow::Result<()> {
    let failed = match args.command {
        LakeCommand::Optimize {
            lake,
            table,
            zstd_level,
        } => optimize(lake, &table, zstd_level).await?,
        LakeCommand::Vacuum {
            lake,
            table,
            retention,
            force,
            dry_run,
        } => {
            if retention < sluice_lake::upkeep::MIN_RETENTION && !force {
                anyhow::bail!(
                    "a retention below 1h can delete files that running queries read; add --force"
                );
            }
            vacuum(lake, &table, retention, dry_run).await?
        }
        LakeCommand::Verify { lake, table } => verify(lake, &table).await?,
        LakeCommand::Expire { lake, retention } => expire(lake, retention).await?,
    };
    if failed > 0 {
        anyhow::bail!("{failed} table(s) failed");
    }
    Ok(())
}

/// Prints each table's result with `print` and each table's error as such; returns how many
/// tables failed.
fn each_table<T, E: std::fmt::Display>(
    results: impl IntoIterator<Item = Result<T, E>>,
    mut print: impl FnMut(&T),
) -> usize {
    let mut failed = 0;
    for result in results {
        match result {
            Ok(r) => print(&r),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    failed
}

/// `sluice lake optimize`; returns how many tables failed.
async fn optimize(lake: Lake, table: &[String], zstd_level: i32) -> anyhow::Result<usize> {
    let root = lake.root(true).await?;
    let results = sluice_lake::upkeep::optimize_all(&root, table, zstd_level).await?;
    Ok(each_table(results, |r| {
        println!(
            "{}: {} small files compacted into {} (version {})",
            r.table,
            r.files_removed,
            r.files_added,
            r.version.map_or_else(|| "-".to_string(), |v| v.to_string())
        );
    }))
}

/// `sluice lake vacuum` (its retention already allowed); returns how many tables failed.
async fn vacuum(
    lake: Lake,
    table: &[String],
    retention: Duration,
    dry_run: bool,
) -> anyhow::Result<usize> {
    let root = lake.root(!dry_run).await?;
    let results = sluice_lake::upkeep::vacuum_all(&root, table, retention, dry_run).await?;
    Ok(each_table(results, |r| {
        println!(
            "{}: {} files {}",
            r.table,
            r.files_deleted,
            if r.dry_run {
                "would be deleted"
            } else {
                "deleted"
            }
        );
    }))
}

/// `sluice lake verify`: fails when a data file is damaged; else returns how many tables
/// failed.
async fn verify(lake: Lake, table: &[String]) -> anyhow::Result<usize> {
    let root = lake.root(false).await?;
    let mut damaged = 0;
    let results = sluice_lake::verify::verify_all(&root, table).await?;
    let failed = each_table(results, |r| {
        println!(
            "{}: {} files checked, {} without a checksum, {} damaged",
            r.table,
            r.files_checked,
            r.files_without_checksum,
            r.damaged.len()
        );
        for d in &r.damaged {
            println!(
                "  damaged: {}/{}: expected {}, found {}",
                r.table, d.path, d.expected, d.found
            );
        }
        damaged += r.damaged.len();
    });
    if damaged > 0 {
        anyhow::bail!("{damaged} damaged data file(s)");
    }
    Ok(failed)
}

/// `sluice lake expire`; returns how many tables failed.
async fn expire(lake: Lake, retention: Duration) -> anyhow::Result<usize> {
    anyhow::ensure!(
        retention >= sluice_lake::retention::MIN_RETENTION,
        "the retention must be at least 1d (partitions are days)"
    );
    let cutoff = sluice_lake::retention::cutoff(chrono::Utc::now().date_naive(), retention);
    let root = lake.root(true).await?;
    let results = sluice_lake::retention::expire_all(&root, cutoff).await?;
    Ok(each_table(results, |r| {
        println!(
            "{}: {} files with {} before {} deleted",
            r.table, r.files_removed, r.column, r.cutoff
        );
    }))
}
