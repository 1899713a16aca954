//! The Kinesis Data Streams and Firehose JSON 1.1 APIs over real HTTP against an in-process
//! server: user streams round trip exactly, records put into the pipeline come back as
//! canonical events from `good` and from SQL, partial failures are reported per record, and
//! errors have the AWS shape.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use sluice_testkit::server::TestServer;
use sluice_testkit::wait_until;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(60);

/// A server with the `events` ingest stream and `extra` config, and a client of its API.
async fn start(extra: &str) -> (TestServer, Api) {
    let server = TestServer::start(&format!(
        "[lake]\nflush_interval = \"200ms\"\n[kinesis]\ningest_streams = [\"events\"]\n{extra}"
    ))
    .await;
    let api = Api::new(&server.url("/"));
    (server, api)
}

/// A JSON 1.1 client for one server.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    url: String,
    authorization: Option<String>,
}

/// An answer: status, `x-amzn-ErrorType` / `__type`, body.
struct Answer {
    status: u16,
    request_id: Option<String>,
    body: Value,
}

impl Answer {
    fn error_type(&self) -> &str {
        self.body["__type"].as_str().unwrap_or("")
    }
}

impl Api {
    fn new(url: &str) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: url.to_string(),
            authorization: None,
        }
    }

    async fn raw(
        &self,
        target: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", content_type)
            .header("x-amz-target", target)
            .body(body);
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        req.send().await
    }

    async fn call(&self, target: &str, body: Value) -> Result<Answer, Box<dyn std::error::Error>> {
        let resp = self
            .raw(
                target,
                "application/x-amz-json-1.1",
                body.to_string().into_bytes(),
            )
            .await?;
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("x-amzn-requestid")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(ctype, "application/x-amz-json-1.1");
        if status != 200 {
            let header_type = resp
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body: Value = resp.json().await?;
            assert_eq!(body["__type"], header_type.as_str(), "{body}");
            assert!(body["message"].is_string(), "{body}");
            return Ok(Answer {
                status,
                request_id,
                body,
            });
        }
        let body: Value = resp.json().await?;
        Ok(Answer {
            status,
            request_id,
            body,
        })
    }

    /// A call that must succeed.
    async fn ok(&self, op: &str, body: Value) -> Result<Value, Box<dyn std::error::Error>> {
        let a = self.call(&format!("Kinesis_20131202.{op}"), body).await?;
        if a.status != 200 {
            return Err(format!("{op} answered {}: {}", a.status, a.body).into());
        }
        assert!(a.request_id.is_some());
        Ok(a.body)
    }

    /// A call that must fail with this code.
    async fn fails(
        &self,
        op: &str,
        body: Value,
        code: &str,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let target = if op.contains('.') {
            op.to_string()
        } else {
            format!("Kinesis_20131202.{op}")
        };
        let a = self.call(&target, body).await?;
        assert_ne!(a.status, 200, "{op} should fail with {code}: {}", a.body);
        assert_eq!(a.error_type(), code, "{op}: {}", a.body);
        if code == "UnrecognizedClientException" {
            assert_eq!(a.status, 401, "a refused key is 401 on every ingest route");
        }
        assert!(a.request_id.is_some());
        Ok(a.body["message"].as_str().unwrap_or("").to_string())
    }

    async fn iterator(
        &self,
        stream: &str,
        shard: &str,
        kind: &str,
        extra: Value,
    ) -> Result<String, Box<dyn std::error::Error>> {
        let mut body = json!({"StreamName": stream, "ShardId": shard, "ShardIteratorType": kind});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let out = self.ok("GetShardIterator", body).await?;
        Ok(out["ShardIterator"]
            .as_str()
            .ok_or("no iterator")?
            .to_string())
    }

    /// Reads a shard from an iterator until a read comes back empty.
    async fn drain(
        &self,
        mut iterator: String,
    ) -> Result<(Vec<Value>, String), Box<dyn std::error::Error>> {
        let mut out = Vec::new();
        loop {
            let page = self
                .ok("GetRecords", json!({"ShardIterator": iterator, "Limit": 7}))
                .await?;
            let records = page["Records"].as_array().ok_or("no Records")?.clone();
            assert!(records.len() <= 7);
            assert!(page["MillisBehindLatest"].is_u64(), "{page}");
            iterator = page["NextShardIterator"]
                .as_str()
                .ok_or("GetRecords must always return a NextShardIterator")?
                .to_string();
            if records.is_empty() {
                return Ok((out, iterator));
            }
            out.extend(records);
        }
    }
}

fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

fn unb64(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().unwrap_or(""))
        .unwrap_or_default()
}

fn shard_of_key(key: &str) -> &'static str {
    let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
    if hash < 1u128 << 127 {
        "shardId-000000000000"
    } else {
        "shardId-000000000001"
    }
}

const SHARD0: &str = "shardId-000000000000";
const SHARD1: &str = "shardId-000000000001";

/// The stream `clicks` (2 shards), holding 30 records with binary data and keys `user-0` to
/// `user-8`, then one with an explicit hash key in shard 1's range.
struct Clicks {
    /// Each record's key and data, in put order.
    put: Vec<(String, Vec<u8>)>,
    /// What each put answered (`ShardId`, `SequenceNumber`), in the same order.
    answers: Vec<Value>,
}

impl Clicks {
    async fn create(api: &Api) -> Result<Self, Box<dyn std::error::Error>> {
        api.ok(
            "CreateStream",
            json!({"StreamName": "clicks", "ShardCount": 2}),
        )
        .await?;
        let mut put: Vec<(String, Vec<u8>)> = Vec::new();
        for i in 0..30u8 {
            let key = format!("user-{}", i % 9);
            let data = [&[0u8, 0xff, i][..], format!("payload {i}\n").as_bytes()].concat();
            put.push((key, data));
        }
        let records: Vec<Value> = put
            .iter()
            .map(|(k, d)| json!({"Data": b64(d), "PartitionKey": k}))
            .collect();
        let out = api
            .ok(
                "PutRecords",
                json!({"StreamName": "clicks", "Records": records}),
            )
            .await?;
        assert_eq!(out["FailedRecordCount"], 0);
        let mut answers = out["Records"].as_array().ok_or("no Records")?.clone();
        assert_eq!(answers.len(), 30);
        let single = api
            .ok(
                "PutRecord",
                json!({"StreamName": "clicks", "Data": b64(b"explicit"), "PartitionKey": "x",
                       "ExplicitHashKey": "170141183460469231731687303715884105728"}),
            )
            .await?;
        assert_eq!(single["ShardId"], SHARD1);
        put.push(("x".into(), b"explicit".to_vec()));
        answers.push(single);
        Ok(Self { put, answers })
    }
}

/// Every record of `clicks`' shard, from TRIM_HORIZON.
async fn shard_of_clicks(api: &Api, shard: &str) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let it = api
        .iterator("clicks", shard, "TRIM_HORIZON", json!({}))
        .await?;
    Ok(api.drain(it).await?.0)
}

/// The records of shard 0 of `clicks` from an iterator of `kind` with `extra` arguments.
async fn shard0_from(
    api: &Api,
    kind: &str,
    extra: Value,
) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let it = api.iterator("clicks", SHARD0, kind, extra).await?;
    Ok(api.drain(it).await?.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_stream_is_created_described_listed_and_deleted() -> TestResult {
    let (server, api) = start("").await;
    assert_eq!(
        api.ok(
            "CreateStream",
            json!({"StreamName": "clicks", "ShardCount": 2})
        )
        .await?,
        json!({})
    );
    api.fails(
        "CreateStream",
        json!({"StreamName": "clicks", "ShardCount": 2}),
        "ResourceInUseException",
    )
    .await?;
    let d = api
        .ok("DescribeStream", json!({"StreamName": "clicks"}))
        .await?;
    let d = &d["StreamDescription"];
    assert_eq!(d["StreamStatus"], "ACTIVE");
    assert_eq!(
        d["StreamARN"],
        "arn:aws:kinesis:us-east-1:000000000000:stream/clicks"
    );
    assert_eq!(d["HasMoreShards"], false);
    let shards = d["Shards"].as_array().ok_or("no shards")?;
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["ShardId"], SHARD0);
    assert_eq!(shards[0]["HashKeyRange"]["StartingHashKey"], "0");
    assert_eq!(
        shards[0]["HashKeyRange"]["EndingHashKey"],
        "170141183460469231731687303715884105727"
    );
    assert_eq!(
        shards[1]["HashKeyRange"]["StartingHashKey"],
        "170141183460469231731687303715884105728"
    );
    assert_eq!(
        shards[1]["HashKeyRange"]["EndingHashKey"],
        "340282366920938463463374607431768211455"
    );
    let summary = api
        .ok(
            "DescribeStreamSummary",
            json!({"StreamARN": "arn:aws:kinesis:us-east-1:000000000000:stream/clicks"}),
        )
        .await?;
    assert_eq!(summary["StreamDescriptionSummary"]["OpenShardCount"], 2);
    let listed = api
        .ok(
            "ListShards",
            json!({"StreamName": "clicks", "MaxResults": 1}),
        )
        .await?;
    assert_eq!(listed["Shards"].as_array().map(Vec::len), Some(1));
    let next = listed["NextToken"].as_str().ok_or("no NextToken")?;
    let listed = api.ok("ListShards", json!({"NextToken": next})).await?;
    assert_eq!(listed["Shards"][0]["ShardId"], SHARD1);
    assert!(listed.get("NextToken").is_none());
    let streams = api.ok("ListStreams", json!({})).await?;
    let names: Vec<&str> = streams["StreamNames"]
        .as_array()
        .ok_or("no names")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names, ["bad", "clicks", "events", "good", "raw"]);
    api.fails(
        "GetShardIterator",
        json!({"StreamName": "clicks", "ShardId": "shardId-000000000002", "ShardIteratorType": "LATEST"}),
        "ResourceNotFoundException",
    )
    .await?;

    assert_eq!(
        api.ok("DeleteStream", json!({"StreamName": "clicks"}))
            .await?,
        json!({})
    );
    api.fails(
        "DescribeStream",
        json!({"StreamName": "clicks"}),
        "ResourceNotFoundException",
    )
    .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_goes_to_its_keys_shard_and_sequence_numbers_rise_within_one() -> TestResult {
    let (server, api) = start("").await;
    let clicks = Clicks::create(&api).await?;
    let mut last_seq: HashMap<String, String> = HashMap::new();
    for ((key, _), a) in clicks.put.iter().zip(&clicks.answers).take(30) {
        let shard = a["ShardId"].as_str().ok_or("no ShardId")?;
        assert_eq!(shard, shard_of_key(key), "key {key}");
        let seq = a["SequenceNumber"]
            .as_str()
            .ok_or("no SequenceNumber")?
            .to_string();
        if let Some(prev) = last_seq.get(shard) {
            assert_eq!(prev.len(), seq.len(), "fixed width");
            assert!(*prev < seq, "sequence numbers increase within a shard");
        }
        last_seq.insert(shard.to_string(), seq);
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_horizon_reads_back_each_shard_in_put_order_with_the_same_bytes_and_keys() -> TestResult
{
    let (server, api) = start("").await;
    let clicks = Clicks::create(&api).await?;
    for shard in [SHARD0, SHARD1] {
        let expected: Vec<(&str, &[u8], &str)> = clicks
            .put
            .iter()
            .zip(&clicks.answers)
            .filter(|(_, a)| a["ShardId"] == shard)
            .map(|((k, d), a)| {
                (
                    k.as_str(),
                    d.as_slice(),
                    a["SequenceNumber"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let got = shard_of_clicks(&api, shard).await?;
        assert_eq!(got.len(), expected.len(), "{shard}");
        for (r, (key, data, seq)) in got.iter().zip(&expected) {
            assert_eq!(r["PartitionKey"], *key);
            assert_eq!(unb64(&r["Data"]), *data);
            assert_eq!(r["SequenceNumber"], *seq);
            assert!(
                r["ApproximateArrivalTimestamp"]
                    .as_f64()
                    .is_some_and(|t| t > 1.7e9)
            );
        }
    }
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_number_iterators_start_at_or_after_a_record() -> TestResult {
    let (server, api) = start("").await;
    Clicks::create(&api).await?;
    let shard0 = shard_of_clicks(&api, SHARD0).await?;
    assert!(shard0.len() >= 3, "enough records in shard 0");
    let second = shard0[1]["SequenceNumber"].as_str().ok_or("seq")?;
    let at = shard0_from(
        &api,
        "AT_SEQUENCE_NUMBER",
        json!({"StartingSequenceNumber": second}),
    )
    .await?;
    assert_eq!(at, shard0[1..]);
    let after = shard0_from(
        &api,
        "AFTER_SEQUENCE_NUMBER",
        json!({"StartingSequenceNumber": second}),
    )
    .await?;
    assert_eq!(after, shard0[2..]);
    // A sequence number the shard never gave.
    api.fails(
        "GetShardIterator",
        json!({"StreamName": "clicks", "ShardId": SHARD0, "ShardIteratorType": "AT_SEQUENCE_NUMBER", "StartingSequenceNumber": "12"}),
        "InvalidArgumentException",
    )
    .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_reads_exactly_the_records_that_arrived_at_or_after_it() -> TestResult {
    let (server, api) = start("").await;
    Clicks::create(&api).await?;
    let shard0 = shard_of_clicks(&api, SHARD0).await?;
    assert!(shard0.len() >= 3, "enough records in shard 0");
    let ts = shard0[2]["ApproximateArrivalTimestamp"]
        .as_f64()
        .ok_or("ts")?;
    let since = shard0_from(&api, "AT_TIMESTAMP", json!({"Timestamp": ts})).await?;
    let expected: Vec<&Value> = shard0
        .iter()
        .filter(|r| {
            r["ApproximateArrivalTimestamp"]
                .as_f64()
                .is_some_and(|t| t >= ts)
        })
        .collect();
    assert_eq!(since.iter().collect::<Vec<_>>(), expected);
    let all = shard0_from(&api, "AT_TIMESTAMP", json!({"Timestamp": 0})).await?;
    assert_eq!(all, shard0);
    let future = shard0_from(&api, "AT_TIMESTAMP", json!({"Timestamp": 4.0e9})).await?;
    assert!(future.is_empty());
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_sees_only_later_records_and_its_last_iterator_keeps_working() -> TestResult {
    let (server, api) = start("").await;
    Clicks::create(&api).await?;
    let latest = api.iterator("clicks", SHARD1, "LATEST", json!({})).await?;
    let (none, it) = api.drain(latest).await?;
    assert!(none.is_empty());
    let later = api
        .ok(
            "PutRecord",
            json!({"StreamName": "clicks", "Data": b64(b"later"), "PartitionKey": "y",
                   "ExplicitHashKey": "340282366920938463463374607431768211455"}),
        )
        .await?;
    let (got, _) = api.drain(it).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(unb64(&got[0]["Data"]), b"later");
    assert_eq!(got[0]["SequenceNumber"], later["SequenceNumber"]);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_honours_its_limit() -> TestResult {
    let (server, api) = start("").await;
    Clicks::create(&api).await?;
    let it = api
        .iterator("clicks", SHARD0, "TRIM_HORIZON", json!({}))
        .await?;
    let page = api
        .ok("GetRecords", json!({"ShardIterator": it, "Limit": 2}))
        .await?;
    assert_eq!(page["Records"].as_array().map(Vec::len), Some(2));
    assert!(page["MillisBehindLatest"].is_u64());
    server.shutdown().await;
    Ok(())
}

/// Every record of every shard of a stream, from TRIM_HORIZON.
async fn read_all(api: &Api, stream: &str) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let listed = api.ok("ListShards", json!({"StreamName": stream})).await?;
    let mut out = Vec::new();
    for s in listed["Shards"].as_array().ok_or("no shards")? {
        let shard = s["ShardId"].as_str().ok_or("no id")?;
        let it = api
            .iterator(stream, shard, "TRIM_HORIZON", json!({}))
            .await?;
        out.extend(api.drain(it).await?.0);
    }
    Ok(out)
}

/// Waits (with a deadline) until `check` gives a value.
async fn eventually<T: Send + 'static>(
    what: &str,
    check: impl Fn() -> futures::future::BoxFuture<'static, Result<Option<T>, String>> + Send + 'static,
) -> Result<T, Box<dyn std::error::Error>> {
    let handle = tokio::runtime::Handle::current();
    let what = what.to_string();
    let found = tokio::task::spawn_blocking(move || {
        wait_until(WAIT, &what, || {
            handle
                .block_on(check())
                .map_err(|e| std::io::Error::other(e).into())
        })
    })
    .await?;
    Ok(found?)
}

async fn sql(client: &reqwest::Client, base: &str, query: &str) -> Result<Vec<Value>, String> {
    let resp = client
        .post(format!("{base}v1/sql?format=json"))
        .body(query.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("sql answered {status}: {text}"));
    }
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| e.to_string()))
        .collect()
}

/// Ten JSON events through the alias `events` (one with a trailing newline, one with a
/// duplicate id put again through `raw`) and one record that is not JSON; then three events
/// through Firehose's `PutRecordBatch` and one through its `PutRecord`. Checks every answer;
/// the Kinesis answers, in put order.
async fn put_into_the_pipeline(api: &Api) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let mut records: Vec<Value> = (0..10)
        .map(|i| {
            let event = json!({"event": "Page Viewed", "event_id": format!("k-{i}"),
                               "user_id": format!("u{}", i % 3), "properties": {"n": i}});
            let data = if i == 0 {
                format!("{event}\n")
            } else {
                event.to_string()
            };
            json!({"Data": b64(data.as_bytes()), "PartitionKey": format!("pk{i}")})
        })
        .collect();
    records.push(json!({"Data": b64(b"\x00not json"), "PartitionKey": "bin"}));
    let out = api
        .ok(
            "PutRecords",
            json!({"StreamName": "events", "Records": records}),
        )
        .await?;
    assert_eq!(out["FailedRecordCount"], 0, "{out}");
    let answers = out["Records"].as_array().ok_or("no Records")?.clone();
    assert_eq!(answers.len(), 11);
    for a in &answers {
        assert!(
            a["ShardId"]
                .as_str()
                .is_some_and(|s| s.starts_with("shardId-"))
        );
        assert_eq!(a["SequenceNumber"].as_str().map(str::len), Some(21));
    }

    // A retry of an event already put reports the first copy's position.
    let again = api
        .ok(
            "PutRecord",
            json!({"StreamName": "raw",
                   "Data": b64(json!({"event": "Page Viewed", "event_id": "k-3", "user_id": "u0"}).to_string().as_bytes()),
                   "PartitionKey": "pk3"}),
        )
        .await?;
    assert_eq!(again["ShardId"], answers[3]["ShardId"]);
    assert_eq!(again["SequenceNumber"], answers[3]["SequenceNumber"]);

    let batch: Vec<Value> = (0..3)
        .map(|i| json!({"Data": b64(format!("{}\n", json!({"event": "Signed Up", "event_id": format!("f-{i}")})).as_bytes())}))
        .collect();
    let fh = api
        .call(
            "Firehose_20150804.PutRecordBatch",
            json!({"DeliveryStreamName": "events", "Records": batch}),
        )
        .await?;
    assert_eq!(fh.status, 200, "{}", fh.body);
    assert_eq!(fh.body["FailedPutCount"], 0);
    assert_eq!(fh.body["Encrypted"], false);
    let ids: Vec<&str> = fh.body["RequestResponses"]
        .as_array()
        .ok_or("no RequestResponses")?
        .iter()
        .filter_map(|r| r["RecordId"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids[0] != ids[1] && ids[1] != ids[2]);
    let one = api
        .call(
            "Firehose_20150804.PutRecord",
            json!({"DeliveryStreamName": "raw", "Record": {"Data": b64(br#"{"event":"Solo","event_id":"f-solo"}"#)}}),
        )
        .await?;
    assert_eq!(one.status, 200, "{}", one.body);
    assert!(one.body["RecordId"].as_str().is_some_and(|s| !s.is_empty()));
    Ok(answers)
}

/// Waits until `stream` holds at least `n` records: all of them.
async fn records_of(
    api: &Api,
    stream: &'static str,
    n: usize,
) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let reader = api.clone();
    eventually(&format!("{n} records in {stream}"), move || {
        let api = reader.clone();
        Box::pin(async move {
            let all = read_all(&api, stream).await.map_err(|e| e.to_string())?;
            Ok((all.len() >= n).then_some(all))
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_and_firehose_puts_into_the_pipeline_answer_per_record() -> TestResult {
    let (server, api) = start("").await;
    put_into_the_pipeline(&api).await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kinesis_consumer_reads_the_canonical_events_from_good() -> TestResult {
    let (server, api) = start("").await;
    put_into_the_pipeline(&api).await?;
    let good = records_of(&api, "good", 14).await?;
    assert_eq!(good.len(), 14);
    let mut seen: Vec<String> = Vec::new();
    for r in &good {
        let event: Value = serde_json::from_slice(&unb64(&r["Data"]))?;
        assert_eq!(event["source"], "default");
        let id = event["event_id"].as_str().ok_or("event_id")?.to_string();
        if id.starts_with("k-") {
            assert_eq!(event["event"], "Page Viewed");
            assert!(
                r["PartitionKey"]
                    .as_str()
                    .is_some_and(|k| k.starts_with('u'))
            );
        }
        seen.push(id);
    }
    seen.sort();
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("k-{i}"))
        .chain((0..3).map(|i| format!("f-{i}")))
        .chain(["f-solo".to_string()])
        .collect();
    expected.sort();
    assert_eq!(seen, expected);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_json_is_a_parse_bad_row_that_keeps_its_bytes() -> TestResult {
    let (server, api) = start("").await;
    put_into_the_pipeline(&api).await?;
    let bad = records_of(&api, "bad", 1).await?;
    assert_eq!(bad.len(), 1);
    let row: Value = serde_json::from_slice(&unb64(&bad[0]["Data"]))?;
    assert_eq!(row["kind"], "parse");
    assert_eq!(row["payload"]["payload"], b64(b"\x00not json"));
    assert_eq!(row["payload"]["partition_key"], "bin");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_into_the_pipeline_are_in_the_lake_for_sql() -> TestResult {
    let (server, api) = start("").await;
    put_into_the_pipeline(&api).await?;
    let client = server.client.clone();
    let base = server.url("/");
    let rows = eventually("14 events in the lake", move || {
        let client = client.clone();
        let base = base.clone();
        Box::pin(async move {
            let rows = sql(
                &client,
                &base,
                "SELECT event_id, event, user_id FROM events ORDER BY event_id",
            )
            .await
            .ok()
            .unwrap_or_default();
            Ok((rows.len() >= 14).then_some(rows))
        })
    })
    .await?;
    assert_eq!(rows.len(), 14);
    let k1 = rows
        .iter()
        .find(|r| r["event_id"] == "k-1")
        .ok_or("k-1 missing")?;
    assert_eq!(k1["event"], "Page Viewed");
    assert_eq!(k1["user_id"], "u1");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipelines_streams_are_read_only_and_cannot_be_deleted() -> TestResult {
    let (server, api) = start("").await;
    api.fails(
        "PutRecord",
        json!({"StreamName": "good", "Data": b64(b"{}"), "PartitionKey": "k"}),
        "AccessDeniedException",
    )
    .await?;
    for s in ["raw", "good", "bad", "events"] {
        api.fails(
            "DeleteStream",
            json!({"StreamName": s}),
            "ResourceInUseException",
        )
        .await?;
    }
    let summary = api
        .ok("DescribeStreamSummary", json!({"StreamName": "events"}))
        .await?;
    assert_eq!(summary["StreamDescriptionSummary"]["OpenShardCount"], 4);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_records_are_reported_per_record() -> TestResult {
    let (server, api) = start("[collector]\nmax_event_bytes = 2048\n").await;
    let big = json!({"event": "Big", "blob": "x".repeat(4096)}).to_string();
    let small = json!({"event": "Small"}).to_string();
    let out = api
        .ok(
            "PutRecords",
            json!({"StreamName": "raw", "Records": [
                {"Data": b64(small.as_bytes()), "PartitionKey": "a"},
                {"Data": b64(big.as_bytes()), "PartitionKey": "b"},
                {"Data": b64(small.as_bytes()), "PartitionKey": "c"},
            ]}),
        )
        .await?;
    assert_eq!(out["FailedRecordCount"], 1, "{out}");
    let r = &out["Records"];
    assert!(r[0]["SequenceNumber"].is_string());
    assert!(r[2]["SequenceNumber"].is_string());
    assert_eq!(r[1]["ErrorCode"], "InvalidArgumentException");
    assert!(
        r[1]["ErrorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("over the limit"))
    );
    assert!(r[1].get("SequenceNumber").is_none());

    let fh = api
        .call(
            "Firehose_20150804.PutRecordBatch",
            json!({"DeliveryStreamName": "events", "Records": [
                {"Data": b64(big.as_bytes())}, {"Data": b64(small.as_bytes())}]}),
        )
        .await?;
    assert_eq!(fh.status, 200);
    assert_eq!(fh.body["FailedPutCount"], 1);
    assert_eq!(
        fh.body["RequestResponses"][0]["ErrorCode"],
        "InvalidArgumentException"
    );
    assert!(fh.body["RequestResponses"][1]["RecordId"].is_string());

    // A single PutRecord that is refused fails as a whole.
    api.fails(
        "PutRecord",
        json!({"StreamName": "raw", "Data": b64(big.as_bytes()), "PartitionKey": "b"}),
        "InvalidArgumentException",
    )
    .await?;
    api.fails(
        "Firehose_20150804.PutRecord",
        json!({"DeliveryStreamName": "nope", "Record": {"Data": b64(b"{}")}}),
        "ResourceNotFoundException",
    )
    .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_operations_have_the_aws_error_shape() -> TestResult {
    let (server, api) = start("").await;

    api.fails(
        "Kinesis_20131202.SplitShard",
        json!({}),
        "UnknownOperationException",
    )
    .await?;
    api.fails("Nope_1.Op", json!({}), "UnknownOperationException")
        .await?;
    api.fails(
        "DescribeStream",
        json!({"StreamName": "missing"}),
        "ResourceNotFoundException",
    )
    .await?;
    let m = api
        .fails(
            "PutRecord",
            json!({"StreamName": "raw", "PartitionKey": "k"}),
            "ValidationException",
        )
        .await?;
    assert!(m.contains("data"), "{m}");
    api.fails(
        "CreateStream",
        json!({"StreamName": "a/b", "ShardCount": 1}),
        "ValidationException",
    )
    .await?;
    api.fails(
        "CreateStream",
        json!({"StreamName": "huge", "ShardCount": 100000}),
        "LimitExceededException",
    )
    .await?;
    api.fails(
        "GetRecords",
        json!({"ShardIterator": "AAAA"}),
        "InvalidArgumentException",
    )
    .await?;
    api.fails("GetRecords", json!({}), "ValidationException")
        .await?;
    api.fails(
        "PutRecords",
        json!({"StreamName": "raw", "Records": []}),
        "ValidationException",
    )
    .await?;
    api.fails(
        "PutRecord",
        json!({"StreamName": "raw", "Data": "%%%", "PartitionKey": "k"}),
        "SerializationException",
    )
    .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_a_request_get_the_aws_shape() -> TestResult {
    let (server, api) = start("").await;
    // Malformed JSON.
    let resp = api
        .raw(
            "Kinesis_20131202.ListStreams",
            "application/x-amz-json-1.1",
            b"{nope".to_vec(),
        )
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-amzn-errortype"], "SerializationException");
    // An oversized body is refused before it is parsed.
    let resp = api
        .raw(
            "Kinesis_20131202.PutRecords",
            "application/x-amz-json-1.1",
            vec![b' '; 9 << 20],
        )
        .await?;
    assert_eq!(resp.status(), 413);
    assert_eq!(resp.headers()["x-amzn-errortype"], "ValidationException");
    // An empty body is an empty request.
    let resp = api
        .raw(
            "Kinesis_20131202.ListStreams",
            "application/x-amz-json-1.1",
            Vec::new(),
        )
        .await?;
    assert_eq!(resp.status(), 200);
    // CBOR is refused with the switch that turns it off.
    let resp = api
        .raw(
            "Kinesis_20131202.PutRecord",
            "application/x-amz-cbor-1.1",
            vec![0xa0],
        )
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-amzn-errortype"], "SerializationException");
    let body = resp.bytes().await?;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("AWS_CBOR_DISABLE=1") && text.contains("CBOR_ENABLED=false"),
        "{text}"
    );
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_shard_iterator_is_refused() -> TestResult {
    let (server, api) = start("").await;
    // Iterators from another stream cannot be altered into reading something else.
    api.ok("CreateStream", json!({"StreamName": "s1", "ShardCount": 1}))
        .await?;
    let it = api
        .iterator("s1", "shardId-000000000000", "TRIM_HORIZON", json!({}))
        .await?;
    let mut forged = it.clone().into_bytes();
    if let Some(last) = forged.last_mut() {
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    api.fails(
        "GetRecords",
        json!({"ShardIterator": String::from_utf8(forged)?}),
        "InvalidArgumentException",
    )
    .await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_stream_is_refused_past_max_streams_even_when_concurrent() -> TestResult {
    let (server, api) = start("max_streams = 2").await;
    let create = |name: &str| json!({"StreamName": name, "ShardCount": 1});
    api.ok("CreateStream", create("s1")).await?;
    api.ok("CreateStream", create("s2")).await?;
    let m = api
        .fails("CreateStream", create("s3"), "LimitExceededException")
        .await?;
    assert!(m.contains("kinesis.max_streams") && m.contains('2'), "{m}");
    // The pipeline's own streams and the ingest alias do not count, and still work.
    let listed = api.ok("ListStreams", json!({})).await?;
    let names: Vec<&str> = listed["StreamNames"]
        .as_array()
        .ok_or("StreamNames")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names, ["bad", "events", "good", "raw", "s1", "s2"]);
    // The existing streams keep working.
    api.ok(
        "PutRecord",
        json!({"StreamName": "s1", "Data": b64(b"x"), "PartitionKey": "k"}),
    )
    .await?;
    // A deleted stream frees its place.
    api.ok("DeleteStream", json!({"StreamName": "s1"})).await?;
    api.ok("DeleteStream", json!({"StreamName": "s2"})).await?;
    // Concurrent creates cannot together pass the limit.
    let mut calls = Vec::new();
    for i in 0..5 {
        let api = api.clone();
        calls.push(tokio::spawn(async move {
            api.call(
                "Kinesis_20131202.CreateStream",
                json!({"StreamName": format!("c{i}"), "ShardCount": 1}),
            )
            .await
            .map(|a| (a.status, a.error_type().to_string()))
            .map_err(|e| e.to_string())
        }));
    }
    let mut created = 0;
    for call in calls {
        let (status, error) = call.await??;
        if status == 200 {
            created += 1;
        } else {
            assert_eq!((status, error.as_str()), (400, "LimitExceededException"));
        }
    }
    assert_eq!(created, 2);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sigv4_access_key_id_is_the_write_key() -> TestResult {
    let (server, mut api) =
        start("[[sources]]\nname = \"shop\"\nwrite_keys = [\"AKIDSHOP\"]\n").await;
    let put = json!({"StreamName": "events", "Data": b64(b"{}"), "PartitionKey": "k"});
    let m = api
        .fails("PutRecord", put.clone(), "UnrecognizedClientException")
        .await?;
    assert!(m.contains("write key"), "{m}");
    // With no token configured, a local client reads without one.
    let reader = api.clone();
    reader.ok("ListStreams", json!({})).await?;
    api.authorization = Some(
        "AWS4-HMAC-SHA256 Credential=WRONG/20261101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=00"
            .into(),
    );
    api.fails("PutRecord", put, "UnrecognizedClientException")
        .await?;
    api.authorization = Some(
        "AWS4-HMAC-SHA256 Credential=AKIDSHOP/20261101/us-east-1/kinesis/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=deadbeef"
            .into(),
    );
    // A write key puts and describes the ingest streams (the rest it may do only as a local
    // client while no token is configured; `sluice-cli`'s security tests cover the roles).
    api.ok("DescribeStreamSummary", json!({"StreamName": "events"}))
        .await?;
    let out = api
        .ok(
            "PutRecord",
            json!({"StreamName": "events", "Data": b64(br#"{"event":"Paid","event_id":"sig-1"}"#), "PartitionKey": "k"}),
        )
        .await?;
    assert!(out["SequenceNumber"].is_string());
    // The event is stored under the key's source.
    let good = records_of(&reader, "good", 1).await?;
    let event: Value = serde_json::from_slice(&unb64(&good[0]["Data"]))?;
    assert_eq!(event["source"], "shop");
    assert_eq!(event["event_id"], "sig-1");
    server.shutdown().await;
    Ok(())
}

/// A client signing as `key` (the access key id is the write key).
fn signed(api: &Api, key: &str) -> Api {
    let mut api = api.clone();
    api.authorization = Some(format!(
        "AWS4-HMAC-SHA256 Credential={key}/20261101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=00"
    ));
    api
}

fn records(n: usize, tag: &str) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| json!({"Data": b64(format!(r#"{{"event":"Paid","event_id":"{tag}-{i}"}}"#).as_bytes()), "PartitionKey": format!("k{i}")}))
        .collect();
    json!({"StreamName": "events", "Records": records})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_quota_gets_per_record_throttling() -> TestResult {
    let (server, api) = start(
        "[[sources]]\nname = \"tiny\"\nwrite_keys = [\"AKIDTINY\"]\n\
         [[sources]]\nname = \"shop\"\nwrite_keys = [\"AKIDSHOP\"]\n\
         [collector.quotas]\nburst = \"1s\"\n[collector.quotas.sources.tiny]\nevents_per_sec = 1\n",
    )
    .await;
    let tiny = signed(&api, "AKIDTINY");
    // A full bucket takes any request, and owes the rest.
    let first = tiny.ok("PutRecords", records(5, "t1")).await?;
    assert_eq!(first["FailedRecordCount"], 0, "{first}");
    let second = tiny.ok("PutRecords", records(3, "t2")).await?;
    assert_eq!(second["FailedRecordCount"], 3, "{second}");
    for r in second["Records"].as_array().ok_or("no Records")? {
        assert_eq!(
            r["ErrorCode"], "ProvisionedThroughputExceededException",
            "{r}"
        );
        assert!(
            r["ErrorMessage"]
                .as_str()
                .unwrap_or("")
                .contains("\"tiny\" is over its quota")
        );
    }
    // Another source has its own allowance.
    let shop = signed(&api, "AKIDSHOP")
        .ok("PutRecords", records(3, "s1"))
        .await?;
    assert_eq!(shop["FailedRecordCount"], 0, "{shop}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_request_rate_is_refused_before_its_body_is_read() -> TestResult {
    let (server, api) = start(
        "[[sources]]\nname = \"shop\"\nwrite_keys = [\"AKIDSHOP\"]\n\
         [collector.quotas]\nrequests_per_sec_per_ip = 2\nburst = \"1s\"\n",
    )
    .await;
    let shop = signed(&api, "AKIDSHOP");
    shop.ok("PutRecords", records(1, "a")).await?;
    shop.ok("PutRecords", records(1, "b")).await?;
    let m = shop
        .fails(
            "PutRecords",
            records(1, "c"),
            "ProvisionedThroughputExceededException",
        )
        .await?;
    assert!(
        m.contains("client 127.0.0.1 is over its quota of 2 requests/s"),
        "{m}"
    );
    let resp = shop
        .raw(
            "Firehose_20150804.PutRecordBatch",
            "application/x-amz-json-1.1",
            b"{}".to_vec(),
        )
        .await?;
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"].to_str()?.parse()?;
    assert!(retry >= 1);
    let body: Value = resp.json().await?;
    assert_eq!(body["__type"], "ServiceUnavailableException", "{body}");
    server.shutdown().await;
    Ok(())
}
