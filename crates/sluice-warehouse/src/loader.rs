//! The Postgres/Redshift loader: a sink of the `good` topic that loads micro-batches into
//! Postgres (or Redshift) tables, exactly once.
//!
//! Tables (in the configured schema, created and migrated by the loader):
//! - `events`: the columns of the lake's `events` table ([`sluice_lake::EventsTable`]), so a
//!   column added to the lake spec is added here too (`ALTER TABLE … ADD COLUMN`). Each value is
//!   the event's JSON field of the same name (`raw_partition`/`raw_offset` from `raw`,
//!   `event_date` from `timestamp`); JSON payloads are stored as JSON text.
//! - one table per event name with the typed tables' naming and typing rules
//!   ([`sluice_lake::typed`]): the fixed columns plus one column per property, added as new
//!   properties appear. An event whose property does not fit its column's type is left out of its
//!   typed table (it is still in `events`, and the lake's typed tables make it a bad row). The
//!   lake's limits hold here too ([`sluice_lake::limits`]): past `max_typed_tables` tables an
//!   event gets no typed table, past `max_typed_columns` property columns a property is left
//!   out of its typed row (a column it would have is NULL); existing tables and columns keep
//!   working.
//! - `_sluice_positions (topic, partition, next_offset)`: for each `good` partition, the next
//!   offset not yet loaded.
//!
//! Exactly once: each micro-batch is one SQL transaction holding its rows **and** the update of
//! `_sluice_positions`; on start, and after any failure (including a `COMMIT` whose answer was
//! lost), the loader reconnects and reads the positions back, so a batch is in the tables
//! entirely or not at all, and is never loaded twice. The position update is fenced on the
//! position the batch was read from (`… AND next_offset = <expected>`): if another writer moved
//! it first (a loader given up for dead whose COMMIT still landed), no row matches, the batch
//! rolls back, and the loader reads the positions again. Schema changes run before the transaction,
//! as their own statements, and are idempotent; the loader is the only writer of its tables.
//!
//! Dialects: Postgres types `text`/`timestamptz`/`date`/`integer`/`bigint`/`double precision`/
//! `boolean`; Redshift differs only in `varchar(65535)` for text (Redshift's `text` is
//! `varchar(256)`). Statements avoid Postgres-only syntax (`ON CONFLICT`, `IF NOT EXISTS` on
//! columns). Authentication: trust, cleartext, MD5 or SCRAM-SHA-256; no TLS ([`crate::pgclient`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_journal::{Journal, JournalError, Record, StageHealth};
use sluice_lake::batcher::BatchLimits;
use sluice_lake::consume::{Destination, LoopSettings, run_batches};
use sluice_lake::limits::{Refusals, Staged};
use sluice_lake::schema::{Column, ColumnType};
use sluice_lake::typed::{FIXED_COLUMNS, PropType, column_name, table_name};
use sluice_lake::{DeliveryProgress, DeliveryStatus, EventsTable, TableSpec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::pgclient::{PgClientError, PgConnection, PgTarget, quote_ident, quote_literal};
use crate::pgtls::SslMode;

const POSITIONS_TABLE: &str = "_sluice_positions";
/// Rows per `INSERT` statement.
const INSERT_CHUNK: usize = 500;

/// A loader failure.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The configuration is not usable.
    #[error("invalid loader config: {0}")]
    Config(String),
    /// Reading the journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// Postgres failed or refused.
    #[error("{0}")]
    Postgres(#[from] PgClientError),
    /// The database holds something the loader cannot work with.
    #[error("loader: {0}")]
    Schema(String),
    /// Another writer moved a position this batch expected: the batch was rolled back.
    #[error("loader fenced: {0}")]
    Fenced(String),
    /// Loading kept failing during shutdown and the loader gave up (the journal keeps the data).
    #[error("loader gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
}

/// The SQL dialect of the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// PostgreSQL 10 or later.
    #[default]
    Postgres,
    /// Amazon Redshift.
    Redshift,
}

/// `[loader]`: load `good` into Postgres or Redshift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderConfig {
    /// Host of the database.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User.
    pub user: String,
    /// Password (cleartext, MD5 or SCRAM-SHA-256), if the server asks for one.
    pub password: Option<String>,
    /// Database.
    pub database: String,
    /// TLS to the database, as libpq's `sslmode`: `disable`, `prefer` (the default: TLS when
    /// the server offers it, unverified), `require` (TLS, unverified) or `verify-full`.
    pub sslmode: SslMode,
    /// Root certificates (PEM) for `verify-full`.
    pub sslrootcert: Option<std::path::PathBuf>,
    /// Schema the tables live in (created if absent).
    pub schema: String,
    /// `postgres` or `redshift`.
    pub dialect: Dialect,
    /// The longest an event waits before it is loaded ("5s").
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Load as soon as this many events are waiting.
    pub flush_max_events: usize,
    /// Also load one table per event name.
    pub typed_tables: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            schema: "sluice".into(),
            dialect: Dialect::Postgres,
            flush_interval: Duration::from_secs(5),
            flush_max_events: 20_000,
            typed_tables: true,
        }
    }
}

impl LoaderConfig {
    /// Checks the values and returns the settings the loader runs with.
    pub fn validate(&self) -> Result<LoaderSettings, LoaderError> {
        if self.host.is_empty() || self.user.is_empty() || self.database.is_empty() {
            return Err(LoaderError::Config(
                "host, user and database must not be empty".into(),
            ));
        }
        if self.schema.is_empty() || self.schema.len() > 63 {
            return Err(LoaderError::Config(
                "schema must have 1 to 63 characters".into(),
            ));
        }
        if self.flush_interval.is_zero() || self.flush_max_events == 0 {
            return Err(LoaderError::Config(
                "flush_interval and flush_max_events must be positive".into(),
            ));
        }
        if self.sslrootcert.is_some() && self.sslmode != SslMode::VerifyFull {
            return Err(LoaderError::Config(
                "sslrootcert is only used with sslmode = \"verify-full\"".into(),
            ));
        }
        // Read the root certificates now: a bad file is a start-up error.
        crate::pgtls::client_config(self.sslmode, self.sslrootcert.as_deref())
            .map_err(LoaderError::Config)?;
        Ok(LoaderSettings {
            target: PgTarget {
                host: self.host.clone(),
                port: self.port,
                user: self.user.clone(),
                password: self.password.clone(),
                database: self.database.clone(),
                sslmode: self.sslmode,
                sslrootcert: self.sslrootcert.clone(),
            },
            schema: self.schema.clone(),
            dialect: self.dialect,
            flush_interval: self.flush_interval,
            flush_max_events: self.flush_max_events,
            typed_tables: self.typed_tables,
            max_typed_tables: sluice_lake::LakeSettings::default().max_typed_tables,
            max_typed_columns: sluice_lake::LakeSettings::default().max_typed_columns,
            statement_timeout: Duration::from_secs(120),
            retry_backoff_initial: Duration::from_millis(200),
            retry_backoff_max: Duration::from_secs(10),
            shutdown_attempts: 5,
        })
    }
}

/// Validated loader settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoaderSettings {
    /// The database.
    pub target: PgTarget,
    /// The schema.
    pub schema: String,
    /// The dialect.
    pub dialect: Dialect,
    /// See [`LoaderConfig::flush_interval`].
    pub flush_interval: Duration,
    /// See [`LoaderConfig::flush_max_events`].
    pub flush_max_events: usize,
    /// See [`LoaderConfig::typed_tables`].
    pub typed_tables: bool,
    /// Most typed tables (`[lake] max_typed_tables`; the server sets it).
    pub max_typed_tables: usize,
    /// Most property columns per typed table (`[lake] max_typed_columns`).
    pub max_typed_columns: usize,
    /// Longest a connection attempt or a statement may take.
    pub statement_timeout: Duration,
    /// First wait after a failure; doubles up to `retry_backoff_max`.
    pub retry_backoff_initial: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// Attempts per batch once shutdown has begun.
    pub shutdown_attempts: u32,
}

impl LoaderSettings {
    /// A fresh retry backoff from `retry_backoff_initial` to `retry_backoff_max`.
    fn backoff(&self) -> sluice_journal::Backoff {
        sluice_journal::Backoff::new(self.retry_backoff_initial, self.retry_backoff_max)
    }
}

/// Deletes the rows of the people `ids` (matched on `user_id` or `anonymous_id`) from every
/// table of the loader's schema that has both columns (`events` and the typed tables), on a
/// connection of its own (a deletion request). Runs beside the loader: its inserts and these
/// deletes are separate transactions, and no new row of these people arrives once the request
/// has waited for the loader. The rows deleted per table, tables with none left out.
pub async fn erase_people(
    settings: &LoaderSettings,
    ids: &[String],
) -> Result<Vec<(String, u64)>, LoaderError> {
    let mut out = Vec::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let mut conn = PgConnection::connect(&settings.target, settings.statement_timeout).await?;
    conn.execute("SET standard_conforming_strings = on").await?;
    let tables = conn
        .query(&format!(
            "SELECT table_name FROM information_schema.columns WHERE table_schema = {} \
             AND column_name IN ('user_id', 'anonymous_id') GROUP BY table_name \
             HAVING count(*) = 2 ORDER BY table_name",
            quote_literal(&settings.schema)
        ))
        .await?;
    let schema = quote_ident(&settings.schema);
    for row in tables {
        let Some(Some(table)) = row.into_iter().next() else {
            continue;
        };
        let mut deleted = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            let list = chunk
                .iter()
                .map(|id| quote_literal(id))
                .collect::<Vec<_>>()
                .join(", ");
            deleted += conn
                .affected(&format!(
                    "DELETE FROM {schema}.{} WHERE user_id IN ({list}) OR anonymous_id IN ({list})",
                    quote_ident(&table)
                ))
                .await?;
        }
        if deleted > 0 {
            out.push((table, deleted));
        }
    }
    Ok(out)
}

/// SQL type of a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SqlType {
    Text,
    Timestamp,
    Date,
    Int,
    BigInt,
    Double,
    Boolean,
}

impl SqlType {
    fn of_column(ty: ColumnType) -> Self {
        match ty {
            ColumnType::String => Self::Text,
            ColumnType::Int => Self::Int,
            ColumnType::BigInt => Self::BigInt,
            ColumnType::Timestamp => Self::Timestamp,
            ColumnType::Date => Self::Date,
            ColumnType::Double => Self::Double,
            ColumnType::Boolean => Self::Boolean,
        }
    }

    fn of_prop(ty: PropType) -> Self {
        match ty {
            PropType::Boolean => Self::Boolean,
            PropType::BigInt => Self::BigInt,
            PropType::Double => Self::Double,
            PropType::String => Self::Text,
        }
    }

    fn as_prop(self) -> Option<PropType> {
        match self {
            Self::Boolean => Some(PropType::Boolean),
            Self::BigInt => Some(PropType::BigInt),
            Self::Double => Some(PropType::Double),
            Self::Text => Some(PropType::String),
            _ => None,
        }
    }

    /// From `information_schema.columns.data_type`.
    fn from_catalog(name: &str) -> Option<Self> {
        Some(match name {
            "text" | "character varying" => Self::Text,
            "timestamp with time zone" | "timestamp without time zone" => Self::Timestamp,
            "date" => Self::Date,
            "integer" => Self::Int,
            "bigint" => Self::BigInt,
            "double precision" => Self::Double,
            "boolean" => Self::Boolean,
            _ => return None,
        })
    }

    fn ddl(self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            (Self::Text, Dialect::Postgres) => "text",
            (Self::Text, Dialect::Redshift) => "varchar(65535)",
            (Self::Timestamp, _) => "timestamptz",
            (Self::Date, _) => "date",
            (Self::Int, _) => "integer",
            (Self::BigInt, _) => "bigint",
            (Self::Double, _) => "double precision",
            (Self::Boolean, _) => "boolean",
        }
    }
}

/// The columns of one table in the database, in order.
type TableColumns = Vec<(String, Option<SqlType>)>;

fn events_columns() -> Vec<Column> {
    EventsTable::COLUMNS.to_vec()
}

fn micros_to_rfc3339(micros: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// The SQL literal of `value` for a column of type `ty` (`NULL` when it does not fit).
fn literal(value: Option<&Value>, ty: Option<SqlType>) -> String {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return "NULL".into();
    };
    match ty {
        Some(SqlType::Text) | None => match value {
            Value::String(s) => quote_literal(s),
            other => quote_literal(&other.to_string()),
        },
        Some(SqlType::Timestamp) => value
            .as_i64()
            .and_then(micros_to_rfc3339)
            .map_or_else(|| "NULL".into(), |t| quote_literal(&t)),
        Some(SqlType::Date) => value
            .as_i64()
            .and_then(micros_to_rfc3339)
            .map_or_else(|| "NULL".into(), |t| quote_literal(&t[..10])),
        Some(SqlType::Int | SqlType::BigInt) => value
            .as_i64()
            .map_or_else(|| "NULL".into(), |n| n.to_string()),
        Some(SqlType::Double) => value
            .as_f64()
            .filter(|f| f.is_finite())
            .map_or_else(|| "NULL".into(), |f| format!("{f:?}")),
        Some(SqlType::Boolean) => value
            .as_bool()
            .map_or_else(|| "NULL".into(), |b| b.to_string()),
    }
}

/// One event ready to load.
struct Loaded {
    /// The event as a JSON object with the derived columns added.
    fields: serde_json::Map<String, Value>,
    /// Typed table and its property columns (column, value), when typed tables are on.
    typed: Option<(String, Vec<(String, Value)>)>,
}

/// What a good record holds whatever else it has: [`sluice_event::Event`]'s required fields,
/// with their types. Read from the record's parsed JSON, so that a record is parsed once; a
/// record without them is not a good event and is skipped (see `pending`).
#[derive(Deserialize)]
#[expect(dead_code, reason = "the fields not read are there to be checked")]
struct Required<'a> {
    event_id: &'a str,
    event_type: sluice_event::EventType,
    event: &'a str,
    source: &'a str,
    timestamp: i64,
    received_at: i64,
    properties: serde::de::IgnoredAny,
    context: serde::de::IgnoredAny,
    raw: sluice_event::Position,
}

fn prepare(record: &Record, typed: bool) -> Result<Loaded, String> {
    let value: Value = serde_json::from_slice(&record.value).map_err(|e| e.to_string())?;
    let required = Required::deserialize(&value).map_err(|e| format!("not a good event: {e}"))?;
    let (raw, timestamp) = (required.raw, required.timestamp);
    let table = typed.then(|| table_name(required.event));
    let Value::Object(mut fields) = value else {
        return Err("not a json object".into());
    };
    // What validation and the enrichers derived is nested in the good record and flat in the
    // lake's `events` (one column each): flatten it the same way.
    if let Some(Value::Object(enriched)) = fields.remove("enriched") {
        for (k, v) in enriched {
            fields.entry(k).or_insert(v);
        }
    }
    fields.insert("raw_partition".into(), Value::from(raw.partition));
    fields.insert("raw_offset".into(), Value::from(raw.offset));
    fields.insert("event_date".into(), Value::from(timestamp));
    let typed = if let Some(table) = table {
        let mut values: Vec<(String, Value)> = Vec::new();
        if let Some(Value::Object(properties)) = fields.get("properties") {
            for (key, value) in properties {
                let column = column_name(key);
                if value.is_null() || values.iter().any(|(c, _)| *c == column) {
                    continue;
                }
                values.push((column, value.clone()));
            }
        }
        Some((table, values))
    } else {
        None
    };
    Ok(Loaded { fields, typed })
}

/// The columns a row's property `values` add to a typed table whose columns are `existing`
/// plus `new`, or `None` when a value does not fit the column it has there.
fn proposed_columns(
    existing: &HashMap<String, Option<SqlType>>,
    new: &[(String, SqlType)],
    values: &[(String, Value)],
) -> Option<Vec<(String, SqlType)>> {
    let mut proposed: Vec<(String, SqlType)> = Vec::new();
    for (column, value) in values {
        let known = existing
            .get(column)
            .map(|t| t.and_then(SqlType::as_prop))
            .or_else(|| {
                new.iter()
                    .chain(&proposed)
                    .find(|(c, _)| c == column)
                    .map(|(_, t)| t.as_prop())
            });
        match known {
            Some(Some(ty)) if ty.accepts(value) => {}
            Some(_) => return None,
            None => {
                if let Some(ty) = PropType::of_value(value) {
                    proposed.push((column.clone(), SqlType::of_prop(ty)));
                }
            }
        }
    }
    Some(proposed)
}

/// The property columns of a typed table's catalog entry (its columns but the fixed ones).
fn existing_properties(columns: Option<&TableColumns>) -> usize {
    columns.map_or(0, |cols| {
        cols.iter()
            .filter(|(c, _)| !FIXED_COLUMNS.contains(&c.as_str()))
            .count()
    })
}

/// Loads `good` into Postgres, exactly once. See the module docs.
pub struct PgLoader {
    journal: Arc<dyn Journal>,
    settings: LoaderSettings,
    status: watch::Sender<DeliveryStatus>,
    health: StageHealth,
    refusals: Refusals,
}

/// The loader's live connection and what it knows of the database.
pub struct Session {
    conn: PgConnection,
    /// Table → columns, as of the last catalog read plus our own DDL.
    catalog: HashMap<String, TableColumns>,
    /// Per partition, the first offset not in the database (read back on every connect).
    in_db: Vec<u64>,
}

impl PgLoader {
    /// A loader of `good` from `journal`.
    pub fn new(journal: Arc<dyn Journal>, settings: LoaderSettings) -> Self {
        let refusals = Refusals::new(
            "loader",
            settings.max_typed_tables,
            settings.max_typed_columns,
        );
        Self {
            journal,
            settings,
            status: watch::Sender::new(DeliveryStatus::default()),
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

    /// A handle on the loader's progress.
    pub fn progress(&self) -> DeliveryProgress {
        sluice_journal::ConsumerProgress::new(
            POSITIONS_TABLE,
            sluice_event::topic::GOOD,
            self.status.subscribe(),
        )
    }

    fn table(&self, name: &str) -> String {
        format!(
            "{}.{}",
            quote_ident(&self.settings.schema),
            quote_ident(name)
        )
    }

    /// Connects, creates the schema and the positions table, reads the positions and the
    /// catalog.
    async fn connect(&self, partitions: u32) -> Result<(Session, Vec<u64>), LoaderError> {
        let mut conn =
            PgConnection::connect(&self.settings.target, self.settings.statement_timeout).await?;
        conn.execute("SET standard_conforming_strings = on").await?;
        let schema = quote_ident(&self.settings.schema);
        conn.execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await?;
        let positions = self.table(POSITIONS_TABLE);
        conn.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {positions} (topic varchar(64) NOT NULL, \"partition\" integer NOT NULL, next_offset bigint NOT NULL, PRIMARY KEY (topic, \"partition\"))"
        ))
        .await?;
        for p in 0..partitions {
            conn.execute(&format!(
                "INSERT INTO {positions} (topic, \"partition\", next_offset) SELECT 'good', {p}, 0 WHERE NOT EXISTS (SELECT 1 FROM {positions} WHERE topic = 'good' AND \"partition\" = {p})"
            ))
            .await?;
        }
        let rows = conn
            .query(&format!(
                "SELECT \"partition\", next_offset FROM {positions} WHERE topic = 'good' ORDER BY 1"
            ))
            .await?;
        let mut next = vec![0u64; partitions as usize];
        for row in rows {
            let (Some(Some(p)), Some(Some(o))) = (row.first(), row.get(1)) else {
                continue;
            };
            let (Ok(p), Ok(o)) = (p.parse::<usize>(), o.parse::<u64>()) else {
                return Err(LoaderError::Schema(format!(
                    "unreadable position row {p:?} {o:?}"
                )));
            };
            if let Some(slot) = next.get_mut(p) {
                *slot = o;
            }
        }
        let mut catalog: HashMap<String, TableColumns> = HashMap::new();
        let rows = conn
            .query(&format!(
                "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = {} ORDER BY table_name, ordinal_position",
                quote_literal(&self.settings.schema)
            ))
            .await?;
        for row in rows {
            if let [Some(t), Some(c), Some(ty)] = row.as_slice() {
                catalog
                    .entry(t.clone())
                    .or_default()
                    .push((c.clone(), SqlType::from_catalog(ty)));
            }
        }
        let session = Session {
            conn,
            catalog,
            in_db: next.clone(),
        };
        Ok((session, next))
    }

    /// Runs until `shutdown`, then loads everything durable at that moment and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), LoaderError> {
        let status = self.status.clone();
        let result = self.run_inner(&shutdown).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "postgres loader stopped");
        }
        status.send_modify(|s| s.stopped = true);
        result
    }

    async fn run_inner(&self, shutdown: &CancellationToken) -> Result<(), LoaderError> {
        let settings = LoopSettings {
            limits: BatchLimits {
                max_events: self.settings.flush_max_events,
                max_bytes: usize::MAX,
                read_records: usize::MAX,
                read_bytes: 64 << 20,
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

    /// Ensures `table` has `wanted` columns (creating it or adding what is missing).
    async fn migrate(
        &self,
        session: &mut Session,
        table: &str,
        wanted: &[(String, SqlType)],
        fixed: &[(String, SqlType)],
    ) -> Result<(), LoaderError> {
        let qualified = self.table(table);
        let dialect = self.settings.dialect;
        if !session.catalog.contains_key(table) {
            let columns: Vec<String> = fixed
                .iter()
                .chain(wanted)
                .map(|(c, t)| format!("{} {}", quote_ident(c), t.ddl(dialect)))
                .collect();
            session
                .conn
                .execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {qualified} ({})",
                    columns.join(", ")
                ))
                .await?;
            session.catalog.insert(
                table.to_string(),
                fixed
                    .iter()
                    .chain(wanted)
                    .map(|(c, t)| (c.clone(), Some(*t)))
                    .collect(),
            );
            return Ok(());
        }
        for (column, ty) in fixed.iter().chain(wanted) {
            let known = session
                .catalog
                .get(table)
                .is_some_and(|cols| cols.iter().any(|(c, _)| c == column));
            if known {
                continue;
            }
            session
                .conn
                .execute(&format!(
                    "ALTER TABLE {qualified} ADD COLUMN {} {}",
                    quote_ident(column),
                    ty.ddl(dialect)
                ))
                .await?;
            if let Some(cols) = session.catalog.get_mut(table) {
                cols.push((column.clone(), Some(*ty)));
            }
        }
        Ok(())
    }

    /// Loads the records not yet in the database (`session.in_db[p]` = next offset not loaded)
    /// in one transaction with the positions. Returns the rows loaded into `events`.
    async fn load(
        &self,
        session: &mut Session,
        records: &[(u32, Record)],
    ) -> Result<usize, LoaderError> {
        let (rows, last) = self.pending(session, records);
        if last.is_empty() {
            return Ok(0);
        }
        let fixed = self.migrate_events(session).await?;
        let (typed_rows, staged) = self.migrate_typed(session, &rows, &fixed).await?;
        self.commit(session, &rows, &typed_rows, last, staged).await
    }

    /// The records not yet in the database, prepared as rows (one that does not decode is
    /// skipped), and per partition the last offset among them.
    fn pending(
        &self,
        session: &Session,
        records: &[(u32, Record)],
    ) -> (Vec<Loaded>, BTreeMap<u32, u64>) {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        let mut rows = Vec::new();
        for (p, record) in records {
            if session
                .in_db
                .get(*p as usize)
                .is_some_and(|n| record.offset < *n)
            {
                continue;
            }
            let e = last.entry(*p).or_insert(record.offset);
            *e = (*e).max(record.offset);
            match prepare(record, self.settings.typed_tables) {
                Ok(row) => rows.push(row),
                Err(reason) => {
                    tracing::error!(partition = p, offset = record.offset, reason = %reason, "skipping a journal record that does not decode")
                }
            }
        }
        (rows, last)
    }

    /// Creates the `events` table or adds the columns it lacks; returns its fixed columns,
    /// which every typed table has too.
    async fn migrate_events(
        &self,
        session: &mut Session,
    ) -> Result<Vec<(String, SqlType)>, LoaderError> {
        let columns: Vec<(String, SqlType)> = events_columns()
            .iter()
            .map(|c| (c.name.to_string(), SqlType::of_column(c.ty)))
            .collect();
        self.migrate(session, "events", &[], &columns).await?;
        Ok(columns
            .iter()
            .filter(|(c, _)| FIXED_COLUMNS.contains(&c.as_str()))
            .cloned()
            .collect())
    }

    /// Typed tables: decides each property column's type (the database's, else inferred from
    /// the first value), adds what is missing, leaves out events that do not fit. Returns the
    /// rows of each typed table, and the refusals of tables and columns past the limits.
    async fn migrate_typed(
        &self,
        session: &mut Session,
        rows: &[Loaded],
        fixed: &[(String, SqlType)],
    ) -> Result<(BTreeMap<String, Vec<usize>>, Staged), LoaderError> {
        let mut typed: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        if self.settings.typed_tables {
            for (i, row) in rows.iter().enumerate() {
                if let Some((table, _)) = &row.typed {
                    typed.entry(table.clone()).or_default().push(i);
                }
            }
        }
        let mut typed_rows: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        // Refusals count once the batch commits: a retried batch would count them again.
        let mut staged = Staged::default();
        // Typed tables in the schema: all but `events` and the positions table.
        let mut tables = session
            .catalog
            .keys()
            .filter(|t| *t != "events" && *t != POSITIONS_TABLE)
            .count();
        for (table, indexes) in &typed {
            if !session.catalog.contains_key(table) {
                if tables >= self.settings.max_typed_tables {
                    staged.table(table, indexes.len() as u64);
                    continue;
                }
                tables += 1;
            }
            let columns = session.catalog.get(table);
            let (new, fits) = self.fitting_rows(columns, table, rows, indexes, &mut staged);
            self.migrate(session, table, &new, fixed).await?;
            typed_rows.insert(table.clone(), fits);
        }
        Ok((typed_rows, staged))
    }

    /// Of the `rows` at `indexes`, those whose properties fit the typed `table` (with its
    /// `columns`), and the columns to add for them: at most `max_typed_columns` properties,
    /// the rest refused in `staged`.
    fn fitting_rows(
        &self,
        columns: Option<&TableColumns>,
        table: &str,
        rows: &[Loaded],
        indexes: &[usize],
        staged: &mut Staged,
    ) -> (Vec<(String, SqlType)>, Vec<usize>) {
        let properties = existing_properties(columns);
        let existing: HashMap<String, Option<SqlType>> = columns
            .map(|cols| cols.iter().cloned().collect())
            .unwrap_or_default();
        let mut new: Vec<(String, SqlType)> = Vec::new();
        let mut fits = Vec::new();
        for &i in indexes {
            let Some((_, values)) = &rows[i].typed else {
                continue;
            };
            let Some(proposed) = proposed_columns(&existing, &new, values) else {
                continue;
            };
            let room = self
                .settings
                .max_typed_columns
                .saturating_sub(properties + new.len());
            for (column, _) in proposed.iter().skip(room) {
                staged.column(table, column);
            }
            new.extend(proposed.into_iter().take(room));
            fits.push(i);
        }
        (new, fits)
    }

    /// Inserts the rows and moves the positions in one transaction; once it commits, counts
    /// the refusals and takes the positions as loaded. Returns the rows loaded into `events`.
    async fn commit(
        &self,
        session: &mut Session,
        rows: &[Loaded],
        typed_rows: &BTreeMap<String, Vec<usize>>,
        last: BTreeMap<u32, u64>,
        staged: Staged,
    ) -> Result<usize, LoaderError> {
        session.conn.execute("BEGIN").await?;
        let result = self.insert_all(session, rows, typed_rows, &last).await;
        match result {
            Ok(()) => {
                session.conn.execute("COMMIT").await?;
                self.refusals.count(staged);
                for (p, last) in last {
                    if let Some(n) = session.in_db.get_mut(p as usize) {
                        debug_assert!(last >= *n, "loader positions only grow");
                        *n = last + 1;
                    }
                }
                Ok(rows.len())
            }
            Err(e) => {
                let _ = session.conn.execute("ROLLBACK").await;
                Err(e)
            }
        }
    }

    async fn insert_all(
        &self,
        session: &mut Session,
        rows: &[Loaded],
        typed_rows: &BTreeMap<String, Vec<usize>>,
        last: &BTreeMap<u32, u64>,
    ) -> Result<(), LoaderError> {
        let all: Vec<usize> = (0..rows.len()).collect();
        self.insert(session, "events", rows, &all, false).await?;
        for (table, indexes) in typed_rows {
            self.insert(session, table, rows, indexes, true).await?;
        }
        let positions = self.table(POSITIONS_TABLE);
        for (p, offset) in last {
            // Fenced on the position this batch was read from: a loader that lost its
            // connection but whose COMMIT still lands (or any other writer) moves it first,
            // and then this update matches no row, so this batch rolls back instead of loading
            // the same rows twice.
            let expected = session.in_db.get(*p as usize).copied().unwrap_or(0);
            let updated = session
                .conn
                .affected(&format!(
                    "UPDATE {positions} SET next_offset = {} WHERE topic = 'good' AND \"partition\" = {p} AND next_offset = {expected}",
                    offset + 1
                ))
                .await?;
            if updated != 1 {
                return Err(LoaderError::Fenced(format!(
                    "partition {p} moved past {expected} under this loader; reading the positions back"
                )));
            }
        }
        Ok(())
    }

    async fn insert(
        &self,
        session: &mut Session,
        table: &str,
        rows: &[Loaded],
        indexes: &[usize],
        typed: bool,
    ) -> Result<(), LoaderError> {
        if indexes.is_empty() {
            return Ok(());
        }
        let columns: TableColumns = session.catalog.get(table).cloned().unwrap_or_default();
        let names: Vec<String> = columns.iter().map(|(c, _)| quote_ident(c)).collect();
        let qualified = self.table(table);
        for chunk in indexes.chunks(INSERT_CHUNK) {
            let mut sql = format!("INSERT INTO {qualified} ({}) VALUES ", names.join(", "));
            for (n, &i) in chunk.iter().enumerate() {
                let row = &rows[i];
                if n > 0 {
                    sql.push_str(", ");
                }
                sql.push('(');
                for (k, (column, ty)) in columns.iter().enumerate() {
                    if k > 0 {
                        sql.push_str(", ");
                    }
                    let is_fixed = !typed || FIXED_COLUMNS.contains(&column.as_str());
                    let value = if is_fixed {
                        row.fields.get(column)
                    } else {
                        row.typed.as_ref().and_then(|(_, values)| {
                            values.iter().find(|(c, _)| c == column).map(|(_, v)| v)
                        })
                    };
                    sql.push_str(&literal(value, *ty));
                }
                sql.push(')');
            }
            session.conn.execute(&sql).await?;
        }
        Ok(())
    }
}

impl Destination for PgLoader {
    type Session = Session;
    type Error = LoaderError;
    const NAME: &'static str = "postgres loader";

    async fn open(&self, partitions: u32) -> Result<(Session, Vec<u64>), LoaderError> {
        self.connect(partitions).await
    }

    async fn deliver(
        &self,
        session: &mut Session,
        batch: &[(u32, Record)],
    ) -> Result<(), LoaderError> {
        let rows = self.load(session, batch).await?;
        tracing::debug!(rows, "postgres batch loaded");
        Ok(())
    }

    fn gave_up(&self, attempts: u32, last: &LoaderError) -> LoaderError {
        LoaderError::GaveUp {
            attempts,
            last: last.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &Value) -> Record {
        Record {
            offset: 7,
            timestamp_ms: 0,
            value: bytes::Bytes::from(value.to_string()),
        }
    }

    fn good_event() -> Value {
        serde_json::json!({
            "event_id": "e-1", "event_type": "track", "event": "Order Completed",
            "source": "web", "user_id": "u-1", "timestamp": 1_764_547_200_000_000_i64,
            "received_at": 1_764_547_200_500_000_i64,
            "properties": {"orderId": "o-9", "revenue": 12.5, "coupon": null},
            "context": {"ip": "203.0.113.9"},
            "enriched": {"geo_country": "DE", "event_id": "not this one"},
            "raw": {"partition": 2, "offset": 41}
        })
    }

    #[test]
    fn a_good_record_is_read_once_into_its_columns_and_typed_values() {
        let loaded = prepare(&record(&good_event()), true).expect("a good event");
        let field = |name: &str| loaded.fields.get(name).cloned();
        assert_eq!(field("raw_partition"), Some(Value::from(2)));
        assert_eq!(field("raw_offset"), Some(Value::from(41)));
        assert_eq!(
            field("event_date"),
            Some(Value::from(1_764_547_200_000_000_i64))
        );
        assert_eq!(field("geo_country"), Some(Value::from("DE")));
        assert_eq!(
            field("event_id"),
            Some(Value::from("e-1")),
            "enriched never overwrites"
        );
        assert_eq!(field("enriched"), None);
        let (table, values) = loaded.typed.expect("typed tables are on");
        assert_eq!(table, "order_completed");
        let expected = [
            ("order_id", Value::from("o-9")),
            ("revenue", Value::from(12.5)),
        ];
        let expected: Vec<(String, Value)> = expected
            .into_iter()
            .map(|(c, v)| (c.to_string(), v))
            .collect();
        assert_eq!(values, expected, "null properties are left out");
        let untyped = prepare(&record(&good_event()), false).expect("a good event");
        assert!(untyped.typed.is_none());
    }

    #[test]
    fn a_record_that_is_not_a_good_event_is_refused_with_the_reason() {
        for (field, broken) in [
            ("event_id", None),
            ("raw", Some(Value::from("2:41"))),
            ("timestamp", Some(Value::from("yesterday"))),
            ("event_type", Some(Value::from("shout"))),
            ("context", None),
        ] {
            let mut event = good_event();
            match &broken {
                Some(v) => event[field] = v.clone(),
                None => {
                    event.as_object_mut().map(|o| o.remove(field));
                }
            }
            let reason = prepare(&record(&event), true).err().expect("refused");
            assert!(reason.starts_with("not a good event"), "{field}: {reason}");
            assert!(
                reason.contains(field) || broken.is_some(),
                "{field}: {reason}"
            );
        }
        let reason = prepare(&record(&Value::from("text")), true).err();
        assert!(reason.is_some_and(|r| r.starts_with("not a good event")));
        let not_json = Record {
            offset: 0,
            timestamp_ms: 0,
            value: bytes::Bytes::from_static(b"{\"event_id\""),
        };
        assert!(prepare(&not_json, true).is_err());
    }

    #[test]
    fn literals_follow_the_column_type() {
        let v = serde_json::json!({"s": "it's", "n": 3, "f": 2.5, "b": true, "o": {"a": 1}, "t": 1_764_237_600_123_456_i64});
        assert_eq!(literal(v.get("s"), Some(SqlType::Text)), "'it''s'");
        assert_eq!(literal(v.get("o"), Some(SqlType::Text)), "'{\"a\":1}'");
        assert_eq!(literal(v.get("n"), Some(SqlType::BigInt)), "3");
        assert_eq!(literal(v.get("f"), Some(SqlType::Double)), "2.5");
        assert_eq!(literal(v.get("n"), Some(SqlType::Double)), "3.0");
        assert_eq!(literal(v.get("b"), Some(SqlType::Boolean)), "true");
        assert_eq!(
            literal(v.get("t"), Some(SqlType::Timestamp)),
            "'2025-11-27T10:00:00.123456Z'"
        );
        assert_eq!(literal(v.get("t"), Some(SqlType::Date)), "'2025-11-27'");
        assert_eq!(literal(v.get("missing"), Some(SqlType::Text)), "NULL");
        assert_eq!(literal(v.get("s"), Some(SqlType::BigInt)), "NULL");
    }

    #[test]
    fn config_defaults_are_valid() {
        let settings = LoaderConfig::default().validate().unwrap();
        assert_eq!(settings.target.port, 5432);
        let bad = LoaderConfig {
            schema: String::new(),
            ..LoaderConfig::default()
        };
        assert!(matches!(bad.validate(), Err(LoaderError::Config(m)) if m.contains("schema")));
    }

    #[test]
    fn sslmode_parses_and_its_root_is_checked_at_start() {
        let cfg: LoaderConfig = serde_json::from_str(r#"{"sslmode": "verify-full"}"#).unwrap();
        assert_eq!(cfg.sslmode, SslMode::VerifyFull);
        assert_eq!(LoaderConfig::default().sslmode, SslMode::Prefer);
        let err = |cfg: LoaderConfig| match cfg.validate() {
            Err(LoaderError::Config(m)) => m,
            other => panic!("not a config error: {other:?}"),
        };
        assert!(err(cfg).contains("needs sslrootcert"));
        let missing = LoaderConfig {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..LoaderConfig::default()
        };
        assert!(err(missing).starts_with("sslrootcert: cannot read /nonexistent/ca.pem"));
        let unused = LoaderConfig {
            sslmode: SslMode::Require,
            sslrootcert: Some("ca.pem".into()),
            ..LoaderConfig::default()
        };
        assert!(err(unused).contains("only used with sslmode"));
        let allow = serde_json::from_str::<LoaderConfig>(r#"{"sslmode": "allow"}"#).unwrap_err();
        assert!(
            allow.to_string().contains("unknown variant `allow`"),
            "{allow}"
        );
    }
}
