//! What Sluice checks at start before it acks anything on JetStream: the server's version and
//! JetStream, each stream's settings against what dense offsets and durable acks need, and,
//! where monitoring endpoints are configured, that every server fsyncs before acking.
//!
//! What is not checked: without `monitor_urls`, the servers' `sync_interval` (the client
//! protocol does not carry it); the disks under the servers; that the configured monitoring
//! endpoints belong to the servers the client is connected to.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, PersistenceMode, RetentionPolicy, StorageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The oldest server accepted: atomic batch publish came in 2.12, and 2.12.3 fixed the
/// acknowledged-write losses a published analysis of 2.12.1 found.
pub(crate) const MIN_SERVER: (u64, u64, u64) = (2, 12, 3);

/// `Ok` if `version` (`2.15.1`, `2.12.3-beta`) is at least [`MIN_SERVER`].
pub(crate) fn server_version(version: &str) -> Result<(), String> {
    let core = version.trim_start_matches('v').split(['-', '+']).next();
    let parts: Vec<u64> = core
        .unwrap_or_default()
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let have = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
        parts.get(2).copied().unwrap_or(0),
    );
    if have >= MIN_SERVER {
        Ok(())
    } else {
        let (a, b, c) = MIN_SERVER;
        Err(format!(
            "nats-server {version} is too old: the JetStream journal needs {a}.{b}.{c} or later \
             (atomic batch publish, fixes for lost acknowledged writes)"
        ))
    }
}

/// What a journal stream must look like.
pub(crate) struct Wanted<'a> {
    pub subject: &'a str,
    pub replicas: usize,
}

/// Every unsafe setting of an existing stream, as one message; `Ok` if there is none.
/// Retention limits (`max_age`, `max_bytes`) are not unsafe: they are reconciled with the
/// config, and records they remove before a consumer read them are reported.
pub(crate) fn stream_settings(config: &Config, want: &Wanted<'_>) -> Result<(), String> {
    let mut bad = Vec::new();
    if config.subjects != [want.subject] {
        bad.push(format!(
            "subjects {:?} (must be exactly [{:?}]: one partition per stream keeps offsets dense)",
            config.subjects, want.subject
        ));
    }
    durable_storage(config, want.replicas, &mut bad);
    if config.retention != RetentionPolicy::Limits {
        bad.push("retention by interest or work queue (records would go when acked)".into());
    }
    if config.max_messages_per_subject > 0 {
        bad.push("max_msgs_per_subject (would delete records from the middle)".into());
    }
    if config.max_messages > 0 {
        bad.push(
            "max_msgs (Sluice limits a partition by retention_age and retention_bytes)".into(),
        );
    }
    if config.allow_message_ttl || config.subject_delete_marker_ttl.is_some() {
        bad.push("per-message TTLs (would delete records from the middle)".into());
    }
    if !config.deny_delete || !config.deny_purge {
        bad.push("deletes or purges allowed (would leave holes in the offsets)".into());
    }
    if !config.allow_atomic_publish {
        bad.push("no allow_atomic (a batch's records must be stored all or none)".into());
    }
    if config.persist_mode == Some(PersistenceMode::Async) {
        bad.push("persist_mode async (acks before the record is stored)".into());
    }
    if config.mirror.is_some() || config.sources.as_ref().is_some_and(|s| !s.is_empty()) {
        bad.push("a mirror or sources (offsets would not be Sluice's own)".into());
    }
    if config.sealed {
        bad.push("sealed".into());
    }
    if config.subject_transform.is_some() {
        bad.push("a subject transform".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// File storage and the configured replicas, which every stream Sluice relies on needs.
fn durable_storage(config: &Config, replicas: usize, bad: &mut Vec<String>) {
    if config.storage != StorageType::File {
        bad.push("memory storage (acked records would not survive a restart)".into());
    }
    if config.num_replicas.max(1) != replicas {
        bad.push(format!(
            "{} replicas (the config says {replicas})",
            config.num_replicas.max(1)
        ));
    }
}

/// Every unsafe setting of the positions bucket's stream, as one message.
pub(crate) fn bucket_settings(config: &Config, replicas: usize) -> Result<(), String> {
    let mut bad = Vec::new();
    durable_storage(config, replicas, &mut bad);
    if !config.max_age.is_zero() || config.max_bytes > 0 {
        bad.push("an age or size limit (positions would expire)".into());
    }
    if config.persist_mode == Some(PersistenceMode::Async) {
        bad.push("persist_mode async (acks before the position is stored)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// `http://host:port[/]` → `host:port`.
pub(crate) fn split_http_url(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    (!authority.is_empty() && !authority.contains('/') && authority.contains(':'))
        .then_some(authority)
}

/// Asks a server's monitoring endpoint whether JetStream fsyncs before every ack.
pub(crate) async fn sync_always(url: &str, timeout: Duration) -> Result<(), String> {
    let authority =
        split_http_url(url).ok_or_else(|| format!("{url:?} is not http://host:port"))?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        stream
            .write_all(
                // HTTP/1.0: the answer comes whole, never chunked.
                format!("GET /varz HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes(),
            )
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match tokio::time::timeout(timeout, fetch).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("cannot read {url}/varz: {e}")),
        Err(_) => return Err(format!("{url}/varz did not answer within {timeout:?}")),
    };
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}/varz: not an HTTP answer"))?;
    if !(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200")) {
        return Err(format!(
            "{url}/varz answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let varz: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{url}/varz is not JSON ({e})"))?;
    let config = &varz["jetstream"]["config"];
    if config.is_null() {
        return Err(format!("{url}: JetStream is not enabled on this server"));
    }
    if config["sync_always"].as_bool() != Some(true) {
        return Err(format!(
            "{url}: the server acks before it fsyncs (jetstream sync_interval is {}, not \
             `always`): an acked record could be lost in a power cut; set `jetstream {{ \
             sync_interval: always }}` in its config",
            config["sync_interval"]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_2_12_3_are_refused() {
        for ok in ["2.12.3", "2.15.1", "v2.13.0", "3.0.0-beta", "2.12.10"] {
            server_version(ok).unwrap();
        }
        for old in ["2.9.10", "2.12.1", "2.11.99", "", "garbage"] {
            let err = server_version(old).unwrap_err();
            assert!(err.contains("too old"), "{old}: {err}");
        }
    }

    #[test]
    fn every_unsafe_setting_is_named() {
        let want = Wanted {
            subject: "s.t.0",
            replicas: 1,
        };
        let good = Config {
            name: "s_t_0".into(),
            subjects: vec!["s.t.0".into()],
            num_replicas: 1,
            deny_delete: true,
            deny_purge: true,
            allow_atomic_publish: true,
            ..Config::default()
        };
        stream_settings(&good, &want).unwrap();
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    subjects: vec!["s.t.*".into()],
                    ..good.clone()
                },
                "subjects",
            ),
            (
                Config {
                    storage: StorageType::Memory,
                    ..good.clone()
                },
                "memory",
            ),
            (
                Config {
                    num_replicas: 3,
                    ..good.clone()
                },
                "replicas",
            ),
            (
                Config {
                    retention: RetentionPolicy::WorkQueue,
                    ..good.clone()
                },
                "work queue",
            ),
            (
                Config {
                    max_messages_per_subject: 1,
                    ..good.clone()
                },
                "max_msgs_per_subject",
            ),
            (
                Config {
                    allow_message_ttl: true,
                    ..good.clone()
                },
                "TTL",
            ),
            (
                Config {
                    deny_delete: false,
                    ..good.clone()
                },
                "deletes",
            ),
            (
                Config {
                    allow_atomic_publish: false,
                    ..good.clone()
                },
                "allow_atomic",
            ),
            (
                Config {
                    persist_mode: Some(PersistenceMode::Async),
                    ..good.clone()
                },
                "async",
            ),
        ];
        for (config, word) in cases {
            let err = stream_settings(&config, &want).unwrap_err();
            assert!(err.contains(word), "{word}: {err}");
        }
    }

    #[test]
    fn a_positions_bucket_that_could_lose_positions_is_named() {
        let good = Config {
            num_replicas: 3,
            ..Config::default()
        };
        bucket_settings(&good, 3).unwrap();
        let err = bucket_settings(&good, 1).unwrap_err();
        assert!(err.contains("3 replicas (the config says 1)"), "{err}");
        let expiring = Config {
            max_age: Duration::from_secs(60),
            ..good.clone()
        };
        assert!(
            bucket_settings(&expiring, 3)
                .unwrap_err()
                .contains("expire")
        );
        let memory = Config {
            storage: StorageType::Memory,
            ..good
        };
        assert!(bucket_settings(&memory, 3).unwrap_err().contains("memory"));
    }

    #[test]
    fn monitor_urls_are_plain_http_host_and_port() {
        assert_eq!(split_http_url("http://a:8222"), Some("a:8222"));
        assert_eq!(split_http_url("http://a:8222/"), Some("a:8222"));
        for bad in ["https://a:1", "http://a", "http://a:1/x", "a:1"] {
            assert_eq!(split_http_url(bad), None, "{bad}");
        }
    }
}
