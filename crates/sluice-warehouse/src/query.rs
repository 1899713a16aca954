//! Read-only SQL: [`Warehouse::query`] parses, checks, plans and runs one statement.
//!
//! Two independent gates keep SQL read-only (reliability plan §7 item 7, T19):
//! 1. A parse check allows only `SELECT` / `WITH … SELECT` / `VALUES` queries, `EXPLAIN` of
//!    those, `DESCRIBE`, and `SHOW TABLES|COLUMNS|FUNCTIONS|<variable>`. Everything else —
//!    `INSERT`, `UPDATE`, `DELETE`, `CREATE [EXTERNAL] TABLE`, `DROP`, `COPY`, `SET`, `SELECT
//!    INTO` — is refused with an `Invalid` error naming the statement kind.
//! 2. The logical plan is verified with DataFusion's `SQLOptions` with DDL, DML and statements
//!    disallowed, which also covers anything the parse check could miss inside a query.
//!
//! Every table a statement names must be a lake table (or `information_schema`, or a built-in
//! table function such as `generate_series`); anything else — including a quoted file path or
//! URL — is answered with the list of tables that exist. The session never enables DataFusion's
//! URL tables, so files outside the lake cannot be read. A query runs under a timeout and the
//! session's memory pool.

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::execution::context::SQLOptions;
use deltalake::datafusion::sql::parser::Statement as DfStatement;
use deltalake::datafusion::sql::sqlparser::ast::{SetExpr, Statement};

use crate::{Warehouse, WarehouseError};

/// The result of a query: its schema (also for zero rows) and its batches.
#[derive(Clone, Debug)]
pub struct QueryOutput {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows, in batches.
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    /// Total number of rows.
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

const INFORMATION_SCHEMA: &str = "information_schema";

impl Warehouse {
    /// Runs one read-only SQL statement against the latest version of the lake tables.
    pub async fn query(&self, sql: &str) -> Result<QueryOutput, WarehouseError> {
        let timeout = self.options().query_timeout;
        tokio::time::timeout(timeout, self.query_inner(sql))
            .await
            .map_err(|_| WarehouseError::Timeout(timeout))?
    }

    async fn query_inner(&self, sql: &str) -> Result<QueryOutput, WarehouseError> {
        let state = self.context().state();
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect).map_err(|e| {
            WarehouseError::Invalid(format!("invalid sql: {}", e.strip_backtrace()))
        })?;
        check_read_only(&statement)?;

        let tables = self.schema().refresh_names().await?;
        for reference in state.resolve_table_references(&statement)? {
            let known = match reference.schema() {
                Some(INFORMATION_SCHEMA) => true,
                Some(schema) if schema != "public" => false,
                _ => {
                    let catalog_ok = reference.catalog().is_none_or(|c| c == "datafusion");
                    let name = reference.table();
                    catalog_ok
                        && (tables.iter().any(|t| t == name)
                            || (matches!(reference, TableReference::Bare { .. })
                                && state.table_functions().contains_key(name)))
                }
            };
            if !known {
                return Err(WarehouseError::TableNotFound {
                    name: reference.to_string(),
                    available: tables.clone(),
                });
            }
        }

        let plan = state.statement_to_plan(statement).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| {
                WarehouseError::Invalid(format!(
                    "only read-only queries are allowed: {}",
                    e.strip_backtrace()
                ))
            })?;
        let frame = self.context().execute_logical_plan(plan).await?;
        let schema = frame.schema().inner().clone();
        let batches = frame.collect().await?;
        Ok(QueryOutput { schema, batches })
    }
}

/// Gate 1: only statements that read. Returns `Invalid` naming the refused statement kind.
pub(crate) fn check_read_only(statement: &DfStatement) -> Result<(), WarehouseError> {
    match statement {
        DfStatement::Statement(inner) => check_statement(inner),
        DfStatement::Explain(explain) => check_read_only(&explain.statement),
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(refused("COPY")),
        DfStatement::Reset(_) => Err(refused("RESET")),
    }
}

/// Gate 1 for a plain SQL statement (also used by the Postgres wire server).
pub(crate) fn check_statement(statement: &Statement) -> Result<(), WarehouseError> {
    match statement {
        Statement::Query(query) => match refused_in_set_expr(&query.body) {
            Some(kind) => Err(refused(kind)),
            None => Ok(()),
        },
        Statement::Explain { statement, .. } => check_statement(statement),
        Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. } => Ok(()),
        other => Err(refused(&statement_kind(&other.to_string()))),
    }
}

/// The error for a refused statement kind.
pub(crate) fn refused(kind: &str) -> WarehouseError {
    WarehouseError::Invalid(format!(
        "{kind} statements are not allowed: the warehouse is read-only (use SELECT, WITH, EXPLAIN, DESCRIBE or SHOW)"
    ))
}

/// A write hidden in a query body (`WITH … INSERT`, `SELECT … INTO`).
fn refused_in_set_expr(body: &SetExpr) -> Option<&'static str> {
    match body {
        SetExpr::Select(select) => select.into.as_ref().map(|_| "SELECT INTO"),
        SetExpr::Query(query) => refused_in_set_expr(&query.body),
        SetExpr::SetOperation { left, right, .. } => {
            refused_in_set_expr(left).or_else(|| refused_in_set_expr(right))
        }
        SetExpr::Insert(_) => Some("INSERT"),
        SetExpr::Update(_) => Some("UPDATE"),
        SetExpr::Delete(_) => Some("DELETE"),
        SetExpr::Merge(_) => Some("MERGE"),
        SetExpr::Values(_) | SetExpr::Table(_) => None,
    }
}

/// The statement kind for an error message, from the statement's SQL text: its first keyword,
/// plus the object keyword for `CREATE`/`DROP`/`ALTER` (`CREATE TABLE`, `DROP VIEW`).
pub(crate) fn statement_kind(sql: &str) -> String {
    const OBJECTS: &[&str] = &[
        "TABLE",
        "VIEW",
        "SCHEMA",
        "DATABASE",
        "FUNCTION",
        "INDEX",
        "CATALOG",
        "SEQUENCE",
        "TYPE",
        "ROLE",
        "USER",
        "EXTENSION",
    ];
    let words: Vec<String> = sql
        .split_whitespace()
        .take(6)
        .map(str::to_ascii_uppercase)
        .collect();
    let Some(first) = words.first() else {
        return "empty".to_string();
    };
    if !matches!(first.as_str(), "CREATE" | "DROP" | "ALTER") {
        return first.clone();
    }
    let mut kind = vec![first.clone()];
    for word in &words[1..] {
        kind.push(word.clone());
        if OBJECTS.contains(&word.as_str()) {
            break;
        }
    }
    kind.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_kinds_read_well() {
        assert_eq!(statement_kind("INSERT INTO t VALUES (1)"), "INSERT");
        assert_eq!(statement_kind("create table t (a int)"), "CREATE TABLE");
        assert_eq!(
            statement_kind("CREATE OR REPLACE VIEW v AS SELECT 1"),
            "CREATE OR REPLACE VIEW"
        );
        assert_eq!(statement_kind("DROP TABLE events"), "DROP TABLE");
        assert_eq!(statement_kind("SET x = 1"), "SET");
    }
}
