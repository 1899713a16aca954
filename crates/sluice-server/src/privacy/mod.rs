//! Deleting a person's data (`sluice privacy delete`, `POST /v1/privacy/deletions`): GDPR and
//! CCPA requests, honoured across every copy Sluice keeps.
//!
//! A request names one or more ids; each is matched against `user_id` and `anonymous_id`
//! (and, with `[enrich.pii]` on those fields, against their pseudonyms, since that is what the
//! tables hold). Its life, each step recorded in `<data>/privacy/requests.json`:
//!
//! 1. `suppressed`: the ids go into the suppression list (`<data>/privacy/suppressed.json`, hashes
//!    only) before the request is answered; from then on the runner drops every new event of
//!    these people, replays included ([`sluice_functions::suppress`]).
//! 2. `waiting`: the request waits until the runner has read all of `raw` and every consumer of
//!    `good` and `bad` (lake tables, typed tables, hot projection, loader) has delivered all of
//!    it, as of that moment, so that no copy of these people's events is still on its way.
//! 3. `erasing`: Delta deletes on `events`, every typed table and the matching `bad_rows`
//!    ([`sluice_lake::erase`]), the hot tier's profiles (with their model scores) and per-person
//!    counters, the loader's tables. A failing step is retried with backoff, the error shown.
//! 4. `done`: rows per table recorded. The old Parquet files stay readable by time travel until
//!    the next vacuum after `upkeep.vacuum_retention` (`purge_after`); `sluice lake vacuum
//!    --retention 0s` removes them at once.
//!
//! Records keep who asked, when, and how many rows went where; the ids themselves are kept only
//! while the request runs (to survive a restart), the record keeps their hashes
//! ([`sluice_functions::subject_hash`]) so an operator can still answer "was this person
//! deleted" (`GET /v1/privacy/deletions?id=…`). The journal's own copy is not rewritten: it
//! goes with journal retention (`journal.retention_age`).

mod erase;
mod mentions;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_functions::{Suppressed, subject_hash};
use sluice_journal::durable_fs;
use sluice_lake::erase::EraseReport;
use tokio::sync::Notify;

pub(crate) use erase::Eraser;

/// The journal's shared set of suppressed people on a shared journal: keys are the hex of
/// their subject hashes.
pub(crate) const SHARED_SET: &str = "suppressed";

/// Ids per request at most.
pub(crate) const MAX_IDS: usize = 100;
/// Longest id accepted, in bytes.
pub(crate) const MAX_ID_BYTES: usize = 1024;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted; new events of these people are dropped.
    Suppressed,
    /// Waiting for the pipeline to deliver what it held when the request came.
    Waiting,
    /// Deleting.
    Erasing,
    /// Deleted everywhere (old file versions go at the next vacuum, see `purge_after`).
    Done,
}

/// Rows deleted from one loader table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderRows {
    /// Table (in the loader's schema).
    pub table: String,
    /// Rows deleted.
    pub rows_deleted: u64,
}

/// One deletion request: the audit record and its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `del_<32 hex>`.
    pub id: String,
    /// Who asked (`token <id>`, or open local access).
    pub requested_by: String,
    /// When (RFC 3339).
    pub requested_at: String,
    /// `sha256:<hex>` of each id ([`sluice_functions::subject_hash`]).
    pub subjects: Vec<String>,
    /// Where it stands.
    pub status: Status,
    /// While waiting: which stage it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Failed attempts of the current step.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure, while retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Rows deleted per lake table (`events`, typed tables, `bad_rows`).
    #[serde(default)]
    pub lake: Vec<EraseReport>,
    /// Hot-tier keys deleted (profiles with their scores, per-person counters).
    #[serde(default)]
    pub hot_keys_deleted: u64,
    /// Rows deleted per loader table.
    #[serde(default)]
    pub loader: Vec<LoaderRows>,
    /// Copies this node could not reach (a role it does not run), named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_covered: Vec<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Old file versions holding the rows are removed by the first vacuum after this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_after: Option<String>,
    /// The ids, kept only until the request is done.
    #[serde(default, skip_serializing)]
    pub(crate) ids: Vec<String>,
}

impl Request {
    /// Rows deleted in the lake and the loader.
    pub fn rows_deleted(&self) -> u64 {
        self.lake.iter().map(|r| r.rows_deleted).sum::<u64>()
            + self.loader.iter().map(|r| r.rows_deleted).sum::<u64>()
    }
}

/// What is saved: the requests with the ids of unfinished ones.
#[derive(Default, Serialize, Deserialize)]
struct Saved {
    requests: Vec<SavedRequest>,
}

#[derive(Serialize, Deserialize)]
struct SavedRequest {
    #[serde(flatten)]
    request: Request,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pending_ids: Vec<String>,
}

/// A subject hash from its hex (as the suppression file and the shared list keep it).
fn hash_of_hex(text: &str) -> Option<[u8; 32]> {
    hex::decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
}

/// The hex of a subject hash, as records and the suppression file keep it.
fn subject_label(id: &str) -> String {
    format!("sha256:{}", hex::encode(subject_hash(id)))
}

/// The deletion requests and the suppression list of this data directory.
pub(crate) struct Privacy {
    requests_path: PathBuf,
    suppressed_path: PathBuf,
    suppressed: Arc<Suppressed>,
    requests: Mutex<Vec<Request>>,
    /// `[enrich.pii]`'s key when it is on: tables then hold pseudonyms of the ids.
    pseudonym_key: Option<Vec<u8>>,
    /// Wakes the eraser when a request arrives.
    pub(crate) wake: Notify,
    /// On a shared journal: the suppression list every node holds ([`SHARED_SET`]).
    shared: Option<sluice_journal::SharedSet>,
}

impl Privacy {
    /// Reads `<data>/privacy/` (nothing there: no request yet). `pseudonym_key`: the key of
    /// `[enrich.pii]` when it is on.
    pub(crate) fn open(data_dir: &Path, pseudonym_key: Option<Vec<u8>>) -> Result<Self, String> {
        let dir = data_dir.join("privacy");
        let requests_path = dir.join("requests.json");
        let suppressed_path = dir.join("suppressed.json");
        let saved: Saved = read_json(&requests_path)?.unwrap_or_default();
        let hashes: Vec<String> = read_json(&suppressed_path)?.unwrap_or_default();
        let mut set = Vec::with_capacity(hashes.len());
        for h in &hashes {
            let bytes = h
                .strip_prefix("sha256:")
                .and_then(hash_of_hex)
                .ok_or_else(|| {
                    format!("{}: {h:?} is not a sha256 hash", suppressed_path.display())
                })?;
            set.push(bytes);
        }
        let requests = saved
            .requests
            .into_iter()
            .map(|s| Request {
                ids: s.pending_ids,
                ..s.request
            })
            .collect();
        Ok(Self {
            requests_path,
            suppressed_path,
            suppressed: Arc::new(Suppressed::from_hashes(set)),
            requests: Mutex::new(requests),
            pseudonym_key,
            wake: Notify::new(),
            shared: None,
        })
    }

    /// What adds a key of the shared list ([`SHARED_SET`]) to this node's list.
    pub(crate) fn feed(&self) -> sluice_journal::OnAdd {
        let suppressed = self.suppressed.clone();
        Arc::new(move |key: &str| match hash_of_hex(key) {
            Some(hash) => {
                suppressed.add([hash]);
            }
            None => tracing::warn!(key, "not a subject hash in the shared suppression list"),
        })
    }

    /// Shares the suppression list with the other nodes through `set` (already fed, see
    /// [`Privacy::feed`]): from now on a request adds its people there before it is answered.
    pub(crate) fn share(&mut self, set: sluice_journal::SharedSet) {
        self.shared = Some(set);
    }

    /// The shared suppression list, on a shared journal.
    pub(crate) fn shared(&self) -> Option<sluice_journal::SharedSet> {
        self.shared.clone()
    }

    /// On a shared journal, adds the people `ids` name to the list every node holds, durably,
    /// before the request is recorded and answered ([`Privacy::submit`]): a runner batch read
    /// after that drops their events on any node.
    pub(crate) async fn share_first(&self, ids: &[String]) -> Result<(), String> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let keys = self
            .expand(ids)
            .iter()
            .map(|id| hex::encode(subject_hash(id)))
            .collect();
        shared
            .add(keys)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The suppression list the runner's chain consults.
    pub(crate) fn suppressed(&self) -> Arc<Suppressed> {
        self.suppressed.clone()
    }

    /// `ids` and, with `[enrich.pii]` on, their pseudonyms: every form the tables may hold.
    pub(crate) fn expand(&self, ids: &[String]) -> Vec<String> {
        let mut out = ids.to_vec();
        if let Some(key) = &self.pseudonym_key {
            out.extend(ids.iter().map(|id| sluice_functions::pseudonym(key, id)));
        }
        out.sort();
        out.dedup();
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Request>> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request for `ids` by `who` and suppresses the ids, durably, before it
    /// returns. Blocking file IO.
    pub(crate) fn submit(&self, ids: Vec<String>, who: String) -> Result<Request, String> {
        let mut subjects: Vec<String> = ids.iter().map(|id| subject_label(id)).collect();
        subjects.sort();
        subjects.dedup();
        let request = Request {
            id: format!("del_{}", uuid::Uuid::new_v4().simple()),
            requested_by: who,
            requested_at: now(),
            subjects,
            status: Status::Suppressed,
            waiting_for: None,
            attempts: 0,
            last_error: None,
            lake: Vec::new(),
            hot_keys_deleted: 0,
            loader: Vec::new(),
            not_covered: Vec::new(),
            finished_at: None,
            purge_after: None,
            ids,
        };
        // The list first: once a request is on record, its people's events are dropped.
        let forms = self.expand(&request.ids);
        if self.suppressed.add(forms.iter().map(|id| subject_hash(id))) {
            let hashes: Vec<String> = self
                .suppressed
                .hashes()
                .iter()
                .map(|h| format!("sha256:{}", hex::encode(h)))
                .collect();
            write_json(&self.suppressed_path, &hashes)?;
        }
        let mut requests = self.lock();
        requests.push(request.clone());
        save(&self.requests_path, &requests)?;
        drop(requests);
        self.wake.notify_one();
        Ok(request)
    }

    /// Every request, oldest first; with `id`, those naming that person.
    pub(crate) fn list(&self, id: Option<&str>) -> Vec<Request> {
        let label = id.map(subject_label);
        self.lock()
            .iter()
            .filter(|r| label.as_ref().is_none_or(|l| r.subjects.contains(l)))
            .cloned()
            .collect()
    }

    /// The request `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Request> {
        self.lock().iter().find(|r| r.id == id).cloned()
    }

    /// The oldest request not done.
    fn next_open(&self) -> Option<Request> {
        self.lock()
            .iter()
            .find(|r| r.status != Status::Done)
            .cloned()
    }

    /// Replaces the record of `r` (same id) and saves; a done request forgets its ids.
    fn update(&self, mut r: Request) -> Result<(), String> {
        if r.status == Status::Done {
            r.ids.clear();
        }
        let mut requests = self.lock();
        if let Some(slot) = requests.iter_mut().find(|x| x.id == r.id) {
            *slot = r;
        }
        save(&self.requests_path, &requests)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn save(path: &Path, requests: &[Request]) -> Result<(), String> {
    let saved = Saved {
        requests: requests
            .iter()
            .map(|r| SavedRequest {
                request: r.clone(),
                pending_ids: r.ids.clone(),
            })
            .collect(),
    };
    write_json(path, &saved)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `value` as JSON, atomically and durably, readable by the owner only (the pending ids
/// are personal data).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        durable_fs::create_dir_all_durable(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    durable_fs::write_atomic_private(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_survives_a_restart_and_forgets_its_ids_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let p = Privacy::open(dir.path(), None).unwrap();
        let r = p
            .submit(vec!["alice".into(), "anon-1".into()], "token t1".into())
            .unwrap();
        assert!(p.suppressed().contains("alice") && p.suppressed().contains("anon-1"));
        let back = Privacy::open(dir.path(), None).unwrap();
        assert!(back.suppressed().contains("alice"));
        let open = back.next_open().unwrap();
        assert_eq!(open.ids, vec!["alice".to_string(), "anon-1".to_string()]);
        assert_eq!(back.list(Some("alice")).len(), 1);
        assert!(back.list(Some("bob")).is_empty());
        back.update(Request {
            status: Status::Done,
            ..open
        })
        .unwrap();
        let text = std::fs::read_to_string(dir.path().join("privacy/requests.json")).unwrap();
        assert!(
            !text.contains("alice"),
            "a done request keeps no id: {text}"
        );
        assert!(text.contains(&r.id));
        let again = Privacy::open(dir.path(), None).unwrap();
        assert!(again.next_open().is_none());
        assert_eq!(again.get(&r.id).unwrap().status, Status::Done);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("privacy/suppressed.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
