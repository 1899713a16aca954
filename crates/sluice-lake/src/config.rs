//! [`LakeConfig`], the `[lake]` section of the config file, and [`LakeSettings`], its validated
//! form that the delivery loop takes.
//!
//! The file form is what users write (`flush_interval = "2s"`); unknown fields are an error.
//! [`LakeConfig::validate`] checks it once and produces [`LakeSettings`], which also carries the
//! process-level knobs that are not worth a config field (retry backoff, commit timeout) so tests
//! can shorten them.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{LakeError, LakeRoot};

const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_FLUSH_MAX_EVENTS: usize = 100_000;
const DEFAULT_FLUSH_MAX_BYTES: u64 = 128 * 1024 * 1024;
const DEFAULT_CHECKPOINT_INTERVAL: u64 = 10;
const DEFAULT_ZSTD_LEVEL: i32 = 3;
const DEFAULT_MAX_TYPED_TABLES: usize = 1000;
const DEFAULT_MAX_TYPED_COLUMNS: usize = 500;
/// Postgres and Redshift allow 1600 columns per table; the fixed columns take some.
pub const MAX_MAX_TYPED_COLUMNS: usize = 1500;

/// Lake delivery: how `good` and `bad` become the `events` and `bad_rows` Delta tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Where the tables live: a directory, or an S3 URL `s3://bucket/prefix` (credentials and
    /// region from the standard AWS environment, or the fields below). Default
    /// `<data_dir>/lake`.
    pub root: Option<String>,
    /// The endpoint of an S3-compatible store (`https://s3.example.net`, `http://127.0.0.1:9000`);
    /// unset is AWS itself (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The bucket's region (otherwise `AWS_REGION`, the shared config, or `us-east-1`).
    pub region: Option<String>,
    /// Allow a plain-http endpoint (local test stores only: credentials and data travel in
    /// clear).
    pub allow_http: bool,
    /// More object-store options, passed through to delta-rs / object_store as they are
    /// (`aws_access_key_id`, `aws_virtual_hosted_style_request`, …). Options that would commit
    /// by an unsafe rename are refused.
    pub storage_options: BTreeMap<String, String>,
    /// The longest an event waits in the delivery buffer before it is written and committed
    /// (so ack → SQL visibility is about this plus the commit time). A humantime string: "2s",
    /// "500ms", "1m".
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Flush as soon as this many records are buffered. Larger flushes make larger Parquet
    /// files (fewer, better-compressed files and faster queries) at the cost of memory.
    pub flush_max_events: usize,
    /// Flush as soon as the buffered records (their JSON form in the journal) reach this many
    /// bytes. Bounds the memory a flush holds.
    pub flush_max_bytes: u64,
    /// Write a Delta checkpoint every this many table versions, so readers and restarts replay
    /// at most this many JSON commits.
    pub checkpoint_interval: u64,
    /// zstd compression level of the Parquet files (1 fastest … 22 smallest).
    pub zstd_level: i32,
    /// Also deliver `good` into one typed table per event name (see `sluice_lake::typed`).
    pub typed_tables: bool,
    /// Most typed tables (event names, after snake_case); an event whose table would be one
    /// more gets none (it is in `events`). Existing tables keep working. Also the loader's.
    pub max_typed_tables: usize,
    /// Most property columns per typed table; a property that would be one more is left out
    /// of the typed row (it is in `events`). Existing columns keep working. Also the loader's.
    pub max_typed_columns: usize,
    /// Delete every table's date partitions older than this ("400d"; at least a day); unset
    /// keeps everything. See [`crate::retention`].
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            flush_max_events: DEFAULT_FLUSH_MAX_EVENTS,
            flush_max_bytes: DEFAULT_FLUSH_MAX_BYTES,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            typed_tables: true,
            max_typed_tables: DEFAULT_MAX_TYPED_TABLES,
            max_typed_columns: DEFAULT_MAX_TYPED_COLUMNS,
            retention: None,
            root: None,
            endpoint: None,
            region: None,
            allow_http: false,
            storage_options: BTreeMap::new(),
        }
    }
}

/// Storage options that would make delta-rs commit by copy-then-rename (two writers can both
/// "win" one version) or through the removed DynamoDB lock: refused, commits always go through
/// a conditional put.
const UNSAFE_OPTIONS: [&str; 2] = ["aws_s3_allow_unsafe_rename", "aws_s3_locking_provider"];

impl LakeConfig {
    /// The lake root: `root` (a directory or an object-store URL with the connection fields
    /// folded into its storage options), or `<data_dir>/lake`.
    pub fn lake_root(&self, data_dir: &Path) -> Result<LakeRoot, LakeError> {
        let root = match self.root.as_deref() {
            Some(location) => LakeRoot::parse(location)?,
            None => LakeRoot::from_path(&data_dir.join("lake"))?,
        };
        let connection = self.endpoint.is_some()
            || self.region.is_some()
            || self.allow_http
            || !self.storage_options.is_empty();
        if root.local_path().is_some() {
            if connection {
                return Err(LakeError::Config(format!(
                    "endpoint, region, allow_http and storage_options apply to an object-store root (s3://bucket/prefix), not to the directory {root}"
                )));
            }
            return Ok(root);
        }
        if !matches!(root.url().scheme(), "s3" | "s3a") {
            return Err(LakeError::Config(format!(
                "root {root}: only local directories and s3:// URLs are supported"
            )));
        }
        if root.url().host_str().is_none_or(str::is_empty) {
            return Err(LakeError::Config(format!(
                "root {root}: the URL names no bucket (s3://bucket/prefix)"
            )));
        }
        let mut options: HashMap<String, String> = HashMap::new();
        for (key, value) in &self.storage_options {
            let lower = key.to_ascii_lowercase();
            if UNSAFE_OPTIONS.contains(&lower.as_str()) {
                return Err(LakeError::Config(format!(
                    "storage option {key} is refused: commits go through a conditional put, never an unsafe rename or a lock table"
                )));
            }
            options.insert(lower, value.clone());
        }
        if let Some(endpoint) = &self.endpoint {
            let url = url::Url::parse(endpoint)
                .map_err(|e| LakeError::Config(format!("endpoint {endpoint:?}: {e}")))?;
            match url.scheme() {
                "https" => {}
                "http" if self.allow_http => {}
                "http" => {
                    return Err(LakeError::Config(format!(
                        "endpoint {endpoint} is plain http: set allow_http = true (local test stores only)"
                    )));
                }
                other => {
                    return Err(LakeError::Config(format!(
                        "endpoint {endpoint}: scheme {other:?} is neither https nor http"
                    )));
                }
            }
            options.insert("aws_endpoint".into(), endpoint.clone());
        }
        if let Some(region) = &self.region {
            options.insert("aws_region".into(), region.clone());
        }
        if self.allow_http {
            options.insert("aws_allow_http".into(), "true".into());
        }
        Ok(root.with_storage_options(options))
    }

    /// Checks the values and returns the settings the delivery loop runs with.
    pub fn validate(&self) -> Result<LakeSettings, LakeError> {
        if self.flush_interval.is_zero() {
            return Err(LakeError::Config("flush_interval must be positive".into()));
        }
        if self.flush_interval > Duration::from_secs(3600) {
            return Err(LakeError::Config(
                "flush_interval must be at most 1h".into(),
            ));
        }
        if self.flush_max_events == 0 {
            return Err(LakeError::Config(
                "flush_max_events must be at least 1".into(),
            ));
        }
        let flush_max_bytes = usize::try_from(self.flush_max_bytes)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| LakeError::Config("flush_max_bytes must be at least 1".into()))?;
        let checkpoint_interval = NonZeroU64::new(self.checkpoint_interval)
            .ok_or_else(|| LakeError::Config("checkpoint_interval must be at least 1".into()))?;
        if !(1..=22).contains(&self.zstd_level) {
            return Err(LakeError::Config(
                "zstd_level must be between 1 and 22".into(),
            ));
        }
        if self.max_typed_tables == 0 {
            return Err(LakeError::Config(
                "max_typed_tables must be at least 1 (turn typed tables off with typed_tables = false)".into(),
            ));
        }
        if !(1..=MAX_MAX_TYPED_COLUMNS).contains(&self.max_typed_columns) {
            return Err(LakeError::Config(format!(
                "max_typed_columns must be between 1 and {MAX_MAX_TYPED_COLUMNS}"
            )));
        }
        if self
            .retention
            .is_some_and(|r| r < crate::retention::MIN_RETENTION)
        {
            return Err(LakeError::Config("retention must be at least 1d".into()));
        }
        Ok(LakeSettings {
            retention: self.retention,
            flush_interval: self.flush_interval,
            flush_max_events: self.flush_max_events,
            flush_max_bytes,
            checkpoint_interval,
            zstd_level: self.zstd_level,
            typed_tables: self.typed_tables,
            max_typed_tables: self.max_typed_tables,
            max_typed_columns: self.max_typed_columns,
            ..LakeSettings::base()
        })
    }
}

/// Validated lake settings, passed to each sink's constructor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LakeSettings {
    /// See [`LakeConfig::flush_interval`].
    pub flush_interval: Duration,
    /// See [`LakeConfig::flush_max_events`].
    pub flush_max_events: usize,
    /// See [`LakeConfig::flush_max_bytes`].
    pub flush_max_bytes: usize,
    /// See [`LakeConfig::checkpoint_interval`].
    pub checkpoint_interval: NonZeroU64,
    /// See [`LakeConfig::zstd_level`].
    pub zstd_level: i32,
    /// See [`LakeConfig::typed_tables`].
    pub typed_tables: bool,
    /// See [`LakeConfig::max_typed_tables`].
    pub max_typed_tables: usize,
    /// See [`LakeConfig::max_typed_columns`].
    pub max_typed_columns: usize,
    /// See [`LakeConfig::retention`].
    pub retention: Option<Duration>,
    /// First wait after a failed commit or read; doubles up to `retry_backoff_max` (with
    /// jitter: each wait is between half and all of it).
    pub retry_backoff_initial: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// A commit that takes longer than this is treated as of unknown outcome: the sink reloads
    /// the table and reads its transaction versions back before trying again.
    pub commit_timeout: Duration,
    /// Attempts per flush once shutdown has begun; after that `run` returns the error rather
    /// than hang the process (the journal still has the records, so nothing is lost).
    pub shutdown_attempts: u32,
    /// Records asked of the journal per read call.
    pub read_batch_records: usize,
}

impl LakeSettings {
    /// A fresh retry backoff from `retry_backoff_initial` to `retry_backoff_max`.
    pub fn backoff(&self) -> sluice_journal::Backoff {
        sluice_journal::Backoff::new(self.retry_backoff_initial, self.retry_backoff_max)
    }

    /// The defaults, without going through validation (they are valid by construction; a test
    /// checks that they equal `LakeConfig::default().validate()`).
    fn base() -> Self {
        Self {
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            flush_max_events: DEFAULT_FLUSH_MAX_EVENTS,
            flush_max_bytes: DEFAULT_FLUSH_MAX_BYTES as usize,
            checkpoint_interval: NonZeroU64::new(DEFAULT_CHECKPOINT_INTERVAL)
                .unwrap_or(NonZeroU64::MIN),
            zstd_level: DEFAULT_ZSTD_LEVEL,
            typed_tables: true,
            max_typed_tables: DEFAULT_MAX_TYPED_TABLES,
            max_typed_columns: DEFAULT_MAX_TYPED_COLUMNS,
            retention: None,
            retry_backoff_initial: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(60),
            shutdown_attempts: 5,
            read_batch_records: 4096,
        }
    }
}

impl Default for LakeSettings {
    fn default() -> Self {
        Self::base()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_equal_the_settings_defaults() {
        assert_eq!(
            LakeConfig::default().validate().unwrap(),
            LakeSettings::default()
        );
        assert_eq!(LakeSettings::default().checkpoint_interval.get(), 10);
    }

    #[test]
    fn parses_humantime_and_rejects_unknown_fields() {
        let config: LakeConfig =
            serde_json::from_str(r#"{"flush_interval":"500ms","flush_max_events":10}"#).unwrap();
        assert_eq!(config.flush_interval, Duration::from_millis(500));
        assert_eq!(config.flush_max_events, 10);
        assert_eq!(config.checkpoint_interval, 10);
        let unknown = serde_json::from_str::<LakeConfig>(r#"{"flush_every":"1s"}"#).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `flush_every`"),
            "{unknown}"
        );
    }

    #[test]
    fn rejects_unusable_values() {
        for bad in [
            LakeConfig {
                flush_interval: Duration::ZERO,
                ..LakeConfig::default()
            },
            LakeConfig {
                flush_max_events: 0,
                ..LakeConfig::default()
            },
            LakeConfig {
                checkpoint_interval: 0,
                ..LakeConfig::default()
            },
            LakeConfig {
                zstd_level: 0,
                ..LakeConfig::default()
            },
            LakeConfig {
                max_typed_tables: 0,
                ..LakeConfig::default()
            },
            LakeConfig {
                max_typed_columns: 1501,
                ..LakeConfig::default()
            },
        ] {
            let err = bad.validate().unwrap_err();
            assert_eq!(err.kind(), sluice_event::ErrorKind::Invalid);
        }
    }
}
