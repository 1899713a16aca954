//! [`JetStreamConfig`]: the `[journal.jetstream]` section, used when `[journal] backend =
//! "jetstream"`; validated once into the module's `Settings`.

use std::time::Duration;

use serde::Deserialize;

use crate::JournalError;

/// Which journal backend the server opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalBackend {
    /// Segment files on the local disk (`LocalJournal`), the default.
    #[default]
    File,
    /// NATS JetStream (`JetStreamJournal`): one stream per topic partition.
    Jetstream,
}

/// How to reach NATS JetStream and what the streams Sluice creates look like. Every field has a
/// default, so `[journal] backend = "jetstream"` alone talks to a server on localhost.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// Server URLs (`nats://host:port`, `tls://…`; credentials as `nats://user:pass@host`). The
    /// client connects to one and fails over to the others. Default `["nats://127.0.0.1:4222"]`.
    pub urls: Vec<String>,
    /// Replicas of every stream and of the positions bucket (1 to 5). Default 1; use 3 on a
    /// three-node cluster. An existing stream with another count is refused at start.
    pub replicas: usize,
    /// Prefix of every stream (`<prefix>_<topic>_<partition>`), subject
    /// (`<prefix>.<topic>.<partition>`) and of the positions bucket (`<prefix>_positions`), so
    /// that several pipelines can share one NATS account. `A-Z a-z 0-9 -`. Default `sluice`.
    pub prefix: String,
    /// Monitoring endpoints (`http://host:port`, the servers' `http:` port) on which Sluice checks
    /// at start that every server fsyncs before it acks (`/varz`: `jetstream.config.sync_always`).
    /// Without them that cannot be checked over the client protocol: a warning says so.
    pub monitor_urls: Vec<String>,
    /// How long to wait for the first connection and for each request. Default 5s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes of the newest records each partition keeps in memory, so that consumers near the
    /// end read without a network round trip. Default 8 MiB.
    pub tail_cache_bytes: u64,
    /// This node's name in the leases (`<prefix>_leases`) and in `/v1/cluster`. Default: the
    /// host name and the process id.
    pub node: String,
    /// How long a lease outlives its holder's last renew: after a node dies, another takes over
    /// the stages after the journal within about this long. The same on every node (it is the
    /// lease bucket's `max_age`). Default 10s; at least 3s.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            urls: vec!["nats://127.0.0.1:4222".into()],
            replicas: 1,
            prefix: "sluice".into(),
            monitor_urls: Vec::new(),
            timeout: Duration::from_secs(5),
            tail_cache_bytes: 8 << 20,
            node: String::new(),
            lease_ttl: Duration::from_secs(10),
        }
    }
}

impl JetStreamConfig {
    /// `node`, or the host name and the process id when it is not set.
    pub fn node_name(&self) -> String {
        if !self.node.is_empty() {
            return self.node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let host = if host.is_empty() {
            "sluice".into()
        } else {
            host
        };
        format!("{host}-{}", std::process::id())
    }

    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), JournalError> {
        let invalid = |m: String| Err(JournalError::Invalid(m));
        if self.lease_ttl < Duration::from_secs(3) {
            return invalid(format!(
                "journal.jetstream lease_ttl must be at least 3s, got {:?}",
                self.lease_ttl
            ));
        }
        if self.urls.is_empty() {
            return invalid("journal.jetstream urls is empty".into());
        }
        for url in &self.urls {
            if url.parse::<async_nats::ServerAddr>().is_err() {
                return invalid(format!("journal.jetstream urls: {url:?} is not a NATS URL"));
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return invalid(format!(
                "journal.jetstream replicas must be between 1 and 5, got {}",
                self.replicas
            ));
        }
        if self.prefix.is_empty()
            || self.prefix.len() > 32
            || !self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid(format!(
                "journal.jetstream prefix must be 1 to 32 of A-Z a-z 0-9 -, got {:?}",
                self.prefix
            ));
        }
        for url in &self.monitor_urls {
            if super::check::split_http_url(url).is_none() {
                return invalid(format!(
                    "journal.jetstream monitor_urls: {url:?} is not http://host:port"
                ));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            return invalid(format!(
                "journal.jetstream timeout must be between 1ms and 300s, got {:?}",
                self.timeout
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_values_name_their_field() {
        let c: JetStreamConfig = toml::from_str("").unwrap();
        assert_eq!(c, JetStreamConfig::default());
        c.validate().unwrap();
        let c: JetStreamConfig = toml::from_str(
            r#"
            urls = ["nats://a:4222", "nats://b:4222"]
            replicas = 3
            prefix = "p-1"
            monitor_urls = ["http://a:8222"]
            timeout = "2s"
            tail_cache_bytes = 1024
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let unknown = toml::from_str::<JetStreamConfig>("url = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("unknown field `url`"), "{unknown}");
        for (bad, field) in [
            (r#"urls = []"#, "urls"),
            (r#"urls = ["::"]"#, "urls"),
            ("replicas = 0", "replicas"),
            ("replicas = 7", "replicas"),
            (r#"prefix = "a_b""#, "prefix"),
            (r#"monitor_urls = ["https://a"]"#, "monitor_urls"),
            (r#"timeout = "0s""#, "timeout"),
        ] {
            let c: JetStreamConfig = toml::from_str(bad).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
