//! `sluice keys create|list|revoke`: the write keys in `<data_dir>/keys.json`.
//!
//! The key is printed once, by `create`; the file keeps only its id and SHA-256, and only its
//! owner may read it (mode 0600). A running server picks up changes within about a second (it
//! watches the file's modification time).

use std::path::PathBuf;

use anyhow::Context;
use sluice_server::Config;
use sluice_server::auth::KeyFile;

/// Where the data directory is: `--data-dir`, else the config's, else ./sluice-data.
#[derive(clap::Args, Debug)]
pub struct DataDirArgs {
    /// Config file, for its `data_dir`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory. Default: the config's, else ./sluice-data.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl DataDirArgs {
    /// The data directory.
    pub fn resolve(self) -> anyhow::Result<PathBuf> {
        Ok(match (self.data_dir, &self.config) {
            (Some(d), _) => d,
            (None, Some(c)) => Config::from_file(c)?.data_dir,
            (None, None) => Config::default().data_dir,
        })
    }
}

/// Arguments of `sluice keys`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
    #[command(flatten)]
    dir: DataDirArgs,
}

#[derive(clap::Subcommand, Debug)]
enum KeysCommand {
    /// Creates a write key for a source and prints it (only this once).
    Create {
        /// The source the key writes to (lowercase letters, digits, '_' and '-').
        #[arg(long)]
        source: String,
    },
    /// Lists key ids, their sources and whether they are revoked (never the keys).
    List,
    /// Revokes a key by id; the server refuses it within about a second.
    Revoke {
        /// The key id, as `list` shows it.
        id: String,
    },
}

/// Runs `sluice keys`.
pub fn run(args: KeysArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve()?;
    let _lock = sluice_server::auth::lock_credentials(&dir).map_err(anyhow::Error::msg)?;
    let path = KeyFile::path(&dir);
    let mut file = KeyFile::load(&path).map_err(anyhow::Error::msg)?;
    match args.command {
        KeysCommand::Create { source } => {
            let (key, entry) = file.create(&source).map_err(anyhow::Error::msg)?;
            file.store(&path)
                .map_err(anyhow::Error::msg)
                .context("key not created")?;
            eprintln!(
                "created key {} for source {:?}; it is shown only now:",
                entry.id, entry.source
            );
            println!("{key}");
        }
        KeysCommand::List => {
            println!("{:<14} {:<20} {:<22} revoked", "id", "source", "created");
            for k in &file.keys {
                println!(
                    "{:<14} {:<20} {:<22} {}",
                    k.id,
                    k.source,
                    k.created_at,
                    k.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }
        KeysCommand::Revoke { id } => {
            let entry = file.revoke(&id).map_err(anyhow::Error::msg)?;
            file.store(&path).map_err(anyhow::Error::msg)?;
            println!("revoked {} (source {:?})", entry.id, entry.source);
        }
    }
    Ok(())
}
