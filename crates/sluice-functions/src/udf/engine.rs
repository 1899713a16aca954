//! [`Engine`]: one sandboxed QuickJS runtime holding one function version.
//!
//! The sandbox: a QuickJS context with the language's built-ins only. There is no module loader
//! (an `import` fails), no `std`/`os` module, no timers, no network and no file system; the
//! only ways out are the return value and `console.*`/`ctx.log`, which go to the function's log.
//! Every runtime has a memory limit (the function's `memory`), a stack limit, and an interrupt
//! handler that stops the code at the invocation's deadline — an infinite loop included.
//! After a timeout or an out-of-memory error the runtime is thrown away and the next invocation
//! gets a fresh one, so a half-finished invocation cannot leave its state behind.
//!
//! Calls cross the boundary as runtime values, without JSON text: the batch goes in as one
//! array of objects built from the events, and the answer is read straight back from the
//! runtime's values with `JSON.stringify`'s rules (`value.rs`). See [`Reply`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rquickjs::{
    Array, CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Promise, Runtime,
};

use super::convert::{Given, Lazy};
use super::value::{Fault, Inputs, Read, Reader};

/// The JavaScript stack limit.
const MAX_STACK: usize = 1 << 20;

/// Which entry point a function module exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `process(events, ctx)`: one call per batch.
    Batch,
    /// `transform(event, ctx)`: one call per event.
    Event,
}

impl Mode {
    /// `batch` or `event`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
            Self::Event => "event",
        }
    }
}

/// Why an invocation failed as a whole (a failure of single events in per-event mode is part of
/// a successful answer instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvokeError {
    /// The code threw (or a returned promise rejected).
    Exception(String),
    /// The invocation ran past its deadline and was interrupted.
    Timeout(Duration),
    /// The runtime ran out of its memory limit.
    OutOfMemory(String),
    /// The function returned something that is not an answer.
    BadResult(String),
    /// The module could not be loaded (a top-level error).
    Init(String),
}

impl InvokeError {
    /// The `kind` label of the error metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Exception(_) => "exception",
            Self::Timeout(_) => "timeout",
            Self::OutOfMemory(_) => "out_of_memory",
            Self::BadResult(_) => "bad_result",
            Self::Init(_) => "init",
        }
    }
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exception(m) => write!(f, "{m}"),
            Self::Timeout(t) => write!(f, "timed out after {} ms", t.as_millis()),
            Self::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            Self::BadResult(m) => write!(f, "bad result: {m}"),
            Self::Init(m) => write!(f, "module failed to load: {m}"),
        }
    }
}

/// What a function version is made of.
#[derive(Clone, Debug)]
pub struct Source {
    /// Function name.
    pub name: String,
    /// Version number.
    pub version: u32,
    /// The module text.
    pub code: String,
    /// `ctx.config`, a JSON object.
    pub config: serde_json::Value,
    /// `ctx.secrets`, a JSON object of strings.
    pub secrets: serde_json::Value,
    /// The memory limit, in MiB.
    pub memory_mb: u32,
}

/// Where `console.*` output goes: `(level, message)`.
pub type LogFn = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// What can go into a function: it becomes one runtime value.
pub(crate) trait Input {
    /// The runtime value, and the strings it was given as an event (see `convert::Given`);
    /// an event's members are deferred through `lazy`.
    fn to_js<'js>(
        &self,
        ctx: &Ctx<'js>,
        lazy: &Lazy<'js>,
    ) -> rquickjs::Result<(rquickjs::Value<'js>, Option<Given<'js>>)>;
}

impl Input for crate::Draft {
    fn to_js<'js>(
        &self,
        ctx: &Ctx<'js>,
        lazy: &Lazy<'js>,
    ) -> rquickjs::Result<(rquickjs::Value<'js>, Option<Given<'js>>)> {
        let (object, given) = super::convert::to_js(ctx, self, lazy)?;
        Ok((object.into_value(), Some(given)))
    }
}

/// A JSON value goes in as `JSON.parse` would make it, nothing deferred.
impl Input for serde_json::Value {
    fn to_js<'js>(
        &self,
        ctx: &Ctx<'js>,
        _: &Lazy<'js>,
    ) -> rquickjs::Result<(rquickjs::Value<'js>, Option<Given<'js>>)> {
        Ok((super::value::to_js(ctx, self)?, None))
    }
}

/// One output event as read back, or why it cannot be read.
pub(crate) type Output = Result<Read, Unreadable>;

/// An output that cannot be read back (a cycle, a BigInt, too deep, a function as an event…).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Unreadable {
    /// The reason, naming where in the output.
    pub why: String,
    /// Its `raw` member as far as it reads (else `null`): which input it belongs to.
    pub raw: serde_json::Value,
}

/// What one call of `transform` gave.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Returned {
    /// `null` or `undefined`: the event is dropped.
    Nothing,
    /// One value.
    One(Output),
    /// An array: the events it was split into (`null`s left out).
    Many(Vec<Output>),
}

/// The answer of one invocation.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// `process`: the events returned (`null`s left out) and the `batchItemFailures` ids
    /// (`None` when it returned a plain array).
    Batch {
        events: Vec<Output>,
        failures: Option<Vec<String>>,
    },
    /// `transform`: what each call returned, and the calls that threw (`(index, message)`).
    Event {
        per: Vec<Returned>,
        errors: Vec<(usize, String)>,
    },
}

#[cfg(test)]
impl Reply {
    /// The answer as the JSON text the wrapper once produced (unreadable outputs as
    /// `{"unreadable": why}`).
    fn to_text(&self) -> String {
        use serde_json::{Value, json};
        let one = |o: &Output| match o {
            Ok(r) => r.value.clone(),
            Err(u) => json!({ "unreadable": u.why }),
        };
        match self {
            Self::Batch { events, failures } => {
                let events: Vec<Value> = events.iter().map(one).collect();
                match failures {
                    None => json!({ "events": events }).to_string(),
                    Some(f) => json!({ "events": events, "failures": f }).to_string(),
                }
            }
            Self::Event { per, errors } => {
                let per: Vec<Value> = per
                    .iter()
                    .map(|r| match r {
                        Returned::Nothing => Value::Null,
                        Returned::One(o) => one(o),
                        Returned::Many(v) => Value::Array(v.iter().map(one).collect()),
                    })
                    .collect();
                format!(
                    r#"{{"per":{},"errors":{}}}"#,
                    Value::Array(per),
                    json!(errors)
                )
            }
        }
    }
}

/// The input array of one call, and its objects (their members may be deferred).
fn inputs<'js, T: Input>(
    ctx: &Ctx<'js>,
    events: &[&T],
) -> rquickjs::Result<(Array<'js>, Inputs<'js>)> {
    let lazy = Lazy::load(ctx)?;
    let array = Array::new(ctx.clone())?;
    let mut objects = Vec::with_capacity(events.len());
    let mut given = Vec::with_capacity(events.len());
    for (i, e) in events.iter().enumerate() {
        let (v, strings) = e.to_js(ctx, &lazy)?;
        if let Some(o) = v.as_object() {
            objects.push(o.clone());
            given.push(strings);
        }
        array.set(i, v)?;
    }
    let inputs = Inputs {
        objects,
        untouched: lazy.untouched,
        enriched_value: lazy.enriched_value,
        names: lazy.names,
        strings: lazy.keys.strings,
        columns: lazy.columns,
        given,
    };
    Ok((array, inputs))
}

/// Reads the wrapper's answer (`{events, failures?}` or `{per, errors}`).
fn read_reply<'js>(
    ctx: &Ctx<'js>,
    mode: Mode,
    answer: &rquickjs::Value<'js>,
    budget: usize,
    inputs: Inputs<'js>,
) -> Result<Reply, Fault> {
    let js = Fault::Js;
    let answer = answer
        .as_object()
        .ok_or_else(|| Fault::Js(rquickjs::Error::new_from_js("value", "object")))?;
    let mut reader = Reader::new(ctx, budget).map_err(js)?.with_inputs(inputs);
    match mode {
        Mode::Batch => {
            let events: Array = answer.get("events").map_err(js)?;
            let failures: Option<Vec<String>> = answer.get("failures").map_err(js)?;
            let mut out = Vec::new();
            for i in 0..reader.length(events.as_object())? {
                if let Some(o) = output(&mut reader, events.get(i).map_err(js)?, i)? {
                    out.push(o);
                }
            }
            Ok(Reply::Batch {
                events: out,
                failures,
            })
        }
        Mode::Event => {
            let per: Array = answer.get("per").map_err(js)?;
            let errors: Vec<Array> = answer.get("errors").map_err(js)?;
            let errors = errors
                .iter()
                .map(|e| Ok((e.get::<u32>(0)? as usize, e.get::<String>(1)?)))
                .collect::<rquickjs::Result<Vec<(usize, String)>>>()
                .map_err(js)?;
            let mut out = Vec::new();
            for i in 0..reader.length(per.as_object())? {
                let v: rquickjs::Value = per.get(i).map_err(js)?;
                out.push(match v.as_array() {
                    None => output(&mut reader, v, i)?.map_or(Returned::Nothing, Returned::One),
                    Some(a) => {
                        let mut many = Vec::new();
                        for k in 0..reader.length(a.as_object())? {
                            if let Some(o) = output(&mut reader, a.get(k).map_err(js)?, i)? {
                                many.push(o);
                            }
                        }
                        Returned::Many(many)
                    }
                });
            }
            Ok(Reply::Event { per: out, errors })
        }
    }
}

/// One event slot of an answer: `None` when it holds nothing to keep. Only a failure of the
/// whole answer (the code threw, too big) is an `Err`.
fn output<'js>(
    reader: &mut Reader<'js>,
    v: rquickjs::Value<'js>,
    hint: usize,
) -> Result<Option<Output>, Fault> {
    match reader.event(v.clone(), hint) {
        Ok(o) => Ok(o.map(Ok)),
        Err(Fault::Bad(why)) => Ok(Some(Err(Unreadable {
            why: why.message(),
            raw: reader.raw_of(&v),
        }))),
        Err(f) => Err(f),
    }
}

/// Glue evaluated after the user module: builds `ctx`, calls the entry point, normalises the
/// answer to `{events, failures?}` (batch) or `{per, errors}` (per event). Per-event mode
/// catches each event's exception on its own.
const WRAPPER: &str = r#"
(function () {
  const fn = globalThis.__sluice_fn, mode = globalThis.__sluice_mode;
  const base = globalThis.__sluice_base, sink = globalThis.__sluice_log;
  const fromColumns = globalThis.__sluice_from_columns;
  delete globalThis.__sluice_fn; delete globalThis.__sluice_mode;
  delete globalThis.__sluice_base; delete globalThis.__sluice_log;
  delete globalThis.__sluice_from_columns;
  const text = (v) => {
    if (typeof v === "string") return v;
    if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\n${v.stack}` : `${v.name}: ${v.message}`;
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; } catch (_) { return String(v); }
  };
  const line = (args) => args.map(text).join(" ");
  const console = {
    log: (...a) => sink("info", line(a)), info: (...a) => sink("info", line(a)),
    debug: (...a) => sink("debug", line(a)), warn: (...a) => sink("warn", line(a)),
    error: (...a) => sink("error", line(a)),
  };
  Object.freeze(console);
  Object.defineProperty(globalThis, "console", { value: console, writable: false, configurable: false });
  const errText = (e) => {
    // What the runtime throws when it reaches its memory limit and cannot even make the error.
    if (e === null) return "null was thrown: out of memory, unless the function threw null itself";
    const s = text(e);
    return s.length > 4096 ? s.slice(0, 4096) + "…" : s;
  };
  const ctxs = new Map();
  // The last one asked for, as most events of a call share their source.
  let lastPartition, lastSource, lastCtx;
  const ctxFor = (partition, source) => {
    if (lastCtx !== undefined && partition === lastPartition && source === lastSource) return lastCtx;
    lastCtx = ctxOf(partition, source);
    lastPartition = partition;
    lastSource = source;
    return lastCtx;
  };
  const ctxOf = (partition, source) => {
    const key = `${partition}/${source}`;
    let c = ctxs.get(key);
    if (c === undefined) {
      c = Object.freeze({ ...base, partition, source, log: console.log });
      if (ctxs.size > 1000) ctxs.clear();
      ctxs.set(key, c);
    }
    return c;
  };
  const isThenable = (r) => r !== null && typeof r === "object" && typeof r.then === "function";
  const batchAnswer = (r) => {
    if (Array.isArray(r)) return { events: r };
    if (r !== null && typeof r === "object" && Array.isArray(r.events)) {
      const f = Array.isArray(r.batchItemFailures) ? r.batchItemFailures : [];
      return { events: r.events, failures: f.map((x) => String(x && x.itemIdentifier)) };
    }
    throw new TypeError(`process must return an array of events or {events, batchItemFailures}; it returned ${r === null ? "null" : typeof r}`);
  };
  // An event's properties, context and enriched members arrive as JSON text under a symbol
  // and become objects the first time they are read or written (see `convert.rs`). A member
  // that stays untouched is taken back from the event the runtime was given, unread. Once an
  // enriched has been read, enriched arrives as its column values instead, made into its object
  // by fromColumns, and one still holding those very values is taken back too (`columns.rs`).
  const lookupGetter = Object.prototype.__lookupGetter__, define = Object.defineProperty;
  const parse = JSON.parse, isArray = Array.isArray;
  const ownDescriptor = Object.getOwnPropertyDescriptor, hasOwn = Object.hasOwn;
  let enrichedRead = false;
  const makeEnriched = (t) => {
    enrichedRead = true;
    return typeof t === "string" ? parse(t) : isArray(t) ? fromColumns(t) : undefined;
  };
  // Whether a getter ever had to hold its member aside (an event that cannot take a property).
  let heldAny = false;
  const lazy = ["properties", "context", "enriched"].map((name) => {
    const text = Symbol(name);
    const make = name === "enriched" ? makeEnriched : (t) => typeof t === "string" ? parse(t) : undefined;
    // What a getter made for an event that cannot take it as a plain property (sealed).
    const held = new WeakMap();
    const settle = (o, v) => define(o, name, { value: v, writable: true, enumerable: true, configurable: true });
    const get = function () {
      if (heldAny && held.has(this)) return held.get(this);
      const v = make(this[text]);
      try { settle(this, v); } catch (_) { held.set(this, v); heldAny = true; }
      return v;
    };
    const set = function (v) { settle(this, v); };
    return { name, text, get, set, held };
  });
  // Asked once or twice per event read back: written out, with the held ones looked up only
  // once a getter has held one.
  const [getProperties, getContext, getEnriched] = lazy.map((l) => l.get);
  const enriched = lazy[2];
  // An enriched that is a data property (or held): its value, for the reading of the answer
  // to compare with the column values it was given; undefined when it is anything else.
  const enrichedValue = (o) => {
    if (heldAny && enriched.held.has(o)) return enriched.held.get(o);
    const d = ownDescriptor(o, "enriched");
    return d !== undefined && hasOwn(d, "value") ? d.value : undefined;
  };
  const untouched = (o) => {
    let members = 0;
    if (lookupGetter.call(o, "properties") === getProperties) members = 1;
    if (lookupGetter.call(o, "context") === getContext) members |= 2;
    if (lookupGetter.call(o, "enriched") === getEnriched) members |= 4;
    if (heldAny) {
      for (let i = 0; i < lazy.length; i++) if (lazy[i].held.has(o)) members &= ~(1 << i);
    }
    return members;
  };
  define(globalThis, "__sluice_lazy", { value: Object.freeze({
    texts: lazy.map((l) => l.text), gets: lazy.map((l) => l.get), sets: lazy.map((l) => l.set), untouched,
    enrichedValue, enrichedRead: () => enrichedRead,
  }) });
  globalThis.__sluice_invoke = function (events, partition, source) {
    if (mode === "batch") {
      const r = fn(events, ctxFor(partition, source));
      return isThenable(r) ? Promise.resolve(r).then(batchAnswer) : batchAnswer(r);
    }
    const out = new Array(events.length).fill(null);
    const errors = [];
    let pending = null;
    for (let i = 0; i < events.length; i++) {
      const e = events[i];
      try {
        const r = fn(e, ctxFor(partition, e.source));
        if (isThenable(r)) {
          (pending || (pending = [])).push(Promise.resolve(r).then((v) => { out[i] = v === undefined ? null : v; }, (err) => { errors.push([i, errText(err)]); }));
        } else {
          out[i] = r === undefined ? null : r;
        }
      } catch (err) {
        errors.push([i, errText(err)]);
      }
    }
    const finish = () => ({ per: out, errors });
    return pending ? Promise.all(pending).then(finish) : finish();
  };
})();
"#;

/// Appended to the user's module (after a newline, so a trailing line comment cannot swallow it).
const EPILOGUE: &str = "\n;globalThis.__sluice_local = { process: typeof process === \"function\" ? process : undefined, transform: typeof transform === \"function\" ? transform : undefined };\n";

/// A loaded function version in its own runtime. Not `Send`: it lives on one worker thread.
pub struct Engine {
    // Field order matters: the context must drop before its runtime.
    context: Context,
    runtime: Runtime,
    deadline: Arc<parking_lot::Mutex<Option<Instant>>>,
    interrupted: Arc<AtomicBool>,
    mode: Mode,
    memory_mb: u32,
}

impl Engine {
    /// Loads `source` into a fresh runtime; the module's top-level code runs under `timeout`.
    pub fn load(source: &Source, log: LogFn, timeout: Duration) -> Result<Self, InvokeError> {
        let (runtime, deadline, interrupted) = limited_runtime(source)?;
        let context = Context::full(&runtime).map_err(|e| InvokeError::Init(e.to_string()))?;
        let engine = Self {
            context,
            runtime,
            deadline,
            interrupted,
            mode: Mode::Batch,
            memory_mb: source.memory_mb,
        };
        engine.arm(timeout);
        let mode = engine.context.with(|ctx| -> Result<Mode, InvokeError> {
            let (mode, f) = entry_point(&ctx, source)?;
            install_wrapper(&ctx, source, log, mode, f)?;
            Ok(mode)
        });
        engine.disarm();
        let mode = mode.map_err(|e| engine.classify_init(e))?;
        Ok(Self { mode, ..engine })
    }

    /// Which entry point the module exports.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn arm(&self, timeout: Duration) {
        self.interrupted.store(false, Ordering::Relaxed);
        *self.deadline.lock() = Some(Instant::now() + timeout);
    }

    fn disarm(&self) {
        *self.deadline.lock() = None;
    }

    fn classify_init(&self, e: InvokeError) -> InvokeError {
        if self.interrupted.load(Ordering::Relaxed) {
            InvokeError::Init("the module's top-level code ran past the timeout".into())
        } else {
            e
        }
    }

    /// Calls the entry point with `events` and reads its answer back (under the deadline too,
    /// as getters and `toJSON` may run code). The answer may hold at most the memory limit,
    /// counted as JSON text.
    pub(crate) fn call<T: Input>(
        &self,
        events: &[&T],
        partition: u32,
        source: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, InvokeError> {
        self.arm(timeout);
        let result = self.context.with(|ctx| -> Result<Reply, InvokeError> {
            let f: Function = ctx
                .globals()
                .get("__sluice_invoke")
                .map_err(|e| InvokeError::Init(e.to_string()))?;
            let (input, objects) = inputs(&ctx, events)
                .catch(&ctx)
                .map_err(|e| InvokeError::Exception(caught_text(e)))?;
            let answer: rquickjs::Value = f
                .call((input, partition, source))
                .catch(&ctx)
                .map_err(|e| InvokeError::Exception(caught_text(e)))?;
            let answer = match answer.as_promise() {
                Some(p) => settle(&ctx, p.clone())?,
                None => answer,
            };
            let budget = self.memory_mb as usize * (1 << 20);
            read_reply(&ctx, self.mode, &answer, budget, objects).map_err(|f| match f {
                Fault::Bad(why) => InvokeError::BadResult(why.message()),
                Fault::Js(e) => InvokeError::Exception(caught_text(
                    Err::<(), _>(e)
                        .catch(&ctx)
                        .err()
                        .unwrap_or(CaughtError::Error(rquickjs::Error::Unknown)),
                )),
                Fault::TooBig => InvokeError::OutOfMemory(format!(
                    "the answer is larger than the memory limit of {} MiB",
                    self.memory_mb
                )),
            })
        });
        self.disarm();
        result.map_err(|e| self.classify(e, timeout))
    }

    /// [`Engine::call`] on JSON text: `input` is a JSON array of events; the answer is JSON
    /// text, `{"events": [...]}` (with `"failures"` when the function answered with an object)
    /// or `{"per": [...], "errors": [[i, "message"], ...]}`.
    #[cfg(test)]
    pub fn invoke(
        &self,
        input: &str,
        partition: u32,
        source: Option<&str>,
        timeout: Duration,
    ) -> Result<String, InvokeError> {
        let events: Vec<serde_json::Value> = serde_json::from_str(input)
            .map_err(|e| InvokeError::Exception(format!("SyntaxError: {e}")))?;
        let events: Vec<&serde_json::Value> = events.iter().collect();
        Ok(self.call(&events, partition, source, timeout)?.to_text())
    }

    /// Maps an error to a timeout or out-of-memory when that is what caused it.
    fn classify(&self, e: InvokeError, timeout: Duration) -> InvokeError {
        if self.interrupted.load(Ordering::Relaxed) {
            return InvokeError::Timeout(timeout);
        }
        match e {
            // When the engine cannot even allocate the error object, what is thrown is `null`.
            InvokeError::Exception(m) if m.contains("out of memory") || m == "thrown: null" => {
                InvokeError::OutOfMemory(format!(
                    "the runtime reached its memory limit of {} MiB",
                    self.memory_mb
                ))
            }
            e => e,
        }
    }

    /// Bytes the runtime holds now.
    pub fn memory_used(&self) -> u64 {
        self.runtime.memory_usage().memory_used_size.max(0) as u64
    }
}

/// Drives the job queue until `p` settles.
fn settle<'js>(
    ctx: &rquickjs::Ctx<'js>,
    p: Promise<'js>,
) -> Result<rquickjs::Value<'js>, InvokeError> {
    match p.finish::<rquickjs::Value>().catch(ctx) {
        Ok(v) => Ok(v),
        Err(CaughtError::Error(rquickjs::Error::WouldBlock)) => Err(InvokeError::BadResult(
            "the returned promise never settles (functions have no timers or I/O to wait for)"
                .into(),
        )),
        Err(e) => Err(InvokeError::Exception(caught_text(e))),
    }
}

/// When the code running in a runtime must stop (none while nothing runs).
type Deadline = Arc<parking_lot::Mutex<Option<Instant>>>;

/// A fresh runtime with the function's memory limit and the stack limit, interrupted once its
/// deadline has passed; the flag tells that it was.
fn limited_runtime(source: &Source) -> Result<(Runtime, Deadline, Arc<AtomicBool>), InvokeError> {
    let runtime = Runtime::new().map_err(|e| InvokeError::Init(e.to_string()))?;
    runtime.set_memory_limit(source.memory_mb as usize * (1 << 20));
    runtime.set_max_stack_size(MAX_STACK);
    let deadline: Deadline = Arc::default();
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let deadline = deadline.clone();
        let interrupted = interrupted.clone();
        runtime.set_interrupt_handler(Some(Box::new(move || {
            let late = deadline.lock().is_some_and(|d| Instant::now() >= d);
            if late {
                interrupted.store(true, Ordering::Relaxed);
            }
            late
        })));
    }
    Ok((runtime, deadline, interrupted))
}

/// Runs the user's module (an ES module, CommonJS, or top-level declarations) and finds its
/// entry point: `process` (a batch) or `transform` (an event), never both.
fn entry_point<'js>(ctx: &Ctx<'js>, source: &Source) -> Result<(Mode, Function<'js>), InvokeError> {
    let globals = ctx.globals();
    let init = |e: rquickjs::Error| InvokeError::Init(e.to_string());
    // CommonJS style (`module.exports = {...}`, `exports.transform = ...`) works too.
    let cjs: Object = ctx
        .eval("globalThis.module = { exports: {} }; globalThis.exports = globalThis.module.exports; globalThis.module")
        .map_err(init)?;
    // Top-level `function transform(...)` without `export` is module-scoped: the
    // epilogue hands such declarations out too.
    let code = format!("{}{EPILOGUE}", source.code);
    let module = Module::declare(ctx.clone(), "function.js", code)
        .catch(ctx)
        .map_err(|e| InvokeError::Init(caught_text(e)))?;
    let (module, done) = module
        .eval()
        .catch(ctx)
        .map_err(|e| InvokeError::Init(caught_text(e)))?;
    done.finish::<()>()
        .catch(ctx)
        .map_err(|e| InvokeError::Init(caught_text(e)))?;
    let ns = module.namespace().map_err(init)?;
    let exports: Object = cjs.get("exports").map_err(init)?;
    let local: Object = globals.get("__sluice_local").map_err(init)?;
    globals.remove("__sluice_local").map_err(init)?;
    let pick = |name: &str| -> Option<Function> {
        ns.get::<_, Option<Function>>(name)
            .ok()
            .flatten()
            .or_else(|| exports.get::<_, Option<Function>>(name).ok().flatten())
            .or_else(|| local.get::<_, Option<Function>>(name).ok().flatten())
    };
    match (pick("process"), pick("transform")) {
        (Some(_), Some(_)) => Err(InvokeError::Init(
            "the module exports both process and transform; export one".into(),
        )),
        (Some(f), None) => Ok((Mode::Batch, f)),
        (None, Some(f)) => Ok((Mode::Event, f)),
        (None, None) => Err(InvokeError::Init(
            "the module exports neither process(events, ctx) nor transform(event, ctx)".into(),
        )),
    }
}

/// Hands the wrapper the entry point `f`, its `mode`, what every call's `ctx` starts from
/// (`function`, `version`, `config`, `secrets`) and the log sink, and runs it.
fn install_wrapper<'js>(
    ctx: &Ctx<'js>,
    source: &Source,
    log: LogFn,
    mode: Mode,
    f: Function<'js>,
) -> Result<(), InvokeError> {
    let globals = ctx.globals();
    let init = |e: rquickjs::Error| InvokeError::Init(e.to_string());
    let base = Object::new(ctx.clone()).map_err(init)?;
    base.set("function", source.name.as_str()).map_err(init)?;
    base.set("version", source.version).map_err(init)?;
    let config = ctx.json_parse(source.config.to_string()).map_err(init)?;
    let secrets = ctx.json_parse(source.secrets.to_string()).map_err(init)?;
    base.set("config", config).map_err(init)?;
    base.set("secrets", secrets).map_err(init)?;
    let sink = Function::new(ctx.clone(), move |level: String, message: String| {
        log(&level, &message);
    })
    .map_err(init)?;
    globals.set("__sluice_fn", f).map_err(init)?;
    globals.set("__sluice_mode", mode.as_str()).map_err(init)?;
    globals.set("__sluice_base", base).map_err(init)?;
    globals.set("__sluice_log", sink).map_err(init)?;
    // It holds nothing of the runtime's (a value held would keep the runtime from freeing).
    let from_columns = Function::new(ctx.clone(), |ctx: Ctx<'js>, values: Array<'js>| {
        super::columns::from_columns(&ctx, &values)
    })
    .map_err(init)?;
    globals
        .set("__sluice_from_columns", from_columns)
        .map_err(init)?;
    ctx.eval::<(), _>(WRAPPER)
        .catch(ctx)
        .map_err(|e| InvokeError::Init(caught_text(e)))?;
    Ok(())
}

fn caught_text(e: CaughtError<'_>) -> String {
    let s = match e {
        CaughtError::Exception(ex) => {
            let msg = ex.message().unwrap_or_default();
            let name = ex
                .get::<_, Option<String>>("name")
                .ok()
                .flatten()
                .unwrap_or_else(|| "Error".into());
            match ex.stack().filter(|s| !s.trim().is_empty()) {
                Some(stack) => format!("{name}: {msg}\n{}", stack.trim_end()),
                None => format!("{name}: {msg}"),
            }
        }
        CaughtError::Value(v) => {
            let ctx = v.ctx().clone();
            match ctx.json_stringify(v.clone()) {
                Ok(Some(s)) => format!("thrown: {}", s.to_string().unwrap_or_default()),
                _ => format!("thrown: {v:?}"),
            }
        }
        CaughtError::Error(e) => e.to_string(),
    };
    if s.len() > 4096 {
        let mut cut = 4096;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(code: &str) -> Result<Engine, InvokeError> {
        let source = Source {
            name: "t".into(),
            version: 1,
            code: code.into(),
            config: serde_json::json!({"k": "v"}),
            secrets: serde_json::json!({"token": "s3cret"}),
            memory_mb: 32,
        };
        Engine::load(&source, Arc::new(|_, _| {}), Duration::from_secs(2))
    }

    const T: Duration = Duration::from_secs(2);

    /// Events with properties, context and enrichment to run through functions.
    fn drafts(n: usize) -> Vec<crate::Draft> {
        (0..n)
            .map(|i| {
                let raw: sluice_event::RawEvent = serde_json::from_value(serde_json::json!({
                    "event_id": format!("e{i}"), "source": "web", "protocol": "native",
                    "received_at": 1_764_237_600_000_000i64,
                    "payload": {"event": "Order", "userId": format!("u{i}"),
                        "properties": {"total": 10.5 + i as f64, "n": i, "tags": ["a", {"b": null}], "__proto__": {"p": 1}},
                        "context": {"page": {"url": "https://x.test/?a=1"}, "ip": "81.2.69.1", "日本": "😀"},
                        "timestamp": "2026-11-27T10:00:00.123456Z"}
                }))
                .unwrap();
                let mut d = crate::draft(&raw, sluice_event::Position { partition: 1, offset: i as u64 }).unwrap();
                d.enriched.geo_city = Some("Zürich".into());
                d.enriched.session_index = Some(3);
                d.enriched.geo_latitude = Some(47.5);
                d.enriched.geo_longitude = Some(8.0);
                d.enriched.is_bot = Some(i % 2 == 0);
                d.enriched.page_url = Some("https://x.test/\"q\"?a=1\u{7}".into());
                d
            })
            .collect()
    }

    /// The events a reply turns into, each an output read back as the stage reads it.
    fn outputs(reply: Reply, given: &[crate::Draft]) -> Vec<Result<crate::Draft, String>> {
        let read = |o: Output, origin: &crate::Draft| {
            o.map_err(|u| u.why).and_then(|r| {
                let kept = (r.kept.members != 0).then(|| (&given[r.kept.input], r.kept.members));
                super::super::convert::from_json(r.value, origin, kept)
            })
        };
        match reply {
            Reply::Batch { events, .. } => events.into_iter().map(|o| read(o, &given[0])).collect(),
            Reply::Event { per, errors } => {
                assert!(errors.is_empty(), "{errors:?}");
                per.into_iter()
                    .zip(given)
                    .flat_map(|(r, origin)| match r {
                        Returned::Nothing => Vec::new(),
                        Returned::One(o) => vec![read(o, origin)],
                        Returned::Many(m) => m.into_iter().map(|o| read(o, origin)).collect(),
                    })
                    .collect()
            }
        }
    }

    /// An event built whole, as plain objects.
    struct Eager<'a>(&'a crate::Draft);

    impl Input for Eager<'_> {
        fn to_js<'js>(
            &self,
            ctx: &Ctx<'js>,
            _: &Lazy<'js>,
        ) -> rquickjs::Result<(rquickjs::Value<'js>, Option<Given<'js>>)> {
            let object = super::super::convert::to_js_whole(ctx, self.0)?;
            Ok((object.into_value(), None))
        }
    }

    #[test]
    fn deferred_members_give_what_plain_objects_give() {
        let kept = "let kept; ";
        for code in [
            "export function transform(e) { return e; }",
            "export function transform(e) { e.properties.seen = true; return e; }",
            "export function transform(e) { return {...e, tier: 'gold'}; }",
            "export function transform(e) { e.context = {a: 1}; e.enriched.geo_city = 'Bern'; return e; }",
            "export function transform(e) { delete e.context; delete e.properties; return e; }",
            "export function transform(e) { Object.freeze(e); e.context.page = 1; e.properties.n = e.properties.n + 1; return e; }",
            "export function transform(e) { Object.seal(e); return e; }",
            "export function transform(e) { const c = Object.defineProperties({}, Object.getOwnPropertyDescriptors(e)); c.context.x = 2; return c; }",
            "export function transform(e) { Object.defineProperty(e, 'context', {value: {z: 1}, enumerable: true}); return e; }",
            "export function transform(e) { e.properties.text = JSON.stringify(e); e.properties.keys = Object.keys(e).join(); return e; }",
            "export function transform(e) { return [e, e, {...e, event: 'Copy'}]; }",
            "export function transform(e) { const c = e.context; c.again = e.context === c; return {...e, context: c}; }",
            "export function transform(e) { e.properties.proto = Object.getPrototypeOf(e.properties) === Object.prototype; return e; }",
            // Code run while the answer is read (getters) touches members it reads later.
            "export function transform(e) { Object.defineProperty(e, 'event_id', {get() { e.context.y = 1; return 'x'; }, enumerable: true}); return e; }",
            "export function transform(e) { Object.defineProperty(e.properties, 'g', {get() { e.enriched.geo_city = 'Bern'; delete e.context; return 1; }, enumerable: true}); return e; }",
            &format!(
                "{kept}export function transform(e) {{ const before = kept; kept = e; if (before) e.properties.prev = before.context; return e; }}"
            ),
            "export function process(events) { return events.reverse(); }",
            "export function process(events) { events[1].context.moved = true; return [events[1], events[0], events[2]]; }",
            // Members read and not changed, written back as they were, or given code to run.
            "export function transform(e) { const u = e.context.page.url + e.enriched.geo_city; e.properties.u = u; return e; }",
            "export function transform(e) { e.enriched.geo_city = e.enriched.geo_city; e.context = JSON.parse(JSON.stringify(e.context)); return e; }",
            "export function transform(e) { e.properties.toJSON = function (k) { return {k, n: this.n}; }; e.context.when = new Date(0); return e; }",
            "export function transform(e) { e.properties.big = 2 ** 64; e.properties.f = 0.1 + 0.2; e.properties.neg = -0; e.context.nan = NaN; return e; }",
            "export function transform(e) { e.properties.tags[1] = undefined; e.properties.fn = () => 1; e.context = undefined; return e; }",
            // String members changed, moved between events, removed, set to what they were.
            "export function transform(e) { e.event = 'Renamed'; e.timestamp = 1764237600000; delete e.user_id; e.source = e.source; e.anonymous_id = 'a-' + e.event_id; return e; }",
            "export function transform(e) { e.event_type = 'page'; e.sent_at = e.received_at; e.device_timestamp = null; e.received_at = String(e.received_at); return e; }",
            "export function process(events) { const last = events[events.length - 1]; events[0].event_id = events[1].event_id; events[1].user_id = last.user_id; last.timestamp = events[0].timestamp; return events; }",
            "export function process(events) { const [a, b] = events; return [{...a, event: b.event}, b]; }",
            // Enriched read, copied, changed back and forth, given code or another prototype.
            "export function transform(e) { e.properties.c = e.enriched.geo_city + e.enriched.is_bot; return e; }",
            "export function transform(e) { e.enriched = {...e.enriched}; return e; }",
            "export function transform(e) { const c = e.enriched.geo_city; delete e.enriched.geo_city; e.enriched.geo_city = c; return e; }",
            "export function transform(e) { e.enriched.geo_city = 'Bern'; e.enriched.geo_city = 'Zürich'; e.enriched.is_bot = undefined; return e; }",
            "export function transform(e) { e.enriched.geo_latitude = 47.5; e.enriched.session_index = 3.0; e.enriched.geo_longitude = 8; return e; }",
            "export function transform(e) { Object.defineProperty(e.enriched, 'geo_city', {get() { return 'Basel'; }, enumerable: true}); return e; }",
            "export function transform(e) { Object.setPrototypeOf(e.enriched, {toJSON() { return {geo_city: 'Chur'}; }}); return e; }",
            "export function transform(e) { e.enriched.toJSON = function () { return {ua_os: 'Linux'}; }; return e; }",
            "export function transform(e) { Object.defineProperty(e, 'enriched', {get() { return {geo_city: 'Sion'}; }, enumerable: true}); return e; }",
            "export function transform(e) { Object.freeze(e); e.enriched.geo_city = 'Thun'; return e; }",
            "export function transform(e) { Object.seal(e); e.properties.c = e.enriched.geo_city; return e; }",
            "export function process(events) { const [a, b] = events; b.enriched = a.enriched; return events; }",
            "export function transform(e) { e.enriched = JSON.parse(JSON.stringify(e.enriched)); e.properties.same = Object.keys(e.enriched).join(); return e; }",
        ] {
            let given = drafts(3);
            let lazy = load(code).unwrap();
            let plain = load(code).unwrap();
            for batch in [&given[..], &given[1..]] {
                let refs: Vec<&crate::Draft> = batch.iter().collect();
                let got = outputs(lazy.call(&refs, 1, None, T).unwrap(), batch);
                let eager: Vec<Eager> = batch.iter().map(Eager).collect();
                let refs: Vec<&Eager> = eager.iter().collect();
                let want = outputs(plain.call(&refs, 1, None, T).unwrap(), batch);
                assert_eq!(got, want, "{code}");
                assert!(
                    !got.is_empty() && got.iter().all(Result::is_ok),
                    "{code}: {got:?}"
                );
            }
        }
    }

    #[test]
    fn untouched_members_are_not_read_back() {
        let given = drafts(2);
        let refs: Vec<&crate::Draft> = given.iter().collect();
        let e =
            load("export function transform(e) { e.properties.seen = true; return e; }").unwrap();
        let Reply::Event { per, .. } = e.call(&refs, 1, None, T).unwrap() else {
            panic!("not a per-event reply");
        };
        for (i, r) in per.into_iter().enumerate() {
            let Returned::One(Ok(read)) = r else {
                panic!("{r:?}");
            };
            assert_eq!(read.kept.input, i);
            // Context and enriched were never touched, nor any string member the event has:
            // left out, taken from the input.
            let d = &given[i];
            let has = [
                true,
                true,
                true,
                true,
                d.user_id.is_some(),
                d.anonymous_id.is_some(),
                true,
                d.sent_at.is_some(),
                true,
                d.device_timestamp.is_some(),
            ];
            let strings = (0..has.len()).filter(|&k| has[k]);
            let want = strings.fold(0b110, |mask, k| mask | 1 << (3 + k));
            assert_eq!(read.kept.members, want);
            let members: Vec<&String> = read.value.as_object().unwrap().keys().collect();
            assert_eq!(members, ["properties", "raw"]);
            assert_eq!(read.value["properties"]["seen"], true);
        }
    }

    #[test]
    fn an_enriched_only_read_is_not_read_back() {
        let given = drafts(2);
        let refs: Vec<&crate::Draft> = given.iter().collect();
        let kept_enriched = |e: &Engine, code: &str| -> Vec<bool> {
            let Reply::Event { per, .. } = e.call(&refs, 1, None, T).unwrap() else {
                panic!("not a per-event reply");
            };
            per.into_iter()
                .map(|r| {
                    let Returned::One(Ok(read)) = r else {
                        panic!("{code}: {r:?}");
                    };
                    let kept = read.kept.members & 0b100 != 0;
                    assert_eq!(read.value.get("enriched").is_none(), kept, "{code}");
                    kept
                })
                .collect()
        };
        for (code, kept) in [
            ("e.properties.c = e.enriched.geo_city", true),
            ("e.enriched = {...e.enriched}", true),
            (
                "Object.freeze(e); e.properties.c = e.enriched.geo_city",
                true,
            ),
            ("e.enriched.geo_city = 'Bern'", false),
            ("e.enriched.geo_city = 'Zü' + 'rich'", false),
            ("delete e.enriched.is_bot", false),
            ("e.enriched.mine = 1", false),
            (
                "const c = e.enriched.geo_city; delete e.enriched.geo_city; e.enriched.geo_city = c",
                false,
            ),
            ("e.enriched.geo_longitude = 8.5", false),
            ("e.enriched.toJSON = () => ({geo_city: 'Chur'})", false),
            (
                "Object.setPrototypeOf(e.enriched, {toJSON() { return {}; }})",
                false,
            ),
            ("e.enriched.session_index = '3'", false),
        ] {
            let e = load(&format!(
                "export function transform(e) {{ {code}; return e; }}"
            ))
            .unwrap();
            // Read as text the first time, as column values once the function has read one.
            assert_eq!(kept_enriched(&e, code), [false, false], "{code}");
            assert_eq!(kept_enriched(&e, code), [kept, kept], "{code}");
        }
        // A function that never reads it goes on getting (and leaving) the text.
        let e =
            load("export function transform(e) { e.properties.seen = true; return e; }").unwrap();
        for _ in 0..2 {
            assert_eq!(kept_enriched(&e, "seen"), [true, true]);
        }
    }

    #[test]
    fn batch_and_event_modes_answer() {
        let e = load("export function process(events, ctx) { return events.map(e => ({...e, c: ctx.config.k, p: ctx.partition})); }").unwrap();
        assert_eq!(e.mode(), Mode::Batch);
        let out = e.invoke(r#"[{"a":1}]"#, 3, Some("web"), T).unwrap();
        assert_eq!(out, r#"{"events":[{"a":1,"c":"v","p":3}]}"#);
        let e = load("export function transform(e, ctx) { if (e.a === 2) throw new Error('two'); return e.a === 3 ? null : {...e, s: ctx.secrets.token, src: ctx.source}; }").unwrap();
        assert_eq!(e.mode(), Mode::Event);
        let out: serde_json::Value = serde_json::from_str(
            &e.invoke(r#"[{"a":1,"source":"web"},{"a":2},{"a":3}]"#, 0, None, T)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            out["per"],
            serde_json::json!([{"a":1,"source":"web","s":"s3cret","src":"web"}, null, null])
        );
        assert_eq!(out["errors"][0][0], 1);
        assert!(out["errors"][0][1].as_str().unwrap().contains("two"));
        // `null` is what the runtime throws when it cannot even make an out-of-memory error.
        let e = load("export function transform(e) { throw null; }").unwrap();
        let out: serde_json::Value =
            serde_json::from_str(&e.invoke(r#"[{"a":1}]"#, 0, None, T).unwrap()).unwrap();
        let why = out["errors"][0][1].as_str().unwrap();
        assert!(why.starts_with("null was thrown: out of memory"), "{why}");
        // Each event's ctx names its own source and the call's partition.
        let e = load(
            "export function transform(e, ctx) { return {src: ctx.source, p: ctx.partition}; }",
        )
        .unwrap();
        for p in [0, 2] {
            let events = r#"[{"source":"web"},{"source":"app"},{"source":"web"},{}]"#;
            let out: serde_json::Value =
                serde_json::from_str(&e.invoke(events, p, None, T).unwrap()).unwrap();
            assert_eq!(
                out["per"],
                serde_json::json!([{"src": "web", "p": p}, {"src": "app", "p": p}, {"src": "web", "p": p}, {"p": p}])
            );
        }
    }

    #[test]
    fn async_functions_and_commonjs_work() {
        let e =
            load("export async function process(events) { await null; return events; }").unwrap();
        assert_eq!(e.invoke("[1]", 0, None, T).unwrap(), r#"{"events":[1]}"#);
        let e = load("module.exports = { transform: async (e) => [e, e] };").unwrap();
        assert_eq!(
            e.invoke("[1]", 0, None, T).unwrap(),
            r#"{"per":[[1,1]],"errors":[]}"#
        );
        let e = load("function transform(e) { return e; }").unwrap();
        assert_eq!(e.mode(), Mode::Event);
    }

    #[test]
    fn loops_are_interrupted_and_memory_is_capped() {
        let e =
            load("export function process(ev) { if (ev[0] === 1) { while (true) {} } return ev; }")
                .unwrap();
        let t = Duration::from_millis(100);
        assert_eq!(e.invoke("[1]", 0, None, t), Err(InvokeError::Timeout(t)));
        // The same runtime still answers after an interrupt.
        assert_eq!(e.invoke("[2]", 0, None, t).unwrap(), r#"{"events":[2]}"#);
        let e = load("export function process(ev) { const a = []; while (true) a.push('x'.repeat(1000) + a.length); }").unwrap();
        match e.invoke("[1]", 0, None, Duration::from_secs(20)) {
            Err(InvokeError::OutOfMemory(_)) => {}
            other => panic!("expected out of memory, got {other:?}"),
        }
        let e = load("export function process(ev) { const f = (n) => f(n + 1) + 1; return f(0); }")
            .unwrap();
        match e.invoke("[1]", 0, None, T) {
            Err(InvokeError::Exception(m)) => assert!(m.contains("stack"), "{m}"),
            other => panic!("expected a stack overflow, got {other:?}"),
        }
    }

    #[test]
    fn the_sandbox_has_no_way_out() {
        for probe in [
            "typeof require",
            "typeof fetch",
            "typeof std",
            "typeof os",
            "typeof XMLHttpRequest",
            "typeof setTimeout",
        ] {
            let e = load(&format!(
                "export function process(ev) {{ return [{probe}]; }}"
            ))
            .unwrap();
            assert_eq!(
                e.invoke("[]", 0, None, T).unwrap(),
                r#"{"events":["undefined"]}"#,
                "{probe}"
            );
        }
        let err = load("import * as std from 'std'; export function process(e) { return e; }")
            .err()
            .unwrap();
        assert!(matches!(err, InvokeError::Init(_)), "{err:?}");
        let err = load("export async function process(e) { return await import('os'); }")
            .unwrap()
            .invoke("[]", 0, None, T)
            .unwrap_err();
        assert!(matches!(err, InvokeError::Exception(_)), "{err:?}");
    }

    #[test]
    fn bad_modules_and_answers_are_reported() {
        assert!(matches!(
            load("export const x = 1;"),
            Err(InvokeError::Init(_))
        ));
        assert!(matches!(
            load("syntax error here"),
            Err(InvokeError::Init(_))
        ));
        assert!(matches!(
            load("while (true) {} export function process(e) { return e; }"),
            Err(InvokeError::Init(m)) if m.contains("timeout")
        ));
        let e = load("export function process(ev) { return 5; }").unwrap();
        assert!(
            matches!(e.invoke("[]", 0, None, T), Err(InvokeError::Exception(m)) if m.contains("must return"))
        );
        let e = load("export function process(ev) { throw {code: 7}; }").unwrap();
        assert!(
            matches!(e.invoke("[]", 0, None, T), Err(InvokeError::Exception(m)) if m.contains("\"code\":7"))
        );
        let e = load("export function process(ev) { return new Promise(() => {}); }").unwrap();
        assert!(matches!(
            e.invoke("[]", 0, None, T),
            Err(InvokeError::BadResult(_))
        ));
    }

    #[test]
    fn console_goes_to_the_log() {
        let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let source = Source {
            name: "t".into(),
            version: 1,
            code: "export function transform(e, ctx) { console.log('saw', e); ctx.log('via ctx'); console.error(new Error('boom')); return e; }".into(),
            config: serde_json::json!({}),
            secrets: serde_json::json!({}),
            memory_mb: 16,
        };
        let e = Engine::load(
            &source,
            Arc::new(move |level, msg| l2.lock().push(format!("{level} {msg}"))),
            T,
        )
        .unwrap();
        e.invoke(r#"[{"a":1}]"#, 0, None, T).unwrap();
        let lines = lines.lock();
        assert_eq!(lines[0], r#"info saw {"a":1}"#);
        assert_eq!(lines[1], "info via ctx");
        assert!(lines[2].starts_with("error Error: boom"), "{}", lines[2]);
    }

    #[test]
    fn unreadable_outputs_are_named_and_keep_their_raw() {
        let e = load("export function process(ev) { return [{...ev[0], n: 1n}, null, undefined, {ok: true}]; }").unwrap();
        let input = serde_json::json!({"raw": {"partition": 1, "offset": 7}});
        match e.call(&[&input], 1, None, T).unwrap() {
            Reply::Batch { events, failures } => {
                assert_eq!(failures, None);
                assert_eq!(events.len(), 2);
                let bad = events[0].clone().unwrap_err();
                assert!(
                    bad.why.contains("BigInt") && bad.why.contains("(at n)"),
                    "{}",
                    bad.why
                );
                assert_eq!(bad.raw, serde_json::json!({"partition": 1, "offset": 7}));
                assert_eq!(
                    events[1].as_ref().map(|r| &r.value),
                    Ok(&serde_json::json!({"ok": true}))
                );
            }
            other => panic!("expected a batch answer, got {other:?}"),
        }
        let e = load("export function transform(e) { return e.k === 1 ? Symbol('s') : e.k === 2 ? [e, null, () => 1] : undefined; }").unwrap();
        let input: Vec<serde_json::Value> = (0..3).map(|k| serde_json::json!({ "k": k })).collect();
        let input: Vec<&serde_json::Value> = input.iter().collect();
        match e.call(&input, 0, None, T).unwrap() {
            Reply::Event { per, errors } => {
                assert!(errors.is_empty());
                assert_eq!(per[0], Returned::Nothing);
                assert!(
                    matches!(&per[1], Returned::One(Err(u)) if u.why.contains("not a symbol")),
                    "{:?}",
                    per[1]
                );
                match &per[2] {
                    Returned::Many(v) => {
                        assert_eq!(v.len(), 2);
                        assert_eq!(
                            v[0].as_ref().map(|r| &r.value),
                            Ok(&serde_json::json!({"k": 2}))
                        );
                        assert!(matches!(&v[1], Err(u) if u.why.contains("not a function")));
                    }
                    other => panic!("expected two outputs, got {other:?}"),
                }
            }
            other => panic!("expected a per-event answer, got {other:?}"),
        }
    }

    #[test]
    fn an_unreadable_member_of_an_event_is_named() {
        let given = drafts(1);
        let refs: Vec<&crate::Draft> = given.iter().collect();
        for (code, want) in [
            (
                "e.properties.tags.push(e.properties.tags)",
                "a cycle: the value contains itself (at properties.tags[2])",
            ),
            (
                "e.context.page.n = 1n",
                "a BigInt has no JSON form; convert it with Number() or String() (at context.page.n)",
            ),
            (
                r"e.enriched.geo_city = '\ud800'",
                "a string holds an unpaired surrogate (it is not valid Unicode) (at enriched.geo_city)",
            ),
        ] {
            let e = load(&format!(
                "export function transform(e) {{ {code}; return e; }}"
            ))
            .unwrap();
            let Reply::Event { per, errors } = e.call(&refs, 1, None, T).unwrap() else {
                panic!("not a per-event reply");
            };
            assert!(errors.is_empty(), "{code}: {errors:?}");
            match &per[0] {
                Returned::One(Err(u)) => assert!(u.why.starts_with(want), "{code}: {}", u.why),
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_past_the_memory_limit_and_throwing_getters_fail_the_call() {
        // 100k references to one 1 KB object: 100 MB as text, past the 32 MiB limit.
        let e = load("export function process(ev) { const s = {pad: 'x'.repeat(1000)}; return new Array(100000).fill(s); }").unwrap();
        match e.call::<serde_json::Value>(&[], 0, None, T) {
            Err(InvokeError::OutOfMemory(m)) => assert!(m.contains("answer is larger"), "{m}"),
            other => panic!("expected out of memory, got {other:?}"),
        }
        let e = load(
            "export function process(ev) { return [{get x() { throw new Error('getter'); }}]; }",
        )
        .unwrap();
        match e.call::<serde_json::Value>(&[], 0, None, T) {
            Err(InvokeError::Exception(m)) => assert!(m.contains("getter"), "{m}"),
            other => panic!("expected the getter's exception, got {other:?}"),
        }
        let e = load("export function process(ev) { return [{get x() { while (true) {} }}]; }")
            .unwrap();
        let t = Duration::from_millis(100);
        assert_eq!(
            e.call::<serde_json::Value>(&[], 0, None, t),
            Err(InvokeError::Timeout(t))
        );
    }
}
