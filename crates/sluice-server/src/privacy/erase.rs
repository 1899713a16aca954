//! [`Eraser`]: carries deletion requests out, one at a time, oldest first (see the module doc
//! of `privacy`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use sluice_event::topic;
use sluice_journal::{Backoff, Journal};
use sluice_lake::LakeRoot;
use sluice_lake::erase::{EraseReport, erase_bad_rows, erase_people, person_tables};
use sluice_warehouse::Warehouse;
use sluice_warehouse::loader::LoaderSettings;
use tokio_util::sync::CancellationToken;

use super::mentions::{mentions, needle};
use super::{LoaderRows, Privacy, Request, Status, now};
use crate::stages::Stages;

/// How often a waiting request looks at the consumers again.
const POLL: Duration = Duration::from_millis(100);

/// What a deletion needs from the running pipeline.
pub(crate) struct Eraser {
    pub(crate) privacy: Arc<Privacy>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) stages: Stages,
    pub(crate) lake: LakeRoot,
    pub(crate) warehouse: Arc<Warehouse>,
    /// The hot tier, when this node runs it.
    pub(crate) hot: Option<sluice_hot::HotReader>,
    /// The loader's database, when one is configured.
    pub(crate) loader: Option<LoaderSettings>,
    /// Copies this node cannot reach, named in every record.
    pub(crate) not_covered: Vec<String>,
    /// `upkeep.vacuum_retention`: how long old file versions stay after a delete.
    pub(crate) vacuum_retention: Duration,
}

impl Eraser {
    /// Works through the open requests, then waits for new ones, until `stop`. A request cut
    /// short resumes at the next start (each step is idempotent).
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            while let Some(request) = self.privacy.next_open() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = self.carry_out(request) => {}
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                () = self.privacy.wake.notified() => {}
            }
        }
    }

    async fn carry_out(&self, mut r: Request) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        r.not_covered = self.not_covered.clone();
        if r.status != Status::Erasing {
            r.status = Status::Waiting;
            self.save(&r).await;
            while let Err(e) = self.wait_caught_up(&mut r).await {
                self.failed(&mut r, e, &mut backoff).await;
            }
            r.status = Status::Erasing;
            r.waiting_for = None;
            r.attempts = 0;
            r.last_error = None;
            self.save(&r).await;
        }
        backoff.reset();
        while let Err(e) = self.erase(&mut r).await {
            self.failed(&mut r, e, &mut backoff).await;
        }
        r.status = Status::Done;
        r.last_error = None;
        let finished = chrono::Utc::now();
        r.finished_at = Some(now());
        let purge = chrono::Duration::from_std(self.vacuum_retention)
            .ok()
            .and_then(|d| finished.checked_add_signed(d));
        r.purge_after = purge.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        tracing::info!(
            request = %r.id,
            rows = r.rows_deleted(),
            hot_keys = r.hot_keys_deleted,
            "deletion request done"
        );
        self.save(&r).await;
    }

    async fn failed(&self, r: &mut Request, error: String, backoff: &mut Backoff) {
        tracing::warn!(request = %r.id, %error, "deletion request step failed; retrying");
        r.attempts += 1;
        r.last_error = Some(error);
        self.save(r).await;
        tokio::time::sleep(backoff.next_delay()).await;
    }

    /// Saves the record (a durable file write, off the async threads).
    async fn save(&self, r: &Request) {
        let (privacy, record) = (self.privacy.clone(), r.clone());
        let saved = tokio::task::spawn_blocking(move || privacy.update(record))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(error) = saved {
            // The request is still in memory and resumes from its last saved step.
            tracing::error!(request = %r.id, %error, "cannot save the deletion request");
        }
    }

    /// Waits until the runner has read all of `raw` and every consumer of `good` and `bad` has
    /// delivered all of it, as of now: afterwards no event of the request's people is on its
    /// way anywhere (new ones are dropped by the suppression list).
    async fn wait_caught_up(&self, r: &mut Request) -> Result<(), String> {
        for t in [topic::RAW, topic::GOOD, topic::BAD] {
            let ends = self.ends(t)?;
            loop {
                let behind = self.stages.behind(t, &ends);
                if behind.as_deref() != r.waiting_for.as_deref() {
                    r.waiting_for.clone_from(&behind);
                    self.save(r).await;
                }
                if behind.is_none() {
                    break;
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    fn ends(&self, t: &str) -> Result<Vec<u64>, String> {
        let partitions = self.journal.partitions(t).map_err(|e| e.to_string())?;
        (0..partitions)
            .map(|p| self.journal.end(t, p).map_err(|e| e.to_string()))
            .collect()
    }

    /// Deletes every copy; counts add up over retries (a second pass finds nothing more).
    async fn erase(&self, r: &mut Request) -> Result<(), String> {
        let ids = self.privacy.expand(&r.ids);
        for table in person_tables(&self.lake).await.map_err(|e| e.to_string())? {
            let report = erase_people(&self.lake, &table, &ids)
                .await
                .map_err(|e| e.to_string())?;
            add_lake(&mut r.lake, report);
            self.save(r).await;
        }
        let keys = self.bad_rows_of(&ids).await?;
        if !keys.is_empty() {
            let keys: Vec<_> = keys.into_iter().collect();
            let report = erase_bad_rows(&self.lake, &keys)
                .await
                .map_err(|e| e.to_string())?;
            add_lake(&mut r.lake, report);
            self.save(r).await;
        }
        if let Some(hot) = &self.hot {
            let n = hot
                .erase(&ids)
                .await
                .map_err(|e| format!("hot tier: {e}"))?;
            r.hot_keys_deleted += n as u64;
            self.save(r).await;
        }
        if let Some(loader) = &self.loader {
            let rows = sluice_warehouse::loader::erase_people(loader, &ids)
                .await
                .map_err(|e| format!("loader: {e}"))?;
            for (table, n) in rows {
                match r.loader.iter_mut().find(|x| x.table == table) {
                    Some(x) => x.rows_deleted += n,
                    None => r.loader.push(LoaderRows {
                        table,
                        rows_deleted: n,
                    }),
                }
            }
            self.save(r).await;
        }
        Ok(())
    }

    /// The bad rows whose payload has a value equal to one of `ids`.
    async fn bad_rows_of(
        &self,
        ids: &[String],
    ) -> Result<BTreeSet<sluice_lake::erase::BadRowKey>, String> {
        let needles: BTreeSet<&str> = ids.iter().map(|id| needle(id)).collect();
        let mut keys = BTreeSet::new();
        for n in needles {
            let candidates = self
                .warehouse
                .bad_rows_containing(n)
                .await
                .map_err(|e| format!("reading bad_rows: {e}"))?;
            for (key, payload) in candidates {
                if mentions(&payload, ids) {
                    keys.insert(key);
                }
            }
        }
        Ok(keys)
    }
}

/// Adds `report` to the table's entry.
fn add_lake(reports: &mut Vec<EraseReport>, report: EraseReport) {
    match reports.iter_mut().find(|x| x.table == report.table) {
        Some(x) => {
            x.rows_deleted += report.rows_deleted;
            x.files_rewritten += report.files_rewritten;
            x.version = report.version.or(x.version);
        }
        None => reports.push(report),
    }
}
