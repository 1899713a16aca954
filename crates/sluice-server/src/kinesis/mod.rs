//! The AWS Kinesis Data Streams and Firehose JSON 1.1 APIs on `POST /`, dispatched on
//! `X-Amz-Target` (`Kinesis_20131202.*`, `Firehose_20150804.*`), so that AWS SDKs, the AWS CLI
//! and Kinesis consumers can write to and read from sluice unchanged.
//!
//! What maps to what (user docs: `docs/protocols/kinesis.md`):
//! - a stream is a journal topic and a shard is a partition (`shardId-000000000003` is
//!   partition 3); a sequence number is the journal offset as a fixed-width decimal
//!   ([`shard::sequence_number`]), so string order is offset order;
//! - user streams (made with `CreateStream`) keep exactly the bytes and partition key put,
//!   routed by MD5 of the partition key (or `ExplicitHashKey`) over hash key ranges that split
//!   the 128-bit space evenly;
//! - `raw` and the configured `ingest_streams` aliases deliver into the pipeline through
//!   [`sluice_collector::Collector::submit`] (protocol `Kinesis`), as does Firehose; the answer
//!   names the `raw` position; `good` and `bad` are read-only: a consumer reads the pipeline's
//!   canonical events from `good` with `GetRecords`;
//! - shard iterators and pagination tokens are HMAC-signed and expire after 5 minutes
//!   ([`token`]).
//!
//! Authentication: the SigV4 access key id is the credential: a write key (puts into the
//! pipeline, under its source), a reader token (reads of `good`, `bad` and user streams) or an
//! admin token (everything); [`permit`] has the rules. The signature itself is not checked:
//! sluice stores no secret key to check it against (credentials are stored hashed), so any
//! secret works in the client; the access key id alone says who calls.

mod config;
mod firehose;
mod intake;
mod permit;
mod records;
mod shard;
mod streams;
mod token;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use axum::routing::post;
use sluice_collector::{Collector, Origin};
use sluice_journal::Journal;

pub use config::KinesisConfig;
use token::TokenCodec;
use wire::{AwsError, ok_response};

use crate::access::Access;
use crate::auth::Locality;
use crate::http::{AppState, RouteLabel, metered};

/// Largest request body: a full `PutRecords` (5 MiB of data, base64 is 4/3 of it, plus 500
/// partition keys and hash keys).
const MAX_BODY_BYTES: usize = 8 << 20;

/// Which API a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Service {
    /// `Kinesis_20131202`.
    Kinesis,
    /// `Firehose_20150804`.
    Firehose,
}

/// The handlers' state.
pub(crate) struct Kinesis {
    journal: Arc<dyn Journal>,
    collector: Option<Arc<Collector>>,
    access: Arc<Access>,
    config: KinesisConfig,
    /// The journal's retention, as `RetentionPeriodHours`.
    retention_hours: u64,
    tokens: TokenCodec,
    /// Creation time and mode of streams made by this process (others report the start time).
    meta: Mutex<HashMap<String, streams::StreamMeta>>,
    /// Held from counting the streams to creating one, so that concurrent `CreateStream`s
    /// cannot together pass `max_streams`.
    creating: tokio::sync::Mutex<()>,
    started_ms: i64,
}

/// The routes (`POST /`), with their own state.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(
    state: &AppState,
    config: KinesisConfig,
    retention: std::time::Duration,
) -> Router<S> {
    let retention_hours = retention.as_secs().div_ceil(3600);
    let k = Kinesis {
        journal: state.journal.clone(),
        collector: state.collector.clone(),
        access: state.access.clone(),
        config,
        retention_hours,
        tokens: TokenCodec::random(),
        meta: Mutex::new(HashMap::new()),
        creating: tokio::sync::Mutex::new(()),
        started_ms: now_ms(),
    };
    let routes = Router::new()
        .route("/", post(handle))
        .with_state(Arc::new(k));
    metered("kinesis", routes)
}

/// The answer to a request over a rate quota: what the SDKs of each API back off on.
pub(crate) fn throttled(firehose: bool, reason: String) -> axum::response::Response {
    let e = if firehose {
        wire::AwsError::ServiceUnavailable(reason)
    } else {
        wire::AwsError::ProvisionedThroughputExceeded(reason)
    };
    e.into_response(&uuid::Uuid::new_v4().to_string())
}

/// Now, ms since the epoch.
fn now_ms() -> i64 {
    sluice_event::now_micros() / 1000
}

async fn handle(
    State(k): State<Arc<Kinesis>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (service, op) = match parse_target(target) {
        Ok(t) => t,
        Err(e) => {
            return e.into_response(&request_id);
        }
    };
    let route = match service {
        Service::Kinesis => "kinesis",
        Service::Firehose => "firehose",
    };
    let mut resp = if wire::is_cbor(&headers) {
        wire::cbor_refusal(&request_id)
    } else {
        match k.call(service, op, peer, &headers, body).await {
            Ok(v) => ok_response(&v, &request_id),
            Err(e) => {
                tracing::debug!(operation = op, code = e.code(), kind = e.kind().as_str(), error = %e, "kinesis request refused");
                e.into_response(&request_id)
            }
        }
    };
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

/// `Kinesis_20131202.PutRecord` → (Kinesis, "PutRecord").
fn parse_target(target: &str) -> Result<(Service, &str), AwsError> {
    let (prefix, op) = target.split_once('.').unwrap_or((target, ""));
    let service = match prefix {
        "Kinesis_20131202" => Service::Kinesis,
        "Firehose_20150804" => Service::Firehose,
        _ if target.is_empty() => {
            return Err(AwsError::UnknownOperation(
                "missing X-Amz-Target header (expected Kinesis_20131202.<Operation> or \
                 Firehose_20150804.<Operation>)"
                    .into(),
            ));
        }
        _ => {
            return Err(AwsError::UnknownOperation(format!(
                "unknown X-Amz-Target {target:?} (expected Kinesis_20131202.<Operation> or \
                 Firehose_20150804.<Operation>)"
            )));
        }
    };
    Ok((service, op))
}

impl Kinesis {
    async fn call(
        &self,
        service: Service,
        op: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<serde_json::Value, AwsError> {
        // Unknown credentials are refused before the body is read; what a known one may do
        // depends on the stream the body names.
        let key = wire::request_key(headers);
        let from = Locality::of(peer.ip(), headers);
        self.precheck(key.as_deref(), from)?;
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                AwsError::TooLarge(format!(
                    "request body is over {MAX_BODY_BYTES} bytes (or could not be read)"
                ))
            })?;
        let source = self.permit(service, op, &body, key.as_deref(), from)?;
        let origin = Origin {
            ip: Some(peer.ip().to_string()),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        match (service, op) {
            (Service::Kinesis, "CreateStream") => self.create_stream(&body).await,
            (Service::Kinesis, "DeleteStream") => self.delete_stream(&body).await,
            (Service::Kinesis, "DescribeStream") => self.describe_stream(&body),
            (Service::Kinesis, "DescribeStreamSummary") => self.describe_stream_summary(&body),
            (Service::Kinesis, "ListStreams") => self.list_streams(&body),
            (Service::Kinesis, "ListShards") => self.list_shards(&body),
            (Service::Kinesis, "PutRecord") => self.put_record(&body, source, origin).await,
            (Service::Kinesis, "PutRecords") => self.put_records(&body, source, origin).await,
            (Service::Kinesis, "GetShardIterator") => self.get_shard_iterator(&body).await,
            (Service::Kinesis, "GetRecords") => self.get_records(&body).await,
            (Service::Firehose, "PutRecord") => {
                self.firehose_put_record(&body, source, origin).await
            }
            (Service::Firehose, "PutRecordBatch") => {
                self.firehose_put_record_batch(&body, source, origin).await
            }
            (Service::Kinesis, other) => Err(AwsError::UnknownOperation(format!(
                "Kinesis_20131202.{other} is not supported (supported: CreateStream, \
                 DeleteStream, DescribeStream, DescribeStreamSummary, ListStreams, ListShards, \
                 PutRecord, PutRecords, GetShardIterator, GetRecords)"
            ))),
            (Service::Firehose, other) => Err(AwsError::UnknownOperation(format!(
                "Firehose_20150804.{other} is not supported (supported: PutRecord, \
                 PutRecordBatch)"
            ))),
        }
    }
}

#[cfg(test)]
impl Kinesis {
    /// Handlers over a journal and collector, with no write keys.
    pub(crate) fn for_tests(
        journal: Arc<dyn Journal>,
        collector: Option<Arc<Collector>>,
        config: KinesisConfig,
    ) -> Self {
        Self {
            journal,
            collector,
            access: Arc::new(Access::open()),
            config,
            retention_hours: 168,
            tokens: TokenCodec::random(),
            meta: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            started_ms: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;
    use sluice_collector::CollectorConfig;
    use sluice_journal::partition_for;
    use sluice_testkit::mem_journal::MemJournal;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[tokio::test]
    async fn a_failed_raw_partition_fails_only_its_records() {
        let journal = MemJournal::with_topics(&[("raw", 4), ("good", 4), ("bad", 4)]);
        let settings = CollectorConfig::default().validate().unwrap();
        let collector = Collector::open(journal.clone(), settings).unwrap();
        journal.quarantine("raw", 2);
        let k = Kinesis::for_tests(
            journal.clone(),
            Some(Arc::new(collector)),
            KinesisConfig::default(),
        );
        let records: Vec<serde_json::Value> = (0..40)
            .map(|i| {
                json!({
                    "Data": b64(&format!(r#"{{"event":"Click","user_id":"u{i}"}}"#)),
                    "PartitionKey": format!("k{i}"),
                })
            })
            .collect();
        let body = json!({ "StreamName": "raw", "Records": records }).to_string();
        let out = k
            .put_records(body.as_bytes(), Arc::from("default"), Origin::default())
            .await
            .unwrap();
        let mut failed = 0;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in out["Records"].as_array().unwrap().iter().enumerate() {
            let p = partition_for(&format!("u{i}"), 4);
            if p == 2 {
                failed += 1;
                assert_eq!(r["ErrorCode"], "InternalFailure", "{r}");
                assert!(r["ErrorMessage"].as_str().unwrap().contains("quarantined"));
            } else {
                assert_eq!(r["ShardId"], shard::shard_id(p), "{r}");
                let seq = r["SequenceNumber"].as_str().unwrap();
                assert!(seen.insert((p, seq.to_string())), "positions are unique");
                let offset = shard::parse_sequence_number(seq).unwrap();
                assert!(
                    journal
                        .records("raw", p)
                        .iter()
                        .any(|rec| rec.offset == offset)
                );
            }
        }
        assert!(failed > 0 && failed < 40, "{failed}");
        assert_eq!(out["FailedRecordCount"], failed);
    }

    #[tokio::test]
    async fn whole_request_backpressure_is_a_throughput_error() {
        let journal = MemJournal::with_topics(&[("raw", 2)]);
        let settings = CollectorConfig {
            max_backlog_events: 0,
            ..Default::default()
        }
        .validate()
        .unwrap();
        let collector = Collector::open(journal.clone(), settings).unwrap();
        journal
            .append_now("raw", 0, vec![bytes::Bytes::from_static(b"{}")])
            .unwrap();
        let k = Kinesis::for_tests(
            journal.clone(),
            Some(Arc::new(collector)),
            KinesisConfig::default(),
        );
        let body = json!({"StreamName": "raw", "Data": b64("{}"), "PartitionKey": "k"}).to_string();
        let err = k
            .put_record(body.as_bytes(), Arc::from("default"), Origin::default())
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            "ProvisionedThroughputExceededException",
            "{err}"
        );
        journal.set_failed(true);
        let err = k
            .put_record(body.as_bytes(), Arc::from("default"), Origin::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), "ServiceUnavailableException", "{err}");
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn targets_name_a_service_and_an_operation() {
        assert_eq!(
            parse_target("Kinesis_20131202.PutRecords").unwrap(),
            (Service::Kinesis, "PutRecords")
        );
        assert_eq!(
            parse_target("Firehose_20150804.PutRecordBatch").unwrap(),
            (Service::Firehose, "PutRecordBatch")
        );
        for bad in [
            "",
            "Kinesis_20991231.PutRecord",
            "DynamoDB_20120810.GetItem",
        ] {
            assert!(matches!(
                parse_target(bad),
                Err(AwsError::UnknownOperation(_))
            ));
        }
    }
}
