//! One user function applied to the events of one runner batch, with the semantics of Lambda's
//! Kinesis trigger:
//!
//! - the events are cut into invocations of at most `batch_size`, run up to `parallelism` at a
//!   time, and their results are put back in the events' order (order is kept per partition);
//! - a failed invocation (exception, timeout, out of memory, a bad answer) is bisected when
//!   `bisect_on_error` is on, down to single events; a batch that cannot be split further is
//!   retried up to `max_retries` times with exponential backoff (100 ms doubling, at most 10 s);
//!   bisecting uses no retry;
//! - a partial-batch response (`{events, batchItemFailures}`) keeps what came before the first
//!   failed event and retries from it; with bisecting on, the failed event is split from the
//!   rest first. In per-event mode each event's exception is its own failure;
//! - an event older than `max_record_age_s` (by `received_at`) is not invoked again;
//! - what is given up on gets a [`Failed`] reason, which the chain turns into a
//!   `function_failure` bad row naming the function and version (or passes the event on
//!   unchanged with `on_failure = "skip"`).
//!
//! Which input an output belongs to: in per-event mode, the call it came from. In batch mode,
//! the input whose `raw` position it carries (spreading the input, `{...e}`, keeps it); an
//! output without one belongs to the output before it (the batch's first input if it comes
//! first).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use sluice_event::now_micros;
use sluice_journal::Backoff;

use super::LiveFn;
use super::convert::{fill, from_json_deferred, raw_offset, raw_position};
use super::engine::{InvokeError, Mode, Output, Reply, Returned};
use super::value::Kept;
use crate::Draft;

/// Most events one input may become.
const MAX_SPLIT: usize = 1000;
/// Retries of a failed invocation: first wait and cap.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Why an event was given up on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failed(pub String);

type Outcome = Result<Vec<Draft>, Failed>;

/// An input's outputs as read, each with the members it still holds as some input (by index)
/// was given them, left to move in from that input (`convert::fill`).
type Read = Result<Vec<(Draft, Option<(usize, u16)>)>, Failed>;

/// Applies `f` to `drafts` (events of raw partition `partition`). The result has one entry
/// per input, in order, and the inputs back. An output moves the members it kept as given out
/// of its input unless `keep_inputs` (the caller may pass the inputs on after a failure) or
/// another output still reads that input.
pub(crate) async fn apply(
    f: &LiveFn,
    drafts: Vec<Draft>,
    partition: u32,
    keep_inputs: bool,
) -> (Vec<Outcome>, Vec<Draft>) {
    if drafts.is_empty() {
        return (Vec::new(), drafts);
    }
    let drafts = Arc::new(drafts);
    let size = f.spec.batch_size.max(1);
    let chunks: Vec<Vec<usize>> = (0..drafts.len())
        .collect::<Vec<_>>()
        .chunks(size)
        .map(<[usize]>::to_vec)
        .collect();
    let parallel = f.spec.parallelism.max(1) as usize;
    let done: Vec<Vec<(usize, Read)>> = futures::stream::iter(chunks)
        .map(|chunk| run_chunk(f, &drafts, chunk, partition))
        .buffered(parallel)
        .collect()
        .await;
    let mut read: Vec<Option<Read>> = (0..drafts.len()).map(|_| None).collect();
    for (i, o) in done.into_iter().flatten() {
        read[i] = Some(o);
    }
    // The workers have let go of the events: this is the only reference left.
    let mut drafts = Arc::try_unwrap(drafts).unwrap_or_else(|d| (*d).clone());
    let mut readers = vec![0usize; drafts.len()];
    for (_, kept) in read.iter().flatten().flatten().flatten() {
        if let Some((j, _)) = kept {
            readers[*j] += 1;
        }
    }
    let outcomes = read
        .into_iter()
        .map(|o| {
            let events = o.unwrap_or_else(|| Err(Failed("the function gave no answer".into())))?;
            let filled = events.into_iter().map(|(mut event, kept)| {
                if let Some((j, deferred)) = kept {
                    readers[j] -= 1;
                    if readers[j] == 0 && !keep_inputs {
                        fill(&mut event, deferred, &mut drafts[j]);
                    } else {
                        fill(&mut event, deferred, &mut drafts[j].clone());
                    }
                }
                event
            });
            Ok(filled.collect())
        })
        .collect();
    (outcomes, drafts)
}

/// What one invocation said about its inputs.
enum Answer {
    /// The invocation failed as a whole.
    Whole(InvokeError),
    /// Final outcomes, and the inputs to try again with their last error.
    Partial {
        done: Vec<(usize, Read)>,
        again: Vec<(usize, String)>,
    },
}

async fn run_chunk(
    f: &LiveFn,
    drafts: &Arc<Vec<Draft>>,
    chunk: Vec<usize>,
    partition: u32,
) -> Vec<(usize, Read)> {
    let mut out = Vec::with_capacity(chunk.len());
    // Depth first, left half first: batches run in the events' order.
    let mut stack: Vec<(Vec<usize>, u32)> = vec![(chunk, 0)];
    while let Some((idx, attempt)) = stack.pop() {
        let idx = expire(f, drafts, idx, &mut out);
        if idx.is_empty() {
            continue;
        }
        if attempt > 0 {
            f.meter.retry();
            tokio::time::sleep(backoff(attempt)).await;
        }
        let source = {
            let first = &drafts[idx[0]].source;
            idx.iter()
                .all(|&i| &drafts[i].source == first)
                .then(|| first.clone())
        };
        let inv = f
            .pool
            .invoke(drafts.clone(), idx.clone(), partition, source)
            .await;
        f.meter.invocation(idx.len(), inv.duration, inv.memory_used);
        let answer = match inv.result {
            Err(e) => Answer::Whole(e),
            Ok(reply) => read_answer(f, drafts, &idx, partition, reply),
        };
        match answer {
            Answer::Whole(e) => {
                f.meter.error(e.kind());
                (f.log)(
                    "error",
                    &format!("invocation of {} events failed: {e}", idx.len()),
                );
                if f.spec.bisect_on_error && idx.len() > 1 {
                    let right = idx[idx.len() / 2..].to_vec();
                    let left = idx[..idx.len() / 2].to_vec();
                    stack.push((right, attempt));
                    stack.push((left, attempt));
                } else if attempt < f.spec.max_retries {
                    stack.push((idx, attempt + 1));
                } else {
                    give_up(
                        f,
                        &mut out,
                        idx.into_iter().map(|i| (i, e.to_string())),
                        attempt,
                    );
                }
            }
            Answer::Partial { done, again } => {
                for (_, o) in &done {
                    if let Ok(v) = o {
                        f.meter.returned(v.len());
                    }
                }
                out.extend(done);
                if again.is_empty() {
                    continue;
                }
                f.meter.error("partial");
                let ids: Vec<usize> = again.iter().map(|(i, _)| *i).collect();
                if f.mode == Mode::Batch && f.spec.bisect_on_error && ids.len() > 1 {
                    stack.push((ids[1..].to_vec(), attempt));
                    stack.push((ids[..1].to_vec(), attempt));
                } else if attempt < f.spec.max_retries {
                    stack.push((ids, attempt + 1));
                } else {
                    give_up(f, &mut out, again.into_iter(), attempt);
                }
            }
        }
    }
    out
}

fn give_up(
    f: &LiveFn,
    out: &mut Vec<(usize, Read)>,
    failed: impl Iterator<Item = (usize, String)>,
    attempt: u32,
) {
    let mut n = 0;
    for (i, e) in failed {
        n += 1;
        out.push((
            i,
            Err(Failed(format!(
                "retries exhausted after {} attempt{}: {e}",
                attempt + 1,
                if attempt == 0 { "" } else { "s" }
            ))),
        ));
    }
    f.meter.failed(n);
}

/// Splits off the inputs past the maximum record age.
fn expire(
    f: &LiveFn,
    drafts: &[Draft],
    idx: Vec<usize>,
    out: &mut Vec<(usize, Read)>,
) -> Vec<usize> {
    if f.spec.max_record_age_s == 0 {
        return idx;
    }
    let oldest = now_micros() - f.spec.max_record_age_s as i64 * 1_000_000;
    let (old, young): (Vec<usize>, Vec<usize>) = idx
        .into_iter()
        .partition(|&i| drafts[i].received_at < oldest);
    if !old.is_empty() {
        f.meter.expired(old.len());
        for i in old {
            out.push((
                i,
                Err(Failed(format!(
                    "record is older than the maximum record age ({} s)",
                    f.spec.max_record_age_s
                ))),
            ));
        }
    }
    young
}

/// The wait before retry `attempt` of an invocation.
fn backoff(attempt: u32) -> Duration {
    Backoff::new(RETRY_INITIAL, RETRY_MAX).delay_before(attempt)
}

fn read_answer(
    f: &LiveFn,
    drafts: &[Draft],
    idx: &[usize],
    partition: u32,
    reply: Reply,
) -> Answer {
    match (f.mode, reply) {
        (Mode::Batch, Reply::Batch { events, failures }) => batch_answer(
            f,
            drafts,
            idx,
            partition,
            events,
            failures.unwrap_or_default(),
        ),
        (Mode::Event, Reply::Event { per, errors }) if per.len() == idx.len() => {
            event_answer(f, drafts, idx, per, errors)
        }
        (Mode::Event, Reply::Event { .. }) => {
            Answer::Whole(InvokeError::BadResult("wrong number of answers".into()))
        }
        _ => Answer::Whole(InvokeError::BadResult(
            "the answer is not of the function's mode".into(),
        )),
    }
}

fn event_answer(
    f: &LiveFn,
    drafts: &[Draft],
    idx: &[usize],
    per: Vec<Returned>,
    errors: Vec<(usize, String)>,
) -> Answer {
    let errors: HashMap<usize, String> = errors.into_iter().collect();
    let mut done = Vec::new();
    let mut again = Vec::new();
    for (pos, (returned, &i)) in per.into_iter().zip(idx).enumerate() {
        if let Some(e) = errors.get(&pos) {
            again.push((i, e.clone()));
            continue;
        }
        let values = match returned {
            Returned::Nothing => Vec::new(),
            Returned::One(v) => vec![v],
            Returned::Many(v) => v,
        };
        done.push((i, convert(f, values, &drafts[i], &Given { drafts, idx })));
    }
    Answer::Partial { done, again }
}

fn batch_answer(
    f: &LiveFn,
    drafts: &[Draft],
    idx: &[usize],
    partition: u32,
    events: Vec<Output>,
    failures: Vec<String>,
) -> Answer {
    // Where each input sits in the batch, by raw offset (the first input of that offset) and
    // by event id (for batchItemFailures).
    let mut by_offset: HashMap<u64, usize> = HashMap::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for (pos, &i) in idx.iter().enumerate() {
        by_offset.entry(drafts[i].raw.offset).or_insert(pos);
        by_id.entry(drafts[i].event_id.as_str()).or_insert(pos);
    }
    let mut first_failed = idx.len();
    for id in &failures {
        match by_id.get(id.as_str()) {
            Some(&pos) => first_failed = first_failed.min(pos),
            None => {
                return Answer::Whole(InvokeError::BadResult(format!(
                    "batchItemFailures names {id:?}, which is not an event_id of the batch"
                )));
            }
        }
    }
    let mut per: Vec<Vec<Output>> = vec![Vec::new(); idx.len()];
    let mut owner = 0;
    for v in events {
        let offset = match &v {
            Ok(r) => raw_offset(&r.value, partition),
            Err(u) => raw_position(&u.raw, partition),
        };
        if let Some(pos) = offset.and_then(|o| by_offset.get(&o)) {
            owner = *pos;
        }
        per[owner].push(v);
    }
    let mut done = Vec::new();
    let mut again = Vec::new();
    for (pos, (values, &i)) in per.into_iter().zip(idx).enumerate() {
        if pos >= first_failed {
            let why = if pos == first_failed {
                "named in batchItemFailures".to_string()
            } else {
                "retried with the rest of its batch after an earlier event failed".to_string()
            };
            again.push((i, why));
        } else {
            done.push((i, convert(f, values, &drafts[i], &Given { drafts, idx })));
        }
    }
    Answer::Partial { done, again }
}

/// The events one invocation was given: input `k` of the call is `drafts[idx[k]]`.
struct Given<'a> {
    drafts: &'a [Draft],
    idx: &'a [usize],
}

impl Given<'_> {
    /// The event an output's untouched members come from (its index in the batch), and which
    /// members they are.
    fn kept(&self, kept: Kept) -> Option<(usize, &Draft, u16)> {
        if kept.members == 0 {
            return None;
        }
        let i = *self.idx.get(kept.input)?;
        Some((i, self.drafts.get(i)?, kept.members))
    }
}

fn convert(f: &LiveFn, values: Vec<Output>, origin: &Draft, given: &Given<'_>) -> Read {
    if values.len() > MAX_SPLIT {
        f.meter.error("invalid_event");
        return Err(Failed(format!(
            "invalid result: one event became {} (at most {MAX_SPLIT})",
            values.len()
        )));
    }
    values
        .into_iter()
        .map(|v| -> Result<_, String> {
            let r = v.map_err(|u| u.why)?;
            let kept = given.kept(r.kept);
            let (event, deferred) =
                from_json_deferred(r.value, origin, kept.map(|(_, d, m)| (d, m)))?;
            Ok((
                event,
                kept.map(|(i, ..)| (i, deferred)).filter(|k| k.1 != 0),
            ))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            f.meter.error("invalid_event");
            Failed(format!("invalid result: {e}"))
        })
}
