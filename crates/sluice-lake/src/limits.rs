//! [`Refusals`]: the typed tables and columns a sink did not create because of
//! `[lake] max_typed_tables` and `max_typed_columns`, for the metric, the log and `/health`.
//!
//! Browser write keys are public, so event and property names are attacker-chosen: every new
//! name must not become a new table or column forever. Past a limit nothing is lost (the event
//! is in `events`, its properties as JSON); it only gets no new typed table or column. Each
//! refused event counts in `sluice_lake_typed_refusals_total{sink, kind}` (`kind` = `table` or
//! `column`); each refused *name* is logged once (up to [`MAX_REMEMBERED`] names per sink, then
//! one line saying the rest are not logged), and `/health` lists the counts and the first
//! [`MAX_EXAMPLES`] names as a warning.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// Refused names remembered per sink (to log each once); past it, names are only counted.
pub const MAX_REMEMBERED: usize = 10_000;
/// Refused names `/health` shows per kind.
pub const MAX_EXAMPLES: usize = 20;

/// What a sink refused, as `/health` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RefusalReport {
    /// The sink: `lake` (typed tables) or `loader`.
    pub sink: String,
    /// Its table limit.
    pub max_typed_tables: usize,
    /// Its column limit.
    pub max_typed_columns: usize,
    /// Events that got no typed table because the table limit was reached.
    pub events_without_table: u64,
    /// Properties left out of their typed table because the column limit was reached.
    pub properties_without_column: u64,
    /// The first refused table names.
    pub refused_tables: Vec<String>,
    /// The first refused columns, as `table.column`.
    pub refused_columns: Vec<String>,
}

#[derive(Debug, Default)]
struct Inner {
    report: RefusalReport,
    seen: HashSet<(bool, String)>,
    full_logged: bool,
}

/// The refusals of one delivery attempt, counted into [`Refusals`] only once what they shaped
/// has committed (a batch retried after a failed commit would otherwise count them twice).
#[derive(Debug, Default)]
pub struct Staged {
    /// Tables not created, with their events.
    tables: Vec<(String, u64)>,
    /// Per table, the columns not created.
    columns: std::collections::BTreeMap<String, Vec<String>>,
}

impl Staged {
    /// `events` events of table `table` got no table.
    pub fn table(&mut self, table: &str, events: u64) {
        self.tables.push((table.to_string(), events));
    }

    /// Property `column` of table `table` got no column.
    pub fn column(&mut self, table: &str, column: &str) {
        self.columns
            .entry(table.to_string())
            .or_default()
            .push(column.to_string());
    }

    /// The columns staged for `table`, taken out (counted when that table commits).
    pub fn take_columns(&mut self, table: &str) -> Vec<String> {
        self.columns.remove(table).unwrap_or_default()
    }
}

/// One sink's refusals. Cheap to clone; every clone shares them.
#[derive(Clone, Debug)]
pub struct Refusals {
    inner: Arc<Mutex<Inner>>,
}

impl Refusals {
    /// The refusals of `sink` under these limits.
    pub fn new(sink: &str, max_typed_tables: usize, max_typed_columns: usize) -> Self {
        let report = RefusalReport {
            sink: sink.to_string(),
            max_typed_tables,
            max_typed_columns,
            ..RefusalReport::default()
        };
        Self {
            inner: Arc::new(Mutex::new(Inner {
                report,
                ..Inner::default()
            })),
        }
    }

    /// Counts the column refusals of `table` taken from a [`Staged`] (its commit landed).
    pub fn count_columns(&self, table: &str, columns: &[String]) {
        for column in columns {
            self.column(table, column);
        }
    }

    /// Counts every refusal of `staged` (the whole attempt committed).
    pub fn count(&self, staged: Staged) {
        for (table, events) in &staged.tables {
            self.table(table, *events);
        }
        for (table, columns) in &staged.columns {
            self.count_columns(table, columns);
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // Plain counters: a panic elsewhere cannot tear them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `events` events of table `table` got no table: the table limit is reached.
    pub fn table(&self, table: &str, events: u64) {
        let mut inner = self.inner();
        inner.report.events_without_table += events;
        let sink = inner.report.sink.clone();
        metrics::counter!("sluice_lake_typed_refusals_total", "sink" => sink, "kind" => "table")
            .increment(events);
        if inner.remember(true, table) {
            let max = inner.report.max_typed_tables;
            tracing::warn!(sink = %inner.report.sink, table, max_typed_tables = max, "typed table not created: max_typed_tables reached; its events stay in events");
            if inner.report.refused_tables.len() < MAX_EXAMPLES {
                inner.report.refused_tables.push(table.to_string());
            }
        }
    }

    /// One event's property that would have made column `column` of `table` was left out: the
    /// column limit of the table is reached.
    pub fn column(&self, table: &str, column: &str) {
        let mut inner = self.inner();
        inner.report.properties_without_column += 1;
        let sink = inner.report.sink.clone();
        metrics::counter!("sluice_lake_typed_refusals_total", "sink" => sink, "kind" => "column")
            .increment(1);
        let name = format!("{table}.{column}");
        if inner.remember(false, &name) {
            let max = inner.report.max_typed_columns;
            tracing::warn!(sink = %inner.report.sink, table, column, max_typed_columns = max, "typed column not created: max_typed_columns reached; the property stays in events");
            if inner.report.refused_columns.len() < MAX_EXAMPLES {
                inner.report.refused_columns.push(name);
            }
        }
    }

    /// The refusals so far; `None` when there were none.
    pub fn report(&self) -> Option<RefusalReport> {
        let inner = self.inner();
        let r = &inner.report;
        (r.events_without_table > 0 || r.properties_without_column > 0).then(|| r.clone())
    }
}

impl Inner {
    /// Whether `name` is refused for the first time (and so is logged).
    fn remember(&mut self, table: bool, name: &str) -> bool {
        if self.seen.contains(&(table, name.to_string())) {
            return false;
        }
        if self.seen.len() >= MAX_REMEMBERED {
            if !self.full_logged {
                self.full_logged = true;
                tracing::warn!(sink = %self.report.sink, remembered = MAX_REMEMBERED, "more typed tables or columns refused; further names are counted, not logged");
            }
            return false;
        }
        self.seen.insert((table, name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_is_remembered_once_and_counts_add_up() {
        let r = Refusals::new("lake", 2, 3);
        assert!(r.report().is_none());
        r.table("a", 5);
        r.table("a", 2);
        r.table("b", 1);
        r.column("t", "x");
        r.column("t", "x");
        let report = r.report().unwrap();
        assert_eq!(report.events_without_table, 8);
        assert_eq!(report.properties_without_column, 2);
        assert_eq!(report.refused_tables, ["a", "b"]);
        assert_eq!(report.refused_columns, ["t.x"]);
        for i in 0..MAX_REMEMBERED + 10 {
            r.table(&format!("n{i}"), 1);
        }
        let report = r.report().unwrap();
        assert_eq!(report.refused_tables.len(), MAX_EXAMPLES);
        assert_eq!(report.events_without_table, 8 + MAX_REMEMBERED as u64 + 10);
        assert!(r.inner().seen.len() <= MAX_REMEMBERED);
    }
}
