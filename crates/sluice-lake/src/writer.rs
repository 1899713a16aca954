//! Journal records → Arrow record batches → zstd Parquet files (Delta `add` actions).
//!
//! Rows are appended straight into Arrow builders from the typed records (an event's fields
//! borrowed from its record, [`EventRow`]; [`sluice_event::BadRow`]); there is no
//! `serde_json::Value` step. An event's record is read by the scanner of
//! [`sluice_event::skim`] (its `properties` and `context` copied as the text they are), and by
//! the derived decoding whenever the scanner leaves it to that.
//! A record that does not decode is not a row: [`encode_records`] reports it as a
//! [`SkippedRecord`] with its position and the reason, and the caller logs and counts it. A
//! record is decoded completely before any builder is touched, so a failure never leaves a
//! half-appended row behind.
//!
//! Everything here is synchronous CPU work; the delivery loop runs it on the blocking pool.

use std::borrow::Cow;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanArray, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::compute::filter_record_batch;
use deltalake::arrow::error::ArrowError;
use deltalake::kernel::Add;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::{DeltaWriter as _, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use sluice_event::skim::{self, optional};
use sluice_event::{BadRow, EventType, Position};
use sluice_journal::Record;

use crate::checksum::{Sums, summing_table};
use crate::schema::{BadRowsTable, EventsTable, TableSpec, arrow_schema};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Builds the rows of one table from journal records.
pub trait RowEncoder: Send + Sized + 'static {
    /// An empty encoder with room for `rows` rows.
    fn with_capacity(rows: usize) -> Self;
    /// Decodes one journal record and appends it as a row. On error nothing is appended and the
    /// reason is returned (lowercase, for the log).
    fn push(&mut self, value: &[u8]) -> Result<(), String>;
    /// Rows appended so far.
    fn len(&self) -> usize;
    /// Whether no row was appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The batch of every appended row, in the table's column order.
    fn finish(self) -> Result<RecordBatch, ArrowError>;
}

/// A record that could not be decoded; it is skipped (and logged) rather than stall its
/// partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedRecord {
    /// Journal partition.
    pub partition: u32,
    /// Journal offset.
    pub offset: u64,
    /// Why it did not decode.
    pub reason: String,
}

/// The rows built from a set of journal records.
#[derive(Debug)]
pub struct Encoded {
    /// The rows, or `None` when no record decoded.
    pub batch: Option<RecordBatch>,
    /// For each row of `batch`, the journal partition and offset it came from.
    pub origins: Vec<(u32, u64)>,
    /// Records that did not decode.
    pub skipped: Vec<SkippedRecord>,
}

impl Encoded {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.origins.len()
    }

    /// Keeps only the rows whose origin satisfies `keep`. Used after a commit of unknown
    /// outcome, to drop what the table already holds.
    pub fn retain(&mut self, keep: impl Fn(u32, u64) -> bool) -> Result<(), ArrowError> {
        let mask: BooleanArray = self
            .origins
            .iter()
            .map(|(p, o)| Some(keep(*p, *o)))
            .collect();
        if let Some(batch) = &self.batch {
            let filtered = filter_record_batch(batch, &mask)?;
            self.batch = (filtered.num_rows() > 0).then_some(filtered);
        }
        self.origins.retain(|(p, o)| keep(*p, *o));
        Ok(())
    }
}

/// Decodes `records` (each with its journal partition) into one batch of table `S`.
pub fn encode_records<S: TableSpec>(records: &[(u32, Record)]) -> Result<Encoded, ArrowError> {
    let mut encoder = S::Encoder::with_capacity(records.len());
    let mut origins = Vec::with_capacity(records.len());
    let mut skipped = Vec::new();
    for (partition, record) in records {
        match encoder.push(&record.value) {
            Ok(()) => origins.push((*partition, record.offset)),
            Err(reason) => skipped.push(SkippedRecord {
                partition: *partition,
                offset: record.offset,
                reason,
            }),
        }
    }
    let batch = if encoder.is_empty() {
        None
    } else {
        Some(encoder.finish()?)
    };
    Ok(Encoded {
        batch,
        origins,
        skipped,
    })
}

/// A delta-rs writer for one flush, with the checksums of the files it writes.
pub struct ParquetWriter {
    writer: RecordBatchWriter,
    sums: Sums,
}

/// A delta-rs writer for `table` that writes zstd Parquet at `zstd_level` and sums every file it
/// writes as the bytes go out ([`crate::checksum`]).
pub fn parquet_writer(
    table: &DeltaTable,
    zstd_level: i32,
) -> Result<ParquetWriter, DeltaTableError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| DeltaTableError::Generic(format!("zstd level {zstd_level}: {e}")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("sluice {}", env!("CARGO_PKG_VERSION")))
        .build();
    let sums = Sums::default();
    let writer = RecordBatchWriter::for_table(&summing_table(table, &sums))?
        .with_writer_properties(properties);
    Ok(ParquetWriter { writer, sums })
}

/// Writes `batch` as Parquet files under the table (one file per date partition) and returns
/// their `add` actions, each tagged with its file's CRC32C and length. Nothing is committed:
/// until the caller commits the actions the files are invisible orphans (a later `VACUUM`
/// removes them).
///
/// Async only because delta-rs' writer is; its Parquet encoding is CPU-bound, so the delivery
/// loop runs this on the blocking pool.
pub async fn write_parquet(
    mut writer: ParquetWriter,
    batch: RecordBatch,
) -> Result<Vec<Add>, DeltaTableError> {
    writer.writer.write(batch).await?;
    let mut adds = writer.writer.flush().await?;
    writer.sums.tag_all(&mut adds);
    Ok(adds)
}

fn days_since_epoch(micros: i64) -> Result<i32, String> {
    i32::try_from(micros.div_euclid(MICROS_PER_DAY))
        .map_err(|_| format!("timestamp {micros} is out of range"))
}

/// The `raw_partition` and `raw_offset` columns' values of a record's `raw` position.
fn raw_columns(raw: Position) -> Result<(i32, i64), String> {
    let partition = i32::try_from(raw.partition)
        .map_err(|_| format!("raw partition {} is out of range", raw.partition))?;
    let offset = i64::try_from(raw.offset)
        .map_err(|_| format!("raw offset {} is out of range", raw.offset))?;
    Ok((partition, offset))
}

fn ts_builder(rows: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")
}

/// Builds `events` rows from `good` records ([`Event`] JSON).
pub struct EventEncoder {
    event_id: StringBuilder,
    event_type: StringBuilder,
    event: StringBuilder,
    source: StringBuilder,
    user_id: StringBuilder,
    anonymous_id: StringBuilder,
    timestamp: TimestampMicrosecondBuilder,
    sent_at: TimestampMicrosecondBuilder,
    received_at: TimestampMicrosecondBuilder,
    properties: StringBuilder,
    context: StringBuilder,
    raw_partition: Int32Builder,
    raw_offset: Int64Builder,
    device_timestamp: TimestampMicrosecondBuilder,
    enriched: EnrichedBuilders,
    event_date: Date32Builder,
    rows: usize,
}

/// A `good` record's [`sluice_event::Event`] with its strings borrowed from the record: each
/// is copied once, into its column, instead of into a `String` first (an enriched event has
/// about forty).
#[derive(Deserialize)]
struct EventRow<'a> {
    #[serde(borrow)]
    event_id: Text<'a>,
    event_type: EventType,
    #[serde(borrow)]
    event: Text<'a>,
    #[serde(borrow)]
    source: Text<'a>,
    #[serde(default, borrow)]
    user_id: Option<Text<'a>>,
    #[serde(default, borrow)]
    anonymous_id: Option<Text<'a>>,
    timestamp: i64,
    #[serde(default)]
    sent_at: Option<i64>,
    received_at: i64,
    #[serde(default)]
    device_timestamp: Option<i64>,
    #[serde(borrow, deserialize_with = "json_text")]
    properties: &'a str,
    #[serde(borrow, deserialize_with = "json_text")]
    context: &'a str,
    #[serde(default, borrow)]
    enriched: EnrichedRow<'a>,
    raw: Position,
}

/// A member's JSON text as the record holds it.
fn json_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<&'a str, D::Error> {
    <&RawValue>::deserialize(d).map(RawValue::get)
}

impl<'a> EventRow<'a> {
    /// The record read by the scanner ([`skim::whole`]); `None` when the derived decoding must
    /// read it, for its answer or its error.
    fn skim(bytes: &'a [u8]) -> Option<Self> {
        let mut enriched = EnrichedRow::default();
        let mut seen = Seen::default();
        let found = skim::whole(bytes, |key, value| enriched.read(&mut seen, key, value))?;
        if found.enriched.is_some_and(|e| !e.starts_with(b"{")) {
            // Not an object (`null`): the derived decoding's error.
            return None;
        }
        Some(Self {
            event_id: Text::skim(found.event_id?)?,
            event_type: EventType::parse(&skim::text(found.event_type?)?)?,
            event: Text::skim(found.event?)?,
            source: Text::skim(found.source?)?,
            user_id: optional(found.user_id, Text::skim)?,
            anonymous_id: optional(found.anonymous_id, Text::skim)?,
            timestamp: skim::integer(found.timestamp?)?,
            sent_at: optional(found.sent_at, skim::integer)?,
            received_at: skim::integer(found.received_at?)?,
            device_timestamp: optional(found.device_timestamp, skim::integer)?,
            properties: std::str::from_utf8(found.properties?).ok()?,
            context: std::str::from_utf8(found.context?).ok()?,
            enriched,
            raw: skim::position(found.raw?)?,
        })
    }

    /// The record read by the scanner, or else by the derived decoding.
    fn decode(bytes: &'a [u8]) -> Result<Self, String> {
        match Self::skim(bytes) {
            Some(row) => Ok(row),
            None => serde_json::from_slice(bytes).map_err(|e| format!("not a good event: {e}")),
        }
    }
}

/// A JSON string borrowed from the record, or owned when it had escapes to undo.
struct Text<'a>(Cow<'a, str>);

impl<'a> Text<'a> {
    /// A string value read by the scanner ([`skim::text`]).
    fn skim(value: &'a [u8]) -> Option<Self> {
        skim::text(value).map(Text)
    }

    fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(Visitor).map(Text)
    }
}

/// `Some` the first time, `None` after (a member given twice).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// Declares the builders of the [`sluice_event::Enrichment`] columns: one per field, named as the field (and
/// as the column). `finish` hands the arrays out by name, so the batch's column order comes from
/// the table spec alone.
macro_rules! enriched_builders {
    (strings: [$($s:ident),*], doubles: [$($d:ident),*], ints: [$($i:ident),*], bools: [$($b:ident),*]) => {
        /// [`sluice_event::Enrichment`] as [`EventRow`] reads it: its strings borrowed.
        #[derive(Default, Deserialize)]
        #[serde(default)]
        struct EnrichedRow<'a> {
            $(#[serde(borrow)] $s: Option<Text<'a>>,)*
            $($d: Option<f64>,)*
            $($i: Option<i32>,)*
            $($b: Option<bool>,)*
        }

        struct EnrichedBuilders {
            $($s: StringBuilder,)*
            $($d: Float64Builder,)*
            $($i: Int32Builder,)*
            $($b: BooleanBuilder,)*
        }

        impl<'a> EnrichedRow<'a> {
            /// Reads one of `enriched`'s members, as the scanner finds it ([`EventRow::skim`]).
            /// A member twice (`seen`) is the derived decoding's error; one it does not know it
            /// ignores.
            fn read(&mut self, seen: &mut Seen, key: &[u8], value: &'a [u8]) -> Option<()> {
                match key {
                    $(k if k == stringify!($s).as_bytes() => {
                        once(&mut seen.$s)?;
                        self.$s = optional(Some(value), Text::skim)?;
                    })*
                    $(k if k == stringify!($d).as_bytes() => {
                        once(&mut seen.$d)?;
                        self.$d = optional(Some(value), skim::parse)?;
                    })*
                    $(k if k == stringify!($i).as_bytes() => {
                        once(&mut seen.$i)?;
                        self.$i = optional(Some(value), skim::integer)?;
                    })*
                    $(k if k == stringify!($b).as_bytes() => {
                        once(&mut seen.$b)?;
                        self.$b = optional(Some(value), skim::parse)?;
                    })*
                    _ => {}
                }
                Some(())
            }
        }

        /// Which of `enriched`'s members were read.
        #[derive(Default)]
        struct Seen {
            $($s: bool,)*
            $($d: bool,)*
            $($i: bool,)*
            $($b: bool,)*
        }

        impl EnrichedBuilders {
            fn with_capacity(rows: usize) -> Self {
                Self {
                    $($s: StringBuilder::with_capacity(rows, rows * 8),)*
                    $($d: Float64Builder::with_capacity(rows),)*
                    $($i: Int32Builder::with_capacity(rows),)*
                    $($b: BooleanBuilder::with_capacity(rows),)*
                }
            }

            fn push(&mut self, e: &EnrichedRow<'_>) {
                $(self.$s.append_option(e.$s.as_ref().map(Text::as_str));)*
                $(self.$d.append_option(e.$d);)*
                $(self.$i.append_option(e.$i);)*
                $(self.$b.append_option(e.$b);)*
            }

            fn finish(&mut self, out: &mut Vec<(&'static str, ArrayRef)>) {
                $(out.push((stringify!($s), Arc::new(self.$s.finish())));)*
                $(out.push((stringify!($d), Arc::new(self.$d.finish())));)*
                $(out.push((stringify!($i), Arc::new(self.$i.finish())));)*
                $(out.push((stringify!($b), Arc::new(self.$b.finish())));)*
            }
        }
    };
}

enriched_builders!(
    strings: [
        schema, validation_errors, ip, ua_browser, ua_browser_version, ua_os, ua_os_version,
        ua_device_class, ua_vendor, geo_country, geo_region, geo_region_name, geo_city,
        geo_zipcode, geo_timezone, page_url, page_host, page_path, mkt_medium, mkt_source,
        mkt_term, mkt_content, mkt_campaign, mkt_clickid, mkt_network, refr_medium, refr_source,
        refr_term, refr_host, session_id, event_fingerprint
    ],
    doubles: [geo_latitude, geo_longitude],
    ints: [session_index],
    bools: [is_bot]
);

impl RowEncoder for EventEncoder {
    fn with_capacity(rows: usize) -> Self {
        let strings = || StringBuilder::with_capacity(rows, rows * 16);
        Self {
            event_id: strings(),
            event_type: strings(),
            event: strings(),
            source: strings(),
            user_id: strings(),
            anonymous_id: strings(),
            timestamp: ts_builder(rows),
            sent_at: ts_builder(rows),
            received_at: ts_builder(rows),
            properties: StringBuilder::with_capacity(rows, rows * 128),
            context: StringBuilder::with_capacity(rows, rows * 128),
            raw_partition: Int32Builder::with_capacity(rows),
            raw_offset: Int64Builder::with_capacity(rows),
            device_timestamp: ts_builder(rows),
            enriched: EnrichedBuilders::with_capacity(rows),
            event_date: Date32Builder::with_capacity(rows),
            rows: 0,
        }
    }

    fn push(&mut self, value: &[u8]) -> Result<(), String> {
        self.push_row(EventRow::decode(value)?)
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let mut arrays: Vec<(&'static str, ArrayRef)> = vec![
            ("event_id", Arc::new(self.event_id.finish())),
            ("event_type", Arc::new(self.event_type.finish())),
            ("event", Arc::new(self.event.finish())),
            ("source", Arc::new(self.source.finish())),
            ("user_id", Arc::new(self.user_id.finish())),
            ("anonymous_id", Arc::new(self.anonymous_id.finish())),
            ("timestamp", Arc::new(self.timestamp.finish())),
            ("sent_at", Arc::new(self.sent_at.finish())),
            ("received_at", Arc::new(self.received_at.finish())),
            ("properties", Arc::new(self.properties.finish())),
            ("context", Arc::new(self.context.finish())),
            ("raw_partition", Arc::new(self.raw_partition.finish())),
            ("raw_offset", Arc::new(self.raw_offset.finish())),
            ("device_timestamp", Arc::new(self.device_timestamp.finish())),
            ("event_date", Arc::new(self.event_date.finish())),
        ];
        self.enriched.finish(&mut arrays);
        let columns = EventsTable::COLUMNS
            .iter()
            .map(|c| {
                arrays
                    .iter()
                    .find(|(name, _)| *name == c.name)
                    .map(|(_, a)| a.clone())
                    .ok_or_else(|| {
                        ArrowError::SchemaError(format!("no builder for column {}", c.name))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(arrow_schema(EventsTable::COLUMNS), columns)
    }
}

impl EventEncoder {
    /// Appends one decoded record as a row; on error nothing is appended.
    fn push_row(&mut self, e: EventRow<'_>) -> Result<(), String> {
        let day = days_since_epoch(e.timestamp)?;
        let (raw_partition, raw_offset) = raw_columns(e.raw)?;
        self.event_id.append_value(e.event_id.as_str());
        self.event_type.append_value(e.event_type.as_str());
        self.event.append_value(e.event.as_str());
        self.source.append_value(e.source.as_str());
        self.user_id
            .append_option(e.user_id.as_ref().map(Text::as_str));
        self.anonymous_id
            .append_option(e.anonymous_id.as_ref().map(Text::as_str));
        self.timestamp.append_value(e.timestamp);
        self.sent_at.append_option(e.sent_at);
        self.received_at.append_value(e.received_at);
        self.properties.append_value(e.properties);
        self.context.append_value(e.context);
        self.raw_partition.append_value(raw_partition);
        self.raw_offset.append_value(raw_offset);
        self.device_timestamp.append_option(e.device_timestamp);
        self.enriched.push(&e.enriched);
        self.event_date.append_value(day);
        self.rows += 1;
        Ok(())
    }
}

/// Builds `bad_rows` rows from `bad` records ([`BadRow`] JSON).
pub struct BadRowEncoder {
    kind: StringBuilder,
    reason: StringBuilder,
    function: StringBuilder,
    event_id: StringBuilder,
    source: StringBuilder,
    received_at: TimestampMicrosecondBuilder,
    failed_at: TimestampMicrosecondBuilder,
    payload: StringBuilder,
    raw_partition: Int32Builder,
    raw_offset: Int64Builder,
    failed_date: Date32Builder,
    rows: usize,
}

impl RowEncoder for BadRowEncoder {
    fn with_capacity(rows: usize) -> Self {
        let strings = || StringBuilder::with_capacity(rows, rows * 16);
        Self {
            kind: strings(),
            reason: StringBuilder::with_capacity(rows, rows * 64),
            function: strings(),
            event_id: strings(),
            source: strings(),
            received_at: ts_builder(rows),
            failed_at: ts_builder(rows),
            payload: StringBuilder::with_capacity(rows, rows * 256),
            raw_partition: Int32Builder::with_capacity(rows),
            raw_offset: Int64Builder::with_capacity(rows),
            failed_date: Date32Builder::with_capacity(rows),
            rows: 0,
        }
    }

    fn push(&mut self, value: &[u8]) -> Result<(), String> {
        let b: BadRow = serde_json::from_slice(value).map_err(|e| format!("not a bad row: {e}"))?;
        let day = days_since_epoch(b.failed_at)?;
        let (raw_partition, raw_offset) = raw_columns(b.raw)?;
        self.kind.append_value(b.kind.as_str());
        self.reason.append_value(&b.reason);
        self.function.append_value(&b.function);
        self.event_id.append_value(&b.event_id);
        self.source.append_value(&b.source);
        self.received_at.append_value(b.received_at);
        self.failed_at.append_value(b.failed_at);
        self.payload.append_value(b.payload.get());
        self.raw_partition.append_value(raw_partition);
        self.raw_offset.append_value(raw_offset);
        self.failed_date.append_value(day);
        self.rows += 1;
        Ok(())
    }

    fn len(&self) -> usize {
        self.rows
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.kind.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.function.finish()),
            Arc::new(self.event_id.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.received_at.finish()),
            Arc::new(self.failed_at.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.raw_partition.finish()),
            Arc::new(self.raw_offset.finish()),
            Arc::new(self.failed_date.finish()),
        ];
        RecordBatch::try_new(arrow_schema(BadRowsTable::COLUMNS), columns)
    }
}

/// `event` as the runner writes it, compact and pretty, once with each string that needs care
/// in its name, its user id, its properties and wherever `set` puts it.
#[cfg(test)]
pub(crate) fn as_the_runner_writes(
    mut event: sluice_event::Event,
    set: impl Fn(&mut sluice_event::Event, &str),
) -> Vec<Vec<u8>> {
    let strings = [
        "",
        "quote \" and \\ backslash",
        "\u{0}\u{1f}",
        "ünï → 🦀",
        "}]\"{[",
    ];
    let mut written = Vec::new();
    for s in strings {
        event.event = s.to_string();
        event.user_id = Some(s.to_string());
        let properties = serde_json::json!({ "k": [s, 1.5], "s": s });
        event.properties = serde_json::value::to_raw_value(&properties).unwrap();
        set(&mut event, s);
        written.push(serde_json::to_vec(&event).unwrap());
        written.push(serde_json::to_vec_pretty(&event).unwrap());
    }
    written
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{
        Date32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    };

    use sluice_event::Enrichment;

    use super::*;

    fn record(offset: u64, json: &str) -> (u32, Record) {
        (
            1,
            Record {
                offset,
                timestamp_ms: 0,
                value: Bytes::from(json.to_string()),
            },
        )
    }

    const EVENT: &str = r#"{"event_id":"e1","event_type":"track","event":"Order Completed",
        "source":"web","user_id":"u1","timestamp":1764237600123000,"received_at":1764237601000000,
        "properties":{"total":9.5},"context":{"ip":"1.2.3.4"},"raw":{"partition":2,"offset":41}}"#;

    #[test]
    fn events_become_typed_rows_and_bad_records_are_skipped() {
        let records = vec![
            record(0, EVENT),
            record(1, "not json"),
            record(2, r#"{"event_id":"e2"}"#),
        ];
        let encoded = encode_records::<EventsTable>(&records).unwrap();
        assert_eq!(encoded.origins, vec![(1, 0)]);
        assert_eq!(encoded.skipped.len(), 2);
        assert_eq!(encoded.skipped[0].offset, 1);
        assert!(encoded.skipped[1].reason.contains("missing field"));
        let batch = encoded.batch.unwrap();
        assert_eq!(batch.schema(), arrow_schema(EventsTable::COLUMNS));
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        assert_eq!(col("event").as_string::<i32>().value(0), "Order Completed");
        assert!(col("anonymous_id").is_null(0));
        assert_eq!(
            col("properties").as_string::<i32>().value(0),
            r#"{"total":9.5}"#
        );
        assert_eq!(
            col("timestamp")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            1_764_237_600_123_000
        );
        assert_eq!(col("raw_offset").as_primitive::<Int64Type>().value(0), 41);
        // 2025-11-27 is day 20419 since the epoch.
        assert_eq!(
            col("event_date").as_primitive::<Date32Type>().value(0),
            20419
        );
    }

    #[test]
    fn strings_with_escapes_and_the_enriched_fields_reach_their_columns() {
        let event = r#"{"event_id":"e\"1","event_type":"page","event":"Caf\u00e9 \/ Bar",
            "source":"web","anonymous_id":"a\n1","timestamp":1764237600123000,
            "received_at":1764237601000000,"properties":{},"context":{},
            "enriched":{"ua_browser":"Chrome","geo_city":"M\u00fcnchen","geo_latitude":48.1,
                "session_index":3,"is_bot":false},
            "raw":{"partition":2,"offset":41}}"#;
        let encoded = encode_records::<EventsTable>(&[record(0, event)]).unwrap();
        let batch = encoded.batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let text = |name: &str| col(name).as_string::<i32>().value(0).to_string();
        assert_eq!(text("event_id"), "e\"1");
        assert_eq!(text("event"), "Café / Bar");
        assert_eq!(text("anonymous_id"), "a\n1");
        assert!(col("user_id").is_null(0));
        assert_eq!(text("ua_browser"), "Chrome");
        assert_eq!(text("geo_city"), "München");
        assert!(col("geo_country").is_null(0));
        assert_eq!(
            col("geo_latitude").as_primitive::<Float64Type>().value(0),
            48.1
        );
        assert_eq!(col("session_index").as_primitive::<Int32Type>().value(0), 3);
        assert!(!col("is_bot").as_boolean().value(0));
    }

    /// Every `enriched` member, with values that need care: escapes, non-ASCII, an integral
    /// double, a negative integer.
    const ENRICHED: &str = r#"{"schema":"iglu:com.acme/order/jsonschema/1-0-0",
        "validation_errors":"a \"b\"","ip":"203.0.113.0","ua_browser":"Chrome",
        "ua_browser_version":"120.0","ua_os":"Mac OS X","ua_os_version":"14","ua_device_class":"desktop",
        "ua_vendor":"Apple","is_bot":true,"geo_country":"BR","geo_region":"SP",
        "geo_region_name":"S\u00e3o Paulo","geo_city":"São Paulo","geo_zipcode":"01000",
        "geo_latitude":-23.5,"geo_longitude":46,"geo_timezone":"America/Sao_Paulo",
        "page_url":"https://x.example/?q=\"}]","page_host":"x.example","page_path":"/",
        "mkt_medium":"cpc","mkt_source":"google","mkt_term":"t","mkt_content":"c",
        "mkt_campaign":"spring","mkt_clickid":"gclid1","mkt_network":"Google","refr_medium":"search",
        "refr_source":"Google","refr_term":"q","refr_host":"www.google.com","session_id":"s1",
        "session_index":-3,"event_fingerprint":"ab12"}"#;

    /// A record holding every member, `enriched`'s included.
    fn full() -> String {
        EVENT.replacen(
            r#""context":{"ip":"1.2.3.4"}"#,
            &format!(
                r#""context":{{"ip":"1.2.3.4","page":{{"title":"\"]}}"}}}},"anonymous_id":"a\u00e91",
                "sent_at":5,"device_timestamp":-7,"enriched":{ENRICHED},"part":[0,2]"#
            ),
            1,
        )
    }

    /// One record's row as a batch, from a decoding's answer.
    fn batch_of(row: Result<EventRow<'_>, String>) -> Result<RecordBatch, String> {
        let mut encoder = EventEncoder::with_capacity(1);
        encoder.push_row(row?)?;
        encoder.finish().map_err(|e| e.to_string())
    }

    /// The derived decoding's row, the answer the scanner must give whenever it gives one.
    fn derived(bytes: &[u8]) -> Result<RecordBatch, String> {
        batch_of(serde_json::from_slice(bytes).map_err(|e| e.to_string()))
    }

    /// The scanner gives the derived row, or leaves the record to the derived decoding; returns
    /// whether it gave one.
    fn agrees(bytes: &[u8]) -> bool {
        let Some(row) = EventRow::skim(bytes) else {
            return false;
        };
        let text = String::from_utf8_lossy(bytes);
        assert_eq!(batch_of(Ok(row)), derived(bytes), "{text}");
        true
    }

    #[test]
    fn the_scanner_reads_a_record_as_the_derived_decoding_reads_it() {
        let full = full();
        let enriched: Enrichment = serde_json::from_str(ENRICHED).unwrap();
        let members = serde_json::to_value(&enriched).unwrap();
        let top_level = 15;
        assert_eq!(
            members.as_object().unwrap().len(),
            EventsTable::COLUMNS.len() - top_level,
            "every enriched column is set"
        );
        assert!(agrees(full.as_bytes()));
        assert!(agrees(EVENT.as_bytes()));
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&full).unwrap(),
        )
        .unwrap();
        assert!(agrees(pretty.as_bytes()));
        // Members in another order, members neither decoding knows, nulls.
        let varied = r#" { "raw" : {"offset":1,"partition":2} , "extra":[{"a":"]"},"\\"],
            "context":[], "properties":"a \"string\"", "event":"x", "source":"s\t",
            "enriched":{"odd":{"}":"{"},"geo_city":null,"is_bot":false,"session_index":0},
            "event_type":"page", "event_id":"ü→e", "user_id":null, "timestamp":-1,
            "sent_at":null, "received_at":0, "device_timestamp":null } "#;
        assert!(agrees(varied.as_bytes()));
        // As the runner writes it: every string that needs care, in every member.
        let event: sluice_event::Event = serde_json::from_str(&full).unwrap();
        let written = as_the_runner_writes(event, |e, s| {
            e.enriched.geo_city = Some(s.to_string());
            e.enriched.page_url = Some(s.to_string());
        });
        for bytes in written {
            assert!(agrees(&bytes), "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn what_the_scanner_does_not_expect_goes_to_the_derived_decoding() {
        let full = full();
        let changed = |from: &str, to: &str| {
            assert!(full.contains(from), "{from}");
            full.replacen(from, to, 1)
        };
        let refused = [
            changed(r#""source":"web""#, r#""source":"web","source":"app""#),
            changed(
                r#""ua_os":"Mac OS X""#,
                r#""ua_os":"Mac OS X","ua_os":"iOS""#,
            ),
            changed(r#""is_bot":true"#, r#""is_bot":true,"is_bot":null"#),
            changed(r#""raw":{"partition":2,"offset":41}"#, r#""x":1"#),
            changed(r#""timestamp":1764237600123000"#, r#""timestamp":1e3"#),
            changed(r#""event_type":"track""#, r#""event_type":"flush""#),
            changed(r#""user_id":"u1""#, r#""user_id":7"#),
            changed(
                r#""properties":{"total":9.5}"#,
                r#""propertie":{"total":9.5}"#,
            ),
            changed(r#""geo_latitude":-23.5"#, r#""geo_latitude":"-23.5""#),
            changed(r#""session_index":-3"#, r#""session_index":1.5"#),
            changed(r#""session_index":-3"#, r#""session_index":3000000000"#),
            changed(r#""session_index":-3"#, r#""session_index":-0"#),
            changed(r#""is_bot":true"#, r#""is_bot":1"#),
            changed(r#""geo_city":"São Paulo""#, "\"geo_city\":\"S\tP\""),
            changed(r#""ua_browser":"Chrome""#, r#""ua_browser":["Chrome"]"#),
            changed(r#""enriched":{"#, r#""enriched":null,"e":{"#),
            format!("{full} x"),
            full[..full.len() - 1].to_string(),
            "[1]".to_string(),
            String::new(),
        ];
        for case in &refused {
            assert!(!agrees(case.as_bytes()), "read by the scanner: {case}");
            assert!(derived(case.as_bytes()).is_err(), "{case}");
        }
        // A key written with an escape: the derived decoding reads it.
        let escaped = changed(r#""geo_city""#, r#""geo\u005fcity""#);
        assert!(!agrees(escaped.as_bytes()));
        assert!(derived(escaped.as_bytes()).is_ok());
        for end in 0..full.len() - 1 {
            assert!(EventRow::skim(&full.as_bytes()[..end]).is_none(), "{end}");
        }
    }

    #[test]
    fn a_record_with_any_byte_changed_reads_as_the_derived_decoding_reads_it_or_not_at_all() {
        let full = full();
        let replacements = *b"\"\\{}[],: 0x\x00\xff";
        for at in 0..full.len() {
            for &c in &replacements {
                let mut changed = full.as_bytes().to_vec();
                changed[at] = c;
                if let (Some(row), Ok(derived)) = (EventRow::skim(&changed), derived(&changed)) {
                    let text = String::from_utf8_lossy(&changed);
                    assert_eq!(batch_of(Ok(row)), Ok(derived), "{text}");
                }
            }
        }
    }

    #[test]
    fn dates_before_the_epoch_round_down() {
        assert_eq!(days_since_epoch(-1), Ok(-1));
        assert_eq!(days_since_epoch(0), Ok(0));
        assert_eq!(days_since_epoch(MICROS_PER_DAY), Ok(1));
    }

    #[test]
    fn retain_drops_rows_by_origin() {
        let records = vec![record(0, EVENT), record(1, EVENT), record(2, EVENT)];
        let mut encoded = encode_records::<EventsTable>(&records).unwrap();
        encoded.retain(|_, offset| offset > 0).unwrap();
        assert_eq!(encoded.rows(), 2);
        assert_eq!(encoded.batch.as_ref().unwrap().num_rows(), 2);
        encoded.retain(|_, _| false).unwrap();
        assert!(encoded.batch.is_none());
    }

    #[test]
    fn bad_rows_become_rows() {
        let bad = r#"{"kind":"schema_violation","reason":"missing total","function":"validate",
            "event_id":"e9","source":"web","received_at":1,"failed_at":2,
            "payload":{"event_id":"e9"},"raw":{"partition":0,"offset":7}}"#;
        let encoded = encode_records::<BadRowsTable>(&[record(3, bad)]).unwrap();
        let batch = encoded.batch.unwrap();
        assert_eq!(batch.schema(), arrow_schema(BadRowsTable::COLUMNS));
        assert_eq!(
            batch
                .column_by_name("kind")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "schema_violation"
        );
    }
}
