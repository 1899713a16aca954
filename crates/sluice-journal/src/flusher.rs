//! The flusher: one background thread per journal doing the durable work that must stay off the
//! ack path — fdatasync of active segments every interval under `FsyncPolicy::Interval`, and
//! rewriting partitions' offset floors when their writers ask (see `partition.rs`).
//!
//! An fsync failure here poisons the journal like one in a writer: the data it was meant to make
//! durable may be gone, and retrying could report success for dropped pages.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::FsyncPolicy;
use crate::durable::StorageError;
use crate::local::Shared;
use crate::partition::Partition;
use crate::sync::{lock, wait_timeout};

/// How long the flusher sleeps when nothing asks for it (policy `always`); a wake-up comes
/// earlier whenever a writer wants a floor refresh.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Wake-up flags, under `Shared::flusher`.
#[derive(Debug, Default)]
pub(crate) struct FlusherState {
    pub wake: bool,
    pub stop: bool,
}

pub(crate) fn spawn(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sj-flusher".into())
        .stack_size(256 << 10)
        .spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let interval = match shared.settings.fsync {
        FsyncPolicy::Interval(every) => Some(every),
        FsyncPolicy::Always => None,
    };
    let mut next_sync = interval.map(|every| Instant::now() + every);
    loop {
        {
            let mut state = lock(&shared.flusher);
            loop {
                if state.stop {
                    return;
                }
                if state.wake {
                    state.wake = false;
                    break;
                }
                let timeout = match next_sync {
                    Some(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        left
                    }
                    None => IDLE_WAIT,
                };
                state = wait_timeout(&shared.flusher_cv, state, timeout);
            }
        }
        if shared.failure().is_some() {
            // Never fsync again after a failure: nothing it reports can be trusted.
            continue;
        }
        let partitions = shared.all_partitions();
        if let (Some(every), Some(at)) = (interval, next_sync)
            && Instant::now() >= at
        {
            for part in &partitions {
                if part.quarantine_reason().is_none()
                    && let Err(error) = part.sync_written(&shared.disk)
                {
                    handle(shared, part, error, "syncing the active segment");
                }
            }
            next_sync = Some(Instant::now() + every);
        }
        for part in &partitions {
            if part.floor_wanted.swap(false, Ordering::AcqRel) {
                let target = (part.end() + shared.settings.floor_reserve)
                    .max(part.floor_hint.load(Ordering::Acquire));
                if let Err(error) = part.raise_floor(&shared.disk, target, shared.clock_ms()) {
                    handle(shared, part, error, "writing the offset floor");
                }
            }
        }
    }
}

fn handle(shared: &Shared, part: &Partition, error: StorageError, doing: &str) {
    match error {
        StorageError::Sync(error) => shared.poison(format!(
            "{doing} in {}/{}: fsync failed: {error}",
            part.topic, part.id
        )),
        // The writer extends the floor itself if it runs out, and reports the error then.
        other => tracing::warn!(
            topic = %part.topic,
            partition = part.id,
            error = %other,
            "{doing} failed"
        ),
    }
}
