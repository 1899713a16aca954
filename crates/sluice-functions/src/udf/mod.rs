//! User functions: JavaScript deployed into the running pipeline.
//!
//! A function is an ES module (CommonJS `module.exports` works too) that exports either
//! `process(events, ctx)` — one call per batch — or `transform(event, ctx)` — one call per
//! event. It returns the events to keep: changed, dropped (an empty array, or `null` from
//! `transform`) or split (several events, or an array from `transform`). `ctx` holds `source`
//! (per event in `transform`; in `process` only when the whole batch has one source, else
//! `null`), `partition`, `function`, `version`, `config`, `secrets` and `log`.
//!
//! - [`Functions`] is the handle the server and the runner share: deploy, roll back, delete,
//!   list, logs, stats; and [`Functions::live`], the set that runs now.
//! - `store.rs` keeps versions on disk; `engine.rs` is the QuickJS sandbox; `pool.rs` the worker
//!   threads; `stage.rs` the Kinesis-trigger semantics (batching, retries, bisecting, partial
//!   responses, record age); `convert.rs` events to and from what a function sees; `value.rs`
//!   values into and out of the runtime without JSON text; `meter.rs` metering;
//!   `logs.rs` what functions print; `seal.rs` secrets sealed at rest; `reseal.rs` every
//!   stored secret sealed again with the current key.
//!
//! Swapping: every change builds a new [`Live`] set and swaps it in atomically. The runner takes
//! the set once per batch, so each batch runs wholly on one version and a swap falls between
//! batches — the runner's exactly-once protocol is untouched. Pools of versions no longer live
//! shut down when their last batch is done.

mod columns;
mod convert;
mod engine;
mod logs;
mod meter;
mod pool;
mod reseal;
mod seal;
pub(crate) mod stage;
mod store;
mod value;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use sluice_event::ErrorKind;

pub use engine::{InvokeError, Mode, Source};
pub use meter::{LAMBDA_USD_PER_GB_SECOND, LAMBDA_USD_PER_REQUEST, MeterSnapshot};
pub use pool::WorkerStart;
pub use reseal::{FunctionReseal, ResealReport, SecretCounts};
pub use seal::{Keyring, SEALED_PREFIX, SecretsKey};
pub use store::{Bundle, BundledVersion, DeployOutcome, Version};

use engine::{Engine, LogFn};
use logs::Logs;
use meter::Meter;
use pool::Pool;

/// A built-in stage a function can run after; ordered as in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Raw record → event.
    Canonicalize,
    /// Schema validation.
    Validate,
    /// The built-in enrichers.
    Enrich,
}

impl Stage {
    /// Every stage, in chain order.
    pub const ALL: [Stage; 3] = [Stage::Canonicalize, Stage::Validate, Stage::Enrich];

    /// Its name, as a function's `after` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canonicalize => "canonicalize",
            Self::Validate => "validate",
            Self::Enrich => "enrich",
        }
    }
}

/// Why a function operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UdfError {
    /// Bad code, name or settings.
    #[error("{0}")]
    Invalid(String),
    /// No such function or version.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the functions deployed.
    #[error("{0}")]
    Conflict(String),
    /// The store could not be read or written.
    #[error("function store: {0}")]
    Io(String),
}

impl UdfError {
    /// Classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Io(_) => ErrorKind::Internal,
        }
    }
}

/// What happens to an event a function gave up on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// A `function_failure` bad row with the error and the function version (replayable).
    #[default]
    Bad,
    /// The event goes on unchanged, as if the function were not there.
    Skip,
}

/// A function's settings, given at deploy (all optional; Lambda's names where they exist).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FunctionSpec {
    /// Where it runs: after `canonicalize`, `validate`, `enrich` (default), or after another
    /// function (by name).
    pub after: String,
    /// Most events per invocation (Lambda `BatchSize`). Default 100, at most 10,000.
    pub batch_size: usize,
    /// How long the runner may wait to fill a batch (Lambda `MaximumBatchingWindowInSeconds`),
    /// in ms. Default 0, at most 300,000.
    pub batch_window_ms: u64,
    /// Longest invocation, in ms. Default 3,000, at most 900,000.
    pub timeout_ms: u64,
    /// Memory limit of each runtime, in MiB (also the billed memory). Default 128, 16–10,240.
    pub memory_mb: u32,
    /// Invocations of one partition's events at a time (Lambda `ParallelizationFactor`).
    /// Default 1, at most 10. Results keep the partition's order.
    pub parallelism: u32,
    /// Retries of a failed batch that cannot be bisected further (Lambda
    /// `MaximumRetryAttempts`). Default 2, at most 10,000.
    pub max_retries: u32,
    /// Split a failed batch in two and try the halves (Lambda `BisectBatchOnFunctionError`).
    /// Default on.
    pub bisect_on_error: bool,
    /// Events received longer ago than this many seconds are not invoked again; they fail
    /// (Lambda `MaximumRecordAgeInSeconds`). 0 (default) means no limit.
    pub max_record_age_s: u64,
    /// What happens to events given up on. Default `bad`.
    pub on_failure: OnFailure,
    /// `ctx.config`: any JSON object.
    pub config: serde_json::Value,
    /// `ctx.secrets`: names to strings. Stored with the version (file mode 0600), sealed when
    /// the node has a secrets key (`seal.rs`), never shown.
    pub secrets: BTreeMap<String, String>,
}

impl Default for FunctionSpec {
    fn default() -> Self {
        Self {
            after: "enrich".into(),
            batch_size: 100,
            batch_window_ms: 0,
            timeout_ms: 3000,
            memory_mb: 128,
            parallelism: 1,
            max_retries: 2,
            bisect_on_error: true,
            max_record_age_s: 0,
            on_failure: OnFailure::Bad,
            config: serde_json::json!({}),
            secrets: BTreeMap::new(),
        }
    }
}

impl FunctionSpec {
    /// Checks every value; `Err` says which is wrong.
    pub fn validate(&self) -> Result<(), UdfError> {
        let bad = |m: String| Err(UdfError::Invalid(m));
        if !(1..=10_000).contains(&self.batch_size) {
            return bad("batch_size must be between 1 and 10000".into());
        }
        if self.batch_window_ms > 300_000 {
            return bad("batch_window_ms must be at most 300000 (5 minutes)".into());
        }
        if !(1..=900_000).contains(&self.timeout_ms) {
            return bad("timeout_ms must be between 1 and 900000 (15 minutes)".into());
        }
        if !(16..=10_240).contains(&self.memory_mb) {
            return bad("memory_mb must be between 16 and 10240".into());
        }
        if !(1..=10).contains(&self.parallelism) {
            return bad("parallelism must be between 1 and 10".into());
        }
        if self.max_retries > 10_000 {
            return bad("max_retries must be at most 10000".into());
        }
        if self.max_record_age_s > 604_800 {
            return bad("max_record_age_s must be at most 604800 (7 days)".into());
        }
        if !self.config.is_object() {
            return bad("config must be a JSON object".into());
        }
        if self.after.is_empty() {
            return bad(
                "after must name a stage (canonicalize, validate, enrich) or a function".into(),
            );
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One running function version.
pub(crate) struct LiveFn {
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) mode: Mode,
    pub(crate) spec: FunctionSpec,
    pub(crate) pool: Pool,
    pub(crate) meter: Arc<Meter>,
    pub(crate) log: LogFn,
}

impl LiveFn {
    /// The `function` column of its bad rows.
    pub(crate) fn label(&self) -> String {
        format!("function:{}:v{}", self.name, self.version)
    }
}

/// The functions that run now, per built-in stage, in order.
#[derive(Default)]
pub struct Live {
    /// Indexed by [`Stage`].
    after: [Vec<Arc<LiveFn>>; 3],
    /// Why what the store holds does not run (a function taken from another node that cannot
    /// start here): the runner processes nothing until it does.
    blocked: Option<String>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<Vec<String>> = self
            .after
            .iter()
            .map(|s| {
                s.iter()
                    .map(|f| format!("{}:v{}", f.name, f.version))
                    .collect()
            })
            .collect();
        f.debug_struct("Live").field("after", &names).finish()
    }
}

impl Live {
    /// Why the functions stored cannot all run, when they cannot: events must wait rather than
    /// pass without them.
    pub fn blocked(&self) -> Option<&str> {
        self.blocked.as_deref()
    }

    /// The functions that run after `stage`, in order.
    pub(crate) fn after(&self, stage: Stage) -> &[Arc<LiveFn>] {
        &self.after[stage as usize]
    }

    /// Whether no function runs.
    pub fn is_empty(&self) -> bool {
        self.after.iter().all(Vec::is_empty)
    }

    /// The longest batching window of any running function.
    pub fn batch_window(&self) -> Duration {
        self.after
            .iter()
            .flatten()
            .map(|f| Duration::from_millis(f.spec.batch_window_ms))
            .max()
            .unwrap_or_default()
    }

    /// The largest batch of any function with a batching window (what the runner waits to fill).
    pub fn windowed_batch_size(&self) -> usize {
        self.after
            .iter()
            .flatten()
            .filter(|f| f.spec.batch_window_ms > 0)
            .map(|f| f.spec.batch_size)
            .max()
            .unwrap_or(0)
    }

    /// The largest batch of any running function (the runner reads at least that many).
    pub fn max_batch_size(&self) -> usize {
        self.after
            .iter()
            .flatten()
            .map(|f| f.spec.batch_size)
            .max()
            .unwrap_or(0)
    }
}

/// A function as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionInfo {
    /// Name.
    pub name: String,
    /// Running version.
    pub version: u32,
    /// `batch` or `event`.
    pub mode: Mode,
    /// Position in the chain.
    pub after: String,
    /// Versions stored.
    pub versions: usize,
    /// When the running version was deployed.
    pub deployed_at: String,
}

/// A version as `show` shows it (secrets are listed by name only).
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    /// Version.
    pub version: u32,
    /// `batch` or `event`.
    pub mode: Mode,
    /// Settings, secrets replaced by `"***"`.
    pub spec: FunctionSpec,
    /// SHA-256 of the code.
    pub code_sha256: String,
    /// When it was deployed.
    pub deployed_at: String,
}

/// One function in full.
#[derive(Clone, Debug, Serialize)]
pub struct FunctionDetail {
    /// Name.
    pub name: String,
    /// Running version.
    pub active: u32,
    /// The versions activated by deploys and `rollback --to`, oldest first; the last runs, and
    /// a plain rollback removes it.
    pub history: Vec<u32>,
    /// Every version.
    pub versions: Vec<VersionInfo>,
    /// The running version's code.
    pub code: String,
}

/// What a deploy did.
#[derive(Clone, Debug, Serialize)]
pub struct DeployReport {
    /// Function.
    pub name: String,
    /// The version that runs now.
    pub version: u32,
    /// Whether a version was created.
    pub outcome: DeployOutcome,
    /// Entry point found.
    pub mode: Mode,
}

/// The deployed functions of a node: the store, the running set, meters and logs.
pub struct Functions {
    store: store::Store,
    logs: Arc<Logs>,
    threads_per_unit: usize,
    live: RwLock<Arc<Live>>,
    meters: Mutex<BTreeMap<(String, u32), Arc<Meter>>>,
    changes: Mutex<()>,
    /// Run first on every worker thread a function starts.
    worker_start: Option<WorkerStart>,
    /// How secrets are stored.
    secrets: SecretsAtRest,
}

/// How a node stores the secrets of the functions deployed on it.
#[derive(Clone, Debug, Default)]
pub enum SecretsAtRest {
    /// As given, in the version files (mode 0600): a node whose functions no other node reads.
    #[default]
    Plain,
    /// Sealed with the current key of these (`[functions] secrets_key_file`; the previous ones
    /// only open), wherever they are stored.
    Sealed(Arc<Keyring>),
    /// Refused: the functions are shared through a store other parties can read (NATS), and
    /// the node has no key to seal secrets with.
    Refused,
}

impl SecretsAtRest {
    fn key(&self) -> Option<&Keyring> {
        match self {
            Self::Sealed(k) => Some(k),
            Self::Plain | Self::Refused => None,
        }
    }
}

impl std::fmt::Debug for Functions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Functions")
            .field("live", &*self.live.read())
            .finish_non_exhaustive()
    }
}

impl Functions {
    /// Opens the functions of `dir` (`<data_dir>/functions`) and starts the deployed ones.
    /// `partitions` sizes the worker pools: each function gets `parallelism × partitions`
    /// runtimes (at most 64).
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, UdfError> {
        Self::open_with(dir, partitions, None, SecretsAtRest::Plain)
    }

    /// [`Functions::open`], with `worker_start` run first on every worker thread a function
    /// starts (the server lowers their priority to the stages' own with it), and secrets stored
    /// as `secrets` says.
    pub fn open_with(
        dir: &Path,
        partitions: u32,
        worker_start: Option<WorkerStart>,
        secrets: SecretsAtRest,
    ) -> Result<Self, UdfError> {
        let f = Self {
            store: store::Store::open(dir.join("deployed"))?,
            logs: Arc::new(Logs::new(Some(dir.join("logs")))),
            threads_per_unit: partitions.max(1) as usize,
            live: RwLock::default(),
            meters: Mutex::default(),
            changes: Mutex::default(),
            worker_start,
            secrets,
        };
        f.refresh()?;
        Ok(f)
    }

    /// The set that runs now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().clone()
    }

    /// Deploys `code` as function `name`: checks the settings, loads the module in a sandbox
    /// (its top-level code runs, under the timeout) to find its entry point, stores a new
    /// version and swaps it in. Deploying what already runs changes nothing.
    pub fn deploy(
        &self,
        name: &str,
        code: &str,
        spec: &FunctionSpec,
    ) -> Result<DeployReport, UdfError> {
        store::check_name(name)?;
        spec.validate()?;
        if code.len() > 5 << 20 {
            return Err(UdfError::Invalid("the code is larger than 5 MiB".into()));
        }
        let _guard = self.changes.lock();
        let all = self.store.load_all()?;
        let mut afters: BTreeMap<String, String> = all
            .iter()
            .filter_map(|(n, d)| {
                d.active_version()
                    .map(|v| (n.clone(), v.spec.after.clone()))
            })
            .collect();
        afters.insert(name.to_string(), spec.after.clone());
        order(&afters).map_err(UdfError::Invalid)?;
        if matches!(self.secrets, SecretsAtRest::Refused) && !spec.secrets.is_empty() {
            return Err(UdfError::Invalid(
                "secrets are shared with every node through NATS and this node has no key to \
                 seal them with: set [functions] secrets_key_file (the same key on every runner \
                 node)"
                    .into(),
            ));
        }
        let stored = FunctionSpec {
            secrets: seal::seal_all(self.secrets.key(), name, &spec.secrets)?,
            ..spec.clone()
        };
        let mode = check_code(name, code, spec)?;
        let (version, outcome) = self.store.deploy(name, code, mode, &stored)?;
        self.refresh()?;
        Ok(DeployReport {
            name: name.to_string(),
            version,
            outcome,
            mode,
        })
    }

    /// Runs `to`, or the version that ran before the current one. Returns the version. A
    /// version that cannot start (its secrets sealed with a key this node no longer has, say)
    /// is refused, and the one that ran keeps running.
    pub fn rollback(&self, name: &str, to: Option<u32>) -> Result<u32, UdfError> {
        let _guard = self.changes.lock();
        let before = self.store.load(name)?.map(|d| d.history);
        let v = self.store.rollback(name, to)?;
        if let Err(e) = self.refresh() {
            if let Some(history) = before {
                self.store.restore_history(name, history)?;
                self.refresh()?;
            }
            return Err(e);
        }
        Ok(v)
    }

    /// Removes a function; refused while another function runs after it.
    pub fn delete(&self, name: &str) -> Result<(), UdfError> {
        let _guard = self.changes.lock();
        let all = self.store.load_all()?;
        if let Some((other, _)) = all.iter().find(|(n, d)| {
            n.as_str() != name && d.active_version().is_some_and(|v| v.spec.after == name)
        }) {
            return Err(UdfError::Conflict(format!(
                "{other} runs after {name}; redeploy or delete {other} first"
            )));
        }
        self.store.delete(name)?;
        self.logs.remove(name);
        self.refresh()
    }

    /// Seals every secret of every stored version of every function with the node's current
    /// key, in place (`reseal.rs`): no version is created and nothing else changes. With
    /// `dry_run`, only says what it would do, and which keys the stored values use. Refused,
    /// with nothing written, when the node has no key or a value cannot be resealed.
    pub fn reseal(&self, dry_run: bool) -> Result<ResealReport, UdfError> {
        let keys = reseal::current(self.secrets.key())?;
        let _guard = self.changes.lock();
        let plans: Vec<reseal::Plan> = self
            .store
            .load_all()?
            .values()
            .map(|d| reseal::plan(keys, d, dry_run))
            .collect();
        let report = ResealReport::new(keys.current().id(), dry_run, &plans);
        if !dry_run {
            reseal::refuse_any(&report.refused)?;
            for p in &plans {
                self.store.rewrite_records(&p.report.name, &p.rewrite)?;
            }
        }
        Ok(report)
    }

    /// [`Functions::reseal`] of function `name` alone (`None`: it is not deployed), as a node
    /// sharing its functions does again once it took another node's change of it.
    pub fn reseal_function(&self, name: &str) -> Result<Option<FunctionReseal>, UdfError> {
        store::check_name(name)?;
        let keys = reseal::current(self.secrets.key())?;
        let _guard = self.changes.lock();
        let Some(d) = self.store.load(name)? else {
            return Ok(None);
        };
        let plan = reseal::plan(keys, &d, false);
        reseal::refuse_any(&plan.refused)?;
        self.store.rewrite_records(name, &plan.rewrite)?;
        Ok(Some(plan.report))
    }

    /// Function `name` whole, to share with other nodes (`None`: not deployed).
    pub fn export(&self, name: &str) -> Result<Option<Bundle>, UdfError> {
        let _guard = self.changes.lock();
        self.store.export(name)
    }

    /// Makes function `name` what another node stored (`None`: deleted there) and runs the
    /// result from the next batch on. Whether anything changed.
    pub fn import(&self, name: &str, bundle: Option<&Bundle>) -> Result<bool, UdfError> {
        let _guard = self.changes.lock();
        let changed = self.store.import(name, bundle)?;
        if changed {
            if bundle.is_none() {
                self.logs.remove(name);
            }
            self.refresh()?;
        }
        Ok(changed)
    }

    /// Starts whatever the store holds that does not run yet; the first function that cannot
    /// start, and why (after [`Functions::import`]s whose functions did not start).
    pub fn run_stored(&self) -> Result<(), UdfError> {
        let _guard = self.changes.lock();
        self.refresh()
    }

    /// The name of every deployed function.
    pub fn names(&self) -> Result<Vec<String>, UdfError> {
        Ok(self.store.load_all()?.into_keys().collect())
    }

    /// Every function, by name.
    pub fn list(&self) -> Result<Vec<FunctionInfo>, UdfError> {
        Ok(self
            .store
            .load_all()?
            .into_values()
            .filter_map(|d| {
                let v = d.active_version()?;
                Some(FunctionInfo {
                    name: d.name.clone(),
                    version: v.version,
                    mode: v.mode,
                    after: v.spec.after.clone(),
                    versions: d.versions.len(),
                    deployed_at: v.deployed_at.clone(),
                })
            })
            .collect())
    }

    /// One function with its versions and running code.
    pub fn show(&self, name: &str) -> Result<FunctionDetail, UdfError> {
        let d = self
            .store
            .load(name)?
            .ok_or_else(|| UdfError::NotFound(format!("no function named {name:?}")))?;
        let code = self.store.code(name, d.active)?;
        Ok(FunctionDetail {
            name: d.name,
            active: d.active,
            history: d.history,
            versions: d
                .versions
                .into_iter()
                .map(|v| VersionInfo {
                    version: v.version,
                    mode: v.mode,
                    spec: FunctionSpec {
                        secrets: v
                            .spec
                            .secrets
                            .keys()
                            .map(|k| (k.clone(), "***".to_string()))
                            .collect(),
                        ..v.spec
                    },
                    code_sha256: v.code_sha256,
                    deployed_at: v.deployed_at,
                })
                .collect(),
            code,
        })
    }

    /// The last `n` lines function `name` printed.
    pub fn logs(&self, name: &str, n: usize) -> Result<Vec<String>, UdfError> {
        store::check_name(name)?;
        if self.store.load(name)?.is_none() {
            return Err(UdfError::NotFound(format!("no function named {name:?}")));
        }
        Ok(self.logs.tail(name, n))
    }

    /// Metering of every version that ran since the process started.
    pub fn stats(&self) -> Vec<MeterSnapshot> {
        self.meters.lock().values().map(|m| m.snapshot()).collect()
    }

    /// The metering in the Prometheus text format, for `/metrics`.
    pub fn render_prometheus(&self) -> String {
        let meters: Vec<Arc<Meter>> = self.meters.lock().values().cloned().collect();
        meter::render_prometheus(meters.iter().map(|m| &**m))
    }

    /// Rebuilds the running set from the store, keeping the pools of versions that still run.
    /// When that fails, the set that ran goes on, marked blocked with the reason, until a
    /// refresh succeeds.
    fn refresh(&self) -> Result<(), UdfError> {
        let built = self.build();
        let mut live = self.live.write();
        *live = match &built {
            Ok(next) => next.clone(),
            Err(e) => Arc::new(Live {
                after: live.after.clone(),
                blocked: Some(e.to_string()),
            }),
        };
        built.map(|_| ())
    }

    /// The running set the store describes, started.
    fn build(&self) -> Result<Arc<Live>, UdfError> {
        let all = self.store.load_all()?;
        let mut versions = BTreeMap::new();
        for (name, d) in &all {
            if let Some(v) = d.active_version() {
                versions.insert(name.clone(), v.clone());
            }
        }
        let afters: BTreeMap<String, String> = versions
            .iter()
            .map(|(n, v)| (n.clone(), v.spec.after.clone()))
            .collect();
        let stages = order(&afters).map_err(UdfError::Invalid)?;
        let current = self.live();
        let running: BTreeMap<(String, u32), Arc<LiveFn>> = current
            .after
            .iter()
            .flatten()
            .map(|f| ((f.name.clone(), f.version), f.clone()))
            .collect();
        let mut next = Live::default();
        for (s, names) in stages.into_iter().enumerate() {
            for name in names {
                let v = &versions[&name];
                let f = match running.get(&(name.clone(), v.version)) {
                    Some(f) => f.clone(),
                    None => Arc::new(self.start(&name, v)?),
                };
                next.after[s].push(f);
            }
        }
        Ok(Arc::new(next))
    }

    fn start(&self, name: &str, v: &Version) -> Result<LiveFn, UdfError> {
        let code = self.store.code(name, v.version)?;
        let meter = self
            .meters
            .lock()
            .entry((name.to_string(), v.version))
            .or_insert_with(|| Arc::new(Meter::new(name, v.version, v.spec.memory_mb)))
            .clone();
        let log = self.logs.writer(name, v.version);
        let threads = (v.spec.parallelism as usize * self.threads_per_unit).min(64);
        let secrets = seal::open_all(self.secrets.key(), name, &v.spec.secrets)?;
        let pool = Pool::start(
            source_of(name, v.version, &code, &v.spec, &secrets),
            threads,
            v.spec.timeout(),
            log.clone(),
            self.worker_start.clone(),
        );
        tracing::info!(function = name, version = v.version, mode = v.mode.as_str(), after = %v.spec.after, threads, "function started");
        Ok(LiveFn {
            name: name.to_string(),
            version: v.version,
            mode: v.mode,
            spec: v.spec.clone(),
            pool,
            meter,
            log,
        })
    }
}

/// What a runtime of `spec` loads, with `secrets` opened.
fn source_of(
    name: &str,
    version: u32,
    code: &str,
    spec: &FunctionSpec,
    secrets: &BTreeMap<String, String>,
) -> Source {
    Source {
        name: name.to_string(),
        version,
        code: code.to_string(),
        config: spec.config.clone(),
        secrets: serde_json::to_value(secrets).unwrap_or_else(|_| serde_json::json!({})),
        memory_mb: spec.memory_mb,
    }
}

/// Loads the module in a throwaway sandbox; returns its entry point.
fn check_code(name: &str, code: &str, spec: &FunctionSpec) -> Result<Mode, UdfError> {
    let source = source_of(name, 0, code, spec, &spec.secrets);
    let timeout = spec.timeout();
    // On its own thread: the engine needs a big stack and must not run on an async worker.
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            Engine::load(&source, Arc::new(|_, _| {}), timeout)
                .map(|e| e.mode())
                .map_err(|e| UdfError::Invalid(e.to_string()))
        })
        .map_err(|e| UdfError::Io(e.to_string()))?
        .join()
        .map_err(|_| UdfError::Invalid("the module crashed its sandbox while loading".into()))?
}

/// Orders functions by the built-in stage they follow (indexed by [`Stage`]): each stage's
/// functions by name, each followed by the functions that run after it. `Err` names a function whose `after` is
/// neither a stage nor a function, or a cycle.
fn order(afters: &BTreeMap<String, String>) -> Result<[Vec<String>; 3], String> {
    fn follow(
        name: &str,
        afters: &BTreeMap<String, String>,
        out: &mut Vec<String>,
        placed: &mut BTreeSet<String>,
    ) {
        if !placed.insert(name.to_string()) {
            return;
        }
        out.push(name.to_string());
        for (n, a) in afters {
            if a == name {
                follow(n, afters, out, placed);
            }
        }
    }
    let mut placed = BTreeSet::new();
    let mut stages: [Vec<String>; 3] = Default::default();
    for stage in Stage::ALL {
        for (n, a) in afters {
            if a == stage.as_str() {
                follow(n, afters, &mut stages[stage as usize], &mut placed);
            }
        }
    }
    if let Some((n, a)) = afters.iter().find(|(n, _)| !placed.contains(*n)) {
        return Err(if afters.contains_key(a) {
            format!("{n} runs after {a}, which runs after {n} (directly or not): a cycle")
        } else {
            format!(
                "{n} runs after {a:?}, which is neither a stage (canonicalize, validate, enrich) nor a deployed function"
            )
        });
    }
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_stage_then_dependency() {
        let a: BTreeMap<String, String> = [
            ("b", "enrich"),
            ("a", "enrich"),
            ("c", "a"),
            ("d", "canonicalize"),
            ("e", "c"),
        ]
        .into_iter()
        .map(|(x, y)| (x.to_string(), y.to_string()))
        .collect();
        let s = order(&a).unwrap();
        assert_eq!(s[Stage::Canonicalize as usize], ["d"]);
        assert!(s[Stage::Validate as usize].is_empty());
        assert_eq!(s[Stage::Enrich as usize], ["a", "c", "e", "b"]);
        let mut cyc = a.clone();
        cyc.insert("a".into(), "e".into());
        assert!(order(&cyc).unwrap_err().contains("cycle"));
        let mut missing = a;
        missing.insert("x".into(), "nope".into());
        assert!(order(&missing).unwrap_err().contains("neither"));
    }

    #[test]
    fn deploys_swaps_and_refuses_bad_code() {
        let dir = tempfile::tempdir().unwrap();
        let f = Functions::open(dir.path(), 2).unwrap();
        assert!(f.live().is_empty());
        let spec = FunctionSpec::default();
        let r = f
            .deploy("tag", "export function transform(e) { return e; }", &spec)
            .unwrap();
        assert_eq!(
            (r.version, r.outcome, r.mode),
            (1, DeployOutcome::Created, Mode::Event)
        );
        assert_eq!(f.live().after(Stage::Enrich).len(), 1);
        let err = f.deploy("tag", "export const x = 1;", &spec).unwrap_err();
        assert!(matches!(err, UdfError::Invalid(_)), "{err}");
        let after_missing = FunctionSpec {
            after: "nope".into(),
            ..spec.clone()
        };
        let err = f
            .deploy(
                "other",
                "function transform(e) { return e; }",
                &after_missing,
            )
            .unwrap_err();
        assert!(matches!(err, UdfError::Invalid(_)), "{err}");
        let after_tag = FunctionSpec {
            after: "tag".into(),
            secrets: [("k".to_string(), "v".to_string())].into(),
            ..spec.clone()
        };
        f.deploy("second", "function transform(e) { return e; }", &after_tag)
            .unwrap();
        assert!(matches!(f.delete("tag"), Err(UdfError::Conflict(_))));
        let names: Vec<String> = f
            .live()
            .after(Stage::Enrich)
            .iter()
            .map(|x| x.name.clone())
            .collect();
        assert_eq!(names, ["tag", "second"]);
        let shown = f.show("second").unwrap();
        assert_eq!(shown.versions[0].spec.secrets["k"], "***");
        f.deploy("tag", "export function process(e) { return e; }", &spec)
            .unwrap();
        assert_eq!(f.live().after(Stage::Enrich)[0].version, 2);
        assert_eq!(f.rollback("tag", None).unwrap(), 1);
        assert_eq!(f.live().after(Stage::Enrich)[0].version, 1);
        // A restart finds the same running set.
        drop(f);
        let f = Functions::open(dir.path(), 2).unwrap();
        let live = f.live();
        assert_eq!(
            live.after(Stage::Enrich)
                .iter()
                .map(|x| (x.name.as_str(), x.version))
                .collect::<Vec<_>>(),
            [("tag", 1), ("second", 1)]
        );
        f.delete("second").unwrap();
        f.delete("tag").unwrap();
        assert!(f.live().is_empty());
        assert!(f.list().unwrap().is_empty());
    }

    #[test]
    fn every_worker_thread_runs_the_start_hook_first() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let tx = Mutex::new(tx);
        let hook: WorkerStart = Arc::new(move || {
            let name = std::thread::current()
                .name()
                .unwrap_or_default()
                .to_string();
            tx.lock().send(name).unwrap();
        });
        let f = Functions::open_with(dir.path(), 2, Some(hook), SecretsAtRest::Plain).unwrap();
        f.deploy(
            "tag",
            "export function transform(e) { return e; }",
            &FunctionSpec::default(),
        )
        .unwrap();
        // parallelism 1 × 2 partitions: two workers, each of which ran the hook.
        let mut names: Vec<String> = (0..2)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["fn-tag-v1-0", "fn-tag-v1-1"]);
    }
}
