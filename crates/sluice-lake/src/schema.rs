//! The canonical schemas of the lake tables, `events` and `bad_rows`, and [`TableSpec`], the
//! description of a table that the generic delivery loop needs.
//!
//! Each table's columns are listed once, as [`Column`]s; both the Delta schema (used when the
//! table is created and when an existing table is checked) and the Arrow schema (used to build
//! record batches) are derived from that list, so they cannot drift apart. Column names, types
//! and the partition column are an on-disk format: readers (DuckDB, Spark, our warehouse) and
//! every existing table depend on them. Adding a nullable column is the only compatible change.
//!
//! Types: strings are Delta `string` (Arrow `Utf8`), timestamps are Delta `timestamp`
//! (microseconds, UTC: Arrow `Timestamp(µs, "UTC")`), dates are Delta `date` (Arrow `Date32`),
//! `int` is `Int32` and `bigint` is `Int64`. JSON payloads (`properties`, `context`, `payload`)
//! are stored as JSON text. The partition column is the UTC date of the row's main timestamp, so
//! a table directory looks like `events/event_date=2026-11-27/part-….zstd.parquet`.

use std::sync::Arc;

use deltalake::arrow::datatypes::{
    DataType as ArrowType, Field, Schema as ArrowSchema, SchemaRef, TimeUnit,
};
use deltalake::kernel::{DataType, StructField, StructType};

use crate::writer::{BadRowEncoder, EventEncoder, RowEncoder};

/// The type of a lake column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// 32-bit signed integer.
    Int,
    /// 64-bit signed integer.
    BigInt,
    /// Microseconds since the epoch, UTC.
    Timestamp,
    /// A calendar date (days since the epoch).
    Date,
    /// 64-bit float.
    Double,
    /// true / false.
    Boolean,
}

impl ColumnType {
    fn delta(self) -> DataType {
        match self {
            Self::String => DataType::STRING,
            Self::Int => DataType::INTEGER,
            Self::BigInt => DataType::LONG,
            Self::Timestamp => DataType::TIMESTAMP,
            Self::Date => DataType::DATE,
            Self::Double => DataType::DOUBLE,
            Self::Boolean => DataType::BOOLEAN,
        }
    }

    fn arrow(self) -> ArrowType {
        match self {
            Self::String => ArrowType::Utf8,
            Self::Int => ArrowType::Int32,
            Self::BigInt => ArrowType::Int64,
            Self::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Self::Date => ArrowType::Date32,
            Self::Double => ArrowType::Float64,
            Self::Boolean => ArrowType::Boolean,
        }
    }
}

/// One column of a lake table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: &'static str,
    /// Column type.
    pub ty: ColumnType,
    /// Whether the column may hold nulls.
    pub nullable: bool,
}

const fn col(name: &'static str, ty: ColumnType, nullable: bool) -> Column {
    Column { name, ty, nullable }
}

/// Everything the delivery loop needs to know about one table. Implemented by [`EventsTable`]
/// and [`BadRowsTable`]; the loop itself is generic, so both get the same exactly-once code.
pub trait TableSpec: Send + Sync + 'static {
    /// The table's name: its directory under the lake root and its SQL name.
    const TABLE: &'static str;
    /// The journal topic it is fed from.
    const TOPIC: &'static str;
    /// The date column the table is partitioned by.
    const PARTITION_COLUMN: &'static str;
    /// The columns in order, the partition column included.
    const COLUMNS: &'static [Column];
    /// Decodes journal records into rows of this table.
    type Encoder: RowEncoder;
}

/// The `events` table: every event of the `good` topic.
#[derive(Clone, Copy, Debug)]
pub struct EventsTable;

/// The `bad_rows` table: every record of the `bad` topic.
#[derive(Clone, Copy, Debug)]
pub struct BadRowsTable;

/// Name of the events table.
pub const EVENTS_TABLE: &str = "events";
/// Name of the bad rows table.
pub const BAD_ROWS_TABLE: &str = "bad_rows";

impl TableSpec for EventsTable {
    const TABLE: &'static str = EVENTS_TABLE;
    const TOPIC: &'static str = sluice_event::topic::GOOD;
    const PARTITION_COLUMN: &'static str = "event_date";
    const COLUMNS: &'static [Column] = &[
        col("event_id", ColumnType::String, false),
        col("event_type", ColumnType::String, false),
        col("event", ColumnType::String, false),
        col("source", ColumnType::String, false),
        col("user_id", ColumnType::String, true),
        col("anonymous_id", ColumnType::String, true),
        col("timestamp", ColumnType::Timestamp, false),
        col("sent_at", ColumnType::Timestamp, true),
        col("received_at", ColumnType::Timestamp, false),
        col("properties", ColumnType::String, false),
        col("context", ColumnType::String, false),
        col("raw_partition", ColumnType::Int, false),
        col("raw_offset", ColumnType::BigInt, false),
        // Added by schema evolution (nullable, so older tables gain them in place).
        col("device_timestamp", ColumnType::Timestamp, true),
        col("schema", ColumnType::String, true),
        col("validation_errors", ColumnType::String, true),
        col("ip", ColumnType::String, true),
        col("ua_browser", ColumnType::String, true),
        col("ua_browser_version", ColumnType::String, true),
        col("ua_os", ColumnType::String, true),
        col("ua_os_version", ColumnType::String, true),
        col("ua_device_class", ColumnType::String, true),
        col("ua_vendor", ColumnType::String, true),
        col("is_bot", ColumnType::Boolean, true),
        col("geo_country", ColumnType::String, true),
        col("geo_region", ColumnType::String, true),
        col("geo_region_name", ColumnType::String, true),
        col("geo_city", ColumnType::String, true),
        col("geo_zipcode", ColumnType::String, true),
        col("geo_latitude", ColumnType::Double, true),
        col("geo_longitude", ColumnType::Double, true),
        col("geo_timezone", ColumnType::String, true),
        col("page_url", ColumnType::String, true),
        col("page_host", ColumnType::String, true),
        col("page_path", ColumnType::String, true),
        col("mkt_medium", ColumnType::String, true),
        col("mkt_source", ColumnType::String, true),
        col("mkt_term", ColumnType::String, true),
        col("mkt_content", ColumnType::String, true),
        col("mkt_campaign", ColumnType::String, true),
        col("mkt_clickid", ColumnType::String, true),
        col("mkt_network", ColumnType::String, true),
        col("refr_medium", ColumnType::String, true),
        col("refr_source", ColumnType::String, true),
        col("refr_term", ColumnType::String, true),
        col("refr_host", ColumnType::String, true),
        col("session_id", ColumnType::String, true),
        col("session_index", ColumnType::Int, true),
        col("event_fingerprint", ColumnType::String, true),
        col("event_date", ColumnType::Date, false),
    ];
    type Encoder = EventEncoder;
}

impl TableSpec for BadRowsTable {
    const TABLE: &'static str = BAD_ROWS_TABLE;
    const TOPIC: &'static str = sluice_event::topic::BAD;
    const PARTITION_COLUMN: &'static str = "failed_date";
    const COLUMNS: &'static [Column] = &[
        col("kind", ColumnType::String, false),
        col("reason", ColumnType::String, false),
        col("function", ColumnType::String, false),
        col("event_id", ColumnType::String, false),
        col("source", ColumnType::String, false),
        col("received_at", ColumnType::Timestamp, false),
        col("failed_at", ColumnType::Timestamp, false),
        col("payload", ColumnType::String, false),
        col("raw_partition", ColumnType::Int, false),
        col("raw_offset", ColumnType::BigInt, false),
        col("failed_date", ColumnType::Date, false),
    ];
    type Encoder = BadRowEncoder;
}

/// The Delta schema of a table, for `CREATE`.
pub fn delta_columns(columns: &[Column]) -> Vec<StructField> {
    columns
        .iter()
        .map(|c| StructField::new(c.name, c.ty.delta(), c.nullable))
        .collect()
}

/// The Arrow schema of a table's record batches (partition column included).
pub fn arrow_schema(columns: &[Column]) -> SchemaRef {
    Arc::new(ArrowSchema::new(
        columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// The transaction (`txn`) application id under which a table records how far it has delivered
/// journal partition `partition`: `events/0`, `bad_rows/3`. The txn version is the last journal
/// offset of that partition contained in the table.
pub fn app_id(table: &str, partition: u32) -> String {
    format!("{table}/{partition}")
}

/// The columns of `columns` that an existing table lacks and that may be added in place
/// (nullable ones). A missing non-nullable column is left to [`check_compatible`] to report.
pub fn missing_columns(columns: &[Column], existing: &StructType) -> Vec<StructField> {
    columns
        .iter()
        .filter(|c| c.nullable && existing.field(c.name).is_none())
        .map(|c| StructField::new(c.name, c.ty.delta(), true))
        .collect()
}

/// Checks that an existing table's schema (from its Delta metadata) is the one this version
/// writes. Extra nullable columns are tolerated (a newer writer may have added them); anything
/// else is a mismatch, reported as the first difference found.
pub fn check_compatible(
    columns: &[Column],
    existing: &StructType,
    partition_columns: &[String],
    partition_column: &str,
) -> Result<(), String> {
    if partition_columns != [partition_column.to_string()] {
        return Err(format!(
            "partitioned by {partition_columns:?}, expected [{partition_column:?}]"
        ));
    }
    for c in columns {
        let Some(field) = existing.field(c.name) else {
            return Err(format!("column {} is missing", c.name));
        };
        if field.data_type() != &c.ty.delta() {
            return Err(format!(
                "column {} has type {}, expected {}",
                c.name,
                field.data_type(),
                c.ty.delta()
            ));
        }
        // A nullable column where we write non-null values is harmless; the reverse is not.
        if !field.is_nullable() && c.nullable {
            return Err(format!("column {} is not nullable", c.name));
        }
    }
    for field in existing.fields() {
        let ours = columns.iter().any(|c| c.name == field.name());
        if !ours && !field.is_nullable() {
            return Err(format!(
                "column {} is not nullable and this version does not write it",
                field.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_column_is_last_and_a_date() {
        for (cols, part) in [
            (EventsTable::COLUMNS, EventsTable::PARTITION_COLUMN),
            (BadRowsTable::COLUMNS, BadRowsTable::PARTITION_COLUMN),
        ] {
            let last = cols.last().unwrap();
            assert_eq!(last.name, part);
            assert_eq!(last.ty, ColumnType::Date);
        }
    }

    #[test]
    fn compatibility_check_names_the_difference() {
        let cols = EventsTable::COLUMNS;
        let schema = StructType::try_new(delta_columns(cols)).unwrap();
        let parts = vec!["event_date".to_string()];
        assert!(check_compatible(cols, &schema, &parts, "event_date").is_ok());
        let err = check_compatible(cols, &schema, &[], "event_date").unwrap_err();
        assert!(err.contains("partitioned by"), "{err}");
        let older = StructType::try_new(delta_columns(&cols[..13])).unwrap();
        let added = missing_columns(cols, &older);
        assert_eq!(
            added.len(),
            cols.len() - 14,
            "every enrichment column is added"
        );
        assert!(added.iter().all(|f| f.is_nullable()));
        let fewer = StructType::try_new(delta_columns(&cols[1..])).unwrap();
        let err = check_compatible(cols, &fewer, &parts, "event_date").unwrap_err();
        assert_eq!(err, "column event_id is missing");
        assert_eq!(app_id("events", 3), "events/3");
    }
}
