//! The data operations of Kinesis Data Streams: PutRecord, PutRecords, GetShardIterator and
//! GetRecords, on user streams (frames in their own topic) and on the pipeline topics.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_collector::Origin;
use sluice_event::{ErrorKind, routing_key};
use sluice_journal::{Journal, JournalError, Record};

use super::intake::{IntakeRecord, Placed};
use super::shard::{
    decode_frame, encode_frame, hash_partition_key, parse_hash_key, parse_sequence_number,
    parse_shard_id, sequence_number, shard_for_hash, shard_id,
};
use super::streams::{Stream, StreamKind, limit};
use super::token::{Token, TokenError, TokenKind};
use super::wire::{AwsError, decode_blob, encode_blob, parse, required};
use super::{Kinesis, now_ms};

/// Largest `Data` of one record (before base64).
const MAX_RECORD_DATA: usize = 1 << 20;

/// Most records in one `PutRecords`.
const MAX_PUT_RECORDS: usize = 500;

/// Largest `PutRecords` request: data plus partition keys.
const MAX_PUT_RECORDS_BYTES: usize = 5 << 20;

/// Longest partition key, in characters.
const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Most records one `GetRecords` returns.
const MAX_GET_RECORDS: usize = 10_000;

/// Most bytes one `GetRecords` returns.
const MAX_GET_BYTES: usize = 10 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    records: Option<Vec<PutRecordsEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsEntry {
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetShardIteratorIn {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    shard_id: Option<String>,
    shard_iterator_type: Option<String>,
    starting_sequence_number: Option<String>,
    timestamp: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetRecordsIn {
    shard_iterator: Option<String>,
    limit: Option<i64>,
}

/// One checked record of a put.
struct Checked {
    data: Vec<u8>,
    partition_key: String,
    hash: u128,
}

fn check_record(
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
) -> Result<Checked, AwsError> {
    let data = decode_blob(&required(data, "data")?, MAX_RECORD_DATA, "data")?;
    let partition_key = required(partition_key, "partitionKey")?;
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(AwsError::Validation(format!(
            "1 validation error detected: Value at 'partitionKey' failed to satisfy constraint: \
             Member must have length between 1 and {MAX_PARTITION_KEY_CHARS} (it has {chars})"
        )));
    }
    let hash = match explicit_hash_key.as_deref() {
        Some(h) => parse_hash_key(h).ok_or_else(|| {
            AwsError::InvalidArgument(format!(
                "ExplicitHashKey {h:?} must be a decimal between 0 and 2^128 - 1"
            ))
        })?,
        None => hash_partition_key(&partition_key),
    };
    Ok(Checked {
        data,
        partition_key,
        hash,
    })
}

/// A per-record failure of a put, as `PutRecords` reports it.
fn record_error(kind: ErrorKind, message: String) -> Value {
    let code = match kind {
        ErrorKind::Unavailable | ErrorKind::Overloaded => "ProvisionedThroughputExceededException",
        ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Unsupported => {
            "InvalidArgumentException"
        }
        _ => "InternalFailure",
    };
    json!({ "ErrorCode": code, "ErrorMessage": message })
}

/// Reads the key a pipeline record is filed under: its partition key, else its user id,
/// anonymous id or event id.
fn pipeline_partition_key(value: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(default, borrow)]
        event_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        partition_key: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        user_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        anonymous_id: Option<Cow<'a, str>>,
    }
    match serde_json::from_slice::<Keys<'_>>(value) {
        Ok(k) => match k.partition_key.filter(|p| !p.is_empty()) {
            Some(p) => p.into_owned(),
            None => routing_key(
                k.user_id.as_deref(),
                k.anonymous_id.as_deref(),
                k.event_id.as_deref().unwrap_or("unknown"),
            )
            .to_string(),
        },
        Err(_) => "unknown".into(),
    }
}

/// The first offset at or after which every record was appended at or after `ts_ms` (append
/// times only grow within a partition), found by bisection with one-record reads.
fn offset_at_time(
    journal: &dyn Journal,
    topic: &str,
    shard: u32,
    ts_ms: i64,
) -> Result<u64, JournalError> {
    let (mut lo, mut hi) = (journal.start(topic, shard)?, journal.end(topic, shard)?);
    // The answer lies in lo..=hi; "the first record at or after hi" does not exist.
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match journal.read(topic, shard, mid, 1, 1)?.first() {
            Some(r) if r.offset < hi && r.timestamp_ms < ts_ms => lo = r.offset + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// A `Timestamp` member: epoch seconds (fractional allowed), or an RFC 3339 string.
fn timestamp_ms(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_f64().map(|s| (s * 1000.0).round() as i64),
        Value::String(s) => s
            .parse::<f64>()
            .ok()
            .map(|s| (s * 1000.0).round() as i64)
            .or_else(|| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }),
        _ => None,
    }
}

impl Kinesis {
    /// The error for a whole put that could not be taken into `raw`.
    pub(crate) fn kinesis_put_error(&self, kind: ErrorKind, message: String) -> AwsError {
        match kind {
            ErrorKind::Unavailable | ErrorKind::Overloaded if self.journal.is_failed() => {
                AwsError::ServiceUnavailable(message)
            }
            ErrorKind::Unavailable | ErrorKind::Overloaded => {
                AwsError::ProvisionedThroughputExceeded(message)
            }
            ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Unsupported => {
                AwsError::InvalidArgument(message)
            }
            ErrorKind::NotFound => AwsError::ResourceNotFound(message),
            _ => AwsError::InternalFailure(message),
        }
    }

    fn writable(&self, s: &Stream) -> Result<(), AwsError> {
        match s.kind {
            StreamKind::User | StreamKind::Raw => Ok(()),
            StreamKind::Good | StreamKind::Bad => Err(AwsError::AccessDenied(format!(
                "stream {} is the pipeline's output and is read-only: put records into raw{}",
                s.name,
                if self.config.ingest_streams.is_empty() {
                    String::new()
                } else {
                    format!(" or {}", self.config.ingest_streams.join(", "))
                }
            ))),
        }
    }

    /// Appends records to a user stream, one journal append per shard; per record the
    /// offset or the failure.
    async fn append_user(
        &self,
        s: &Stream,
        records: &[Checked],
    ) -> Result<Vec<Result<(u32, u64), AwsError>>, AwsError> {
        if self.journal.is_failed() {
            return Err(AwsError::ServiceUnavailable(
                "journal failed; the server is restarting".into(),
            ));
        }
        let mut groups: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, r) in records.iter().enumerate() {
            groups
                .entry(shard_for_hash(r.hash, s.shards))
                .or_default()
                .push(i);
        }
        let appends = groups.into_iter().map(|(shard, indexes)| {
            let frames: Vec<Bytes> = indexes
                .iter()
                .filter_map(|&i| records.get(i))
                .map(|r| Bytes::from(encode_frame(&r.partition_key, &r.data)))
                .collect();
            let journal = self.journal.clone();
            let topic = s.topic.clone();
            async move {
                let first = journal.append_shared(&topic, shard, frames, None).await;
                (shard, indexes, first)
            }
        });
        let results = futures::future::join_all(appends).await;
        let mut out: Vec<Result<(u32, u64), AwsError>> = (0..records.len())
            .map(|_| Err(AwsError::InternalFailure("record was not placed".into())))
            .collect();
        for (shard, indexes, first) in results {
            for (k, &i) in indexes.iter().enumerate() {
                let r = match &first {
                    Ok(first) => Ok((shard, first + k as u64)),
                    Err(JournalError::TopicNotFound(_)) => Err(self.stream_not_found(&s.name)),
                    Err(e) => Err(AwsError::InternalFailure(format!(
                        "append to shard {} failed: {e}",
                        shard_id(shard)
                    ))),
                };
                if let Some(o) = out.get_mut(i) {
                    *o = r;
                }
            }
        }
        Ok(out)
    }

    pub(crate) async fn put_record(
        &self,
        body: &[u8],
        source: Arc<str>,
        origin: Origin,
    ) -> Result<Value, AwsError> {
        let input: PutRecordIn = parse(body)?;
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        self.writable(&s)?;
        let record = check_record(input.data, input.partition_key, input.explicit_hash_key)?;
        let (shard, offset) = if s.kind == StreamKind::Raw {
            let placed = self
                .intake(
                    source,
                    origin,
                    vec![IntakeRecord {
                        data: record.data,
                        partition_key: Some(record.partition_key),
                    }],
                )
                .await
                .map_err(|(kind, m)| self.kinesis_put_error(kind, m))?;
            match placed.into_iter().next() {
                Some(Placed::At(pos)) => (pos.partition, pos.offset),
                Some(Placed::Failed(kind, m)) => return Err(self.kinesis_put_error(kind, m)),
                None => return Err(AwsError::InternalFailure("record was not placed".into())),
            }
        } else {
            let mut placed = self.append_user(&s, std::slice::from_ref(&record)).await?;
            placed
                .pop()
                .unwrap_or_else(|| Err(AwsError::InternalFailure("record was not placed".into())))?
        };
        Ok(json!({
            "ShardId": shard_id(shard),
            "SequenceNumber": sequence_number(offset),
            "EncryptionType": "NONE",
        }))
    }

    pub(crate) async fn put_records(
        &self,
        body: &[u8],
        source: Arc<str>,
        origin: Origin,
    ) -> Result<Value, AwsError> {
        let input: PutRecordsIn = parse(body)?;
        let entries = required(input.records, "records")?;
        if entries.is_empty() || entries.len() > MAX_PUT_RECORDS {
            return Err(AwsError::Validation(format!(
                "1 validation error detected: Value at 'records' failed to satisfy constraint: \
                 Member must have length between 1 and {MAX_PUT_RECORDS} (it has {})",
                entries.len()
            )));
        }
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        self.writable(&s)?;
        let mut records = Vec::with_capacity(entries.len());
        let mut total = 0usize;
        for e in entries {
            let r = check_record(e.data, e.partition_key, e.explicit_hash_key)?;
            total += r.data.len() + r.partition_key.len();
            if total > MAX_PUT_RECORDS_BYTES {
                return Err(AwsError::InvalidArgument(format!(
                    "Records size exceeds {MAX_PUT_RECORDS_BYTES} bytes (data and partition \
                     keys of the whole request)"
                )));
            }
            records.push(r);
        }
        let answers: Vec<Value> = if s.kind == StreamKind::Raw {
            let intake = records
                .into_iter()
                .map(|r| IntakeRecord {
                    data: r.data,
                    partition_key: Some(r.partition_key),
                })
                .collect();
            self.intake(source, origin, intake)
                .await
                .map_err(|(kind, m)| self.kinesis_put_error(kind, m))?
                .into_iter()
                .map(|p| match p {
                    Placed::At(pos) => json!({
                        "ShardId": shard_id(pos.partition),
                        "SequenceNumber": sequence_number(pos.offset),
                    }),
                    Placed::Failed(kind, m) => record_error(kind, m),
                })
                .collect()
        } else {
            self.append_user(&s, &records)
                .await?
                .into_iter()
                .map(|r| match r {
                    Ok((shard, offset)) => json!({
                        "ShardId": shard_id(shard),
                        "SequenceNumber": sequence_number(offset),
                    }),
                    Err(e) => json!({ "ErrorCode": e.code(), "ErrorMessage": e.to_string() }),
                })
                .collect()
        };
        let failed = answers
            .iter()
            .filter(|a| a.get("ErrorCode").is_some())
            .count();
        Ok(json!({
            "FailedRecordCount": failed,
            "Records": answers,
            "EncryptionType": "NONE",
        }))
    }

    pub(crate) async fn get_shard_iterator(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: GetShardIteratorIn = parse(body)?;
        let s = self.resolve(input.stream_name.as_deref(), input.stream_arn.as_deref())?;
        let id = required(input.shard_id, "shardId")?;
        let shard = parse_shard_id(&id)
            .filter(|&p| p < s.shards)
            .ok_or_else(|| {
                AwsError::ResourceNotFound(format!(
                    "Shard {id} in stream {} under account {} does not exist",
                    s.name, self.config.account_id
                ))
            })?;
        let kind = required(input.shard_iterator_type, "shardIteratorType")?;
        let journal = self.journal.clone();
        let topic = s.topic.clone();
        let jerr = |e: JournalError| AwsError::from_journal(&e);
        let sequence = |after: bool| -> Result<u64, AwsError> {
            let text = input.starting_sequence_number.as_deref().ok_or_else(|| {
                AwsError::InvalidArgument(format!("StartingSequenceNumber is required for {kind}"))
            })?;
            let invalid = || {
                AwsError::InvalidArgument(format!(
                    "StartingSequenceNumber {text} used in GetShardIterator on shard {id} in \
                     stream {} under account {} is invalid",
                    s.name, self.config.account_id
                ))
            };
            let offset = parse_sequence_number(text).ok_or_else(invalid)?;
            let end = self.journal.end(&s.topic, shard).map_err(jerr)?;
            if offset >= end {
                return Err(invalid());
            }
            Ok(offset + u64::from(after))
        };
        let offset = match kind.as_str() {
            "TRIM_HORIZON" => self.journal.start(&s.topic, shard).map_err(jerr)?,
            "LATEST" => self.journal.end(&s.topic, shard).map_err(jerr)?,
            "AT_SEQUENCE_NUMBER" => sequence(false)?,
            "AFTER_SEQUENCE_NUMBER" => sequence(true)?,
            "AT_TIMESTAMP" => {
                let ts = input.timestamp.as_ref().ok_or_else(|| {
                    AwsError::InvalidArgument("Timestamp is required for AT_TIMESTAMP".into())
                })?;
                let ts = timestamp_ms(ts).ok_or_else(|| {
                    AwsError::InvalidArgument(format!(
                        "Timestamp {ts} is not epoch seconds or an RFC 3339 time"
                    ))
                })?;
                tokio::task::spawn_blocking(move || {
                    offset_at_time(journal.as_ref(), &topic, shard, ts)
                })
                .await
                .map_err(|e| AwsError::InternalFailure(format!("lookup task failed: {e}")))?
                .map_err(jerr)?
            }
            other => {
                return Err(AwsError::Validation(format!(
                    "1 validation error detected: Value '{other}' at 'shardIteratorType' failed \
                     to satisfy constraint: Member must satisfy enum value set: \
                     [AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST, \
                     AT_TIMESTAMP]"
                )));
            }
        };
        let token = self.tokens.encode(&Token {
            kind: TokenKind::ShardIterator,
            name: s.topic.clone(),
            shard,
            offset,
            issued_ms: now_ms(),
        });
        Ok(json!({ "ShardIterator": token }))
    }

    pub(crate) async fn get_records(&self, body: &[u8]) -> Result<Value, AwsError> {
        let input: GetRecordsIn = parse(body)?;
        let text = required(input.shard_iterator, "shardIterator")?;
        let max = limit(input.limit, MAX_GET_RECORDS, MAX_GET_RECORDS, "Limit")?;
        let it = self
            .tokens
            .decode(&text, TokenKind::ShardIterator, now_ms())
            .map_err(|e| match e {
                TokenError::Invalid => AwsError::InvalidArgument("Invalid ShardIterator.".into()),
                TokenError::Expired { issued_ms, now_ms } => AwsError::ExpiredIterator(format!(
                    "Iterator expired. The iterator was created at time {issued_ms} ms while \
                     right now it is {now_ms} ms which is further in the future than the \
                     tolerated delay of 300000 milliseconds."
                )),
            })?;
        let kind = StreamKind::of_topic(&it.name);
        let journal = self.journal.clone();
        let (topic, shard, from) = (it.name.clone(), it.shard, it.offset);
        let read: Result<(Vec<Record>, u64), JournalError> =
            tokio::task::spawn_blocking(move || {
                let records = journal.read(&topic, shard, from, max, MAX_GET_BYTES)?;
                let end = journal.end(&topic, shard)?;
                Ok((records, end))
            })
            .await
            .map_err(|e| AwsError::InternalFailure(format!("read task failed: {e}")))?;
        let (records, end) = read.map_err(|e| match e {
            JournalError::TopicNotFound(_) | JournalError::PartitionNotFound { .. } => {
                self.stream_not_found(&it.name)
            }
            other => AwsError::from_journal(&other),
        })?;
        let next = records.last().map_or(from, |r| r.offset + 1);
        let behind_ms = match records.last() {
            Some(last) if next < end => (now_ms() - last.timestamp_ms).max(0),
            _ => 0,
        };
        let out: Vec<Value> = records
            .iter()
            .map(|r| {
                let (key, data): (Cow<'_, str>, &[u8]) = match kind {
                    StreamKind::User => match decode_frame(&r.value) {
                        Some((k, d)) => (Cow::Borrowed(k), d),
                        None => (Cow::Borrowed("unknown"), &r.value[..]),
                    },
                    _ => (Cow::Owned(pipeline_partition_key(&r.value)), &r.value[..]),
                };
                json!({
                    "SequenceNumber": sequence_number(r.offset),
                    "ApproximateArrivalTimestamp": r.timestamp_ms as f64 / 1000.0,
                    "Data": encode_blob(data),
                    "PartitionKey": key,
                })
            })
            .collect();
        let next_iterator = self.tokens.encode(&Token {
            offset: next,
            issued_ms: now_ms(),
            ..it
        });
        Ok(json!({
            "Records": out,
            "NextShardIterator": next_iterator,
            "MillisBehindLatest": behind_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_like_aws_does() {
        let ok = check_record(Some("aGk=".into()), Some("k".into()), None).unwrap();
        assert_eq!(ok.data, b"hi");
        assert_eq!(ok.hash, hash_partition_key("k"));
        let explicit = check_record(Some("aGk=".into()), Some("k".into()), Some("7".into()));
        assert_eq!(explicit.unwrap().hash, 7);
        assert!(matches!(
            check_record(None, Some("k".into()), None),
            Err(AwsError::Validation(_))
        ));
        assert!(matches!(
            check_record(Some("aGk=".into()), None, None),
            Err(AwsError::Validation(_))
        ));
        assert!(matches!(
            check_record(Some("aGk=".into()), Some(String::new()), None),
            Err(AwsError::Validation(_))
        ));
        assert!(check_record(Some("aGk=".into()), Some("é".repeat(256)), None).is_ok());
        assert!(matches!(
            check_record(Some("aGk=".into()), Some("k".repeat(257)), None),
            Err(AwsError::Validation(_))
        ));
        assert!(matches!(
            check_record(Some("aGk=".into()), Some("k".into()), Some("-1".into())),
            Err(AwsError::InvalidArgument(_))
        ));
    }

    #[test]
    fn pipeline_records_are_keyed_by_partition_key_then_user() {
        assert_eq!(
            pipeline_partition_key(br#"{"event_id":"e","partition_key":"pk"}"#),
            "pk"
        );
        assert_eq!(
            pipeline_partition_key(br#"{"event_id":"e","user_id":"u"}"#),
            "u"
        );
        assert_eq!(pipeline_partition_key(br#"{"event_id":"e"}"#), "e");
        assert_eq!(pipeline_partition_key(b"junk"), "unknown");
    }

    #[test]
    fn timestamps_read_as_epoch_seconds_or_rfc3339() {
        assert_eq!(
            timestamp_ms(&json!(1731000000.123)),
            Some(1_731_000_000_123)
        );
        assert_eq!(timestamp_ms(&json!(1731000000)), Some(1_731_000_000_000));
        assert_eq!(
            timestamp_ms(&json!("2024-11-07T17:20:00Z")),
            Some(1_731_000_000_000)
        );
        assert_eq!(timestamp_ms(&json!(true)), None);
    }
}
