//! [`Pool`]: the worker threads of one function version, each owning one [`Engine`].
//!
//! QuickJS runtimes are not `Send`, so each lives on its own thread and takes invocations from
//! a shared queue; the async caller awaits the answer. A worker loads its engine on its first
//! invocation, and loads a fresh one after a timeout or an out-of-memory error. Dropping the pool
//! closes the queue: the workers finish what they hold and exit.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::engine::{Engine, InvokeError, LogFn, Reply, Source};
use crate::Draft;

/// One invocation's outcome and how long the code ran.
#[derive(Debug)]
pub struct Invocation {
    /// The answer, or why there is none.
    pub(crate) result: Result<Reply, InvokeError>,
    /// Time in the engine (loading included when this call loaded it).
    pub duration: Duration,
    /// Bytes the runtime held afterwards, sampled every 64th call (else 0, as when the runtime
    /// was thrown away).
    pub memory_used: u64,
}

struct Job {
    /// The events of the batch; the call gets those at `idx`, in that order.
    events: Arc<Vec<Draft>>,
    idx: Vec<usize>,
    partition: u32,
    source: Option<String>,
    reply: oneshot::Sender<Invocation>,
}

/// Run first on each worker thread, before it takes any invocation.
pub type WorkerStart = Arc<dyn Fn() + Send + Sync>;

/// Worker threads for one function version.
pub struct Pool {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl Pool {
    /// Starts `threads` workers for `source`, each running `on_start` first; `timeout` bounds
    /// each invocation.
    pub fn start(
        source: Source,
        threads: usize,
        timeout: Duration,
        log: LogFn,
        on_start: Option<WorkerStart>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let source = Arc::new(source);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let source = source.clone();
            let log = log.clone();
            let on_start = on_start.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fn-{}-v{}-{i}", source.name, source.version))
                .stack_size(8 << 20)
                .spawn(move || {
                    if let Some(on_start) = on_start {
                        on_start();
                    }
                    worker(&source, &rx, timeout, log)
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a function worker thread");
            }
        }
        Self { tx }
    }

    /// Runs one invocation of `events[i]` for each `i` of `idx` on a free worker. The worker
    /// lets go of `events` before it answers.
    pub(crate) async fn invoke(
        &self,
        events: Arc<Vec<Draft>>,
        idx: Vec<usize>,
        partition: u32,
        source: Option<String>,
    ) -> Invocation {
        assert!(
            idx.iter().all(|&i| i < events.len()),
            "an invocation names an event outside its batch"
        );
        let (reply, answer) = oneshot::channel();
        let job = Job {
            events,
            idx,
            partition,
            source,
            reply,
        };
        if self.tx.send(job).is_err() {
            return Invocation {
                result: Err(InvokeError::Init("the function's workers are gone".into())),
                duration: Duration::ZERO,
                memory_used: 0,
            };
        }
        answer.await.unwrap_or_else(|_| Invocation {
            result: Err(InvokeError::Init(
                "the function's worker stopped during the call".into(),
            )),
            duration: Duration::ZERO,
            memory_used: 0,
        })
    }
}

fn worker(
    source: &Source,
    rx: &parking_lot::Mutex<mpsc::Receiver<Job>>,
    timeout: Duration,
    log: LogFn,
) {
    let mut engine: Option<Engine> = None;
    let mut calls: u64 = 0;
    loop {
        let job = {
            let rx = rx.lock();
            rx.recv()
        };
        let Ok(job) = job else {
            return;
        };
        let started = Instant::now();
        let result = match &engine {
            Some(e) => Ok(e),
            None => match Engine::load(source, log.clone(), timeout) {
                Ok(e) => Ok(&*engine.insert(e)),
                Err(e) => Err(e),
            },
        }
        .and_then(|e| {
            let inputs: Vec<&Draft> = job.idx.iter().filter_map(|&i| job.events.get(i)).collect();
            e.call(&inputs, job.partition, job.source.as_deref(), timeout)
        });
        let duration = started.elapsed();
        // The caller takes its events back once all invocations have answered.
        drop(job.events);
        if matches!(
            result,
            Err(InvokeError::Timeout(_) | InvokeError::OutOfMemory(_))
        ) {
            engine = None;
        }
        // Measuring walks the whole heap: sample it.
        calls += 1;
        let memory_used = if calls % 64 == 1 {
            engine.as_ref().map_or(0, Engine::memory_used)
        } else {
            0
        };
        let _ = job.reply.send(Invocation {
            result,
            duration,
            memory_used,
        });
    }
}
