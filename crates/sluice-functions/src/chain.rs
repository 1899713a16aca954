//! [`Chain`]: what happens to raw records — canonicalise, validate, enrich, run the user
//! functions deployed after each of those stages, check the event time and the size — and the
//! bad row a record becomes when a step fails.
//!
//! A raw record is good or bad as a whole: it may become several events (a function split it)
//! or none (a function dropped it), but if any of its events fails a later step, the record is
//! one bad row with the original payload, so that a replay after a fix re-runs all of it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use sluice_event::suppress::Suppressed;
use sluice_event::{BadKind, BadRow, Position, RawEvent, now_micros};

use crate::canonical::{Draft, Failure, draft};
use crate::config::EventTimeWindow;
use crate::enrich::{BadRowPseudonyms, EnrichConfig, Enrichers, Sessions};
use crate::registry::Registry;
use crate::udf::{Functions, Live, OnFailure, Stage};
use crate::validate::{Validation, ValidationConfig};

/// The largest good record by default (after enrichment), in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// The function chain every raw record goes through. Built once; shared by every partition
/// (per-partition state, the sessions, is passed in).
pub struct Chain {
    validation: Validation,
    enrichers: Enrichers,
    max_event_bytes: usize,
    time_window: EventTimeWindow,
    functions: Option<Arc<Functions>>,
    bad_pii: Option<BadRowPseudonyms>,
    suppressed: Arc<Suppressed>,
    /// On a shared journal: where the other nodes' additions to `suppressed` come from.
    shared_suppression: Option<sluice_journal::SharedSet>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").finish_non_exhaustive()
    }
}

/// What became of one raw record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its good records, in order: one, several (split by a function) or none (dropped).
    Good(Vec<Bytes>),
    /// Its bad row.
    Bad(Bytes),
}

/// What one function did to one item's events: the outputs, the inputs (kept only to pass them
/// on unchanged on failure), and the first failure.
type Round = (Vec<Draft>, Vec<Draft>, Option<String>);

/// A raw record on its way through the chain.
struct Item {
    pos: Position,
    raw: Option<RawEvent>,
    state: State,
}

enum State {
    Live(Vec<Draft>),
    Bad(Bytes),
}

impl Chain {
    /// Builds the chain; `Err` names what is wrong in the config.
    pub fn new(
        registry: Arc<Registry>,
        validation: ValidationConfig,
        enrich: EnrichConfig,
        max_event_bytes: usize,
    ) -> Result<Self, String> {
        validation.validate()?;
        let bad_pii = BadRowPseudonyms::new(&enrich.pii)?;
        Ok(Self {
            validation: Validation::new(registry, validation),
            enrichers: Enrichers::new(enrich)?,
            max_event_bytes,
            time_window: EventTimeWindow::default(),
            functions: None,
            bad_pii,
            suppressed: Arc::default(),
            shared_suppression: None,
        })
    }

    /// Accepts event times within `window` of their receipt (default: [`EventTimeWindow`]'s).
    pub fn with_time_window(mut self, window: EventTimeWindow) -> Self {
        self.time_window = window;
        self
    }

    /// Runs the user functions deployed in `functions` too (from the next batch on, whatever
    /// is deployed at the time).
    pub fn with_functions(mut self, functions: Arc<Functions>) -> Self {
        self.functions = Some(functions);
        self
    }

    /// Drops the events of the people in `suppressed` (see [`sluice_event::suppress`]).
    pub fn with_suppression(mut self, suppressed: Arc<Suppressed>) -> Self {
        self.suppressed = suppressed;
        self
    }

    /// Takes the suppression list's additions from `shared` (which feeds `suppressed`) before
    /// every batch ([`Chain::catch_up_suppression`]): deletions requested on any node.
    pub fn with_shared_suppression(mut self, shared: sluice_journal::SharedSet) -> Self {
        self.shared_suppression = Some(shared);
        self
    }

    /// Applies every suppression added on any node before this call. A runner calls it after
    /// reading a batch and before running it, so that a deletion answered before the batch's
    /// records were appended covers them, whichever node runs the partition.
    pub async fn catch_up_suppression(&self) -> Result<(), sluice_journal::JournalError> {
        match &self.shared_suppression {
            Some(shared) => shared.catch_up().await,
            None => Ok(()),
        }
    }

    /// The user functions that run now (an empty set without [`Chain::with_functions`]).
    pub fn live(&self) -> Arc<Live> {
        self.functions
            .as_ref()
            .map_or_else(|| Arc::new(Live::default()), |f| f.live())
    }

    /// Whether the chain keeps per-user sessions (state the runner must save and restore).
    pub fn uses_sessions(&self) -> bool {
        self.enrichers.uses_sessions()
    }

    /// One raw record → the bytes of a good record, or of a bad row, without user functions.
    pub fn process(
        &self,
        value: &[u8],
        pos: Position,
        sessions: &mut Sessions,
    ) -> Result<Bytes, Bytes> {
        sessions.forget_suppressed(&self.suppressed);
        match self.through_all(value, pos, sessions) {
            Outcome::Good(mut g) if g.len() == 1 => Ok(g.remove(0)),
            Outcome::Good(_) => Err(Bytes::new()),
            Outcome::Bad(b) => Err(b),
        }
    }

    /// A batch of raw records of one partition, in order, through every stage and the user
    /// functions of `live`. One outcome per record.
    pub async fn process_batch(
        &self,
        records: &[(Position, &[u8])],
        sessions: &mut Sessions,
        live: &Live,
    ) -> Vec<Outcome> {
        if live.is_empty() {
            // Each event through every stage at once, while it is in the cache (see
            // `through_enrich`).
            sessions.forget_suppressed(&self.suppressed);
            return records
                .iter()
                .map(|(pos, value)| self.through_all(value, *pos, sessions))
                .collect();
        }
        let Some((partition, mut items)) = self.through_enrich(records, sessions, live, true).await
        else {
            return Vec::new();
        };
        self.run_functions(live, Stage::Enrich, &mut items, partition, true)
            .await;
        items
            .into_iter()
            .map(|item| self.settle(item, true))
            .collect()
    }

    /// Runs records already processed through the `enrich` stage again, only to rebuild the
    /// sessions they left; nothing is counted in the metrics or yielded.
    pub async fn rebuild_sessions(
        &self,
        records: &[(Position, &[u8])],
        sessions: &mut Sessions,
        live: &Live,
    ) {
        self.through_enrich(records, sessions, live, false).await;
    }

    /// The stages up to and including `enrich`, with the functions after `canonicalize` and
    /// `validate`. `None` for an empty batch; with `count` off nothing is counted.
    async fn through_enrich(
        &self,
        records: &[(Position, &[u8])],
        sessions: &mut Sessions,
        live: &Live,
        count: bool,
    ) -> Option<(u32, Vec<Item>)> {
        let partition = records.first()?.0.partition;
        sessions.forget_suppressed(&self.suppressed);
        // The batch waits for the whole of it only where a function runs: up to the first such
        // stage, each event goes through the built-in stages on its own, while its draft is in
        // the cache (a stage at a time over a runner batch of 2,000 cost 40–70 % more).
        let mut done = boundary(live, None);
        let mut items = Vec::with_capacity(records.len());
        for (pos, value) in records {
            let mut item = self.start(value, *pos, count);
            self.advance(&mut item, Stage::Canonicalize, done, sessions, count);
            items.push(item);
        }
        while done != Stage::Enrich {
            self.run_functions(live, done, &mut items, partition, count)
                .await;
            let next = boundary(live, Some(done));
            for item in &mut items {
                self.advance(item, done, next, sessions, count);
            }
            done = next;
        }
        Some((partition, items))
    }

    /// One record through every built-in stage, with no user function.
    fn through_all(&self, value: &[u8], pos: Position, sessions: &mut Sessions) -> Outcome {
        let mut item = self.start(value, pos, true);
        self.advance(
            &mut item,
            Stage::Canonicalize,
            Stage::Enrich,
            sessions,
            true,
        );
        self.settle(item, true)
    }

    /// Takes `item`, which has passed stage `done`, through the built-in stages after it up to
    /// `until`.
    fn advance(
        &self,
        item: &mut Item,
        done: Stage,
        until: Stage,
        sessions: &mut Sessions,
        count: bool,
    ) {
        let passes = |stage: Stage| done < stage && stage <= until;
        if passes(Stage::Validate) {
            self.validate(item, count);
        }
        if passes(Stage::Enrich) {
            self.enrich(item, sessions, count);
        }
    }

    /// Reads the raw record and makes its draft.
    fn start(&self, value: &[u8], pos: Position, count: bool) -> Item {
        let raw: RawEvent = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(e) => {
                let payload = match std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| RawValue::from_string(s.to_string()).ok())
                {
                    Some(v) => v,
                    None => serde_json::value::to_raw_value(&String::from_utf8_lossy(value))
                        .unwrap_or_else(|_| null()),
                };
                if count {
                    crate::metrics::bad(BadKind::Parse, "canonicalize");
                }
                return Item {
                    pos,
                    raw: None,
                    state: State::Bad(bad_row(
                        BadKind::Parse,
                        format!("raw record is unreadable: {e}"),
                        "canonicalize",
                        ("", "", 0),
                        payload,
                        pos,
                    )),
                };
            }
        };
        let state = match draft(&raw, pos) {
            Ok(d) if self.is_suppressed(&d, count) => State::Live(Vec::new()),
            Ok(d) => State::Live(vec![d]),
            Err(f) => State::Bad(fail(&raw, "canonicalize", f, pos, count)),
        };
        Item {
            pos,
            raw: Some(raw),
            state,
        }
    }

    fn validate(&self, item: &mut Item, count: bool) {
        let (State::Live(drafts), Some(raw)) = (&mut item.state, &item.raw) else {
            return;
        };
        for d in drafts.iter_mut() {
            if let Err(f) = self.validation.check(d, count) {
                item.state = State::Bad(fail(raw, "validate", f, item.pos, count));
                return;
            }
        }
    }

    fn enrich(&self, item: &mut Item, sessions: &mut Sessions, count: bool) {
        let (State::Live(drafts), Some(raw)) = (&mut item.state, &item.raw) else {
            return;
        };
        for d in drafts.iter_mut() {
            if let Err(e) = self.enrichers.apply(d, raw, sessions) {
                let function = format!("enrich:{}", e.step);
                item.state = State::Bad(fail(raw, &function, e.failure, item.pos, count));
                return;
            }
        }
    }

    /// Runs the user functions that run after `stage` over the live items, in chain order.
    async fn run_functions(
        &self,
        live: &Live,
        stage: Stage,
        items: &mut [Item],
        partition: u32,
        count: bool,
    ) {
        for f in live.after(stage) {
            let mut drafts = Vec::new();
            let mut owners = Vec::new();
            for (k, item) in items.iter_mut().enumerate() {
                if let State::Live(ds) = &mut item.state {
                    owners.extend(std::iter::repeat_n(k, ds.len()));
                    drafts.append(ds);
                }
            }
            if drafts.is_empty() {
                continue;
            }
            let skip = f.spec.on_failure == OnFailure::Skip;
            let (results, drafts) = crate::udf::stage::apply(f, drafts, partition, skip).await;
            let mut per_item: Vec<Option<Round>> = (0..items.len()).map(|_| None).collect();
            for ((k, result), input) in owners.into_iter().zip(results).zip(drafts) {
                let slot = per_item[k].get_or_insert_with(Default::default);
                match result {
                    Ok(outputs) => slot.0.extend(outputs),
                    Err(e) => {
                        slot.2.get_or_insert(e.0);
                    }
                }
                if skip {
                    slot.1.push(input);
                }
            }
            for (item, slot) in items.iter_mut().zip(per_item) {
                let Some((mut outputs, inputs, failure)) = slot else {
                    continue;
                };
                item.state = match failure {
                    None => {
                        distinct_ids(&mut outputs);
                        State::Live(outputs)
                    }
                    Some(_) if skip => State::Live(inputs),
                    Some(why) => {
                        let failure = Failure {
                            kind: BadKind::FunctionFailure,
                            reason: format!("{} v{}: {why}", f.name, f.version),
                        };
                        match &item.raw {
                            Some(raw) => {
                                State::Bad(fail(raw, &f.label(), failure, item.pos, count))
                            }
                            None => State::Live(Vec::new()),
                        }
                    }
                };
            }
        }
    }

    /// Serialises an item's events, checking the event time and the size.
    fn finish(&self, item: Item, count: bool) -> Outcome {
        let mut drafts = match item.state {
            State::Bad(b) => return Outcome::Bad(b),
            State::Live(d) => d,
        };
        // A function may have given an event the id of a deleted person.
        drafts.retain(|d| !self.is_suppressed(d, count));
        let window = &self.time_window;
        let late = drafts
            .iter()
            .find_map(|d| window.violation(d.timestamp, d.received_at));
        if let Some(reason) = late {
            let failure = Failure {
                kind: BadKind::EventTime,
                reason,
            };
            return Outcome::Bad(match &item.raw {
                Some(raw) => fail(raw, "event_time", failure, item.pos, count),
                None => Bytes::new(),
            });
        }
        let n = drafts.len();
        let mut good = Vec::with_capacity(n);
        for (k, d) in drafts.into_iter().enumerate() {
            let mut bytes = match good_json(&d) {
                Ok(b) => b,
                Err(e) => {
                    let failure = Failure {
                        kind: BadKind::Parse,
                        reason: e.to_string(),
                    };
                    return Outcome::Bad(match &item.raw {
                        Some(raw) => fail(raw, "canonicalize", failure, item.pos, count),
                        None => Bytes::new(),
                    });
                }
            };
            if bytes.len() > self.max_event_bytes {
                let failure = Failure {
                    kind: BadKind::Size,
                    reason: format!(
                        "the enriched event is {} bytes, over the limit of {} (functions.max_event_bytes)",
                        bytes.len(),
                        self.max_event_bytes
                    ),
                };
                return Outcome::Bad(match &item.raw {
                    Some(raw) => fail(raw, "size", failure, item.pos, count),
                    None => Bytes::new(),
                });
            }
            if n > 1 {
                // `"part":[k,n]`: which of the record's events this is, for the runner's resume.
                bytes.pop();
                bytes.extend_from_slice(format!(",\"part\":[{k},{n}]}}").as_bytes());
            }
            good.push(Bytes::from(bytes));
        }
        Outcome::Good(good)
    }
}

/// The finished event's `good` record, in a buffer of its size: the draft written as the
/// [`sluice_event::Event`] it makes would be, its maps written in place rather than made into
/// text first and copied, by the writer that scans strings eight bytes a step
/// (`sluice_event::json`). It is written into a buffer this thread keeps: a fresh one grown by
/// doubling from `serde_json`'s 128 bytes cost about a tenth of the runner's time in copies.
fn good_json(event: &Draft) -> serde_json::Result<Vec<u8>> {
    /// A buffer larger than this (an event near `max_event_bytes`) is not kept.
    const KEEP: usize = 64 << 10;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        let written = sluice_event::json::to_writer(buf, event).map(|()| buf.to_vec());
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        written
    })
}

impl Chain {
    /// Whether `d` belongs to a deleted person (counted when `count`).
    fn is_suppressed(&self, d: &Draft, count: bool) -> bool {
        let hit = self
            .suppressed
            .covers(d.user_id.as_deref(), d.anonymous_id.as_deref());
        if hit && count {
            crate::metrics::suppressed(1);
        }
        hit
    }
}

/// Where a batch next waits for the whole of it: the first stage after `after` (from the first
/// when `None`) that a user function runs after, else the last, `Enrich`.
fn boundary(live: &Live, after: Option<Stage>) -> Stage {
    Stage::ALL
        .into_iter()
        .filter(|s| after.is_none_or(|a| *s > a))
        .find(|s| !live.after(*s).is_empty())
        .unwrap_or(Stage::Enrich)
}

/// Gives the second and later events of one record that share a `(source, event_id)` the ids
/// `<id>#1`, `<id>#2`... (the first keeps the original id, which replay dedupes on).
fn distinct_ids(drafts: &mut [Draft]) {
    if drafts.len() < 2 {
        return;
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for d in drafts.iter_mut() {
        if seen.insert((d.source.clone(), d.event_id.clone())) {
            continue;
        }
        let mut k = 1;
        loop {
            let id = format!("{}#{k}", d.event_id);
            if seen.insert((d.source.clone(), id.clone())) {
                d.event_id = id;
                break;
            }
            k += 1;
        }
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("literal is valid json")
}

fn fail(raw: &RawEvent, function: &str, f: Failure, pos: Position, count: bool) -> Bytes {
    if count {
        crate::metrics::bad(f.kind, function);
    }
    let payload = serde_json::value::to_raw_value(raw).unwrap_or_else(|_| null());
    bad_row(
        f.kind,
        f.reason,
        function,
        (&raw.event_id, &raw.source, raw.received_at),
        payload,
        pos,
    )
}

impl Chain {
    /// [`Chain::finish`], with a bad row's payload pseudonymised under `[enrich.pii] bad_rows`.
    fn settle(&self, item: Item, count: bool) -> Outcome {
        match (self.finish(item, count), &self.bad_pii) {
            (Outcome::Bad(b), Some(pii)) => Outcome::Bad(pseudonymised(&b, pii).unwrap_or(b)),
            (outcome, _) => outcome,
        }
    }
}

fn pseudonymised(row: &[u8], pii: &BadRowPseudonyms) -> Option<Bytes> {
    let mut row: BadRow = serde_json::from_slice(row).ok()?;
    row.payload = RawValue::from_string(pii.payload(row.payload.get())).ok()?;
    serde_json::to_vec(&row).ok().map(Bytes::from)
}

fn bad_row(
    kind: BadKind,
    reason: String,
    function: &str,
    (event_id, source, received_at): (&str, &str, i64),
    payload: Box<RawValue>,
    pos: Position,
) -> Bytes {
    let row = BadRow {
        kind,
        reason,
        function: function.into(),
        event_id: event_id.into(),
        source: source.into(),
        received_at,
        failed_at: now_micros(),
        payload,
        raw: pos,
    };
    // A BadRow of strings, numbers and valid JSON always serializes.
    Bytes::from(serde_json::to_vec(&row).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft_of(payload: serde_json::Value) -> Draft {
        let raw: RawEvent = serde_json::from_value(serde_json::json!({
            "event_id": "e1", "source": "web", "protocol": "native",
            "received_at": 1_764_237_600_000_000i64, "ip": "81.2.69.160",
            "payload": payload
        }))
        .unwrap();
        let pos = Position {
            partition: 3,
            offset: 17,
        };
        draft(&raw, pos).unwrap()
    }

    fn padded(pad: usize) -> Draft {
        draft_of(serde_json::json!({"event": "Signed Up", "userId": "u1",
            "properties": {"plan": "pro", "pad": "é\"\\\n".repeat(pad)}}))
    }

    #[test]
    fn the_good_record_is_the_finished_events_json_in_a_buffer_of_its_size() {
        let mut enriched = padded(2);
        enriched.enriched.schema = Some("iglu:com.acme/signup/jsonschema/1-0-0".into());
        enriched.enriched.geo_country = Some("GB".into());
        enriched.enriched.ua_browser = Some("Chrome \"beta\"".into());
        enriched.enriched.geo_latitude = Some(51.5);
        enriched.enriched.session_index = Some(3);
        let mut drafts = vec![
            draft_of(serde_json::json!({"type": "page", "anonymousId": "a\u{1}b",
                "name": "Home", "sentAt": "2025-11-27T10:00:01Z", "timestamp": "2025-11-27T10:00:00Z",
                "properties": {"n": 1.5, "big": 1e300, "neg": -0.0, "int": -7, "u": 18446744073709551615u64,
                    "nested": {"a": [1, "x", null, true, {"\u{7f}k\u{2028}": "\t"}]}, "": ""},
                "context": {"page": {"url": "https://x.test/p?q=1&r=é"}, "locale": "de-DE"}})),
            draft_of(serde_json::json!({"event": "Empty", "properties": {}, "context": null})),
            enriched,
        ];
        // Small, past what the thread keeps, then small again on the same thread.
        drafts.extend([10, 40_000, 3].map(padded));
        for d in drafts {
            let got = good_json(&d).unwrap();
            let event = crate::canonical::into_event(d.clone());
            assert_eq!(
                String::from_utf8(got.clone()).unwrap(),
                String::from_utf8(serde_json::to_vec(&event).unwrap()).unwrap(),
                "{d:?}"
            );
            assert_eq!(got.capacity(), got.len());
            let back = sluice_event::Event::from_slice_unenriched(&got).unwrap();
            assert_eq!(back.properties.get(), event.properties.get());
            assert_eq!(back.context.get(), event.context.get());
        }
    }
}
