//! `sluice tokens create|list|revoke`: the reader and admin tokens in `<data_dir>/tokens.json`.
//!
//! The token is printed once, by `create`; the file keeps only its id, role and SHA-256, and
//! only its owner may read it (mode 0600). A running server picks up changes within about a
//! second. Once any token exists, reads and administration need one, also on loopback.

use anyhow::Context;
use sluice_server::access::{Role, TokenFile};

use crate::keys::DataDirArgs;

/// Arguments of `sluice tokens`.
#[derive(clap::Args, Debug)]
pub struct TokensArgs {
    #[command(subcommand)]
    command: TokensCommand,
    #[command(flatten)]
    dir: DataDirArgs,
}

#[derive(clap::Subcommand, Debug)]
enum TokensCommand {
    /// Creates a token and prints it (only this once).
    Create {
        /// What it may do: `reader` (SQL, the Postgres wire port, profiles, counters,
        /// predictions, schemas, Kinesis reads of good and bad, metrics) or `admin` (also
        /// schemas, functions, replay and Kinesis stream management).
        #[arg(long, value_parser = Role::parse)]
        role: Role,
    },
    /// Lists token ids, roles and whether they are revoked (never the tokens).
    List,
    /// Revokes a token by id; the server refuses it within about a second.
    Revoke {
        /// The token id, as `list` shows it.
        id: String,
    },
}

/// Runs `sluice tokens`.
pub fn run(args: TokensArgs) -> anyhow::Result<()> {
    let dir = args.dir.resolve()?;
    let _lock = sluice_server::auth::lock_credentials(&dir).map_err(anyhow::Error::msg)?;
    let path = TokenFile::path(&dir);
    let mut file = TokenFile::load(&path).map_err(anyhow::Error::msg)?;
    match args.command {
        TokensCommand::Create { role } => {
            let (token, entry) = file.create(role);
            file.store(&path)
                .map_err(anyhow::Error::msg)
                .context("token not created")?;
            eprintln!(
                "created {} token {}; it is shown only now:",
                role.as_str(),
                entry.id
            );
            println!("{token}");
        }
        TokensCommand::List => {
            println!("{:<14} {:<8} {:<22} revoked", "id", "role", "created");
            for t in &file.tokens {
                println!(
                    "{:<14} {:<8} {:<22} {}",
                    t.id,
                    t.role.as_str(),
                    t.created_at,
                    t.revoked_at.as_deref().unwrap_or("-")
                );
            }
        }
        TokensCommand::Revoke { id } => {
            let entry = file.revoke(&id).map_err(anyhow::Error::msg)?;
            file.store(&path).map_err(anyhow::Error::msg)?;
            println!("revoked {} ({} token)", entry.id, entry.role.as_str());
        }
    }
    Ok(())
}
