//! Firehose `PutRecord` and `PutRecordBatch`: delivery streams named `raw` or an ingest alias
//! take records into the pipeline, as Kinesis puts to `raw` do, with Firehose's answers
//! (`RecordId`, `Encrypted`, `FailedPutCount`, positional `RequestResponses`) and limits.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_collector::Origin;
use sluice_event::{ErrorKind, Position};

use super::Kinesis;
use super::intake::{IntakeRecord, Placed};
use super::wire::{AwsError, decode_blob, parse, required};

/// Largest record (before base64): 1,000 KiB.
const MAX_RECORD_DATA: usize = 1000 * 1024;

/// Most records in one `PutRecordBatch`.
const MAX_BATCH_RECORDS: usize = 500;

/// Largest `PutRecordBatch` (data of all records).
const MAX_BATCH_BYTES: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordIn {
    delivery_stream_name: Option<String>,
    record: Option<RecordIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordBatchIn {
    delivery_stream_name: Option<String>,
    records: Option<Vec<RecordIn>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RecordIn {
    data: Option<String>,
}

/// A record id: the `raw` position, partition then offset, fixed width. A dedupe duplicate
/// gets the id of its first copy.
pub(crate) fn record_id(pos: Position) -> String {
    format!("{:05}{:020}", pos.partition, pos.offset)
}

fn firehose_error(kind: ErrorKind, message: String) -> AwsError {
    match kind {
        ErrorKind::Unavailable | ErrorKind::Overloaded => AwsError::ServiceUnavailable(message),
        ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Unsupported => {
            AwsError::InvalidArgument(message)
        }
        ErrorKind::NotFound => AwsError::ResourceNotFound(message),
        _ => AwsError::InternalFailure(message),
    }
}

impl Kinesis {
    fn delivery_stream(&self, name: Option<String>) -> Result<(), AwsError> {
        let name = required(name, "deliveryStreamName")?;
        if self.is_ingest_name(&name) {
            Ok(())
        } else {
            Err(AwsError::ResourceNotFound(format!(
                "Firehose {name} under account {} not found (delivery streams: raw{})",
                self.config.account_id,
                self.config
                    .ingest_streams
                    .iter()
                    .map(|s| format!(", {s}"))
                    .collect::<String>()
            )))
        }
    }

    pub(crate) async fn firehose_put_record(
        &self,
        body: &[u8],
        source: Arc<str>,
        origin: Origin,
    ) -> Result<Value, AwsError> {
        let input: PutRecordIn = parse(body)?;
        self.delivery_stream(input.delivery_stream_name)?;
        let record = required(input.record, "record")?;
        let data = decode_blob(
            &required(record.data, "record.data")?,
            MAX_RECORD_DATA,
            "record.data",
        )?;
        let placed = self
            .intake(
                source,
                origin,
                vec![IntakeRecord {
                    data,
                    partition_key: None,
                }],
            )
            .await
            .map_err(|(kind, m)| firehose_error(kind, m))?;
        match placed.into_iter().next() {
            Some(Placed::At(pos)) => Ok(json!({ "RecordId": record_id(pos), "Encrypted": false })),
            Some(Placed::Failed(kind, m)) => Err(firehose_error(kind, m)),
            None => Err(AwsError::InternalFailure("record was not placed".into())),
        }
    }

    pub(crate) async fn firehose_put_record_batch(
        &self,
        body: &[u8],
        source: Arc<str>,
        origin: Origin,
    ) -> Result<Value, AwsError> {
        let input: PutRecordBatchIn = parse(body)?;
        self.delivery_stream(input.delivery_stream_name)?;
        let entries = required(input.records, "records")?;
        if entries.is_empty() || entries.len() > MAX_BATCH_RECORDS {
            return Err(AwsError::Validation(format!(
                "1 validation error detected: Value at 'records' failed to satisfy constraint: \
                 Member must have length between 1 and {MAX_BATCH_RECORDS} (it has {})",
                entries.len()
            )));
        }
        let mut records = Vec::with_capacity(entries.len());
        let mut total = 0usize;
        for e in entries {
            let data = decode_blob(
                &required(e.data, "records.member.data")?,
                MAX_RECORD_DATA,
                "records.member.data",
            )?;
            total += data.len();
            if total > MAX_BATCH_BYTES {
                return Err(AwsError::InvalidArgument(format!(
                    "the records of one PutRecordBatch exceed {MAX_BATCH_BYTES} bytes"
                )));
            }
            records.push(IntakeRecord {
                data,
                partition_key: None,
            });
        }
        let answers: Vec<Value> = self
            .intake(source, origin, records)
            .await
            .map_err(|(kind, m)| firehose_error(kind, m))?
            .into_iter()
            .map(|p| match p {
                Placed::At(pos) => json!({ "RecordId": record_id(pos) }),
                Placed::Failed(kind, m) => {
                    let e = firehose_error(kind, m);
                    json!({ "ErrorCode": e.code(), "ErrorMessage": e.to_string() })
                }
            })
            .collect();
        let failed = answers
            .iter()
            .filter(|a| a.get("ErrorCode").is_some())
            .count();
        Ok(json!({
            "FailedPutCount": failed,
            "Encrypted": false,
            "RequestResponses": answers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_unique_per_position_and_fixed_width() {
        let a = record_id(Position {
            partition: 1,
            offset: 2,
        });
        let b = record_id(Position {
            partition: 12,
            offset: 0,
        });
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
        assert_eq!(a, "0000100000000000000000002");
    }
}
