//! [`JournalConfig`], the `[journal]` section of the config file, and [`FsyncPolicy`]; validated
//! once into the crate-private [`Settings`] that the rest of the crate reads.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::JournalError;
use crate::format::MAX_VALUE_LEN;
use crate::jetstream::{JetStreamConfig, JournalBackend};

/// Most partitions one topic may have. Every partition costs one writer thread and one directory.
pub const MAX_PARTITIONS: u32 = 1024;

/// Smallest accepted `segment_bytes`. Tiny segments only make sense in tests; production wants
/// the default.
const MIN_SEGMENT_BYTES: u64 = 1024;

/// Offsets reserved ahead of the writer in the durable floor file (see `partition.rs`). After a
/// crash the next offset continues at the floor, so this is also the largest gap a crash leaves.
const DEFAULT_FLOOR_RESERVE: u64 = 1 << 20;

/// When appends become durable and are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// `append` resolves after the group commit's fdatasync covering the records (the default,
    /// and the only policy under which "2xx means durable" holds).
    Always,
    /// `append` resolves right after write(2); a background flusher fdatasyncs every active
    /// segment at this interval (written as `{ interval = "50ms" }`). Readers then see records
    /// that are written but not yet synced, and a power loss can drop up to one interval of
    /// acknowledged records. Recovery still never reissues their offsets.
    Interval(#[serde(with = "humantime_serde")] Duration),
}

/// The local journal's configuration. Every field has a default, so an empty section works.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    /// Where topics live: `"file"` (segment files under `dir`, the default) or `"jetstream"`
    /// (NATS JetStream, configured in `[journal.jetstream]`; `dir`, `segment_bytes`, `fsync` and
    /// `max_unread_bytes` then do not apply: see `docs/jetstream.md`).
    pub backend: JournalBackend,
    /// The NATS JetStream backend's settings, used when `backend = "jetstream"`.
    pub jetstream: JetStreamConfig,
    /// Directory holding every topic (`<dir>/<topic>/<partition>/`). Empty (the default) means
    /// the server puts it at `<data_dir>/journal`; [`crate::LocalJournal::open`] refuses an empty
    /// path.
    pub dir: PathBuf,
    /// Partitions of topics the server creates itself. Default 4, at most 1024.
    pub default_partitions: u32,
    /// A partition's active segment is sealed and a new one started once it would grow past this
    /// many bytes. One append batch never spans two segments, so a segment can exceed this by
    /// one batch. Default 64 MiB, at least 1 KiB.
    pub segment_bytes: u64,
    /// When an append is acknowledged: `"always"` (after fdatasync, the default) or
    /// `{ interval = "50ms" }`.
    pub fsync: FsyncPolicy,
    /// Retention deletes sealed segments whose newest record is older than this (a humantime
    /// string such as "7d" or "12h"). Default 7 days.
    #[serde(with = "humantime_serde")]
    pub retention_age: Duration,
    /// Retention also deletes the oldest sealed segments while a partition holds more bytes than
    /// this. Default: no size limit. Like `retention_age`, it never deletes records a registered
    /// consumer has not read yet.
    pub retention_bytes: Option<u64>,
    /// Safety valve for a consumer that stays behind: while a partition holds more bytes than
    /// this, retention deletes its oldest sealed segments even if a consumer has not read them,
    /// with an error log and `sluice_journal_retention_unread_deleted_total`. Default: none
    /// (unread records are never deleted; the disk fills instead, and intake answers 503).
    pub max_unread_bytes: Option<u64>,
    /// Largest single record accepted by `append` (bytes). Default 8 MiB, at most 256 MiB.
    pub max_record_bytes: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            backend: JournalBackend::File,
            jetstream: JetStreamConfig::default(),
            dir: PathBuf::new(),
            default_partitions: 4,
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Always,
            retention_age: Duration::from_secs(7 * 24 * 3600),
            retention_bytes: None,
            max_unread_bytes: None,
            max_record_bytes: 8 << 20,
        }
    }
}

/// A validated [`JournalConfig`]: nothing downstream re-checks these values.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub retention_age_ms: i64,
    pub retention_bytes: Option<u64>,
    pub max_unread_bytes: Option<u64>,
    pub max_record_bytes: usize,
    pub floor_reserve: u64,
}

impl JournalConfig {
    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), JournalError> {
        self.settings().map(|_| ())
    }

    pub(crate) fn settings(&self) -> Result<Settings, JournalError> {
        let invalid = |m: String| Err(JournalError::Invalid(m));
        if self.dir.as_os_str().is_empty() {
            return invalid("journal dir is not set".into());
        }
        if self.default_partitions == 0 || self.default_partitions > MAX_PARTITIONS {
            return invalid(format!(
                "journal default_partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                self.default_partitions
            ));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return invalid(format!(
                "journal segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {}",
                self.segment_bytes
            ));
        }
        if self.max_record_bytes == 0 || self.max_record_bytes > u64::from(MAX_VALUE_LEN) {
            return invalid(format!(
                "journal max_record_bytes must be between 1 and {MAX_VALUE_LEN}, got {}",
                self.max_record_bytes
            ));
        }
        if let FsyncPolicy::Interval(every) = self.fsync
            && (every.is_zero() || every > Duration::from_secs(60))
        {
            return invalid(format!(
                "journal fsync interval must be between 1ms and 60s, got {every:?}"
            ));
        }
        let retention_age_ms = i64::try_from(self.retention_age.as_millis()).unwrap_or(i64::MAX);
        if retention_age_ms == 0 {
            return invalid("journal retention_age must be at least 1ms".into());
        }
        Ok(Settings {
            dir: self.dir.clone(),
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            retention_age_ms,
            retention_bytes: self.retention_bytes,
            max_unread_bytes: self.max_unread_bytes,
            // Bounded by MAX_VALUE_LEN above, so it fits any usize of 32 bits or more.
            max_record_bytes: usize::try_from(self.max_record_bytes).unwrap_or(usize::MAX),
            floor_reserve: DEFAULT_FLOOR_RESERVE,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_the_documented_defaults() {
        let c: JournalConfig = toml::from_str("").unwrap();
        assert_eq!(c, JournalConfig::default());
        assert_eq!(c.default_partitions, 4);
        assert_eq!(c.segment_bytes, 64 << 20);
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.retention_age, Duration::from_secs(7 * 86400));
        assert_eq!(c.retention_bytes, None);
        assert_eq!(c.max_record_bytes, 8 << 20);
    }

    #[test]
    fn every_field_parses_and_unknown_fields_are_errors() {
        let c: JournalConfig = toml::from_str(
            r#"
            dir = "/var/lib/sluice/journal"
            default_partitions = 8
            segment_bytes = 1048576
            fsync = { interval = "25ms" }
            retention_age = "12h"
            retention_bytes = 1000000
            max_record_bytes = 1024
            "#,
        )
        .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(25)));
        assert_eq!(c.retention_age, Duration::from_secs(12 * 3600));
        assert_eq!(c.retention_bytes, Some(1_000_000));
        c.validate().unwrap();
        let c: JournalConfig = toml::from_str("fsync = \"always\"").unwrap();
        assert_eq!(c.fsync, FsyncPolicy::Always);
        let err = toml::from_str::<JournalConfig>("segment_byte = 1").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let base = JournalConfig {
            dir: "/x".into(),
            ..JournalConfig::default()
        };
        for (cfg, field) in [
            (JournalConfig::default(), "dir"),
            (
                JournalConfig {
                    default_partitions: 0,
                    ..base.clone()
                },
                "default_partitions",
            ),
            (
                JournalConfig {
                    segment_bytes: 10,
                    ..base.clone()
                },
                "segment_bytes",
            ),
            (
                JournalConfig {
                    max_record_bytes: 0,
                    ..base.clone()
                },
                "max_record_bytes",
            ),
            (
                JournalConfig {
                    fsync: FsyncPolicy::Interval(Duration::ZERO),
                    ..base.clone()
                },
                "interval",
            ),
            (
                JournalConfig {
                    retention_age: Duration::ZERO,
                    ..base.clone()
                },
                "retention_age",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
        base.validate().unwrap();
    }
}
