//! Which running server a command talks to: `--server <URL>` (or `SLUICE_SERVER`) for every
//! command that asks a server, with `--url` kept as a hidden alias; admin commands add
//! `--admin-token` (or `SLUICE_ADMIN_TOKEN`).

/// The server a command asks when none is named.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// `--server`.
#[derive(clap::Args, Debug)]
pub struct ServerArg {
    /// URL of the running server.
    #[arg(
        long = "server",
        alias = "url",
        value_name = "URL",
        global = true,
        env = "SLUICE_SERVER",
        default_value = DEFAULT_SERVER
    )]
    pub url: String,
}

impl ServerArg {
    /// The URL without a trailing slash, to append paths to.
    pub fn base(&self) -> &str {
        self.url.trim_end_matches('/')
    }
}

/// `--server` and `--admin-token`, for admin requests.
#[derive(clap::Args, Debug)]
pub struct AdminServer {
    #[command(flatten)]
    pub server: ServerArg,
    /// An admin token (the config's `admin_token` or one from `sluice tokens create --role
    /// admin`).
    #[arg(long, global = true, env = "SLUICE_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
}
