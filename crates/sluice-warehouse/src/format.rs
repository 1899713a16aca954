//! Rendering query results: a text table for people, CSV and NDJSON for programs, and the Arrow
//! IPC stream format for dataframes (pyarrow, polars, DuckDB read it without any parsing). Used
//! by `sluice sql --format table|csv|json` and `POST /v1/sql?format=json|csv|table|arrow`.
//!
//! Value formats are the same in all three: timestamps are RFC 3339 (`2026-11-27T10:00:00.123Z`;
//! a timestamp without a time zone is taken as UTC), dates are `YYYY-MM-DD`, JSON text columns
//! (`properties`, `context`, `payload`) stay strings. Nulls are empty in the table and in CSV,
//! and `null` in JSON (the key is always present, so every line has every column).

use deltalake::arrow::csv::WriterBuilder as CsvWriterBuilder;
use deltalake::arrow::json::writer::{
    JsonArray, LineDelimited, WriterBuilder as JsonWriterBuilder,
};
use deltalake::arrow::util::display::FormatOptions;
use deltalake::arrow::util::pretty::pretty_format_batches_with_options;

use crate::{QueryOutput, WarehouseError};

/// chrono format for timestamps that carry no time zone: RFC 3339 with `Z`, fraction digits in
/// groups of three only when non-zero (the same as the zoned default, `SecondsFormat::AutoSi`).
const NAIVE_TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";

fn format_error(e: impl std::fmt::Display) -> WarehouseError {
    WarehouseError::Format(e.to_string())
}

/// A text table with a header row, as psql or DuckDB print it. Zero rows still print the header.
pub fn to_table(output: &QueryOutput) -> Result<String, WarehouseError> {
    let options = FormatOptions::default()
        .with_null("")
        .with_timestamp_format(Some(NAIVE_TIMESTAMP_FORMAT));
    if output.batches.is_empty() {
        let empty = deltalake::arrow::array::RecordBatch::new_empty(output.schema.clone());
        return pretty_format_batches_with_options(&[empty], &options)
            .map(|t| t.to_string())
            .map_err(format_error);
    }
    pretty_format_batches_with_options(&output.batches, &options)
        .map(|t| t.to_string())
        .map_err(format_error)
}

/// CSV with a header line (RFC 4180 quoting), one line per row.
pub fn to_csv(output: &QueryOutput) -> Result<String, WarehouseError> {
    let mut buffer = Vec::new();
    {
        let mut writer = CsvWriterBuilder::new()
            .with_header(true)
            .with_timestamp_format(NAIVE_TIMESTAMP_FORMAT.to_string())
            .build(&mut buffer);
        if output.batches.is_empty() {
            let empty = deltalake::arrow::array::RecordBatch::new_empty(output.schema.clone());
            writer.write(&empty).map_err(format_error)?;
        }
        for batch in &output.batches {
            writer.write(batch).map_err(format_error)?;
        }
    }
    String::from_utf8(buffer).map_err(format_error)
}

/// NDJSON: one JSON object per row, keys in column order, every key present.
pub fn to_json_lines(output: &QueryOutput) -> Result<String, WarehouseError> {
    let mut buffer = Vec::new();
    {
        let mut writer = JsonWriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_format(NAIVE_TIMESTAMP_FORMAT.to_string())
            .build::<_, LineDelimited>(&mut buffer);
        for batch in &output.batches {
            writer.write(batch).map_err(format_error)?;
        }
        writer.finish().map_err(format_error)?;
    }
    String::from_utf8(buffer).map_err(format_error)
}

/// A JSON array of row objects, for HTTP answers that want one document.
pub fn to_json_array(output: &QueryOutput) -> Result<String, WarehouseError> {
    let mut buffer = Vec::new();
    {
        let mut writer = JsonWriterBuilder::new()
            .with_explicit_nulls(true)
            .with_timestamp_format(NAIVE_TIMESTAMP_FORMAT.to_string())
            .build::<_, JsonArray>(&mut buffer);
        for batch in &output.batches {
            writer.write(batch).map_err(format_error)?;
        }
        writer.finish().map_err(format_error)?;
    }
    let text = String::from_utf8(buffer).map_err(format_error)?;
    // The array writer writes nothing at all for zero rows.
    Ok(if text.is_empty() {
        "[]".to_string()
    } else {
        text
    })
}

/// Media type of [`to_arrow_ipc`]'s output.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

/// The Arrow IPC stream format: the schema (also for zero rows), then every batch, with the
/// column types as the query produced them (timestamps stay timestamps).
pub fn to_arrow_ipc(output: &QueryOutput) -> Result<Vec<u8>, WarehouseError> {
    let mut buffer = Vec::new();
    {
        let mut writer =
            deltalake::arrow::ipc::writer::StreamWriter::try_new(&mut buffer, &output.schema)
                .map_err(format_error)?;
        for batch in &output.batches {
            writer.write(batch).map_err(format_error)?;
        }
        writer.finish().map_err(format_error)?;
    }
    Ok(buffer)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{
        ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    };
    use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn sample() -> QueryOutput {
        let schema = Arc::new(Schema::new(vec![
            Field::new("event", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("day", DataType::Date32, false),
            Field::new("props", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec!["Signed Up", "a,b"])),
            Arc::new(Int64Array::from(vec![Some(3), None])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_764_237_600_123_000, 1_764_237_600_000_000])
                    .with_timezone("UTC"),
            ),
            Arc::new(Date32Array::from(vec![20419, 20419])),
            Arc::new(StringArray::from(vec![Some(r#"{"plan":"pro"}"#), None])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        QueryOutput {
            schema,
            batches: vec![batch],
        }
    }

    #[test]
    fn table_output() {
        let text = to_table(&sample()).unwrap();
        let expected = "\
+-----------+---+--------------------------+------------+----------------+
| event     | n | timestamp                | day        | props          |
+-----------+---+--------------------------+------------+----------------+
| Signed Up | 3 | 2025-11-27T10:00:00.123Z | 2025-11-27 | {\"plan\":\"pro\"} |
| a,b       |   | 2025-11-27T10:00:00Z     | 2025-11-27 |                |
+-----------+---+--------------------------+------------+----------------+";
        assert_eq!(text, expected);
    }

    #[test]
    fn csv_output() {
        let text = to_csv(&sample()).unwrap();
        let expected = "\
event,n,timestamp,day,props
Signed Up,3,2025-11-27T10:00:00.123Z,2025-11-27,\"{\"\"plan\"\":\"\"pro\"\"}\"
\"a,b\",,2025-11-27T10:00:00Z,2025-11-27,
";
        assert_eq!(text, expected);
    }

    #[test]
    fn json_lines_output() {
        let text = to_json_lines(&sample()).unwrap();
        let expected = r#"{"event":"Signed Up","n":3,"timestamp":"2025-11-27T10:00:00.123Z","day":"2025-11-27","props":"{\"plan\":\"pro\"}"}
{"event":"a,b","n":null,"timestamp":"2025-11-27T10:00:00Z","day":"2025-11-27","props":null}
"#;
        assert_eq!(text, expected);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        let array: serde_json::Value =
            serde_json::from_str(&to_json_array(&sample()).unwrap()).unwrap();
        assert_eq!(array.as_array().unwrap().len(), 2);
    }

    #[test]
    fn arrow_ipc_round_trips() {
        let bytes = to_arrow_ipc(&sample()).unwrap();
        let reader =
            deltalake::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .unwrap();
        assert_eq!(reader.schema(), sample().schema);
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches, sample().batches);
    }

    #[test]
    fn zero_rows_keep_the_header() {
        let mut output = sample();
        output.batches.clear();
        assert!(
            to_table(&output)
                .unwrap()
                .contains("| event | n | timestamp | day | props |")
        );
        assert_eq!(to_csv(&output).unwrap(), "event,n,timestamp,day,props\n");
        assert_eq!(to_json_lines(&output).unwrap(), "");
        assert_eq!(to_json_array(&output).unwrap(), "[]");
    }
}
