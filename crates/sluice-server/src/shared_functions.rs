//! User functions on a shared journal: every runner node runs the same ones, whichever node
//! took the deploy.
//!
//! Each function is one entry of the journal's shared map `functions` (a NATS KV bucket): its
//! every version with code and settings, and its activation history ([`Bundle`], JSON). A
//! deploy, rollback or delete on any node first catches up with the map, then changes this
//! node's store, then stores the function's new state in the map by a compare-and-set on the
//! revision this node last saw ([`SharedFunctions::publish`]): if another node changed the same
//! function at the same moment, the request is answered 409 and this node takes the other
//! node's state. A change that could not be stored (NATS unreachable) is answered 503 and
//! stored again until it is (or another node's change of the function wins). Every node
//! catches up with the map every [`FOLLOW_EVERY`] and imports what changed, so a deploy runs
//! on every runner node from its next batch after that. At start, the map's functions replace
//! this node's, and functions only this node has (deployed before it joined) are added to the
//! map.
//!
//! A reseal ([`SharedFunctions::reseal`]) catches up, reseals every function here, then stores
//! each function it changed the same way, by compare-and-set; a function another node changed
//! first is taken from that node, resealed again and stored again ([`share_resealed`]). The
//! other nodes take the resealed functions as they take a deploy: their running versions and
//! runtimes stay, since the secrets they opened are the same.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_event::ErrorKind;
use sluice_functions::udf::{Bundle, FunctionReseal, ResealReport};
use sluice_functions::{Functions, UdfError};
use sluice_journal::{JetStreamJournal, OnChange, SharedMap};
use tokio_util::sync::CancellationToken;

use crate::error::ServerError;

/// The journal's shared map of functions.
const MAP: &str = "functions";

/// How often a node catches up with the other nodes' deploys.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// How many times a reseal stores a function it resealed, when other nodes keep changing it
/// first.
const RESEAL_ATTEMPTS: usize = 5;

/// Why a reseal on a shared journal did not finish: the answer's kind and reason.
#[derive(Debug)]
pub(crate) struct ResealFailed {
    pub(crate) kind: ErrorKind,
    pub(crate) reason: String,
}

impl From<UdfError> for ResealFailed {
    fn from(e: UdfError) -> Self {
        Self {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }
}

/// The functions every runner node runs, as this node shares them.
#[derive(Clone)]
pub(crate) struct SharedFunctions {
    map: SharedMap,
    functions: Arc<Functions>,
    /// Functions changed here whose change is not stored in the map yet.
    pending: Arc<Mutex<BTreeSet<String>>>,
    /// Held by a change from catching up to publishing, and by each round of [`follow`], so
    /// that another node's change is never taken between a change here and its publishing.
    changing: Arc<tokio::sync::Mutex<()>>,
}

/// Opens the shared map, applies the functions it holds to this node's and adds this node's
/// own (those the map lacks).
pub(crate) async fn open(
    journal: &JetStreamJournal,
    functions: Arc<Functions>,
) -> Result<SharedFunctions, ServerError> {
    let map = journal
        .shared_map(MAP, importer(functions.clone()))
        .await
        .map_err(|e| ServerError::stage("runner", e))?;
    // A node that cannot run what the others run (sealed secrets without this node's key, say)
    // does not start: it would run its partitions without those functions.
    let f = functions.clone();
    let local = tokio::task::spawn_blocking(move || f.run_stored().and_then(|()| f.names()))
        .await
        .map_err(|e| ServerError::stage("runner", e))?
        .map_err(|e| ServerError::stage("runner", e))?;
    let shared = map.keys().await;
    let this = SharedFunctions {
        map,
        functions,
        pending: Arc::default(),
        changing: Arc::default(),
    };
    for name in local.into_iter().filter(|n| !shared.contains(n)) {
        this.publish(&name)
            .await
            .map_err(|e| ServerError::stage("runner", e))?;
    }
    Ok(this)
}

/// What applies another node's change of a function to this node's store.
fn importer(functions: Arc<Functions>) -> OnChange {
    Arc::new(move |name, value| {
        let bundle = match value.map(serde_json::from_slice::<Bundle>) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                tracing::error!(function = name, error = %e, "a shared function that does not decode; left as it is here");
                return;
            }
        };
        // File writes and fresh runtimes: off the runtime's workers.
        let taken = tokio::task::block_in_place(|| functions.import(name, bundle.as_ref()));
        log_taken("function", name, taken);
    })
}

/// Logs what taking another node's change of `what` `name` did.
pub(crate) fn log_taken(what: &str, name: &str, taken: Result<bool, impl std::fmt::Display>) {
    match taken {
        Ok(true) => tracing::info!(what, name, "taken from another node"),
        Ok(false) => {}
        Err(e) => tracing::error!(what, name, error = %e, "cannot take another node's change"),
    }
}

impl SharedFunctions {
    /// Waits for the right to change functions here (see `changing`); held until dropped.
    pub(crate) async fn changing(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.changing.clone().lock_owned().await
    }

    /// Takes every change other nodes made, before a change here.
    pub(crate) async fn catch_up(&self) -> Result<(), String> {
        self.map.catch_up().await.map_err(|e| e.to_string())
    }

    /// Stores function `name` in the map as this node has it now (deleted there if it is not
    /// deployed here). `Ok(false)`: another node changed it first; this node now holds theirs.
    /// An error leaves it to be stored again by [`follow`].
    pub(crate) async fn publish(&self, name: &str) -> Result<bool, String> {
        self.lock_pending().insert(name.to_string());
        let stored = self.try_publish(name).await;
        if stored.is_ok() {
            self.lock_pending().remove(name);
        }
        stored
    }

    async fn try_publish(&self, name: &str) -> Result<bool, String> {
        let (f, n) = (self.functions.clone(), name.to_string());
        let bundle = tokio::task::spawn_blocking(move || f.export(&n))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let value = match bundle {
            Some(b) => Some(serde_json::to_vec(&b).map_err(|e| e.to_string())?.into()),
            None => None,
        };
        self.map.set(name, value).await.map_err(|e| e.to_string())
    }

    /// Reseals every function on this node after catching up, with the right to change
    /// functions held, and stores each one it changed in the map ([`share_resealed`]). Each
    /// is marked to be stored first, so that one NATS cannot take now is stored by [`follow`]
    /// later (the answer is then 503).
    pub(crate) async fn reseal(&self) -> Result<ResealReport, ResealFailed> {
        let _changing = self.changing().await;
        self.caught_up_to_reseal().await?;
        let f = self.functions.clone();
        let mut report = blocking(move || f.reseal(false)).await?;
        self.lock_pending()
            .extend(changed_by(&report).map(str::to_string));
        let publish = |name: String| async move { self.publish(&name).await };
        let reseal_again = |name: String| {
            let f = self.functions.clone();
            blocking(move || f.reseal_function(&name))
        };
        share_resealed(&mut report, publish, reseal_again).await?;
        Ok(report)
    }

    /// [`SharedFunctions::catch_up`], before a reseal (or its dry run) reads the functions.
    pub(crate) async fn caught_up_to_reseal(&self) -> Result<(), ResealFailed> {
        self.catch_up().await.map_err(|e| ResealFailed {
            kind: ErrorKind::Unavailable,
            reason: format!("cannot catch up with the functions of the other nodes: {e}"),
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `op` on a blocking thread (it reads and writes the store).
pub(crate) async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, UdfError> + Send + 'static,
) -> Result<T, ResealFailed> {
    match tokio::task::spawn_blocking(op).await {
        Ok(done) => done.map_err(ResealFailed::from),
        Err(e) => Err(ResealFailed {
            kind: ErrorKind::Internal,
            reason: e.to_string(),
        }),
    }
}

/// The functions `report` says were resealed.
fn changed_by(report: &ResealReport) -> impl Iterator<Item = &str> {
    report
        .functions
        .iter()
        .filter(|f| !f.versions.is_empty())
        .map(|f| f.name.as_str())
}

/// Shares the functions `report` says were resealed here, one by one: `publish` stores one in
/// the map by compare-and-set. When another node changed it first (`Ok(false)`: this node
/// then holds that node's change), `reseal_again` reseals it again (`None`: that change
/// deleted it) and, if that changed anything, it is stored again, up to [`RESEAL_ATTEMPTS`]
/// times; `report` is updated with what the last reseal of it did.
pub(crate) async fn share_resealed<P, PF, R, RF>(
    report: &mut ResealReport,
    mut publish: P,
    mut reseal_again: R,
) -> Result<(), ResealFailed>
where
    P: FnMut(String) -> PF,
    PF: Future<Output = Result<bool, String>>,
    R: FnMut(String) -> RF,
    RF: Future<Output = Result<Option<FunctionReseal>, ResealFailed>>,
{
    let changed: Vec<String> = changed_by(report).map(str::to_string).collect();
    for name in changed {
        for attempt in 1.. {
            match publish(name.clone()).await {
                Ok(true) => break,
                Ok(false) if attempt < RESEAL_ATTEMPTS => {}
                Ok(false) => return Err(kept_changing(&name)),
                Err(e) => return Err(not_shared_yet(&name, &e)),
            }
            let again = reseal_again(name.clone()).await?;
            let nothing_to_store = again.as_ref().is_none_or(|f| f.versions.is_empty());
            report.replace(&name, again);
            if nothing_to_store {
                break;
            }
        }
    }
    Ok(())
}

fn kept_changing(name: &str) -> ResealFailed {
    ResealFailed {
        kind: ErrorKind::Conflict,
        reason: format!(
            "function {name} was changed on other nodes {RESEAL_ATTEMPTS} times while it was \
             resealed; this node now runs their change: reseal again"
        ),
    }
}

fn not_shared_yet(name: &str, e: &str) -> ResealFailed {
    ResealFailed {
        kind: ErrorKind::Unavailable,
        reason: format!(
            "the functions are resealed on this node, but {name} and the ones after it cannot \
             be shared with the other nodes yet ({e}); they will be as soon as NATS answers"
        ),
    }
}

/// Catches up with the other nodes' deploys every [`FOLLOW_EVERY`], and stores again the changes
/// made here that could not be stored, until `stop`.
pub(crate) async fn follow(
    shared: SharedFunctions,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    loop {
        let changing = shared.changing().await;
        let pending: Vec<String> = shared.lock_pending().iter().cloned().collect();
        for name in pending {
            match shared.publish(&name).await {
                Ok(true) => tracing::info!(function = name, "a change made here is shared now"),
                Ok(false) => tracing::warn!(
                    function = name,
                    "a change made here lost to another node's change of the same function"
                ),
                Err(_) => {}
            }
        }
        if let Err(e) = shared.catch_up().await {
            tracing::warn!(error = %e, "cannot catch up with the functions deployed on other nodes; trying again");
        }
        drop(changing);
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::future::ready;

    use sluice_functions::udf::SecretCounts;

    use super::*;

    /// `name` with `n` values resealed from key `aaaaaaaa` in its versions `versions`.
    fn resealed(name: &str, versions: &[u32], n: usize) -> FunctionReseal {
        FunctionReseal {
            name: name.into(),
            versions: versions.to_vec(),
            resealed: SecretCounts {
                by_key: BTreeMap::from([("aaaaaaaa".to_string(), n)]),
                plain: 0,
            },
            in_use: SecretCounts {
                by_key: BTreeMap::from([("bbbbbbbb".to_string(), n)]),
                plain: 0,
            },
        }
    }

    fn report(functions: Vec<FunctionReseal>) -> ResealReport {
        let mut r = ResealReport {
            key: "bbbbbbbb".into(),
            dry_run: false,
            functions,
            resealed: SecretCounts::default(),
            in_use: SecretCounts::default(),
            refused: Vec::new(),
        };
        // Sums the functions' counts.
        r.replace("", None);
        r
    }

    /// Shares `report` against a map that answers each store of a function with the next of
    /// `answers` (then `Ok(true)`), and a reseal again that gives the next of `again`: the
    /// stores, the reseals again, and the outcome.
    async fn share(
        report: &mut ResealReport,
        answers: Vec<Result<bool, String>>,
        again: Vec<Option<FunctionReseal>>,
    ) -> (Vec<String>, Vec<String>, Result<(), ResealFailed>) {
        let (mut answers, mut again) = (answers.into_iter(), again.into_iter());
        let (mut stored, mut resealed) = (Vec::new(), Vec::new());
        let outcome = share_resealed(
            report,
            |name| {
                stored.push(name);
                ready(answers.next().unwrap_or(Ok(true)))
            },
            |name| {
                resealed.push(name);
                ready(Ok(again.next().expect("a reseal again was expected")))
            },
        )
        .await;
        (stored, resealed, outcome)
    }

    #[tokio::test]
    async fn each_function_resealed_is_stored_and_the_others_are_not() {
        let mut r = report(vec![
            resealed("a", &[1, 2], 3),
            resealed("b", &[], 0),
            resealed("c", &[4], 1),
        ]);
        let before = r.clone();
        let (stored, again, outcome) = share(&mut r, vec![], vec![]).await;
        assert!(outcome.is_ok());
        assert_eq!((stored, again), (vec!["a".into(), "c".into()], vec![]));
        assert_eq!(r, before);
    }

    #[tokio::test]
    async fn a_function_changed_elsewhere_first_is_resealed_again_and_stored_again() {
        // `a` loses to another node's deploy, whose old versions need resealing again: stored
        // again. `c` loses to a change with nothing left to reseal (another node's reseal),
        // and `d` to a delete: neither is stored again.
        let mut r = report(vec![
            resealed("a", &[1], 1),
            resealed("c", &[1], 1),
            resealed("d", &[1], 1),
        ]);
        let (stored, again, outcome) = share(
            &mut r,
            vec![Ok(false), Ok(true), Ok(false), Ok(false)],
            vec![
                Some(resealed("a", &[1, 2], 4)),
                Some(resealed("c", &[], 0)),
                None,
            ],
        )
        .await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(stored, ["a", "a", "c", "d"]);
        assert_eq!(again, ["a", "c", "d"]);
        let names: Vec<&str> = r.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(r.functions[0], resealed("a", &[1, 2], 4));
        assert_eq!(r.resealed.by_key["aaaaaaaa"], 4);
        assert_eq!(r.in_use.by_key["bbbbbbbb"], 4);
    }

    #[tokio::test]
    async fn a_function_that_keeps_changing_elsewhere_is_a_conflict() {
        let mut r = report(vec![resealed("a", &[1], 1), resealed("b", &[1], 1)]);
        let (stored, again, outcome) = share(
            &mut r,
            vec![Ok(false); RESEAL_ATTEMPTS],
            vec![Some(resealed("a", &[1], 1)); RESEAL_ATTEMPTS - 1],
        )
        .await;
        let e = outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(
            e.reason.contains("function a") && e.reason.contains("reseal again"),
            "{e:?}"
        );
        assert_eq!(stored, vec!["a".to_string(); RESEAL_ATTEMPTS]);
        assert_eq!(again.len(), RESEAL_ATTEMPTS - 1);
    }

    #[tokio::test]
    async fn nats_not_answering_stops_the_sharing_with_a_503() {
        let mut r = report(vec![resealed("a", &[1], 1), resealed("b", &[1], 1)]);
        let (stored, _, outcome) = share(&mut r, vec![Err("timed out".into())], vec![]).await;
        let e = outcome.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(
            e.reason.contains("timed out") && e.reason.contains(" a "),
            "{e:?}"
        );
        assert_eq!(stored, ["a"]);
    }

    #[tokio::test]
    async fn a_reseal_again_that_is_refused_is_the_answer() {
        let mut r = report(vec![resealed("a", &[1], 1)]);
        let outcome = share_resealed(
            &mut r,
            |_| ready(Ok(false)),
            |_| {
                ready(Err(
                    UdfError::Invalid("key 0c0c0c0c is missing".into()).into()
                ))
            },
        )
        .await;
        let e = outcome.unwrap_err();
        assert_eq!(
            (e.kind, e.reason.as_str()),
            (ErrorKind::Invalid, "key 0c0c0c0c is missing")
        );
    }
}
