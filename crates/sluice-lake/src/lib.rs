//! Lake delivery: the `good` and `bad` journal topics become the `events` and `bad_rows` Delta
//! Lake tables, exactly once.
//!
//! Layout under the lake root (a local directory, `<data_dir>/lake` by default, or an object-store
//! URL):
//!
//! ```text
//! <root>/events/_delta_log/…                       Delta log: commits, checkpoints
//! <root>/events/event_date=2026-11-27/part-….parquet   zstd Parquet, one file per date per flush
//! <root>/bad_rows/_delta_log/…
//! <root>/bad_rows/failed_date=2026-11-27/part-….parquet
//! ```
//!
//! The schemas are in [`schema`] ([`EventsTable`], [`BadRowsTable`]). Each commit carries one
//! Delta `txn` action per journal partition it covers, with app id `<table>/<partition>`
//! (`events/0`, `bad_rows/3`) and version = the last journal offset of that partition now in the
//! table. Those txn versions are the sinks' only state: a sink resumes from them on start, and
//! reads them back after any commit whose outcome it does not know ([`deliver`] has the full
//! argument). `delta.setTransactionRetentionDuration` is never set on these tables, so the txn
//! versions never expire.
//!
//! Use: build [`LakeSettings`] from [`LakeConfig::validate`], then run a [`LakeSink`] (and a
//! [`BadRowsSink`]) as a task with the shutdown token; watch it through
//! [`TableSink::progress`].

pub mod batcher;
pub mod checksum;
mod commit;
mod config;
pub mod consume;
pub mod deliver;
pub mod durable_store;
pub mod erase;
mod error;
pub mod limits;
pub mod metrics;
mod repair;
pub mod retention;
mod root;
pub mod schema;
pub mod typed;
pub mod upkeep;
pub mod verify;
pub mod writer;

pub use config::{LakeConfig, LakeSettings};
pub use deliver::{
    BadRowsSink, DeliveryProgress, DeliveryStatus, FaultAction, FaultInjector, FaultPoint,
    LakeSink, TableSink,
};
pub use error::LakeError;
pub use root::{LakeRoot, ObjectFiles};
pub use schema::{BAD_ROWS_TABLE, BadRowsTable, EVENTS_TABLE, EventsTable, TableSpec, app_id};
pub use typed::TypedSink;
pub use upkeep::{Upkeep, UpkeepConfig};
