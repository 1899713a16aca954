//! [`StageRuntime`]: the threads the stages after the journal run on, apart from the threads
//! that answer requests.
//!
//! The stages (runner, lake and typed sinks, loader, hot projection, upkeep) work in long
//! synchronous stretches: decoding, applying and encoding a batch of thousands of events. On the
//! runtime that also answers trackers, such a stretch holds a worker thread, and requests on it
//! wait until the batch is done; with two cores, two batches stall intake altogether. So acks
//! waited behind batches: hundreds of milliseconds at a rate the node held. On threads of their
//! own the kernel shares the cores between the stages and intake preemptively, and with the
//! stages' threads at a lower priority (nice [`STAGE_NICE`]) intake's short work goes first;
//! the stages take everything intake leaves, which is most of the machine.
//!
//! Threads inherit their creator's priority, so what the stages start (the blocking pool, the
//! embedded hot store's and the lake's helpers) runs at the stages' priority too. User
//! functions' worker threads are started wherever a deploy arrives (a request, the shared
//! catch-up), so they lower their own priority to the stages' when they start
//! ([`StageRuntime::worker_start`]): a function's work is the runner's.

use tokio::runtime::{Builder, Handle, Runtime};

use crate::error::ServerError;

/// How much nicer the stages' threads are than the thread that started them: intake's
/// requests that arrive while a batch is applied run first. 5 gives intake three times the
/// stages' share of a contended core; the stages still get all of an idle one.
pub const STAGE_NICE: i32 = 5;

/// A multi-threaded runtime for the stages, shut down without waiting when dropped (its tasks
/// have been drained and joined by then; anything left is abandoned, as on a crash).
pub(crate) struct StageRuntime {
    runtime: Option<Runtime>,
    /// The nice value of the thread that started the runtime.
    base: i32,
}

impl StageRuntime {
    /// A runtime with one worker per core, its threads named `stage` and niced.
    pub(crate) fn new() -> Result<Self, ServerError> {
        let base = nice();
        let runtime = Builder::new_multi_thread()
            .thread_name("stage")
            .on_thread_start(move || lower_priority(base))
            .enable_all()
            .build()
            .map_err(|e| {
                ServerError::stage("stages", format!("cannot start their threads: {e}"))
            })?;
        Ok(Self {
            runtime: Some(runtime),
            base,
        })
    }

    /// What a thread of a stage's own runs first to take the stages' priority (user functions'
    /// workers).
    pub(crate) fn worker_start(&self) -> sluice_functions::udf::WorkerStart {
        let base = self.base;
        std::sync::Arc::new(move || lower_priority(base))
    }

    /// Where stage tasks are spawned.
    pub(crate) fn handle(&self) -> Handle {
        match &self.runtime {
            Some(rt) => rt.handle().clone(),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }
}

impl Drop for StageRuntime {
    fn drop(&mut self) {
        // Dropping a runtime waits for its blocking threads, which async code must not do.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The calling thread's nice value (0 where it cannot be read).
fn nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid has no preconditions; getpriority reads the calling thread's own nice
        // value (-1 is a valid answer, so errno tells an error apart).
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            if *libc::__errno_location() == 0 {
                nice
            } else {
                0
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// Sets the calling thread's nice value to `base` + [`STAGE_NICE`] (at most 19; Linux keeps a
/// nice value per thread). A refusal leaves it as it is.
fn lower_priority(base: i32) {
    #[cfg(target_os = "linux")]
    {
        let nice = (base + STAGE_NICE).min(19);
        // SAFETY: gettid has no preconditions; setpriority on the calling thread's own id only
        // changes that thread's nice value, which needs no privilege when it goes up.
        let changed = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if changed != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "cannot lower a stage thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = base;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn stage_threads_are_nicer_than_their_starter_and_named() {
        let starter = nice();
        let stages = StageRuntime::new().unwrap();
        let (priority, name) = stages
            .handle()
            .block_on(async {
                tokio::spawn(async { (nice(), std::thread::current().name().map(str::to_string)) })
                    .await
            })
            .unwrap();
        assert_eq!(priority, (starter + STAGE_NICE).min(19));
        assert_eq!(name.as_deref(), Some("stage"));
        assert_eq!(nice(), starter, "the starter keeps its priority");
        // A thread started elsewhere takes the stages' priority through `worker_start`.
        let start = stages.worker_start();
        let worker = std::thread::spawn(move || {
            start();
            nice()
        });
        assert_eq!(worker.join().unwrap(), (starter + STAGE_NICE).min(19));
    }
}
