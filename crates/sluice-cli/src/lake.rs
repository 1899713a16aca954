//! `sluice lake optimize|vacuum|expire`: table upkeep by hand, on the data directory (safe while a
//! server runs: compaction and vacuum are Delta commits like any other writer's).

use std::path::PathBuf;
use std::time::Duration;

use sluice_lake::LakeRoot;

/// Arguments of `sluice lake`.
#[derive(clap::Args, Debug)]
pub struct LakeArgs {
    #[command(subcommand)]
    command: LakeCommand,
}

#[derive(clap::Subcommand, Debug)]
enum LakeCommand {
    /// Compacts small files into large ones and writes a checkpoint, per table.
    Optimize {
        /// Data directory. Default ./sluice-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only these tables (repeatable). Default: every table.
        #[arg(long)]
        table: Vec<String>,
        /// zstd level of the compacted files.
        #[arg(long, default_value_t = 3)]
        zstd_level: i32,
    },
    /// Deletes files no table version younger than the retention references.
    Vacuum {
        /// Data directory. Default ./sluice-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
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
    /// Deletes every table's date partitions older than the retention (what `[lake]
    /// retention` does hourly); `vacuum` then removes their files.
    Expire {
        /// Data directory. Default ./sluice-data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Keep this many days back from today, UTC ("30d"; at least 1d).
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Duration,
    },
}

fn root(data_dir: Option<PathBuf>) -> anyhow::Result<LakeRoot> {
    let dir = data_dir.unwrap_or_else(|| PathBuf::from("sluice-data"));
    let lake = dir.join("lake");
    if !lake.is_dir() {
        anyhow::bail!("no lake under {}", dir.display());
    }
    Ok(LakeRoot::from_path(&lake)?)
}

/// Runs the subcommand; prints one line per table; fails if any table failed.
pub async fn run(args: LakeArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    match args.command {
        LakeCommand::Optimize {
            data_dir,
            table,
            zstd_level,
        } => {
            let root = root(data_dir)?;
            for result in sluice_lake::upkeep::optimize_all(&root, &table, zstd_level).await? {
                match result {
                    Ok(r) => println!(
                        "{}: {} small files compacted into {} (version {})",
                        r.table,
                        r.files_removed,
                        r.files_added,
                        r.version.map_or_else(|| "-".to_string(), |v| v.to_string())
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
        }
        LakeCommand::Vacuum {
            data_dir,
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
            let root = root(data_dir)?;
            for result in sluice_lake::upkeep::vacuum_all(&root, &table, retention, dry_run).await?
            {
                match result {
                    Ok(r) => println!(
                        "{}: {} files {}",
                        r.table,
                        r.files_deleted,
                        if r.dry_run {
                            "would be deleted"
                        } else {
                            "deleted"
                        }
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
        }
        LakeCommand::Expire {
            data_dir,
            retention,
        } => {
            anyhow::ensure!(
                retention >= sluice_lake::retention::MIN_RETENTION,
                "the retention must be at least 1d (partitions are days)"
            );
            let cutoff = sluice_lake::retention::cutoff(chrono::Utc::now().date_naive(), retention);
            let root = root(data_dir)?;
            for result in sluice_lake::retention::expire_all(&root, cutoff).await? {
                match result {
                    Ok(r) => println!(
                        "{}: {} files with {} before {} deleted",
                        r.table, r.files_removed, r.column, r.cutoff
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {e}");
                    }
                }
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} table(s) failed");
    }
    Ok(())
}
