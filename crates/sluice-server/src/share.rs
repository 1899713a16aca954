//! The runner's partitions shared out between nodes on a shared journal (JetStream): partition
//! `p` runs on the holder of the lease `runner.<p>` (see `sluice_journal::Lease`), and each node
//! with the runner role holds its share of them.
//!
//! - **Shares**: the nodes with the runner role that announced themselves, by name; of `P`
//!   partitions each gets `P / n`, and the first `P % n` one more ([`share_of`]).
//! - **Taking**: a node below its share takes free partitions (a lease no node holds) until it
//!   has its share: at once when a lease is released, else every quarter of the lease TTL (an
//!   expiry, after its holder died, makes no event).
//! - **Giving up**: a node above its share (a node joined) drains the partitions it has too many
//!   of — everything read is written and committed — and releases their leases, so the new
//!   node takes them at once.
//! - **Losing**: a partition whose lease is lost (not renewed in time: a pause, a cut from NATS)
//!   stops at once, before another node can take it; a write it had in flight is refused by the
//!   journal's fence on `good` and `bad`.
//!
//! Where another node runs a partition, this node's [`Progress`] follows its committed offset,
//! so that the collector's backlog measure, `/health` and replay see the whole runner.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_functions::{FunctionsError, Runner};
use sluice_journal::{JetStreamJournal, Journal, Lease};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often positions of partitions other nodes run are brought over.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// The lease of the runner's partition `p`.
pub(crate) fn lease_name(p: u32) -> String {
    format!("runner.{p}")
}

/// How many of `partitions` node `index` of `nodes` runs.
fn share_of(partitions: u32, nodes: usize, index: usize) -> usize {
    let (partitions, nodes) = (partitions as usize, nodes.max(1));
    partitions / nodes + usize::from(index < partitions % nodes)
}

/// How a partition's run ended.
enum Ended {
    /// Drained (given up, or the node stops) and its lease released.
    Drained,
    /// Its lease was lost: stopped where it was.
    Lost,
    /// The node stops without draining ([`crate::Running::abandon`]): stopped where it was,
    /// its lease released.
    Abandoned,
    /// An error retrying cannot fix (the journal failed, the partition is quarantined).
    Failed(FunctionsError),
}

/// A partition this node runs.
struct Owned {
    stop: CancellationToken,
    task: JoinHandle<Ended>,
}

/// Runs this node's share of the runner's partitions until `shutdown`, then drains them and
/// releases their leases; on `abandon`, releases them without draining.
pub(crate) async fn run(
    journal: Arc<JetStreamJournal>,
    runner: Runner,
    shutdown: CancellationToken,
    abandon: CancellationToken,
) -> Result<(), FunctionsError> {
    let this = journal.node_name();
    let claim_every = journal.lease_ttl() / 4;
    // A released partition is taken at once, not at the next claim.
    let released = journal.lease_releases();
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut last_claim: Option<tokio::time::Instant> = None;
    let result = loop {
        if let Err(e) = reap(&mut owned).await {
            break Err(e);
        }
        follow(journal.as_ref(), &runner, &owned);
        if last_claim.is_none_or(|t| t.elapsed() >= claim_every) {
            last_claim = Some(tokio::time::Instant::now());
            if let Err(e) = rebalance(&journal, &runner, &this, &mut owned, &abandon).await {
                tracing::warn!(error = %e, "cannot share the runner's partitions out now; trying again");
            }
        }
        metrics::gauge!("sluice_runner_partitions_owned").set(owned.len() as f64);
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = abandon.cancelled() => break Ok(()),
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            () = released.notified() => last_claim = None,
        }
    };
    // Abandoned, each partition stops and releases its lease by itself.
    if !abandon.is_cancelled() {
        for o in owned.values() {
            o.stop.cancel();
        }
    }
    for (p, o) in owned {
        match o.task.await {
            Ok(Ended::Drained | Ended::Lost | Ended::Abandoned) => {}
            Ok(Ended::Failed(e)) => {
                tracing::error!(partition = p, error = %e, "runner partition stopped")
            }
            Err(e) => tracing::error!(partition = p, error = %e, "runner partition task panicked"),
        }
    }
    metrics::gauge!("sluice_runner_partitions_owned").set(0.0);
    result
}

/// Forgets the partitions whose run ended; an error retrying cannot fix stops the runner.
async fn reap(owned: &mut BTreeMap<u32, Owned>) -> Result<(), FunctionsError> {
    let ended: Vec<u32> = owned
        .iter()
        .filter(|(_, o)| o.task.is_finished())
        .map(|(p, _)| *p)
        .collect();
    for p in ended {
        let Some(o) = owned.remove(&p) else { continue };
        match o.task.await {
            Ok(Ended::Drained | Ended::Abandoned) => {}
            Ok(Ended::Lost) => {
                metrics::counter!("sluice_runner_leases_lost_total").increment(1);
                tracing::error!(
                    partition = p,
                    "lost the runner lease of this partition: stopped it where it was; another node \
                     resumes it from what is durable"
                );
            }
            Ok(Ended::Failed(e)) => return Err(e),
            Err(e) => {
                return Err(FunctionsError::Journal(
                    sluice_journal::JournalError::Failed(format!(
                        "runner partition {p} panicked: {e}"
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// Takes the positions of the partitions other nodes run from their committed offsets.
fn follow(journal: &dyn Journal, runner: &Runner, owned: &BTreeMap<u32, Owned>) {
    for p in (0..runner.partitions()).filter(|p| !owned.contains_key(p)) {
        if let Ok(Some(committed)) =
            journal.committed(crate::holds::RUNNER, sluice_event::topic::RAW, p)
        {
            runner.observe(p, committed);
        }
    }
}

/// Takes free partitions up to this node's share, or gives up those above it.
async fn rebalance(
    journal: &Arc<JetStreamJournal>,
    runner: &Runner,
    this: &str,
    owned: &mut BTreeMap<u32, Owned>,
    abandon: &CancellationToken,
) -> Result<(), sluice_journal::JournalError> {
    let mut names: Vec<String> = journal
        .nodes()
        .await?
        .into_iter()
        .filter(|n| runs_the_runner(&n.details))
        .map(|n| n.name)
        .collect();
    if !names.iter().any(|n| n == this) {
        // Announced a moment from now; it runs the runner all the same.
        names.push(this.to_string());
        names.sort();
    }
    let index = names.iter().position(|n| n == this).unwrap_or(0);
    let share = share_of(runner.partitions(), names.len(), index);
    if owned.len() > share {
        give_up(owned, owned.len() - share).await;
        return Ok(());
    }
    if owned.len() == share {
        return Ok(());
    }
    let held: Vec<String> = journal
        .leases()
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let free: Vec<u32> = (0..runner.partitions())
        .filter(|p| !owned.contains_key(p) && !held.contains(&lease_name(*p)))
        .collect();
    for p in free {
        if owned.len() >= share {
            break;
        }
        if let Some(lease) = journal.try_lease(&lease_name(p)).await? {
            owned.insert(p, start(runner, p, lease, abandon));
        }
    }
    Ok(())
}

/// Whether a node's announcement lists the runner role.
fn runs_the_runner(details: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(details)
        .ok()
        .and_then(|v| v["roles"].as_array().cloned())
        .is_some_and(|roles| roles.iter().any(|r| r == "runner"))
}

/// Runs partition `p` while `lease` is held; drained on `stop`, then the lease released; on
/// `abandon`, stopped where it is and the lease released.
fn start(runner: &Runner, p: u32, lease: Lease, abandon: &CancellationToken) -> Owned {
    let stop = CancellationToken::new();
    let run = runner.partition(p, stop.clone());
    let abandon = abandon.clone();
    let task = tokio::spawn(async move {
        let ended = tokio::select! {
            result = run => match result {
                Ok(()) => Ended::Drained,
                Err(e) => Ended::Failed(e),
            },
            // Dropping the run stops it at its next await; what it had in flight is fenced:
            // the next holder syncs `good` and `bad` before it writes.
            () = lease.lost() => Ended::Lost,
            () = abandon.cancelled() => Ended::Abandoned,
        };
        if !matches!(ended, Ended::Lost) {
            lease.release().await;
        }
        ended
    });
    tracing::info!(partition = p, "runner partition taken");
    Owned { stop, task }
}

/// Drains the `count` highest partitions this node runs and releases their leases.
async fn give_up(owned: &mut BTreeMap<u32, Owned>, count: usize) {
    let extra: Vec<u32> = owned.keys().rev().take(count).copied().collect();
    for p in extra {
        let Some(o) = owned.remove(&p) else { continue };
        o.stop.cancel();
        match o.task.await {
            Ok(Ended::Drained | Ended::Abandoned) => {
                tracing::info!(partition = p, "runner partition handed over")
            }
            Ok(Ended::Lost) => {
                tracing::warn!(partition = p, "runner partition lost while handing it over")
            }
            Ok(Ended::Failed(e)) => {
                tracing::error!(partition = p, error = %e, "runner partition failed while handing it over")
            }
            Err(e) => tracing::error!(partition = p, error = %e, "runner partition task panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition_once_and_differ_by_at_most_one() {
        for partitions in 0..20u32 {
            for nodes in 1..7usize {
                let shares: Vec<usize> =
                    (0..nodes).map(|i| share_of(partitions, nodes, i)).collect();
                assert_eq!(shares.iter().sum::<usize>(), partitions as usize);
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
            }
        }
    }

    #[test]
    fn only_nodes_announcing_the_runner_role_share_it() {
        assert!(runs_the_runner(r#"{"roles":["collector","runner"]}"#));
        assert!(!runs_the_runner(r#"{"roles":["collector"]}"#));
        assert!(!runs_the_runner("not json"));
    }
}
