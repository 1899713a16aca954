//! Streams as journal topics: name resolution (user streams, the pipeline topics and their
//! ingest aliases) and the control operations: CreateStream, DeleteStream, DescribeStream,
//! DescribeStreamSummary, ListStreams, ListShards.

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_event::topic;
use sluice_journal::JournalError;

use super::shard::{hash_key_range, parse_shard_id, sequence_number, shard_id};
use super::token::{Token, TokenError, TokenKind};
use super::wire::{AwsError, parse, required};
use super::{Kinesis, now_ms};

/// Most shards a stream may have (each shard is a journal partition with its own writer
/// thread).
pub(crate) const MAX_SHARDS: u32 = 64;

/// Shards of an `ON_DEMAND` stream created without a count (AWS starts those with 4).
const ON_DEMAND_SHARDS: u32 = 4;

/// Longest stream name (AWS and the journal agree on 128).
const MAX_STREAM_NAME: usize = 128;

/// What a stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// Made with CreateStream: records are stored as put.
    User,
    /// `raw` or an ingest alias: records go through the collector.
    Raw,
    /// The pipeline's canonical events (read-only).
    Good,
    /// The pipeline's bad rows (read-only).
    Bad,
}

impl StreamKind {
    /// The kind of a journal topic.
    pub(crate) fn of_topic(topic_name: &str) -> Self {
        match topic_name {
            topic::RAW => Self::Raw,
            topic::GOOD => Self::Good,
            topic::BAD => Self::Bad,
            _ => Self::User,
        }
    }
}

/// A resolved stream.
#[derive(Clone, Debug)]
pub(crate) struct Stream {
    /// The name the client used.
    pub name: String,
    /// The journal topic behind it.
    pub topic: String,
    /// What it is.
    pub kind: StreamKind,
    /// Its shard (partition) count.
    pub shards: u32,
}

/// What the journal does not keep about a stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamMeta {
    created_ms: i64,
    on_demand: bool,
}

/// Checks a stream name: 1-128 of `A-Z a-z 0-9 _ . -`, not starting with a dot.
pub(crate) fn check_stream_name(name: &str) -> Result<(), String> {
    // Streams are journal topics: the journal's rule is the rule (it fits Kinesis's).
    if sluice_journal::is_valid_topic_name(name) {
        Ok(())
    } else {
        Err(format!(
            "stream name {name:?} must be 1 to {MAX_STREAM_NAME} of A-Z a-z 0-9 _ . - and not \
             start with a dot"
        ))
    }
}

/// The stream name of an ARN (`arn:aws:kinesis:<region>:<account>:stream/<name>`).
pub(crate) fn name_of_arn(arn: &str) -> Option<&str> {
    let (head, name) = arn.split_once(":stream/")?;
    (head.starts_with("arn:") && !name.is_empty()).then_some(name)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamRef {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateStreamIn {
    stream_name: Option<String>,
    shard_count: Option<i64>,
    stream_mode_details: Option<StreamModeDetails>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    max_record_size_in_kib: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamModeDetails {
    stream_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeStreamIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    limit: Option<i64>,
    exclusive_start_shard_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListShardsIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    next_token: Option<String>,
    exclusive_start_shard_id: Option<String>,
    max_results: Option<i64>,
    shard_filter: Option<ShardFilter>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    #[serde(rename = "Type")]
    kind: Option<String>,
    shard_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStreamsIn {
    limit: Option<i64>,
    exclusive_start_stream_name: Option<String>,
    next_token: Option<String>,
}

/// A `Limit`-style member: `default` when absent, else within `1..=max`.
pub(crate) fn limit(
    value: Option<i64>,
    default: usize,
    max: usize,
    member: &str,
) -> Result<usize, AwsError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v as u64 <= max as u64 => Ok(v as usize),
        Some(v) => Err(AwsError::InvalidArgument(format!(
            "{member} must be between 1 and {max}, not {v}"
        ))),
    }
}

impl Kinesis {
    /// `arn:aws:kinesis:<region>:<account>:stream/<name>`.
    pub(crate) fn arn(&self, name: &str) -> String {
        format!(
            "arn:aws:kinesis:{}:{}:stream/{name}",
            self.config.region, self.config.account_id
        )
    }

    pub(crate) fn stream_not_found(&self, name: &str) -> AwsError {
        AwsError::ResourceNotFound(format!(
            "Stream {name} under account {} not found.",
            self.config.account_id
        ))
    }

    /// Whether `name` delivers into `raw` (`raw` itself or an ingest alias).
    pub(crate) fn is_ingest_name(&self, name: &str) -> bool {
        name == topic::RAW || self.config.ingest_streams.iter().any(|s| s == name)
    }

    /// Resolves a stream named by `StreamName` or `StreamARN`.
    pub(crate) fn resolve(
        &self,
        name: Option<&str>,
        arn: Option<&str>,
    ) -> Result<Stream, AwsError> {
        let name = match (name, arn) {
            (Some(n), _) => n,
            (None, Some(a)) => name_of_arn(a).ok_or_else(|| {
                AwsError::InvalidArgument(format!("StreamARN {a:?} is not a Kinesis stream ARN"))
            })?,
            (None, None) => {
                return Err(AwsError::InvalidArgument(
                    "either StreamName or StreamARN is required".into(),
                ));
            }
        };
        self.stream_by_name(name)
    }

    /// Resolves a stream name.
    pub(crate) fn stream_by_name(&self, name: &str) -> Result<Stream, AwsError> {
        let topic_name = if self.is_ingest_name(name) {
            topic::RAW
        } else {
            name
        };
        if check_stream_name(topic_name).is_err() {
            return Err(self.stream_not_found(name));
        }
        let shards = self.journal.partitions(topic_name).map_err(|e| match e {
            JournalError::TopicNotFound(_) => self.stream_not_found(name),
            other => AwsError::from_journal(&other),
        })?;
        Ok(Stream {
            name: name.to_string(),
            topic: topic_name.to_string(),
            kind: StreamKind::of_topic(topic_name),
            shards,
        })
    }

    fn meta_of(&self, topic_name: &str) -> StreamMeta {
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic_name)
            .copied()
            .unwrap_or(StreamMeta {
                created_ms: self.started_ms,
                on_demand: false,
            })
    }

    fn summary_fields(&self, s: &Stream) -> serde_json::Map<String, Value> {
        let meta = self.meta_of(&s.topic);
        let mode = if meta.on_demand {
            "ON_DEMAND"
        } else {
            "PROVISIONED"
        };
        let mut m = serde_json::Map::new();
        m.insert("StreamName".into(), json!(s.name));
        m.insert("StreamARN".into(), json!(self.arn(&s.name)));
        m.insert("StreamStatus".into(), json!("ACTIVE"));
        m.insert("StreamModeDetails".into(), json!({ "StreamMode": mode }));
        m.insert("RetentionPeriodHours".into(), json!(self.retention_hours));
        m.insert(
            "StreamCreationTimestamp".into(),
            json!(meta.created_ms as f64 / 1000.0),
        );
        m.insert(
            "EnhancedMonitoring".into(),
            json!([{ "ShardLevelMetrics": [] }]),
        );
        m.insert("EncryptionType".into(), json!("NONE"));
        m
    }

    fn shard_json(shard: u32, shards: u32) -> Value {
        let (start, end) = hash_key_range(shard, shards);
        json!({
            "ShardId": shard_id(shard),
            "HashKeyRange": {
                "StartingHashKey": start.to_string(),
                "EndingHashKey": end.to_string(),
            },
            "SequenceNumberRange": { "StartingSequenceNumber": sequence_number(0) },
        })
    }

    /// The index after an `ExclusiveStartShardId`.
    fn after_shard(id: Option<&str>) -> Result<u32, AwsError> {
        match id {
            None => Ok(0),
            Some(id) => parse_shard_id(id)
                .map(|p| p.saturating_add(1))
                .ok_or_else(|| AwsError::InvalidArgument(format!("{id:?} is not a shard id"))),
        }
    }

    pub(crate) async fn create_stream(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: CreateStreamIn = parse(body)?;
        let name = required(input.stream_name, "StreamName")?;
        check_stream_name(&name).map_err(AwsError::Validation)?;
        let on_demand = match input
            .stream_mode_details
            .and_then(|d| d.stream_mode)
            .as_deref()
        {
            None | Some("PROVISIONED") => false,
            Some("ON_DEMAND") => true,
            Some(other) => {
                return Err(AwsError::Validation(format!(
                    "StreamMode must be PROVISIONED or ON_DEMAND, not {other:?}"
                )));
            }
        };
        let shards = match (input.shard_count, on_demand) {
            (None, true) => ON_DEMAND_SHARDS,
            (None, false) => {
                return Err(AwsError::InvalidArgument(
                    "ShardCount is required for a PROVISIONED stream".into(),
                ));
            }
            (Some(n), _) if n < 1 => {
                return Err(AwsError::Validation(format!(
                    "ShardCount must be at least 1, not {n}"
                )));
            }
            (Some(n), _) => u32::try_from(n)
                .ok()
                .filter(|&n| n <= MAX_SHARDS)
                .ok_or_else(|| {
                    AwsError::LimitExceeded(format!(
                        "ShardCount {n} is over this server's limit of {MAX_SHARDS} shards per \
                         stream"
                    ))
                })?,
        };
        if let Some(kib) = input.max_record_size_in_kib
            && kib != 1024
        {
            return Err(AwsError::InvalidArgument(format!(
                "MaxRecordSizeInKiB {kib} is not supported: records are at most 1024 KiB"
            )));
        }
        let exists = || {
            AwsError::ResourceInUse(format!(
                "Stream {name} under account {} already exists.",
                self.config.account_id
            ))
        };
        let _creating = self.creating.lock().await;
        if self.is_ingest_name(&name) || self.journal.partitions(&name).is_ok() {
            return Err(exists());
        }
        let user_streams = self
            .journal
            .topics()
            .iter()
            .filter(|t| StreamKind::of_topic(&t.name) == StreamKind::User)
            .count();
        if user_streams >= self.config.max_streams {
            tracing::warn!(stream = %name, streams = user_streams, max = self.config.max_streams, "kinesis stream refused: kinesis.max_streams reached");
            return Err(AwsError::LimitExceeded(format!(
                "Account {} has reached this server's limit of {} streams (kinesis.max_streams); \
                 delete a stream or raise the limit.",
                self.config.account_id, self.config.max_streams
            )));
        }
        let journal = self.journal.clone();
        let topic_name = name.clone();
        tokio::task::spawn_blocking(move || journal.create_topic(&topic_name, shards))
            .await
            .map_err(|e| AwsError::InternalFailure(format!("create task failed: {e}")))?
            .map_err(|e| match e {
                JournalError::TopicExists { .. } => exists(),
                other => AwsError::from_journal(&other),
            })?;
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).insert(
            name.clone(),
            StreamMeta {
                created_ms: now_ms(),
                on_demand,
            },
        );
        tracing::info!(stream = %name, shards, "kinesis stream created");
        Ok(json!({}))
    }

    pub(crate) async fn delete_stream(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: StreamRef = parse(body)?;
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        if s.kind != StreamKind::User {
            return Err(AwsError::ResourceInUse(format!(
                "stream {} is part of the sluice pipeline and cannot be deleted",
                s.name
            )));
        }
        let journal = self.journal.clone();
        let topic_name = s.topic.clone();
        tokio::task::spawn_blocking(move || journal.delete_topic(&topic_name))
            .await
            .map_err(|e| AwsError::InternalFailure(format!("delete task failed: {e}")))?
            .map_err(|e| match e {
                JournalError::TopicNotFound(_) => self.stream_not_found(&s.name),
                other => AwsError::from_journal(&other),
            })?;
        self.meta
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&s.topic);
        tracing::info!(stream = %s.name, "kinesis stream deleted");
        Ok(json!({}))
    }

    pub(crate) fn describe_stream(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: DescribeStreamIn = parse(body)?;
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        let max = limit(input.limit, 100, 10_000, "Limit")?;
        let first = Self::after_shard(input.exclusive_start_shard_id.as_deref())?;
        let shards: Vec<Value> = (first..s.shards)
            .take(max)
            .map(|p| Self::shard_json(p, s.shards))
            .collect();
        let has_more = u64::from(first) + (shards.len() as u64) < u64::from(s.shards);
        let mut d = self.summary_fields(&s);
        d.insert("Shards".into(), Value::Array(shards));
        d.insert("HasMoreShards".into(), json!(has_more));
        Ok(json!({ "StreamDescription": d }))
    }

    pub(crate) fn describe_stream_summary(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: StreamRef = parse(body)?;
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        let mut d = self.summary_fields(&s);
        d.insert("OpenShardCount".into(), json!(s.shards));
        d.insert("ConsumerCount".into(), json!(0));
        d.insert("MaxRecordSizeInKiB".into(), json!(1024));
        Ok(json!({ "StreamDescriptionSummary": d }))
    }

    pub(crate) fn list_shards(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: ListShardsIn = parse(body)?;
        let max = limit(input.max_results, 1000, 10_000, "MaxResults")?;
        let (s, first) = match input.next_token.as_deref() {
            Some(t) => {
                if input.stream_name.is_some() || input.stream_arn.is_some() {
                    return Err(AwsError::InvalidArgument(
                        "NextToken and StreamName (or StreamARN) cannot be used together".into(),
                    ));
                }
                let token = self
                    .tokens
                    .decode(t, TokenKind::ListShards, now_ms())
                    .map_err(|e| match e {
                        TokenError::Invalid => {
                            AwsError::InvalidArgument("NextToken is not valid".into())
                        }
                        e @ TokenError::Expired { .. } => {
                            AwsError::ExpiredNextToken(format!("NextToken {e}"))
                        }
                    })?;
                (self.stream_by_name(&token.name)?, token.shard)
            }
            None => {
                let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
                let mut first = Self::after_shard(input.exclusive_start_shard_id.as_deref())?;
                if let Some(filter) = input.shard_filter {
                    match filter.kind.as_deref() {
                        Some("AFTER_SHARD_ID") => {
                            let id = required(filter.shard_id, "ShardFilter.ShardId")?;
                            first = first.max(Self::after_shard(Some(&id))?);
                        }
                        // Every shard is open and reaches back to the trim horizon.
                        Some(
                            "AT_TRIM_HORIZON" | "FROM_TRIM_HORIZON" | "AT_LATEST" | "AT_TIMESTAMP"
                            | "FROM_TIMESTAMP",
                        ) => {}
                        other => {
                            return Err(AwsError::InvalidArgument(format!(
                                "unknown ShardFilter Type {other:?}"
                            )));
                        }
                    }
                }
                (s, first)
            }
        };
        let shards: Vec<Value> = (first..s.shards)
            .take(max)
            .map(|p| Self::shard_json(p, s.shards))
            .collect();
        let next = u64::from(first) + shards.len() as u64;
        let mut out = json!({ "Shards": shards });
        if next < u64::from(s.shards) {
            out["NextToken"] = json!(self.tokens.encode(&Token {
                kind: TokenKind::ListShards,
                name: s.name.clone(),
                shard: next as u32,
                offset: 0,
                issued_ms: now_ms(),
            }));
        }
        Ok(out)
    }

    /// Every stream name: the journal's topics and the ingest aliases, sorted.
    fn stream_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .journal
            .topics()
            .into_iter()
            .map(|t| t.name)
            .chain(self.config.ingest_streams.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub(crate) fn list_streams(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: ListStreamsIn = parse(body)?;
        let max = limit(input.limit, 100, 10_000, "Limit")?;
        let after = match input.next_token.as_deref() {
            Some(t) => Some(
                self.tokens
                    .decode(t, TokenKind::ListStreams, now_ms())
                    .map_err(|e| match e {
                        TokenError::Invalid => {
                            AwsError::InvalidArgument("NextToken is not valid".into())
                        }
                        e @ TokenError::Expired { .. } => {
                            AwsError::ExpiredNextToken(format!("NextToken {e}"))
                        }
                    })?
                    .name,
            ),
            None => input.exclusive_start_stream_name,
        };
        let names: Vec<String> = self
            .stream_names()
            .into_iter()
            .filter(|n| after.as_ref().is_none_or(|a| n > a))
            .collect();
        let has_more = names.len() > max;
        let page: Vec<String> = names.into_iter().take(max).collect();
        let summaries: Vec<Value> = page
            .iter()
            .filter_map(|n| self.stream_by_name(n).ok())
            .map(|s| {
                let d = self.summary_fields(&s);
                json!({
                    "StreamName": d.get("StreamName"),
                    "StreamARN": d.get("StreamARN"),
                    "StreamStatus": d.get("StreamStatus"),
                    "StreamModeDetails": d.get("StreamModeDetails"),
                    "StreamCreationTimestamp": d.get("StreamCreationTimestamp"),
                })
            })
            .collect();
        let mut out = json!({
            "StreamNames": page,
            "HasMoreStreams": has_more,
            "StreamSummaries": summaries,
        });
        if has_more && let Some(last) = page.last() {
            out["NextToken"] = json!(self.tokens.encode(&Token {
                kind: TokenKind::ListStreams,
                name: last.clone(),
                shard: 0,
                offset: 0,
                issued_ms: now_ms(),
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_and_arns() {
        assert!(check_stream_name("clicks.v2_a-b").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(129)] {
            assert!(
                check_stream_name(bad).is_err_and(|e| e.starts_with("stream name")),
                "{bad}"
            );
        }
        assert_eq!(
            name_of_arn("arn:aws:kinesis:us-east-1:000000000000:stream/events"),
            Some("events")
        );
        assert_eq!(name_of_arn("events"), None);
        assert_eq!(name_of_arn("arn:aws:kinesis:us-east-1:0:stream/"), None);
    }

    #[test]
    fn limits_default_and_range() {
        assert_eq!(limit(None, 100, 10_000, "Limit").unwrap(), 100);
        assert_eq!(limit(Some(10_000), 100, 10_000, "Limit").unwrap(), 10_000);
        for v in [0, 10_001] {
            assert!(matches!(
                limit(Some(v), 100, 10_000, "Limit"),
                Err(AwsError::InvalidArgument(m)) if m.contains("between 1 and 10000")
            ));
        }
    }
}
