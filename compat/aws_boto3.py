"""Drives sluice's Kinesis and Firehose APIs with boto3.

Usage: aws_boto3.py URL ACCESS_KEY_ID MODE ARGS...

Modes:
  roundtrip STREAM N      create STREAM (2 shards), wait until ACTIVE, put_records N records,
                          read every shard from TRIM_HORIZON with get_records and check that
                          exactly the records sent come back (data and partition key), in order
                          per partition key; AT_/AFTER_SEQUENCE_NUMBER and LATEST iterators,
                          put_record, list_streams, describe_stream_summary; then delete it.
  put-records STREAM PLAN put_records the plan's events (JSON objects) into STREAM.
  firehose STREAM PLAN    put_record the plan's first event and put_record_batch the rest
                          (newline-terminated JSON) into the delivery stream STREAM.
  create-streams PREFIX N create streams PREFIX-0 .. PREFIX-(N-1) (1 shard each) until one is
                          refused; prints {"created": K, "error": CODE or null, "message": ...}
                          as JSON on the last line.
  read STREAM N           get_records every shard of STREAM from TRIM_HORIZON until N records
                          have been read (60 s at most); prints them as a JSON list of
                          {"partition_key", "data"} (data decoded as JSON) on the last line.

Any failed record or unexpected answer makes the script exit non-zero.
"""

import json
import sys
import time

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError


def client(service, url, key):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="compat-secret",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def shard_ids(kinesis, stream):
    ids = []
    kwargs = {"StreamName": stream}
    while True:
        page = kinesis.list_shards(**kwargs)
        ids += [s["ShardId"] for s in page["Shards"]]
        if not page.get("NextToken"):
            return ids
        kwargs = {"NextToken": page["NextToken"]}


def read_all(kinesis, stream, want, deadline_s=60):
    """Reads every shard from TRIM_HORIZON until `want` records are in (or the deadline)."""
    iterators = {}
    for shard in shard_ids(kinesis, stream):
        it = kinesis.get_shard_iterator(
            StreamName=stream, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        iterators[shard] = it
    records = {shard: [] for shard in iterators}
    end = time.monotonic() + deadline_s
    while sum(len(r) for r in records.values()) < want and time.monotonic() < end:
        progressed = False
        for shard, it in list(iterators.items()):
            if it is None:
                continue
            page = kinesis.get_records(ShardIterator=it, Limit=1000)
            records[shard] += page["Records"]
            iterators[shard] = page.get("NextShardIterator")
            progressed = progressed or bool(page["Records"])
        if not progressed:
            time.sleep(0.1)
    return records


def roundtrip(kinesis, stream, n):
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    kinesis.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
    )
    desc = kinesis.describe_stream(StreamName=stream)["StreamDescription"]
    if desc["StreamStatus"] != "ACTIVE" or len(desc["Shards"]) != 2:
        fail("unexpected stream description: %r" % desc)
    sent = [
        {"Data": ("record %d of %s" % (i, stream)).encode() + bytes([0, 255, i % 256]),
         "PartitionKey": "pk-%d" % (i % 5)}
        for i in range(n)
    ]
    answer = kinesis.put_records(StreamName=stream, Records=sent)
    if answer["FailedRecordCount"] != 0 or len(answer["Records"]) != n:
        fail("put_records failed: %r" % answer)
    by_shard = read_all(kinesis, stream, n)
    got = [(r["PartitionKey"], r["Data"]) for rs in by_shard.values() for r in rs]
    if sorted(got) != sorted((s["PartitionKey"], s["Data"]) for s in sent):
        fail("get_records returned %d records, not the %d sent: %r" % (len(got), n, got))
    # Order is kept per partition key; and each key lives on exactly one shard.
    for key in {s["PartitionKey"] for s in sent}:
        shards = [sh for sh, rs in by_shard.items() if any(r["PartitionKey"] == key for r in rs)]
        if len(shards) != 1:
            fail("partition key %s is on shards %r" % (key, shards))
        order = [r["Data"] for r in by_shard[shards[0]] if r["PartitionKey"] == key]
        if order != [s["Data"] for s in sent if s["PartitionKey"] == key]:
            fail("records of %s out of order" % key)
        seqs = [int(r["SequenceNumber"]) for r in by_shard[shards[0]]]
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs):
            fail("sequence numbers not increasing on %s: %r" % (shards[0], seqs))
    # Positioned iterators on the busiest shard: at / after a sequence number, and LATEST.
    shard, recs = max(by_shard.items(), key=lambda kv: len(kv[1]))
    if len(recs) >= 3:
        for kind, want in [("AT_SEQUENCE_NUMBER", recs[1]), ("AFTER_SEQUENCE_NUMBER", recs[2])]:
            it = kinesis.get_shard_iterator(
                StreamName=stream,
                ShardId=shard,
                ShardIteratorType=kind,
                StartingSequenceNumber=recs[1]["SequenceNumber"],
            )["ShardIterator"]
            page = kinesis.get_records(ShardIterator=it, Limit=1)
            if [r["SequenceNumber"] for r in page["Records"]] != [want["SequenceNumber"]]:
                fail("%s %s returned %r" % (kind, recs[1]["SequenceNumber"], page["Records"]))
    it = kinesis.get_shard_iterator(StreamName=stream, ShardId=shard, ShardIteratorType="LATEST")[
        "ShardIterator"
    ]
    page = kinesis.get_records(ShardIterator=it)
    if page["Records"] or not page.get("NextShardIterator"):
        fail("LATEST on %s returned %r" % (shard, page))
    # One more record with PutRecord lands after LATEST.
    one = kinesis.put_record(StreamName=stream, Data=b"late", PartitionKey="late-key")
    if one["ShardId"] == shard:
        page = kinesis.get_records(ShardIterator=page["NextShardIterator"])
        if [r["Data"] for r in page["Records"]] != [b"late"]:
            fail("the record put after LATEST came back as %r" % page["Records"])
    if stream not in kinesis.list_streams()["StreamNames"]:
        fail("list_streams does not name %s" % stream)
    summary = kinesis.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]
    if summary["OpenShardCount"] != 2:
        fail("unexpected summary %r" % summary)
    kinesis.delete_stream(StreamName=stream)
    print("round trip of %d records through %s ok" % (n, stream))


def main():
    url, key, mode = sys.argv[1:4]
    args = sys.argv[4:]
    if mode == "roundtrip":
        roundtrip(client("kinesis", url, key), args[0], int(args[1]))
    elif mode == "put-records":
        with open(args[1], encoding="utf-8") as f:
            plan = json.load(f)
        records = [
            {"Data": json.dumps(e).encode(), "PartitionKey": e.get("user_id") or e["event_id"]}
            for e in plan
        ]
        answer = client("kinesis", url, key).put_records(StreamName=args[0], Records=records)
        if answer["FailedRecordCount"] != 0 or len(answer["Records"]) != len(plan):
            fail("put_records failed: %r" % answer)
        print("put %d records into %s" % (len(plan), args[0]))
    elif mode == "firehose":
        with open(args[1], encoding="utf-8") as f:
            plan = json.load(f)
        records = [{"Data": (json.dumps(e) + "\n").encode()} for e in plan]
        firehose = client("firehose", url, key)
        # The first event alone with PutRecord, the rest with PutRecordBatch.
        single = firehose.put_record(DeliveryStreamName=args[0], Record=records[0])
        if not single.get("RecordId"):
            fail("put_record answered %r" % single)
        plan = plan[1:]
        answer = firehose.put_record_batch(DeliveryStreamName=args[0], Records=records[1:])
        if answer["FailedPutCount"] != 0 or len(answer["RequestResponses"]) != len(plan):
            fail("put_record_batch failed: %r" % answer)
        if not all(r.get("RecordId") for r in answer["RequestResponses"]):
            fail("a record has no RecordId: %r" % answer)
        print("put %d records into delivery stream %s" % (len(records), args[0]))
    elif mode == "create-streams":
        kinesis = client("kinesis", url, key)
        created, error, message = 0, None, None
        for i in range(int(args[1])):
            try:
                kinesis.create_stream(StreamName="%s-%d" % (args[0], i), ShardCount=1)
            except ClientError as e:
                error, message = e.response["Error"]["Code"], e.response["Error"]["Message"]
                break
            created += 1
        print(json.dumps({"created": created, "error": error, "message": message}))
    elif mode == "read":
        by_shard = read_all(client("kinesis", url, key), args[0], int(args[1]))
        out = [
            {"partition_key": r["PartitionKey"], "data": json.loads(r["Data"])}
            for rs in by_shard.values()
            for r in rs
        ]
        print(json.dumps(out))
    else:
        fail("unknown mode %r" % mode)


if __name__ == "__main__":
    main()
