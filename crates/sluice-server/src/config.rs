//! [`Config`]: the TOML config file (every field optional; `sluice serve` needs none), validated
//! once into [`Settings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_collector::{CollectorConfig, CollectorSettings};
use sluice_functions::{EnrichConfig, RunnerConfig, RunnerSettings, ValidationConfig};
use sluice_hot::{HotConfig, HotSettings};
use sluice_journal::JournalConfig;
use sluice_lake::{LakeConfig, LakeRoot, LakeSettings, UpkeepConfig};
use sluice_predict::{PredictConfig, PredictSettings};
use sluice_warehouse::PgCredentials;
use sluice_warehouse::loader::{LoaderConfig, LoaderSettings};

use crate::ServerError;
use crate::auth::SourceConfig;
use crate::kinesis::KinesisConfig;
use crate::listen::ListenerConfig;
use crate::snowplow::{SnowplowConfig, SnowplowSettings};
use crate::tls::{Tls, TlsConfig};

/// The config file. Unknown fields are an error.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the journal and the lake live. Default `./sluice-data`.
    pub data_dir: PathBuf,
    /// HTTP listen address. Default `127.0.0.1:8080`.
    pub http: SocketAddr,
    /// Postgres wire listen address of the read-only SQL warehouse (psql, BI tools). Default
    /// `127.0.0.1:5433`. A non-loopback address needs `pg_password` or `admin_token`.
    pub pg: SocketAddr,
    /// User name Postgres wire clients log in as when `pg_password` is set. Default `sluice`.
    pub pg_user: String,
    /// Password of `pg_user` (SCRAM-SHA-256). When set, every Postgres wire connection must
    /// log in, also on loopback: as `pg_user` with this password, or as any other user with a
    /// reader or admin token as the password.
    pub pg_password: Option<String>,
    /// An admin token (more reader and admin tokens live in `<data_dir>/tokens.json`, managed
    /// with `sluice tokens`). With a token anywhere, reads and administration need one, also
    /// on loopback. Required to listen on a non-loopback address.
    pub admin_token: Option<String>,
    /// What this node runs. Default: everything.
    pub roles: Vec<String>,
    /// How long SIGTERM waits for the stages to drain before it stops the ones still failing
    /// (what they had not delivered stays in the journal for the next start). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// HTTP connection limits and timeouts.
    pub listener: ListenerConfig,
    /// A certificate and key (PEM): when set, the HTTP listener speaks only HTTPS and the
    /// Postgres wire port offers TLS (and requires it from non-loopback clients).
    pub tls: Option<TlsConfig>,
    /// The journal. Its `dir` defaults to `<data_dir>/journal`; `default_partitions` is the
    /// partition count of `raw`, `good` and `bad` (fixed once they exist).
    pub journal: JournalConfig,
    /// The collector (limits, dedupe window, backlog limit).
    pub collector: CollectorConfig,
    /// The raw → good/bad runner (`[runner]`; `[functions]` is read as the same section).
    #[serde(alias = "functions")]
    pub runner: RunnerConfig,
    /// Schema policing: policies per source and event-name bindings.
    pub validation: ValidationConfig,
    /// The built-in enrichers, each in its own `[enrich.<name>]` section.
    pub enrich: EnrichConfig,
    /// Lake delivery (flush interval and size, checkpoints, typed tables).
    pub lake: LakeConfig,
    /// Compaction and vacuum of the lake tables.
    pub upkeep: UpkeepConfig,
    /// Loading `good` into Postgres or Redshift; off unless this section is present.
    pub loader: Option<LoaderConfig>,
    /// Sources and their write keys (more keys live in `<data_dir>/keys.json`, managed with
    /// `sluice keys`). With no key anywhere, ingest is open to local clients (loopback, no proxy
    /// header, a loopback `Host`).
    pub sources: Vec<SourceConfig>,
    /// The Snowplow collector routes (cookie, custom paths).
    pub snowplow: SnowplowConfig,
    /// The AWS Kinesis Data Streams and Firehose APIs (`POST /`): region and account id named
    /// in ARNs, and the stream names that deliver into the pipeline.
    pub kinesis: KinesisConfig,
    /// The hot tier: store backend, profiles, counters.
    pub hot: HotConfig,
    /// The online models.
    pub predict: PredictConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("sluice-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pg: SocketAddr::from(([127, 0, 0, 1], 5433)),
            pg_user: "sluice".to_string(),
            pg_password: None,
            admin_token: None,
            roles: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            listener: ListenerConfig::default(),
            tls: None,
            journal: JournalConfig::default(),
            collector: CollectorConfig::default(),
            runner: RunnerConfig::default(),
            validation: ValidationConfig::default(),
            enrich: EnrichConfig::default(),
            lake: LakeConfig::default(),
            upkeep: UpkeepConfig::default(),
            loader: None,
            sources: Vec::new(),
            snowplow: SnowplowConfig::default(),
            kinesis: KinesisConfig::default(),
            hot: HotConfig::default(),
            predict: PredictConfig::default(),
        }
    }
}

/// The stages a node runs (`--role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// HTTP intake into `raw`.
    pub collector: bool,
    /// raw → good/bad: the function chain and the user functions (`runner`; `functions` is
    /// read as the same role, as older configs name it).
    pub runner: bool,
    /// good/bad → Delta tables.
    pub lake: bool,
    /// SQL over the lake.
    pub warehouse: bool,
    /// good → hot tier (profiles, counters) and its read API.
    pub hot: bool,
    /// The online models, inside the hot projection (needs `hot`).
    pub predict: bool,
}

impl Roles {
    /// The names of the roles on, in pipeline order.
    pub(crate) fn names(&self) -> Vec<&'static str> {
        [
            ("collector", self.collector),
            ("runner", self.runner),
            ("lake", self.lake),
            ("warehouse", self.warehouse),
            ("hot", self.hot),
            ("predict", self.predict),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// Every role.
    pub const ALL: Roles = Roles {
        collector: true,
        runner: true,
        lake: true,
        warehouse: true,
        hot: true,
        predict: true,
    };

    /// Parses role names; an empty list means every role.
    pub fn parse(names: &[String]) -> Result<Self, ServerError> {
        if names.is_empty() {
            return Ok(Self::ALL);
        }
        let mut r = Roles {
            collector: false,
            runner: false,
            lake: false,
            warehouse: false,
            hot: false,
            predict: false,
        };
        for n in names
            .iter()
            .flat_map(|n| n.split(','))
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match n {
                "all" => r = Self::ALL,
                "collector" => r.collector = true,
                "runner" | "functions" => r.runner = true,
                "lake" => r.lake = true,
                "warehouse" => r.warehouse = true,
                "hot" => r.hot = true,
                "predict" => r.predict = true,
                other => {
                    return Err(ServerError::Config(format!(
                        "unknown role {other:?} (expected collector, runner, lake, warehouse, hot, predict or all)"
                    )));
                }
            }
        }
        if r.predict && !r.hot {
            return Err(ServerError::Config(
                "role predict runs inside the hot projection: add role hot".into(),
            ));
        }
        Ok(r)
    }
}

/// Validated settings: everything a [`crate::Server`] needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub(crate) data_dir: PathBuf,
    pub(crate) http: SocketAddr,
    pub(crate) pg: SocketAddr,
    pub(crate) pg_credentials: Option<PgCredentials>,
    pub(crate) upkeep: UpkeepConfig,
    pub(crate) loader: Option<LoaderSettings>,
    pub(crate) roles: Roles,
    pub(crate) drain_timeout: Duration,
    pub(crate) listener: ListenerConfig,
    pub(crate) tls: Option<Tls>,
    pub(crate) partitions: u32,
    pub(crate) journal: JournalConfig,
    pub(crate) collector: CollectorSettings,
    pub(crate) runner: RunnerSettings,
    pub(crate) validation: ValidationConfig,
    pub(crate) enrich: EnrichConfig,
    pub(crate) admin_token: Option<String>,
    pub(crate) lake: LakeSettings,
    pub(crate) lake_root: LakeRoot,
    pub(crate) sources: Vec<SourceConfig>,
    pub(crate) snowplow: SnowplowSettings,
    pub(crate) kinesis: KinesisConfig,
    pub(crate) hot: HotSettings,
    pub(crate) predict: PredictSettings,
}

impl Config {
    /// Reads a config file.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            ServerError::Config(m) => ServerError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses config text.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::Config(e.message().to_string()))
    }

    /// Where the lake lives: `[lake] root` with its connection fields, or `<data_dir>/lake`.
    pub fn lake_root(&self) -> Result<LakeRoot, ServerError> {
        self.lake
            .lake_root(&self.data_dir)
            .map_err(|e| ServerError::Config(format!("[lake] {e}")))
    }

    /// Validates everything once.
    pub fn validate(&self) -> Result<Settings, ServerError> {
        let (pg_credentials, admin_token) = self.listener_credentials()?;
        if self.drain_timeout < Duration::from_secs(1) {
            return Err(ServerError::Config(
                "drain_timeout must be at least 1s".into(),
            ));
        }
        let upkeep = self
            .upkeep
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let loader = self.loader_settings()?;
        crate::auth::Auth::new(self.sources.clone(), None).map_err(ServerError::Config)?;
        self.validation.validate().map_err(ServerError::Config)?;
        self.kinesis.validate().map_err(ServerError::Config)?;
        let journal = self.journal_settings()?;
        let hot = self.hot_settings()?;
        let predict = self.predict_settings()?;
        Ok(Settings {
            data_dir: self.data_dir.clone(),
            http: self.http,
            pg: self.pg,
            pg_credentials,
            upkeep,
            loader,
            roles: Roles::parse(&self.roles)?,
            drain_timeout: self.drain_timeout,
            listener: self.listener.validate().map_err(ServerError::Config)?,
            tls: self
                .tls
                .as_ref()
                .map(TlsConfig::load)
                .transpose()
                .map_err(ServerError::Config)?,
            partitions: journal.default_partitions,
            journal,
            collector: self.collector.validate().map_err(ServerError::Config)?,
            runner: self.runner.validate().map_err(ServerError::Config)?,
            validation: self.validation.clone(),
            enrich: self.enrich.clone(),
            admin_token,
            lake: self
                .lake
                .validate()
                .map_err(|e| ServerError::Config(e.to_string()))?,
            lake_root: self.lake_root()?,
            sources: self.sources.clone(),
            snowplow: self.snowplow.validate().map_err(ServerError::Config)?,
            kinesis: self.kinesis.clone(),
            hot,
            predict,
        })
    }

    /// The Postgres wire login and the admin token (an empty one is none), refusing a
    /// non-loopback HTTP or Postgres wire address that nothing protects.
    fn listener_credentials(&self) -> Result<(Option<PgCredentials>, Option<String>), ServerError> {
        if !self.http.ip().is_loopback() && self.admin_token.as_deref().is_none_or(str::is_empty) {
            return Err(ServerError::Config(format!(
                "refusing to listen on non-loopback address {} without an admin_token",
                self.http
            )));
        }
        let pg_credentials = match self.pg_password.as_deref() {
            Some("") => {
                return Err(ServerError::Config("pg_password must not be empty".into()));
            }
            Some(password) if !self.pg_user.is_empty() => Some(PgCredentials {
                user: self.pg_user.clone(),
                password: password.to_string(),
            }),
            Some(_) => return Err(ServerError::Config("pg_user must not be empty".into())),
            None => None,
        };
        let admin_token = self.admin_token.clone().filter(|t| !t.is_empty());
        if !self.pg.ip().is_loopback() && pg_credentials.is_none() && admin_token.is_none() {
            return Err(ServerError::Config(format!(
                "refusing to serve the postgres wire protocol on non-loopback address {} without a pg_password or an admin_token",
                self.pg
            )));
        }
        Ok((pg_credentials, admin_token))
    }

    /// The loader's settings, when `[loader]` is there.
    fn loader_settings(&self) -> Result<Option<LoaderSettings>, ServerError> {
        Ok(self
            .loader
            .as_ref()
            .map(LoaderConfig::validate)
            .transpose()
            .map_err(|e| ServerError::Config(e.to_string()))?
            // The loader's typed tables follow the lake's rules, limits included.
            .map(|l| LoaderSettings {
                max_typed_tables: self.lake.max_typed_tables,
                max_typed_columns: self.lake.max_typed_columns,
                ..l
            }))
    }

    /// The journal's config, validated, its `dir` defaulting to `<data_dir>/journal`.
    fn journal_settings(&self) -> Result<JournalConfig, ServerError> {
        let mut journal = self.journal.clone();
        if journal.dir.as_os_str().is_empty() {
            journal.dir = self.data_dir.join("journal");
        }
        journal
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        if journal.backend == sluice_journal::JournalBackend::Jetstream {
            journal
                .jetstream
                .validate()
                .map_err(|e| ServerError::Config(e.to_string()))?;
        }
        Ok(journal)
    }

    /// The hot tier's settings, its `dir` defaulting to `<data_dir>/hot`.
    fn hot_settings(&self) -> Result<HotSettings, ServerError> {
        let mut hot = self
            .hot
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        if hot.dir.as_os_str().is_empty() {
            hot.dir = self.data_dir.join("hot");
        }
        Ok(hot)
    }

    /// The online models' settings, their `dir` defaulting to `<data_dir>/models`.
    fn predict_settings(&self) -> Result<PredictSettings, ServerError> {
        let mut predict = self
            .predict
            .validate()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        if predict.dir.as_os_str().is_empty() {
            predict.dir = self.data_dir.join("models");
        }
        Ok(predict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_valid_and_unknown_fields_are_errors() {
        let c = Config::from_toml("").unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.roles, Roles::ALL);
        assert_eq!(s.journal.dir, PathBuf::from("sluice-data/journal"));
        let err = Config::from_toml("nope = 1").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = Config::from_toml("[collector]\nmax_bodyy = 1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = Config::from_toml("[listener]\nheader_timeot = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let c =
            Config::from_toml("[listener]\nheader_timeout = \"1s\"\nmax_connections = 8").unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.listener.header_timeout, std::time::Duration::from_secs(1));
        assert_eq!(s.listener.max_connections, 8);
        assert!(
            Config::from_toml("[listener]\nmax_connections = 0")
                .unwrap()
                .validate()
                .is_err_and(|e| e.to_string().contains("max_connections"))
        );
    }

    #[test]
    fn a_secrets_key_file_is_read_at_start_and_a_bad_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("secrets.key");
        let config = |path: &std::path::Path| {
            Config::from_toml(&format!("[functions]\nsecrets_key_file = {path:?}"))
                .unwrap()
                .validate()
        };
        let e = config(&key).unwrap_err().to_string();
        assert!(
            e.contains("secrets_key_file") && e.contains("cannot read"),
            "{e}"
        );
        std::fs::write(&key, "not a key").unwrap();
        let e = config(&key).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(config(&key).unwrap().runner.secrets_keys.is_some());
        // Keys replaced open what they sealed; they need a current key, and are read too.
        let rotated = |previous: &std::path::Path, current: Option<&std::path::Path>| {
            let current = current
                .map(|c| format!("secrets_key_file = {c:?}\n"))
                .unwrap_or_default();
            Config::from_toml(&format!(
                "[functions]\n{current}previous_secrets_key_files = [{previous:?}]"
            ))
            .unwrap()
            .validate()
        };
        let new = dir.path().join("new.key");
        std::fs::write(&new, "cd".repeat(32)).unwrap();
        assert!(rotated(&key, Some(&new)).is_ok());
        let e = rotated(&key, None).unwrap_err().to_string();
        assert!(e.contains("needs functions.secrets_key_file"), "{e}");
        let e = rotated(&dir.path().join("gone.key"), Some(&new))
            .unwrap_err()
            .to_string();
        assert!(e.contains("previous_secrets_key_files"), "{e}");
    }

    #[test]
    fn the_readme_example_config_is_valid() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("## Configuration")
            .and_then(|i| readme[i..].find("```toml").map(|j| i + j + "```toml".len()))
            .expect("README has a toml example under Configuration");
        let end = start + readme[start..].find("```").expect("closed block");
        let config = Config::from_toml(&readme[start..end]).unwrap();
        config.validate().unwrap();
        assert_eq!(config.sources.len(), 1);
    }

    #[test]
    fn public_bind_needs_a_token() {
        let c = Config::from_toml("http = \"0.0.0.0:8080\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("admin_token")
        );
        let c = Config::from_toml("http = \"0.0.0.0:8080\"\nadmin_token = \"s3cret\"").unwrap();
        assert!(c.validate().is_ok());
        let c = Config::from_toml("pg = \"0.0.0.0:5433\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("without a pg_password or an admin_token")
        );
        // With an admin token every Postgres wire login needs a token.
        let c = Config::from_toml("pg = \"0.0.0.0:5433\"\nadmin_token = \"s3cret\"").unwrap();
        assert!(c.validate().is_ok());
        let c = Config::from_toml("pg = \"0.0.0.0:5433\"\npg_password = \"pw\"").unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.pg_credentials.unwrap().user, "sluice");
        let c = Config::from_toml("[upkeep]\nvacuum_retention = \"5m\"").unwrap();
        assert!(
            matches!(c.validate(), Err(ServerError::Config(m)) if m.contains("vacuum_retention"))
        );
        let c =
            Config::from_toml("[loader]\ndatabase = \"test\"\nflush_interval = \"1s\"").unwrap();
        assert_eq!(
            c.validate().unwrap().loader.unwrap().target.database,
            "test"
        );
    }

    #[test]
    fn kinesis_section_parses_and_is_checked() {
        let c =
            Config::from_toml("[kinesis]\nregion = \"eu-west-1\"\ningest_streams = [\"events\"]")
                .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.kinesis.region, "eu-west-1");
        assert_eq!(s.kinesis.account_id, "000000000000");
        assert_eq!(s.kinesis.ingest_streams, ["events"]);
        let err = Config::from_toml("[kinesis]\nregionn = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field"), "{err}");
        let c = Config::from_toml("[kinesis]\ningest_streams = [\"raw\"]").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ingest_streams")
        );
    }

    #[test]
    fn roles_parse() {
        let r = Roles::parse(&["collector,lake".into()]).unwrap();
        assert!(r.collector && r.lake && !r.runner && !r.warehouse);
        assert!(matches!(
            Roles::parse(&["bogus".into()]),
            Err(ServerError::Config(m)) if m.contains("bogus")
        ));
        // `functions` is the role's older name.
        assert_eq!(
            Roles::parse(&["functions".into()]).unwrap(),
            Roles::parse(&["runner".into()]).unwrap()
        );
        let c = Config::from_toml(
            "[functions]
max_event_bytes = 1234",
        )
        .unwrap();
        assert_eq!(c.runner.max_event_bytes, 1234);
        let c = Config::from_toml(
            "[functions.event_time_window]
past = \"30days\"",
        )
        .unwrap();
        let window = c.runner.event_time_window;
        assert_eq!(window.past, std::time::Duration::from_secs(30 * 86_400));
        assert_eq!(window.future, std::time::Duration::from_secs(86_400));
        let empty = "[functions.event_time_window]\npast = \"0s\"\nfuture = \"0s\"";
        assert!(matches!(
            Config::from_toml(empty).unwrap().validate(),
            Err(ServerError::Config(m)) if m.contains("event_time_window")
        ));
        let r = Roles::parse(&["hot,predict".into()]).unwrap();
        assert!(r.hot && r.predict && !r.collector);
        assert!(matches!(
            Roles::parse(&["predict".into()]),
            Err(ServerError::Config(m)) if m.contains("add role hot")
        ));
    }

    #[test]
    fn hot_and_predict_sections_parse_and_are_checked() {
        let c = Config::from_toml(
            "[hot]\nbackend = \"embedded\"\n[[hot.counters]]\nname = \"views_1h\"\nwindow = \"1h\"\n\
             [[predict.models]]\nname = \"buy\"\noutcome = \"Order Completed\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.hot.dir, PathBuf::from("sluice-data/hot"));
        assert_eq!(s.hot.counters[0].name, "views_1h");
        assert_eq!(s.predict.models[0].name, "buy");
        assert!(matches!(
            Config::from_toml("[hot]\nbackend = \"dynamo\""),
            Err(ServerError::Config(m)) if m.contains("dynamo")
        ));
        assert!(matches!(
            Config::from_toml("[predict]\nmodelz = []"),
            Err(ServerError::Config(m)) if m.contains("modelz")
        ));
        let c = Config::from_toml("[[predict.models]]\nname = \"b\"\noutcome = \"x\"\nbits = 40")
            .unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("bits"));
    }
}
