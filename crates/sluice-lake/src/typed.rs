//! Typed tables: one Delta table per event name, with one typed column per property, fed from
//! the `good` topic by [`TypedSink`] (next to `events`, which keeps every event as it is).
//!
//! # Names
//!
//! [`snake_case`] turns a name into lowercase ASCII words joined by `_`: a case change
//! (`orderId` → `order_id`, `HTTPServer` → `http_server`) and every run of characters other than
//! ASCII letters and digits (`Order Completed`, `page-view`, `$pageview`) separate words;
//! leading and trailing separators are dropped. Non-ASCII letters are separators too
//! (`Café Visited` → `caf_visited`).
//!
//! A table is named by [`table_name`]: the snake_case of the event name, except that
//! - a name with no letter or digit becomes `e_<hash>` (8 hex digits of the FNV-1a hash of the
//!   event name), and one that starts with a digit gets the prefix `e_` (`404 Page` → `e_404_page`);
//! - `events` and `bad_rows`, and anything starting with `_`, are taken: such names get the
//!   suffix `_event` (`Events` → `events_event`);
//! - a name longer than 63 bytes (Postgres' identifier limit) is cut to 54 bytes and gets
//!   `_<hash>` of the full event name, so two long names stay apart.
//!
//! Event names that map to the same table **share it** (`Order Completed`, `order_completed`
//! and `orderCompleted` are one table, `order_completed`); the `event` column keeps each row's
//! name as sent. Property columns are named by [`column_name`], the same rules with the prefix
//! `p_` instead of `e_`; a property whose column would be one of the fixed columns (`event_id`,
//! `timestamp`, `context`, …) gets the prefix `property_` (`timestamp` → `property_timestamp`).
//! Two properties of one event that map to the same column make that event a bad row.
//!
//! # Columns and types
//!
//! Every typed table has the fixed columns of `events` except `properties` ([`FIXED_COLUMNS`]),
//! then one nullable column per property, in the order they were first seen. A property's type
//! comes from the event's registered JSON Schema when there is one ([`DeclaredTypes`], see
//! [`types_from_json_schema`]) and is otherwise inferred from the first non-null value:
//! boolean → `boolean`, an integer → `bigint`, any other number → `double`, a string →
//! `string`, an object or an array → `string` holding its JSON text. Nulls say nothing.
//!
//! New properties add nullable columns (a Delta metadata commit, before the rows that need them);
//! columns are never dropped or retyped. A value the column cannot hold — a string in a
//! `bigint` column, a fraction in a `bigint` column, a number in a `string` column — makes the
//! whole event a **bad row** of kind `schema_violation` (function `typed_tables`, the good event
//! as its payload) in the `bad_rows` table. The typed table goes on with the other rows; a type
//! conflict can never fail or stall it. An integer in a `double` column is fine.
//!
//! # Limits
//!
//! Event and property names come from clients (browser write keys are public), so the sink
//! creates at most `[lake] max_typed_tables` typed tables (counting those under the root when it
//! opens) and at most `max_typed_columns` property columns per table. Past a limit nothing is
//! lost: an event whose table would be one too many goes into no typed table, and a property
//! whose column would be one too many is left out of its typed row; both stay in `events`.
//! Tables and columns that exist keep working, also when the limits are lowered. Refusals are
//! counted, logged once per name and shown on `/health` ([`crate::limits`]). Tables and columns
//! only grow, so a record read again is refused the same way.
//!
//! # Exactly once
//!
//! A flush of `good` records touches several tables. Each commit to a typed table carries one
//! txn per journal partition (`<table>/<p>`, version = the last offset of that partition among
//! the rows of this flush for that table), as in the spine. The bad rows of a flush are committed
//! to `bad_rows` under their own app ids (`bad_rows/typed/<p>`) **before** the typed tables, and
//! when every table is committed, a control table (`<root>/_sluice/typed`, no rows, only txns
//! `typed/<p>`) records the last offset of the flush. On start the sink resumes after the control
//! table's versions; records read again are checked against each destination's own txn version,
//! so a row lands in its table, and a bad row in `bad_rows`, exactly once. (Column types never
//! change once committed and the schema change is committed before any row or bad row that
//! depends on it, so a record read again is classified the same way.) One typed sink per lake.
//!
//! Each of these txn histories is checked when its table is opened, as the `events` sink checks
//! its own: versions that went backwards, or that lie past the end of `good`, make the sink
//! refuse to deliver (`/health` reports it failing) until the log is repaired.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema as ArrowSchema, TimeUnit};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TableReference};
use deltalake::kernel::{Action, Add, DataType, StructField, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, TableProperty};
use serde_json::Value;
use sluice_event::{BadKind, BadRow};
use sluice_journal::{ConsumerProgress, Journal, Record, StageHealth};

mod rows;
use rows::{Fixed, Names, Rejected, Row, decode};

use crate::batcher::BatchLimits;
use crate::consume::{Destination, LoopSettings, run_batches};
use crate::limits::{Refusals, Staged};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::commit::{DeltaTarget, check_txn_history, check_txns_within_journal, run_blocking};
use crate::deliver::{DeliveryProgress, DeliveryStatus};
use crate::schema::{BAD_ROWS_TABLE, BadRowsTable, Column, EVENTS_TABLE, EventsTable, TableSpec};
use crate::writer::{BadRowEncoder, RowEncoder, parquet_writer, write_parquet};
use crate::{LakeError, LakeRoot, LakeSettings};
use sluice_event::topic::GOOD;

/// The longest table or column name (Postgres' identifier limit).
pub const MAX_NAME_BYTES: usize = 63;
/// The control table's location under the lake root (not a SQL table: the warehouse lists
/// only directories directly under the root).
pub const CONTROL_TABLE: &str = "_sluice/typed";
/// App id prefix of the control table's txns (`typed/<p>`).
pub const CONTROL_APP: &str = "typed";
/// App id prefix of the typed sink's bad rows in `bad_rows` (`bad_rows/typed/<p>`).
pub const BAD_ROWS_APP: &str = "bad_rows/typed";
/// The `function` of the bad rows this sink writes.
pub const BAD_ROW_FUNCTION: &str = "typed_tables";
const PARTITION_COLUMN: &str = "event_date";

/// The fixed columns of every typed table: those of `events` without `properties`.
pub const FIXED_COLUMNS: &[&str] = &[
    "event_id",
    "event_type",
    "event",
    "source",
    "user_id",
    "anonymous_id",
    "timestamp",
    "sent_at",
    "received_at",
    "context",
    "raw_partition",
    "raw_offset",
    "event_date",
];

fn fixed_columns() -> Vec<Column> {
    EventsTable::COLUMNS
        .iter()
        .filter(|c| FIXED_COLUMNS.contains(&c.name))
        .copied()
        .collect()
}

/// The type of a property column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropType {
    /// `boolean`.
    Boolean,
    /// `bigint` (64-bit integer).
    BigInt,
    /// `double`.
    Double,
    /// `string`; objects and arrays are stored as their JSON text.
    String,
}

impl PropType {
    fn delta(self) -> DataType {
        match self {
            Self::Boolean => DataType::BOOLEAN,
            Self::BigInt => DataType::LONG,
            Self::Double => DataType::DOUBLE,
            Self::String => DataType::STRING,
        }
    }

    fn from_delta(ty: &DataType) -> Option<Self> {
        if *ty == DataType::BOOLEAN {
            Some(Self::Boolean)
        } else if *ty == DataType::LONG {
            Some(Self::BigInt)
        } else if *ty == DataType::DOUBLE {
            Some(Self::Double)
        } else if *ty == DataType::STRING {
            Some(Self::String)
        } else {
            None
        }
    }

    /// The type inferred from a value; `None` for null.
    pub fn of_value(value: &Value) -> Option<Self> {
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(Self::Boolean),
            Value::Number(n) if n.is_i64() => Some(Self::BigInt),
            Value::Number(_) => Some(Self::Double),
            Value::String(_) | Value::Object(_) | Value::Array(_) => Some(Self::String),
        }
    }

    /// Whether a column of this type can hold `value` (null always fits).
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Self::Boolean, v) => v.is_boolean(),
            (Self::BigInt, v) => v.is_i64(),
            (Self::Double, v) => v.is_number(),
            (Self::String, v) => v.is_string() || v.is_object() || v.is_array(),
        }
    }

    /// The SQL name, for reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Boolean => "boolean",
            Self::BigInt => "bigint",
            Self::Double => "double",
            Self::String => "string",
        }
    }
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Object(_) => "object",
        Value::Array(_) => "array",
    }
}

/// Declared property types per event name: the hook for the schema registry. Declared types
/// win over inference when a column is created.
pub trait DeclaredTypes: Send + Sync {
    /// Property name (as sent) → type, for events named `event`; `None` when the event has no
    /// registered schema.
    fn property_types(&self, event: &str) -> Option<BTreeMap<String, PropType>>;
}

/// Declared types read from JSON Schemas (`{"properties": {"total": {"type": "number"}}}`),
/// keyed by event name.
#[derive(Clone, Debug, Default)]
pub struct JsonSchemaTypes {
    by_event: HashMap<String, BTreeMap<String, PropType>>,
}

impl JsonSchemaTypes {
    /// Registers the JSON Schema of the properties of `event`.
    pub fn insert(&mut self, event: &str, schema: &Value) {
        self.by_event
            .insert(event.to_string(), types_from_json_schema(schema));
    }
}

impl DeclaredTypes for JsonSchemaTypes {
    fn property_types(&self, event: &str) -> Option<BTreeMap<String, PropType>> {
        self.by_event.get(event).cloned()
    }
}

/// The property types a JSON Schema declares: `boolean`, `integer`, `number`, `string`
/// (any `format`), `object` and `array` (JSON text); `["integer", "null"]` counts as `integer`.
/// Properties without a usable `type` are left to inference.
pub fn types_from_json_schema(schema: &Value) -> BTreeMap<String, PropType> {
    let mut out = BTreeMap::new();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return out;
    };
    for (name, spec) in properties {
        let types: Vec<&str> = match spec.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let mut types = types.into_iter().filter(|t| *t != "null");
        let (Some(first), None) = (types.next(), types.next()) else {
            continue;
        };
        let ty = match first {
            "boolean" => PropType::Boolean,
            "integer" => PropType::BigInt,
            "number" => PropType::Double,
            "string" | "object" | "array" => PropType::String,
            _ => continue,
        };
        out.insert(name.clone(), ty);
    }
    out
}

/// Lowercase ASCII words joined by `_` (see the module docs).
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len());
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && i > 0 && !out.is_empty() && !out.ends_with('_') {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
                if prev.is_ascii_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_ascii_uppercase() && next_lower)
                {
                    out.push('_');
                }
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

fn fnv1a(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5_u32, |hash, b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

fn identifier(name: &str, prefix: &str) -> String {
    let snake = snake_case(name);
    let hash = format!("{:08x}", fnv1a(name));
    let snake = if snake.is_empty() {
        format!("{prefix}{hash}")
    } else if snake.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{prefix}{snake}")
    } else {
        snake
    };
    if snake.len() > MAX_NAME_BYTES {
        // ASCII only, so any byte index is a char boundary.
        format!("{}_{hash}", &snake[..MAX_NAME_BYTES - 9])
    } else {
        snake
    }
}

/// The typed table of events named `event` (see the module docs).
pub fn table_name(event: &str) -> String {
    let name = identifier(event, "e_");
    if name == EVENTS_TABLE || name == BAD_ROWS_TABLE || name.starts_with('_') {
        format!("{name}_event")
    } else {
        name
    }
}

/// The column of property `key` (see the module docs).
pub fn column_name(key: &str) -> String {
    let name = identifier(key, "p_");
    if FIXED_COLUMNS.contains(&name.as_str()) {
        let prefixed = format!("property_{name}");
        if prefixed.len() > MAX_NAME_BYTES {
            identifier(&prefixed, "p_")
        } else {
            prefixed
        }
    } else {
        name
    }
}

/// One typed table, opened.
struct TypedTable {
    name: String,
    table: DeltaTable,
    /// Property columns and their types, from the table's schema.
    columns: BTreeMap<String, PropType>,
    /// Partition → last journal offset in the table.
    versions: BTreeMap<u32, u64>,
}

fn delta_err(
    table: &str,
    context: &'static str,
) -> impl Fn(deltalake::DeltaTableError) -> LakeError {
    move |e| LakeError::delta(table, context, e)
}

async fn open_or_create(
    root: &LakeRoot,
    name: &str,
    columns: Vec<StructField>,
    partition: Option<&str>,
    checkpoint_interval: u64,
    comment: &str,
) -> Result<DeltaTable, LakeError> {
    root.create_table_dir(name)?;
    let mut table = root.table(name)?;
    let exists = table
        .verify_deltatable_existence()
        .await
        .map_err(delta_err(name, "checking existence"))?;
    if exists {
        table.load().await.map_err(delta_err(name, "loading"))?;
        crate::commit::write_serializable(&mut table, name).await?;
        return Ok(table);
    }
    let mut create = table
        .create()
        .with_table_name(name)
        .with_comment(comment)
        .with_columns(columns)
        .with_configuration_property(
            TableProperty::CheckpointInterval,
            Some(checkpoint_interval.to_string()),
        )
        .with_configuration_property(
            TableProperty::IsolationLevel,
            Some(crate::commit::WRITE_SERIALIZABLE.to_string()),
        );
    if let Some(p) = partition {
        create = create.with_partition_columns([p]);
    }
    match create.await {
        Ok(t) => Ok(t),
        Err(create_error) => {
            let exists = table
                .verify_deltatable_existence()
                .await
                .map_err(delta_err(name, "checking existence"))?;
            if !exists {
                return Err(LakeError::delta(name, "creating", create_error));
            }
            table.load().await.map_err(delta_err(name, "loading"))?;
            Ok(table)
        }
    }
}

async fn read_versions(
    table: &DeltaTable,
    name: &str,
    app: &str,
    partitions: u32,
) -> Result<BTreeMap<u32, u64>, LakeError> {
    let snapshot = table
        .snapshot()
        .map_err(delta_err(name, "reading transactions"))?;
    let mut out = BTreeMap::new();
    for p in 0..partitions {
        let version = snapshot
            .transaction_version(table.log_store().as_ref(), crate::app_id(app, p))
            .await
            .map_err(delta_err(name, "reading transactions"))?;
        if let Some(v) = version.and_then(|v| u64::try_from(v).ok()) {
            out.insert(p, v);
        }
    }
    Ok(out)
}

/// Commits `adds` with txns `<app>/<p>` = `last[p]` and advances the in-memory snapshot.
async fn commit_with_txns(
    table: &mut DeltaTable,
    name: &str,
    app: &str,
    adds: Vec<Add>,
    last: &BTreeMap<u32, u64>,
    partition: Option<&str>,
) -> Result<u64, LakeError> {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let txns: Vec<Transaction> = last
        .iter()
        .map(|(p, o)| {
            Transaction::new_with_last_update(
                crate::app_id(app, *p),
                i64::try_from(*o).unwrap_or(i64::MAX),
                Some(now_ms),
            )
        })
        .collect();
    let properties = crate::commit::append_properties(txns, 10);
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: partition.map(|p| vec![p.to_string()]),
        predicate: None,
    };
    let snapshot = table.snapshot().map_err(delta_err(name, "committing"))?;
    let finalized = CommitBuilder::from(properties)
        .with_actions(adds.into_iter().map(Action::Add).collect())
        .build(
            Some(snapshot as &dyn TableReference),
            table.log_store(),
            operation,
        )
        .await
        .map_err(delta_err(name, "committing"))?;
    let version = finalized.version();
    if let Err(e) = table.update_incremental(Some(version)).await {
        tracing::warn!(table = name, version, error = %e, "could not advance the table snapshot after a commit");
    }
    Ok(version)
}

async fn checkpoint_if_due(table: &DeltaTable, name: &str, version: u64, every: u64) {
    if version == 0 || !version.is_multiple_of(every) {
        return;
    }
    let t = table.clone();
    let result = run_blocking(name, async move {
        deltalake::checkpoints::create_checkpoint(&t, None).await?;
        deltalake::checkpoints::cleanup_metadata(&t, None).await
    })
    .await;
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(table = name, version, error = %e, "lake checkpoint failed"),
        Err(e) => tracing::warn!(table = name, version, error = %e, "lake checkpoint failed"),
    }
}

impl TypedTable {
    /// Opens (or creates) typed table `name` and reads how far it got, refusing a log whose
    /// versions went backwards or past the journal's end (as the `events` sink does).
    async fn open(
        root: &LakeRoot,
        journal: &dyn Journal,
        name: &str,
        partitions: u32,
        checkpoint_interval: u64,
    ) -> Result<Self, LakeError> {
        let fields = crate::schema::delta_columns(&fixed_columns());
        let table = open_or_create(
            root,
            name,
            fields,
            Some(PARTITION_COLUMN),
            checkpoint_interval,
            "sluice typed table: the events of one name, properties as columns",
        )
        .await?;
        check_txn_history(&table, name, name).await?;
        let versions = read_versions(&table, name, name, partitions).await?;
        let recorded = versions.iter().map(|(p, v)| (*p, *v));
        check_txns_within_journal(name, name, recorded, journal, GOOD)?;
        let mut typed = Self {
            name: name.to_string(),
            table,
            columns: BTreeMap::new(),
            versions,
        };
        typed.read_columns()?;
        Ok(typed)
    }

    fn read_columns(&mut self) -> Result<(), LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_err(&self.name, "reading metadata"))?;
        self.columns = snapshot
            .schema()
            .fields()
            .filter(|f| !FIXED_COLUMNS.contains(&f.name().as_str()))
            // A column of a type we do not write (added by someone else) takes no values.
            .filter_map(|f| PropType::from_delta(f.data_type()).map(|t| (f.name().clone(), t)))
            .collect();
        Ok(())
    }

    async fn add_columns(&mut self, new: &[(String, PropType)]) -> Result<(), LakeError> {
        let fields: Vec<StructField> = new
            .iter()
            .map(|(name, ty)| StructField::new(name.clone(), ty.delta(), true))
            .collect();
        let properties = CommitProperties::default()
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false));
        let table = self
            .table
            .clone()
            .add_columns()
            .with_fields(fields)
            .with_commit_properties(properties)
            .await
            .map_err(delta_err(&self.name, "adding columns"))?;
        self.table = table;
        self.read_columns()?;
        tracing::info!(table = %self.name, columns = ?new.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), "added columns to a typed table");
        Ok(())
    }

    /// Splits `rows` into those the table can hold (adding the new columns they need, up to
    /// `max_columns` property columns: a property past it is left out of its row) and the
    /// rejected ones.
    async fn classify<'a>(
        &mut self,
        rows: Vec<Row<'a>>,
        declared: Option<&dyn DeclaredTypes>,
        (max_columns, refusals): (usize, &mut Staged),
    ) -> Result<(Vec<Row<'a>>, Vec<Rejected<'a>>), LakeError> {
        let mut new_columns: Vec<(String, PropType)> = Vec::new();
        let mut accepted = Vec::with_capacity(rows.len());
        let mut rejected = Vec::new();
        let mut declared_cache: HashMap<String, Option<BTreeMap<String, PropType>>> =
            HashMap::new();
        for mut row in rows {
            let mut proposed: Vec<(String, PropType)> = Vec::new();
            let mut problem = None;
            for (column, key, value) in &row.values {
                let known = self
                    .columns
                    .get(&**column)
                    .copied()
                    .or_else(|| {
                        new_columns
                            .iter()
                            .find(|(c, _)| **c == **column)
                            .map(|(_, t)| *t)
                    })
                    .or_else(|| {
                        proposed
                            .iter()
                            .find(|(c, _)| **c == **column)
                            .map(|(_, t)| *t)
                    });
                match known {
                    Some(ty) if ty.accepts(value) => {}
                    Some(ty) => {
                        problem = Some(format!(
                            "property {key:?} is {} but column {column} of table {} is {}",
                            value_kind(value),
                            self.name,
                            ty.as_str()
                        ));
                        break;
                    }
                    None => {
                        let declared_ty = declared.and_then(|d| {
                            declared_cache
                                .entry(row.fixed.event.to_string())
                                .or_insert_with(|| d.property_types(&row.fixed.event))
                                .as_ref()
                                .and_then(|m| m.get(&**key).copied())
                        });
                        let Some(ty) = declared_ty.or_else(|| PropType::of_value(value)) else {
                            continue;
                        };
                        if !ty.accepts(value) {
                            problem = Some(format!(
                                "property {key:?} is {} but its schema declares {}",
                                value_kind(value),
                                ty.as_str()
                            ));
                            break;
                        }
                        proposed.push((column.to_string(), ty));
                    }
                }
            }
            if problem.is_none() {
                let room = max_columns.saturating_sub(self.columns.len() + new_columns.len());
                if proposed.len() > room {
                    let refused: Vec<String> =
                        proposed.drain(room..).map(|(column, _)| column).collect();
                    for column in &refused {
                        refusals.column(&self.name, column);
                    }
                    row.values
                        .retain(|(column, _, _)| !refused.iter().any(|r| **r == **column));
                }
            }
            match problem {
                Some(reason) => rejected.push(row.reject(reason)),
                None => {
                    new_columns.extend(proposed);
                    accepted.push(row);
                }
            }
        }
        if !new_columns.is_empty() {
            self.add_columns(&new_columns).await?;
        }
        Ok((accepted, rejected))
    }

    /// The Arrow batch of `rows` in the table's column order.
    fn batch(&self, rows: &[Row<'_>]) -> Result<RecordBatch, LakeError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_err(&self.name, "reading metadata"))?;
        let schema = snapshot.schema();
        let encode_err = |reason: String| LakeError::Encode {
            table: self.name.clone(),
            reason,
        };
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let n = rows.len();
        for field in schema.fields() {
            let name = field.name().as_str();
            let ty = field.data_type();
            let (arrow, array): (ArrowType, ArrayRef) = if FIXED_COLUMNS.contains(&name) {
                fixed_array(name, rows).map_err(encode_err)?
            } else {
                match PropType::from_delta(ty) {
                    Some(t) => property_array(name, t, rows),
                    None => null_array(ty, n).ok_or_else(|| {
                        encode_err(format!(
                            "column {name} has a type the sink cannot write: {ty}"
                        ))
                    })?,
                }
            };
            fields.push(Field::new(name, arrow, field.is_nullable()));
            arrays.push(array);
        }
        RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)
            .map_err(|e| encode_err(e.to_string()))
    }
}

fn utc() -> ArrowType {
    ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn fixed_array(name: &str, rows: &[Row<'_>]) -> Result<(ArrowType, ArrayRef), String> {
    let n = rows.len();
    let strings = |f: &dyn for<'r> Fn(&'r Fixed<'_>) -> Option<&'r str>| {
        let mut b = StringBuilder::with_capacity(n, n * 16);
        for r in rows {
            b.append_option(f(&r.fixed));
        }
        (ArrowType::Utf8, Arc::new(b.finish()) as ArrayRef)
    };
    let times = |f: &dyn Fn(&Fixed<'_>) -> Option<i64>| {
        let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        for r in rows {
            b.append_option(f(&r.fixed));
        }
        (utc(), Arc::new(b.finish()) as ArrayRef)
    };
    Ok(match name {
        "event_id" => strings(&|e| Some(&e.event_id)),
        "event_type" => strings(&|e| Some(e.event_type.as_str())),
        "event" => strings(&|e| Some(&e.event)),
        "source" => strings(&|e| Some(&e.source)),
        "user_id" => strings(&|e| e.user_id.as_deref()),
        "anonymous_id" => strings(&|e| e.anonymous_id.as_deref()),
        "context" => strings(&|e| Some(&e.context)),
        "timestamp" => times(&|e| Some(e.timestamp)),
        "sent_at" => times(&|e| e.sent_at),
        "received_at" => times(&|e| Some(e.received_at)),
        "raw_partition" => {
            let mut b = Int32Builder::with_capacity(n);
            for r in rows {
                b.append_value(i32::try_from(r.fixed.raw.partition).map_err(|e| e.to_string())?);
            }
            (ArrowType::Int32, Arc::new(b.finish()))
        }
        "raw_offset" => {
            let mut b = Int64Builder::with_capacity(n);
            for r in rows {
                b.append_value(i64::try_from(r.fixed.raw.offset).map_err(|e| e.to_string())?);
            }
            (ArrowType::Int64, Arc::new(b.finish()))
        }
        "event_date" => {
            let mut b = Date32Builder::with_capacity(n);
            for r in rows {
                b.append_value(days_since_epoch(r.fixed.timestamp)?);
            }
            (ArrowType::Date32, Arc::new(b.finish()))
        }
        other => return Err(format!("unknown fixed column {other}")),
    })
}

fn days_since_epoch(micros: i64) -> Result<i32, String> {
    i32::try_from(micros.div_euclid(86_400_000_000))
        .map_err(|_| format!("timestamp {micros} is out of range"))
}

fn property_array(column: &str, ty: PropType, rows: &[Row<'_>]) -> (ArrowType, ArrayRef) {
    let n = rows.len();
    fn value<'a>(r: &'a Row<'_>, column: &str) -> Option<&'a Value> {
        r.values
            .iter()
            .find(|(c, _, _)| **c == *column)
            .map(|(_, _, v)| v)
    }
    match ty {
        PropType::Boolean => {
            let mut b = BooleanBuilder::with_capacity(n);
            for r in rows {
                b.append_option(value(r, column).and_then(Value::as_bool));
            }
            (ArrowType::Boolean, Arc::new(b.finish()))
        }
        PropType::BigInt => {
            let mut b = Int64Builder::with_capacity(n);
            for r in rows {
                b.append_option(value(r, column).and_then(Value::as_i64));
            }
            (ArrowType::Int64, Arc::new(b.finish()))
        }
        PropType::Double => {
            let mut b = Float64Builder::with_capacity(n);
            for r in rows {
                b.append_option(value(r, column).and_then(Value::as_f64));
            }
            (ArrowType::Float64, Arc::new(b.finish()))
        }
        PropType::String => {
            let mut b = StringBuilder::with_capacity(n, n * 16);
            for r in rows {
                match value(r, column) {
                    Some(Value::String(s)) => b.append_value(s),
                    Some(Value::Null) | None => b.append_null(),
                    Some(other) => b.append_value(other.to_string()),
                }
            }
            (ArrowType::Utf8, Arc::new(b.finish()))
        }
    }
}

/// An all-null column of a type someone else added (we write only the types above).
fn null_array(ty: &DataType, n: usize) -> Option<(ArrowType, ArrayRef)> {
    let arrow = if *ty == DataType::INTEGER {
        ArrowType::Int32
    } else if *ty == DataType::TIMESTAMP {
        utc()
    } else if *ty == DataType::DATE {
        ArrowType::Date32
    } else if *ty == DataType::FLOAT {
        ArrowType::Float32
    } else {
        return None;
    };
    Some((
        arrow.clone(),
        deltalake::arrow::array::new_null_array(&arrow, n),
    ))
}

fn bad_row(rejected: &Rejected<'_>) -> Result<Vec<u8>, String> {
    let payload = String::from_utf8(rejected.good.to_vec()).map_err(|e| e.to_string())?;
    let payload = serde_json::value::RawValue::from_string(payload).map_err(|e| e.to_string())?;
    let row = BadRow {
        kind: BadKind::SchemaViolation,
        reason: rejected.reason.clone(),
        function: BAD_ROW_FUNCTION.to_string(),
        event_id: rejected.fixed.event_id.to_string(),
        source: rejected.fixed.source.to_string(),
        received_at: rejected.fixed.received_at,
        failed_at: chrono::Utc::now().timestamp_micros(),
        payload,
        raw: rejected.fixed.raw,
    };
    serde_json::to_vec(&row).map_err(|e| e.to_string())
}

/// What the sink has open: the control table, `bad_rows`, and the typed tables it touched, each
/// with the txn versions that say how far it got.
pub struct OpenTables {
    partitions: u32,
    control: DeltaTable,
    bad: DeltaTarget<BadRowsTable>,
    bad_versions: BTreeMap<u32, u64>,
    tables: HashMap<String, TypedTable>,
    /// The typed tables under the root (those there at open, and those made since).
    existing: HashSet<String>,
}

/// Delivers `good` into one typed table per event name, exactly once. See the module docs.
pub struct TypedSink {
    journal: Arc<dyn Journal>,
    root: LakeRoot,
    settings: LakeSettings,
    declared: Option<Arc<dyn DeclaredTypes>>,
    status: watch::Sender<DeliveryStatus>,
    #[allow(clippy::type_complexity)]
    crash_after: Option<Arc<dyn Fn(&str) -> bool + Send + Sync>>,
    health: StageHealth,
    refusals: Refusals,
}

impl TypedSink {
    /// A sink reading `good` from `journal` into typed tables under `root`.
    pub fn new(journal: Arc<dyn Journal>, root: LakeRoot, settings: LakeSettings) -> Self {
        let refusals = Refusals::new(
            "lake",
            settings.max_typed_tables,
            settings.max_typed_columns,
        );
        Self {
            journal,
            root,
            settings,
            declared: None,
            status: watch::Sender::new(DeliveryStatus::default()),
            crash_after: None,
            health: StageHealth::detached(),
            refusals,
        }
    }

    /// What the limits refused so far (for `/health`).
    pub fn refusals(&self) -> Refusals {
        self.refusals.clone()
    }

    /// Reports each attempt's outcome to `health` (`/health`).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = health;
        self
    }

    /// Uses declared property types (the schema registry) where an event has them.
    pub fn with_declared_types(mut self, declared: Arc<dyn DeclaredTypes>) -> Self {
        self.declared = Some(declared);
        self
    }

    /// Test hook: called after each commit with the table committed (`bad_rows`, a typed table,
    /// `_sluice/typed`); `true` makes `run` return [`LakeError::InjectedCrash`] at once.
    #[doc(hidden)]
    pub fn with_crash_after(mut self, hook: Arc<dyn Fn(&str) -> bool + Send + Sync>) -> Self {
        self.crash_after = Some(hook);
        self
    }

    /// A handle on this sink's progress (its `table` is the control table).
    pub fn progress(&self) -> DeliveryProgress {
        ConsumerProgress::new(
            CONTROL_TABLE,
            sluice_event::topic::GOOD,
            self.status.subscribe(),
        )
    }

    /// Runs until `shutdown`, then delivers everything durable at that moment and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), LakeError> {
        let status = self.status.clone();
        let result = self.run_inner(&shutdown).await;
        if let Err(e) = &result {
            tracing::error!(table = CONTROL_TABLE, error = %e, "typed table delivery stopped");
        }
        status.send_modify(|s| s.stopped = true);
        result
    }

    async fn open_all(&self, partitions: u32) -> Result<(OpenTables, Vec<u64>), LakeError> {
        let (control, positions) = self.open_control(partitions).await?;
        let (bad, bad_versions) = self.open_bad_rows(partitions).await?;
        let next = (0..partitions)
            .map(|p| positions.get(&p).map_or(0, |v| v + 1))
            .collect();
        let existing = existing_tables(&self.root).await?;
        let open = OpenTables {
            partitions,
            control,
            bad,
            bad_versions,
            tables: HashMap::new(),
            existing,
        };
        Ok((open, next))
    }

    /// The control table and, per partition, the last offset of `good` the sink finished; its
    /// txn history checked (never backwards, never past the journal's end).
    async fn open_control(
        &self,
        partitions: u32,
    ) -> Result<(DeltaTable, BTreeMap<u32, u64>), LakeError> {
        let control = open_or_create(
            &self.root,
            CONTROL_TABLE,
            vec![StructField::new("unused", DataType::STRING, true)],
            None,
            self.settings.checkpoint_interval.get(),
            "sluice: how far the typed tables have read the good topic (txns only, no rows)",
        )
        .await?;
        check_txn_history(&control, CONTROL_TABLE, CONTROL_APP).await?;
        let positions = read_versions(&control, CONTROL_TABLE, CONTROL_APP, partitions).await?;
        let recorded = positions.iter().map(|(p, v)| (*p, *v));
        check_txns_within_journal(CONTROL_TABLE, CONTROL_APP, recorded, &*self.journal, GOOD)?;
        Ok((control, positions))
    }

    /// `bad_rows` and, per partition, the last offset of `good` whose bad rows are in it; the
    /// history of those txns checked like the control table's.
    async fn open_bad_rows(
        &self,
        partitions: u32,
    ) -> Result<(DeltaTarget<BadRowsTable>, BTreeMap<u32, u64>), LakeError> {
        let every = self.settings.checkpoint_interval.get();
        let bad = DeltaTarget::<BadRowsTable>::open(&self.root, every).await?;
        bad.check_txn_history(BAD_ROWS_APP).await?;
        let versions: BTreeMap<u32, u64> = bad
            .txn_versions_as(BAD_ROWS_APP, 0..partitions)
            .await?
            .into_iter()
            .filter_map(|(p, v)| v.map(|v| (p, v)))
            .collect();
        let recorded = versions.iter().map(|(p, v)| (*p, *v));
        check_txns_within_journal(BAD_ROWS_TABLE, BAD_ROWS_APP, recorded, &*self.journal, GOOD)?;
        Ok((bad, versions))
    }

    async fn run_inner(&self, shutdown: &CancellationToken) -> Result<(), LakeError> {
        let settings = LoopSettings {
            limits: BatchLimits {
                max_events: self.settings.flush_max_events,
                max_bytes: self.settings.flush_max_bytes,
                read_records: self.settings.read_batch_records,
                read_bytes: usize::MAX,
                flush_interval: self.settings.flush_interval,
            },
            backoff: self.settings.backoff(),
            shutdown_attempts: self.settings.shutdown_attempts,
            health: self.health.clone(),
        };
        let topic = sluice_event::topic::GOOD;
        run_batches(
            self,
            &self.journal,
            topic,
            &settings,
            &self.status,
            shutdown,
        )
        .await
    }

    fn crashed(&self, table: &str) -> Result<(), LakeError> {
        if self.crash_after.as_ref().is_some_and(|f| f(table)) {
            return Err(LakeError::InjectedCrash("typed commit"));
        }
        Ok(())
    }

    /// One flush: classify, commit bad rows, commit every typed table, commit the control txns.
    async fn flush(
        &self,
        open: &mut OpenTables,
        records: &[(u32, Record)],
    ) -> Result<(), LakeError> {
        let every = self.settings.checkpoint_interval.get();
        let Sorted {
            last_all,
            by_table,
            mut rejected,
        } = sort(records);
        let mut staged = Staged::default();
        let prepared = self
            .classify(open, by_table, &mut rejected, &mut staged)
            .await?;
        // Bad rows first: once a table has committed past an offset, its bad rows must be in.
        self.commit_bad_rows(open, rejected).await?;
        for (name, rows, last) in prepared {
            if let Some(table) = open.tables.get_mut(&name) {
                self.commit_rows(table, &name, rows, last).await?;
                // Its rows are in without these columns; a retry will not see them again.
                self.refusals
                    .count_columns(&name, &staged.take_columns(&name));
            }
        }
        let version = commit_with_txns(
            &mut open.control,
            CONTROL_TABLE,
            CONTROL_APP,
            Vec::new(),
            &last_all,
            None,
        )
        .await?;
        checkpoint_if_due(&open.control, CONTROL_TABLE, version, every).await;
        // The events without a table are behind the control txns now: count them once.
        self.refusals.count(staged);
        self.crashed(CONTROL_TABLE)
    }

    /// Per typed table: its rows not yet committed there that fit (committing schema changes
    /// first), and the last offset per partition they cover. What does not fit joins `rejected`.
    async fn classify<'a>(
        &self,
        open: &mut OpenTables,
        by_table: BTreeMap<Arc<str>, Vec<Row<'a>>>,
        rejected: &mut Vec<Rejected<'a>>,
        staged: &mut Staged,
    ) -> Result<Vec<(String, Vec<Row<'a>>, BTreeMap<u32, u64>)>, LakeError> {
        let every = self.settings.checkpoint_interval.get();
        let mut prepared = Vec::new();
        for (name, rows) in by_table {
            let name = name.to_string();
            if !open.existing.contains(&name) {
                if open.existing.len() >= self.settings.max_typed_tables {
                    staged.table(&name, rows.len() as u64);
                    continue;
                }
                open.existing.insert(name.clone());
            }
            if !open.tables.contains_key(&name) {
                let journal = self.journal.as_ref();
                let t =
                    TypedTable::open(&self.root, journal, &name, open.partitions, every).await?;
                open.tables.insert(name.clone(), t);
            }
            let Some(table) = open.tables.get_mut(&name) else {
                continue;
            };
            let rows: Vec<Row<'_>> = rows
                .into_iter()
                .filter(|r| {
                    table
                        .versions
                        .get(&r.partition)
                        .is_none_or(|v| r.offset > *v)
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            let last = last_offsets(rows.iter().map(|r| (r.partition, r.offset)));
            let limits = (self.settings.max_typed_columns, &mut *staged);
            let (accepted, mut bad) = table
                .classify(rows, self.declared.as_deref(), limits)
                .await?;
            rejected.append(&mut bad);
            prepared.push((name, accepted, last));
        }
        Ok(prepared)
    }

    /// Commits the rejected rows `bad_rows` does not hold yet, with their txn versions.
    async fn commit_bad_rows(
        &self,
        open: &mut OpenTables,
        mut rejected: Vec<Rejected<'_>>,
    ) -> Result<(), LakeError> {
        rejected.retain(|r| {
            open.bad_versions
                .get(&r.partition)
                .is_none_or(|v| r.offset > *v)
        });
        if rejected.is_empty() {
            return Ok(());
        }
        let encode_err = |reason: String| LakeError::Encode {
            table: BAD_ROWS_TABLE.to_string(),
            reason,
        };
        let mut encoder = BadRowEncoder::with_capacity(rejected.len());
        for r in &rejected {
            tracing::debug!(event_id = %r.fixed.event_id, reason = %r.reason, "typed table bad row");
            encoder
                .push(&bad_row(r).map_err(encode_err)?)
                .map_err(encode_err)?;
        }
        let batch = encoder.finish().map_err(|e| encode_err(e.to_string()))?;
        let writer = parquet_writer(open.bad.table(), self.settings.zstd_level)
            .map_err(delta_err(BAD_ROWS_TABLE, "writing parquet"))?;
        let adds = run_blocking(BAD_ROWS_TABLE, write_parquet(writer, batch))
            .await?
            .map_err(delta_err(BAD_ROWS_TABLE, "writing parquet"))?;
        let last = last_offsets(rejected.iter().map(|r| (r.partition, r.offset)));
        let delivered: Vec<(u32, u64)> = last.iter().map(|(p, o)| (*p, *o)).collect();
        open.bad.commit_as(BAD_ROWS_APP, adds, &delivered).await?;
        open.bad_versions.extend(last);
        self.crashed(BAD_ROWS_TABLE)
    }

    /// Commits `rows` to one typed table with the txn versions `last`.
    async fn commit_rows(
        &self,
        table: &mut TypedTable,
        name: &str,
        rows: Vec<Row<'_>>,
        last: BTreeMap<u32, u64>,
    ) -> Result<(), LakeError> {
        let adds = if rows.is_empty() {
            Vec::new()
        } else {
            let batch = table.batch(&rows)?;
            let writer = parquet_writer(&table.table, self.settings.zstd_level)
                .map_err(delta_err(name, "writing parquet"))?;
            run_blocking(name, write_parquet(writer, batch))
                .await?
                .map_err(delta_err(name, "writing parquet"))?
        };
        debug_assert!(
            last.iter()
                .all(|(p, o)| table.versions.get(p).is_none_or(|v| o > v)),
            "Delta txn versions only grow"
        );
        let version = commit_with_txns(
            &mut table.table,
            name,
            name,
            adds,
            &last,
            Some(PARTITION_COLUMN),
        )
        .await?;
        table.versions.extend(last);
        let every = self.settings.checkpoint_interval.get();
        checkpoint_if_due(&table.table, name, version, every).await;
        self.crashed(name)
    }
}

/// The typed tables under `root`: its directories but `events`, `bad_rows` and those starting
/// with `_` (a directory made for a table whose creation failed counts too).
async fn existing_tables(root: &LakeRoot) -> Result<HashSet<String>, LakeError> {
    let names: Vec<String> = if let Some(dir) = root.local_path() {
        match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                let e =
                    deltalake::DeltaTableError::Generic(format!("listing {}: {e}", dir.display()));
                return Err(LakeError::delta("", "listing tables", e));
            }
        }
    } else {
        let store = deltalake::DeltaTableBuilder::from_url(root.url().clone())
            .and_then(|b| {
                b.with_storage_options(root.storage_options().clone())
                    .build()
            })
            .map_err(delta_err("", "listing tables"))?
            .object_store();
        store
            .list_with_delimiter(None)
            .await
            .map_err(|e| {
                LakeError::delta("", "listing tables", deltalake::DeltaTableError::from(e))
            })?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect()
    };
    Ok(names
        .into_iter()
        .filter(|n| n != EVENTS_TABLE && n != BAD_ROWS_TABLE && !n.starts_with('_'))
        .collect())
}

/// A flush's records sorted out: the last offset per partition of them all, the rows per typed
/// table, and the events rejected on decoding.
struct Sorted<'a> {
    last_all: BTreeMap<u32, u64>,
    by_table: BTreeMap<Arc<str>, Vec<Row<'a>>>,
    rejected: Vec<Rejected<'a>>,
}

fn sort(records: &[(u32, Record)]) -> Sorted<'_> {
    let mut by_table: BTreeMap<Arc<str>, Vec<Row<'_>>> = BTreeMap::new();
    let mut rejected: Vec<Rejected<'_>> = Vec::new();
    let mut names = Names::default();
    for (p, record) in records {
        match decode(*p, record, &mut names) {
            Ok((table, Ok(row))) => by_table.entry(table).or_default().push(row),
            Ok((_, Err(r))) => rejected.push(r),
            Err(reason) => tracing::error!(
                partition = p,
                offset = record.offset,
                reason = %reason,
                "skipping a journal record that does not decode"
            ),
        }
    }
    Sorted {
        last_all: last_offsets(records.iter().map(|(p, r)| (*p, r.offset))),
        by_table,
        rejected,
    }
}

/// The largest offset per partition.
fn last_offsets(offsets: impl Iterator<Item = (u32, u64)>) -> BTreeMap<u32, u64> {
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    for (p, o) in offsets {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    last
}

impl Destination for TypedSink {
    type Session = OpenTables;
    type Error = LakeError;
    const NAME: &'static str = "typed tables";

    async fn open(&self, partitions: u32) -> Result<(OpenTables, Vec<u64>), LakeError> {
        self.open_all(partitions).await
    }

    async fn deliver(
        &self,
        open: &mut OpenTables,
        batch: &[(u32, Record)],
    ) -> Result<(), LakeError> {
        self.flush(open, batch).await
    }

    fn open_is_retryable(&self, e: &LakeError) -> bool {
        e.kind().is_retryable() && !matches!(e, LakeError::SchemaMismatch { .. })
    }

    fn is_fatal(&self, e: &LakeError) -> bool {
        matches!(e, LakeError::InjectedCrash(_))
    }

    fn gave_up(&self, attempts: u32, last: &LakeError) -> LakeError {
        LakeError::GaveUp {
            table: CONTROL_TABLE.to_string(),
            attempts,
            last: last.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_splits_words_and_cases() {
        for (name, snake) in [
            ("Order Completed", "order_completed"),
            ("orderCompleted", "order_completed"),
            ("order_completed", "order_completed"),
            ("HTTPServer error", "http_server_error"),
            ("$pageview", "pageview"),
            ("page-view  v2", "page_view_v2"),
            ("Café Visited", "caf_visited"),
            ("  ", ""),
        ] {
            assert_eq!(snake_case(name), snake, "{name}");
        }
    }

    #[test]
    fn table_names_follow_the_collision_rules() {
        assert_eq!(table_name("Order Completed"), "order_completed");
        assert_eq!(table_name("order_completed"), "order_completed");
        assert_eq!(table_name("Events"), "events_event");
        assert_eq!(table_name("bad rows"), "bad_rows_event");
        assert_eq!(table_name("404 Page"), "e_404_page");
        let emoji = table_name("🚀");
        assert!(emoji.starts_with("e_") && emoji.len() == 10, "{emoji}");
        let long_a = table_name(&"a".repeat(100));
        let long_b = table_name(&format!("{}b", "a".repeat(99)));
        assert_eq!(long_a.len(), MAX_NAME_BYTES);
        assert_ne!(long_a, long_b);
        assert_eq!(column_name("timestamp"), "property_timestamp");
        assert_eq!(column_name("userName"), "user_name");
        assert_eq!(column_name("userId"), "property_user_id");
        assert_eq!(column_name("1st"), "p_1st");
    }

    #[test]
    fn types_come_from_values_and_schemas() {
        use serde_json::json;
        assert_eq!(PropType::of_value(&json!(3)), Some(PropType::BigInt));
        assert_eq!(PropType::of_value(&json!(3.5)), Some(PropType::Double));
        assert_eq!(PropType::of_value(&json!({"a": 1})), Some(PropType::String));
        assert_eq!(PropType::of_value(&json!(null)), None);
        assert!(PropType::Double.accepts(&json!(3)));
        assert!(!PropType::BigInt.accepts(&json!(3.5)));
        assert!(!PropType::String.accepts(&json!(3)));
        let declared = types_from_json_schema(&json!({"properties": {
            "total": {"type": "number"}, "n": {"type": ["integer", "null"]},
            "tags": {"type": "array"}, "any": {}}}));
        assert_eq!(declared.get("total"), Some(&PropType::Double));
        assert_eq!(declared.get("n"), Some(&PropType::BigInt));
        assert_eq!(declared.get("tags"), Some(&PropType::String));
        assert!(!declared.contains_key("any"));
    }
}
