//! [`LakeSchema`]: the DataFusion schema (`datafusion.public`) whose tables are the Delta tables
//! under the lake root, always at their latest version.
//!
//! A table is any directory directly under the root that holds a Delta log (`<name>/_delta_log/`
//! with at least one commit or checkpoint). Table names are restricted to `[A-Za-z0-9_-]`, so a
//! query can never address a path outside the root.
//!
//! Freshness: every time the planner asks for a table ([`SchemaProvider::table`], once per
//! distinct table per statement) the cached `DeltaTable` is brought up to the latest version
//! (`update_state`: a listing of the log past the loaded version plus the new commits, so it is
//! cheap when nothing changed) and a provider over that snapshot is returned. New commits and new
//! tables are therefore visible to the next statement, with no restart, whether or not a server
//! is writing the tables. The table list used by `SHOW TABLES` / `information_schema` is
//! refreshed by [`LakeSchema::refresh_names`] before each statement.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use deltalake::datafusion::catalog::{SchemaProvider, TableProvider};
use deltalake::datafusion::datasource::TableType;
use deltalake::datafusion::error::DataFusionError;
use deltalake::logstore::object_store::ObjectStore as _;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use sluice_lake::LakeRoot;
use tokio::sync::Mutex;

use crate::WarehouseError;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The lake's tables as a DataFusion schema. Read-only: registering tables is refused.
#[derive(Debug)]
pub struct LakeSchema {
    root: LakeRoot,
    /// Known table names, as of the last [`LakeSchema::refresh_names`] or table lookup.
    names: RwLock<BTreeSet<String>>,
    /// Loaded tables, each behind its own lock so that refreshing one does not block the others.
    tables: Mutex<BTreeMap<String, Arc<Mutex<DeltaTable>>>>,
}

/// Whether `name` may be a lake table name (and so cannot escape the root).
pub fn is_valid_table_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl LakeSchema {
    /// A schema over the tables under `root`. Nothing is read until the first query.
    pub fn new(root: LakeRoot) -> Self {
        Self {
            root,
            names: RwLock::new(BTreeSet::new()),
            tables: Mutex::new(BTreeMap::new()),
        }
    }

    /// The lake root.
    pub fn root(&self) -> &LakeRoot {
        &self.root
    }

    /// The known table names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.names
            .read()
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn delta_error(table: &str, e: DeltaTableError) -> WarehouseError {
        WarehouseError::Lake {
            table: table.to_string(),
            source: Box::new(e),
        }
    }

    fn unloaded_table(&self, name: &str) -> Result<DeltaTable, WarehouseError> {
        let url = self.root.table_url(name)?;
        DeltaTableBuilder::from_url(url)
            .and_then(|b| {
                b.with_storage_options(self.root.storage_options().clone())
                    .build()
            })
            .map_err(|e| Self::delta_error(name, e))
    }

    /// Lists the root and returns the current table names (also remembered for `SHOW TABLES`).
    pub async fn refresh_names(&self) -> Result<Vec<String>, WarehouseError> {
        let candidates = self.list_directories().await?;
        let known = self.names.read().map(|n| n.clone()).unwrap_or_default();
        let mut found = BTreeSet::new();
        for name in candidates {
            if known.contains(&name) || self.is_table(&name).await? {
                found.insert(name);
            }
        }
        if let Ok(mut names) = self.names.write() {
            names.clone_from(&found);
        }
        Ok(found.into_iter().collect())
    }

    async fn list_directories(&self) -> Result<Vec<String>, WarehouseError> {
        if let Some(dir) = self.root.local_path() {
            // A lake that was never written has no directory yet: no tables, not an error.
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => {
                    return Err(WarehouseError::Lake {
                        table: String::new(),
                        source: Box::new(DeltaTableError::Generic(format!(
                            "listing {}: {e}",
                            dir.display()
                        ))),
                    });
                }
            };
            return Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_valid_table_name(n))
                .collect());
        }
        let store = DeltaTableBuilder::from_url(self.root.url().clone())
            .and_then(|b| {
                b.with_storage_options(self.root.storage_options().clone())
                    .build()
            })
            .map_err(|e| Self::delta_error("", e))?
            .object_store();
        let listing = store
            .list_with_delimiter(None)
            .await
            .map_err(|e| Self::delta_error("", e.into()))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|n| is_valid_table_name(n))
            .collect())
    }

    /// The tables of a local lake, from a directory listing (a directory with a non-empty
    /// `_delta_log`); `None` for object stores.
    fn local_names(&self) -> Option<BTreeSet<String>> {
        let dir = self.root.local_path()?;
        let entries = std::fs::read_dir(&dir).ok()?;
        Some(
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_valid_table_name(n))
                .filter(|n| {
                    std::fs::read_dir(dir.join(n).join("_delta_log"))
                        .is_ok_and(|mut log| log.next().is_some())
                })
                .collect(),
        )
    }

    async fn is_table(&self, name: &str) -> Result<bool, WarehouseError> {
        if !is_valid_table_name(name) {
            return Ok(false);
        }
        self.unloaded_table(name)?
            .verify_deltatable_existence()
            .await
            .map_err(|e| Self::delta_error(name, e))
    }

    /// The table `name` at its latest version, or `None` if there is no such table.
    pub async fn latest(&self, name: &str) -> Result<Option<DeltaTable>, WarehouseError> {
        if !is_valid_table_name(name) {
            return Ok(None);
        }
        let cached = self.tables.lock().await.get(name).cloned();
        let slot = match cached {
            Some(slot) => slot,
            None => {
                if !self.is_table(name).await? {
                    return Ok(None);
                }
                let mut table = self.unloaded_table(name)?;
                table.load().await.map_err(|e| Self::delta_error(name, e))?;
                let mut tables = self.tables.lock().await;
                tables
                    .entry(name.to_string())
                    .or_insert_with(|| Arc::new(Mutex::new(table)))
                    .clone()
            }
        };
        let mut table = slot.lock().await;
        table
            .update_state()
            .await
            .map_err(|e| Self::delta_error(name, e))?;
        if let Ok(mut names) = self.names.write() {
            names.insert(name.to_string());
        }
        Ok(Some(table.clone()))
    }

    async fn provider(
        &self,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(table) = self
            .latest(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        Ok(Some(table.table_provider().await?))
    }
}

// `SchemaProvider` is an `async_trait`; these are the signatures that macro would generate
// (the crate is not a dependency of ours, and the trait is small enough to spell out).
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        // A local lake is listed again (one directory read): the Postgres wire catalog
        // (`pg_class`, psql's `\dt`) asks here, not through `refresh_names`.
        if let Some(found) = self.local_names()
            && let Ok(mut names) = self.names.write()
        {
            names.extend(found);
        }
        self.names()
    }

    fn table<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
    ) -> BoxFuture<'async_trait, Result<Option<Arc<dyn TableProvider>>, DataFusionError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(self.provider(name))
    }

    fn table_type<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
    ) -> BoxFuture<'async_trait, Result<Option<TableType>, DataFusionError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        // Cheap: `information_schema.tables` must not load every table.
        let known = self.table_exist(name);
        Box::pin(async move { Ok(known.then_some(TableType::Base)) })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.names.read().is_ok_and(|n| n.contains(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_cannot_escape_the_root() {
        assert!(is_valid_table_name("events"));
        assert!(is_valid_table_name("bad_rows"));
        assert!(is_valid_table_name("order-completed"));
        for bad in ["", "..", "a/b", "/etc", "a.b", "x y", "ü"] {
            assert!(!is_valid_table_name(bad), "{bad}");
        }
    }
}
