//! [`Server`]: builds every stage from [`Settings`], one start function per role, runs them,
//! and shuts them down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sluice_collector::{AddressQuota, Collector};
use sluice_event::topic;
use sluice_functions::udf::SecretsAtRest;
use sluice_functions::{Chain, Functions, Registry, Runner, RunnerProgress};
use sluice_journal::durable_fs::create_dir_all_durable;
use sluice_journal::{JetStreamJournal, Journal, JournalBackend, LocalJournal};
use sluice_lake::{BadRowsSink, DeliveryProgress, LakeRoot, LakeSink, TypedSink, Upkeep};
use sluice_warehouse::loader::PgLoader;
use sluice_warehouse::{PgLogin, Warehouse};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::config::Settings;
use crate::error::ServerError;
use crate::http::{self, AppState, ClusterView, NodeCard};
use crate::stage_runtime::StageRuntime;
use crate::stages::Stages;

/// How often [`Running::stopped`] looks at the journal's health.
const WATCHDOG_EVERY: Duration = Duration::from_millis(200);

/// The lease, on a shared journal, of the node that runs the stages after `good` (the lake and
/// typed sinks, the loader, the hot tier). The runner's partitions have leases of their own
/// (`share.rs`).
pub const PIPELINE_LEASE: &str = "pipeline";

/// Entry point: start a server from settings.
pub struct Server;

/// A started server.
pub struct Running {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: Option<SocketAddr>,
    /// On a shared journal, this node's pipeline lease (the stages after `good`).
    lease: Option<sluice_journal::Lease>,
    /// What this node announces to the others while it runs (dropped: it leaves the list).
    announced: Option<tokio::sync::watch::Sender<String>>,
    journal: Arc<dyn Journal>,
    /// The file journal, closed at the end of a clean shutdown (its exact end written as the
    /// offset floor) rather than whenever its last handle happens to drop, which a process
    /// exiting may never wait for.
    local: Option<Arc<LocalJournal>>,
    /// Stops the listeners: HTTP (graceful) and the Postgres wire server.
    intake: CancellationToken,
    listeners: Vec<Task>,
    /// Runner, lake, hot: drained in this order, each under its own token.
    stages: Vec<(CancellationToken, Task)>,
    /// Stops upkeep and retention, after the stages.
    housekeeping: CancellationToken,
    background: Vec<Task>,
    /// How long [`Running::shutdown`] waits for the stages to drain.
    drain_timeout: Duration,
    /// While the node stands by for the pipeline lease: the start of the stages after the
    /// journal, and what gives it up.
    pending: Option<(CancellationToken, JoinHandle<Result<Started, ServerError>>)>,
    /// See [`Running::abandon`].
    abandon: CancellationToken,
    /// The stages' threads; last, so that it goes when everything else has.
    _stage_runtime: Arc<StageRuntime>,
}

/// A spawned task and the stage name its errors carry.
struct Task {
    name: &'static str,
    handle: JoinHandle<Result<(), ServerError>>,
}

impl Task {
    fn spawn(
        name: &'static str,
        f: impl Future<Output = Result<(), ServerError>> + Send + 'static,
    ) -> Self {
        Self {
            name,
            handle: tokio::spawn(f),
        }
    }

    /// A stage: spawned on the stages' own threads (`stage_runtime.rs` says why).
    fn stage(
        base: &Base,
        name: &'static str,
        f: impl Future<Output = Result<(), ServerError>> + Send + 'static,
    ) -> Self {
        Self {
            name,
            handle: base.stage_threads.spawn(f),
        }
    }

    /// Waits for the task; its error, or the panic, as a stage error.
    async fn join(self) -> Result<(), ServerError> {
        self.handle
            .await
            .unwrap_or_else(|e| Err(ServerError::stage(self.name, e)))
    }

    /// [`Task::join`], but aborts the task at `deadline` (an error naming the stage).
    async fn join_by(mut self, deadline: tokio::time::Instant) -> Result<(), ServerError> {
        match tokio::time::timeout_at(deadline, &mut self.handle).await {
            Ok(joined) => joined.unwrap_or_else(|e| Err(ServerError::stage(self.name, e))),
            Err(_) => {
                self.handle.abort();
                tracing::error!(
                    stage = self.name,
                    "did not drain before the drain deadline; stopped where it was (the next start resumes from what is durable)"
                );
                Err(ServerError::stage(
                    self.name,
                    "did not drain before the drain deadline (drain_timeout)",
                ))
            }
        }
    }
}

/// What the roles share: the journal, the lake's root, the schema registry and the stages'
/// health.
#[derive(Clone)]
struct Base {
    /// The file journal, when it is the backend (registration and retention are its own).
    local: Option<Arc<LocalJournal>>,
    /// The JetStream journal, when it is the backend (leases between nodes are its own).
    jetstream: Option<Arc<JetStreamJournal>>,
    dyn_journal: Arc<dyn Journal>,
    lake_root: LakeRoot,
    registry: Arc<Registry>,
    /// On a shared journal: the schemas every node validates with (`shared_schemas`).
    shared_schemas: Option<crate::shared_schemas::SharedSchemas>,
    stages: Stages,
    /// Deletion requests and the suppression list.
    privacy: Arc<crate::privacy::Privacy>,
    /// Cancelled by [`Running::abandon`]: the runner's partitions stop where they are and give
    /// their leases up.
    abandon: CancellationToken,
    /// Where the stages after the journal run.
    stage_threads: tokio::runtime::Handle,
}

/// Per partition, the next offset a consumer has not delivered, once it has started.
fn next_offsets<S: sluice_journal::ConsumerStatus>(
    progress: sluice_journal::ConsumerProgress<S>,
) -> impl Fn() -> Option<Vec<u64>> + Send + Sync + 'static {
    move || {
        let status = progress.status();
        status.started().then(|| status.next_offsets().to_vec())
    }
}

impl Server {
    /// Opens the journal and starts every role in `settings`. On a shared journal the stages
    /// after `good` (lake, hot tier) wait for the pipeline lease: the node serves HTTP (intake,
    /// SQL, health) and its share of the runner's partitions while it stands by, and starts them
    /// once it holds the lease.
    ///
    /// In order: the base (journal, lake root, registry), this node's credentials and consumer
    /// holds, its user functions, the roles that answer clients (collector, warehouse, the HTTP
    /// listener), on a shared journal the runner's share of partitions, then the stages after the
    /// journal ([`StartPipeline::run`]).
    pub async fn start(settings: Settings) -> Result<Running, ServerError> {
        let prometheus = crate::metrics::install();
        let stage_runtime = Arc::new(StageRuntime::new()?);
        let base = open_base(&settings, stage_runtime.handle()).await?;
        // On a shared journal every node honours the keys and tokens made on any node; merged
        // once before the listeners read the files.
        let shared_credentials = match &base.jetstream {
            Some(j) => Some(crate::shared_credentials::open(j, &settings.data_dir).await?),
            None => None,
        };
        if let Some(j) = base.local.clone() {
            let s = settings.clone();
            blocking("journal", move || crate::holds::register(&j, &s)).await?;
        }
        let node = Node::new(&settings);
        let functions = open_runner_functions(&settings, &base, &stage_runtime).await?;
        // Announced once it can run what the others run: a node that fails to start must not
        // stay listed (and counted in the runner's share) until its entry expires.
        if let Some(j) = &base.jetstream {
            j.announce(node.announced.subscribe());
        }
        let mut listeners = Vec::new();
        let serving = (prometheus, &functions);
        let (http_addr, warehouse) =
            start_serving(&settings, &base, &node, serving, &mut listeners).await?;
        let shared = (
            functions.shared,
            shared_credentials,
            base.shared_schemas.clone(),
        );
        follow_other_nodes(shared, &node.intake, &mut listeners);
        node.update_card(|card| card.http = http_addr.map(|a| a.to_string()));
        let mut early = Vec::new();
        let runner = match start_shared_runner(&settings, &base, &functions.deployed, &mut early) {
            Ok(runner) => runner,
            Err(e) => return Err(stop_listeners(&node.intake, listeners, e).await),
        };
        let starting = StartPipeline {
            settings: settings.clone(),
            base: base.clone(),
            node: node.clone(),
            warehouse,
            functions: functions.deployed,
            runner,
            cancel: CancellationToken::new(),
        };
        let running = Running {
            http_addr,
            lease: None,
            announced: Some(node.announced),
            journal: base.dyn_journal,
            local: base.local,
            intake: node.intake,
            listeners,
            stages: early,
            housekeeping: node.housekeeping,
            background: Vec::new(),
            drain_timeout: settings.drain_timeout,
            pending: None,
            abandon: base.abandon,
            _stage_runtime: stage_runtime,
        };
        running.start_pipeline(starting).await
    }
}

/// This node as the others see it, what stops its listeners and its housekeeping, and where
/// the routes find the parts of the stages after the journal.
#[derive(Clone)]
struct Node {
    /// What this node tells the others about itself (standing by or not).
    card: Arc<std::sync::Mutex<NodeCard>>,
    /// The card as announced, once the node's functions run (dropped: it leaves the list).
    announced: tokio::sync::watch::Sender<String>,
    /// Stops the listeners: HTTP (graceful) and the Postgres wire server.
    intake: CancellationToken,
    /// Stops upkeep and retention, after the stages.
    housekeeping: CancellationToken,
    /// Filled once the stages after the journal run.
    pipeline: Arc<std::sync::OnceLock<crate::http::PipelineParts>>,
}

impl Node {
    /// A node of `settings`' roles, standing by, with nothing started.
    fn new(settings: &Settings) -> Self {
        let card = NodeCard::new(
            settings.journal.jetstream.node_name(),
            settings.roles.names(),
        );
        Self {
            announced: tokio::sync::watch::Sender::new(card.to_json()),
            card: Arc::new(std::sync::Mutex::new(card)),
            intake: CancellationToken::new(),
            housekeeping: CancellationToken::new(),
            pipeline: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Changes the card and announces it.
    fn update_card(&self, change: impl FnOnce(&mut NodeCard)) {
        let mut card = self.card.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut card);
        self.announced.send_replace(card.to_json());
    }

    /// What `/v1/cluster` shows: this node and, on a shared journal, the others.
    fn cluster_view(&self, base: &Base) -> ClusterView {
        ClusterView {
            this: self.card.clone(),
            jetstream: base.jetstream.clone(),
            lease: PIPELINE_LEASE,
            groups: crate::holds::GROUPS.to_vec(),
        }
    }
}

/// Stops the listeners of a start that failed with `error` (nothing half-started stays behind:
/// they already serve), and returns the error.
async fn stop_listeners(
    intake: &CancellationToken,
    listeners: Vec<Task>,
    error: ServerError,
) -> ServerError {
    intake.cancel();
    for task in listeners {
        let _ = task.join().await;
    }
    error
}

/// What starting the stages after the journal needs, possibly after the node stood by.
struct StartPipeline {
    settings: Settings,
    base: Base,
    node: Node,
    warehouse: Option<Arc<Warehouse>>,
    functions: Option<Arc<Functions>>,
    /// The runner's progress, when it already runs (on its own partition leases).
    runner: Option<RunnerProgress>,
    /// Given up while standing by (a shutdown).
    cancel: CancellationToken,
}

/// The stages after the journal, started.
struct Started {
    lease: Option<sluice_journal::Lease>,
    stages: Vec<(CancellationToken, Task)>,
    background: Vec<Task>,
    listeners: Vec<Task>,
}

impl StartPipeline {
    /// Takes the lease on a shared journal (standing by until then; a shutdown meanwhile is
    /// [`ServerError::Cancelled`]), starts the runner, lake and hot roles, and hands their
    /// parts to the routes.
    async fn run(self) -> Result<Started, ServerError> {
        let mut started = Started {
            lease: self.take_lease().await?,
            stages: Vec::new(),
            background: Vec::new(),
            listeners: Vec::new(),
        };
        let mut watched = Vec::new();
        let roles = self.start_roles(&mut started, &mut watched).await?;
        let (parts, listeners) = pipeline_parts(
            &self.settings,
            &self.base,
            roles,
            self.warehouse.clone(),
            &self.node.intake,
        );
        started.listeners = listeners;
        // Set once: this is the only place that fills it.
        let _ = self.node.pipeline.set(parts);
        self.node.update_card(|card| card.state = "running");
        self.start_housekeeping(watched, &mut started.background);
        Ok(started)
    }

    /// On a shared journal, with the lake or hot role: the pipeline lease, once it comes.
    async fn take_lease(&self) -> Result<Option<sluice_journal::Lease>, ServerError> {
        let roles = self.settings.roles;
        Ok(match (&self.base.jetstream, roles.lake || roles.hot) {
            (Some(j), true) => tokio::select! {
                lease = j.acquire_lease(PIPELINE_LEASE) => {
                    Some(lease.map_err(|e| ServerError::stage("lease", e))?)
                }
                () = self.cancel.cancelled() => return Err(ServerError::Cancelled),
            },
            _ => None,
        })
    }

    /// The runner (unless it already runs), lake and hot roles of this node, in this order;
    /// returns what the routes need of them.
    async fn start_roles(
        &self,
        started: &mut Started,
        watched: &mut Vec<crate::holds::Watched>,
    ) -> Result<RoleParts, ServerError> {
        let (settings, base, roles) = (&self.settings, &self.base, self.settings.roles);
        let runner = match (&self.runner, &self.functions) {
            (Some(progress), _) => Some(progress.clone()),
            (None, Some(f)) => Some(start_runner(
                settings,
                base,
                f.clone(),
                &mut started.stages,
            )?),
            (None, None) => None,
        };
        let events = match roles.lake {
            true => Some(start_lake(
                settings,
                base,
                &mut started.stages,
                &mut started.background,
                &self.node.housekeeping,
                watched,
            )),
            false => None,
        };
        let hot = match roles.hot {
            true => Some(start_hot(settings, base, &mut started.stages, watched).await?),
            false => None,
        };
        Ok(RoleParts {
            runner,
            events,
            hot,
        })
    }

    /// Retention over the file journal, and the task that writes the `watched` consumers'
    /// positions, until housekeeping stops.
    fn start_housekeeping(&self, watched: Vec<crate::holds::Watched>, background: &mut Vec<Task>) {
        let base = &self.base;
        if let Some(local) = base.local.clone() {
            let every = crate::holds::retention_every(self.settings.journal.retention_age);
            background.push(Task::spawn(
                "retention",
                retention(
                    local,
                    base.stages.warnings().clone(),
                    every,
                    self.node.housekeeping.clone(),
                ),
            ));
        }
        background.push(Task::spawn(
            "positions",
            crate::holds::keep(
                base.dyn_journal.clone(),
                watched,
                self.node.housekeeping.clone(),
            ),
        ));
    }
}

/// The file journal or the JetStream journal, whichever `[journal] backend` names.
struct OpenedJournal {
    local: Option<Arc<LocalJournal>>,
    jetstream: Option<Arc<JetStreamJournal>>,
    journal: Arc<dyn Journal>,
}

/// Creates the data directory, opens the journal (recovering it) with its topics, the lake's
/// root and the schema registry.
async fn open_base(
    settings: &Settings,
    stage_threads: tokio::runtime::Handle,
) -> Result<Base, ServerError> {
    // Every directory is created durably (fsynced into its parent): one made on first start
    // and never synced can vanish in a power cut with everything below it.
    // Only its owner may reach the data: events, keys and tokens.
    crate::auth::create_private_dir(&settings.data_dir)
        .map_err(|e| cannot_create("data dir", &settings.data_dir, e))?;
    let OpenedJournal {
        local,
        jetstream,
        journal,
    } = open_journal(settings).await?;
    sluice_lake::metrics::describe();
    for t in [topic::RAW, topic::GOOD, topic::BAD] {
        let (j, partitions) = (journal.clone(), settings.partitions);
        blocking("journal", move || j.create_topic(t, partitions)).await?;
    }
    let lake_root = open_lake_root(settings).await?;
    // The registry lives with the data; every role that validates or serves schemas uses it.
    let registry = Arc::new(
        Registry::open(settings.data_dir.join("schemas"))
            .map_err(|e| ServerError::stage("schemas", e))?,
    );
    // On a shared journal every node validates with the same schemas.
    let shared_schemas = match &jetstream {
        Some(j) => Some(crate::shared_schemas::open(j, registry.clone()).await?),
        None => None,
    };
    let dyn_journal = journal;
    let stages = Stages::new(dyn_journal.clone(), settings.collector.max_backlog_events());
    if let Some(local) = &local {
        stages.warnings().set_recovery(local.recovery_report());
    }
    if let Some(lake_dir) = lake_root.local_path() {
        stages.warnings().watch_lake(&lake_dir);
    }
    let privacy = open_privacy(settings, jetstream.as_deref()).await?;
    Ok(Base {
        dyn_journal,
        local,
        jetstream,
        lake_root,
        registry,
        shared_schemas,
        stages,
        privacy: Arc::new(privacy),
        abandon: CancellationToken::new(),
        stage_threads,
    })
}

/// The error of a directory that could not be created, as a stage error.
fn cannot_create(stage: &'static str, dir: &std::path::Path, e: std::io::Error) -> ServerError {
    ServerError::stage(stage, format!("cannot create {}: {e}", dir.display()))
}

/// Opens the journal of `[journal] backend`: the file journal, recovered (what recovery
/// quarantined or warned of is logged), or the JetStream journal, checked.
async fn open_journal(settings: &Settings) -> Result<OpenedJournal, ServerError> {
    let journal_cfg = settings.journal.clone();
    match journal_cfg.backend {
        JournalBackend::File => {
            let local = blocking("journal", move || LocalJournal::open(journal_cfg)).await?;
            let report = local.recovery_report();
            for q in report.quarantined() {
                tracing::error!(topic = %q.topic, partition = q.partition, reason = ?q.quarantined,
                    "journal partition quarantined: its durable data is corrupt; it will not be served");
            }
            for w in &report.warnings {
                tracing::warn!(warning = %w, "journal recovery");
            }
            Ok(OpenedJournal {
                local: Some(local.clone()),
                jetstream: None,
                journal: local,
            })
        }
        // Checks the server and every stream before anything can be acked.
        JournalBackend::Jetstream => {
            let j = JetStreamJournal::open(journal_cfg)
                .await
                .map_err(|e| ServerError::stage("journal", e))?;
            Ok(OpenedJournal {
                local: None,
                jetstream: Some(j.clone()),
                journal: j,
            })
        }
    }
}

/// The lake's root: a local directory, created, or an object store, checked.
async fn open_lake_root(settings: &Settings) -> Result<LakeRoot, ServerError> {
    let lake_root = settings.lake_root.clone();
    match lake_root.local_path() {
        Some(lake_dir) => {
            create_dir_all_durable(&lake_dir).map_err(|e| cannot_create("lake", &lake_dir, e))?;
        }
        None => {
            // An object store: fail now, with the store's own answer, rather than have every
            // sink retry a bad endpoint, key or bucket for ever.
            let writes = settings.roles.lake;
            lake_root
                .check(writes)
                .await
                .map_err(|e| ServerError::stage("lake", e))?;
            tracing::info!(root = %lake_root, "lake on object storage");
        }
    }
    Ok(lake_root)
}

/// Deletion requests and the suppression list (pseudonymised with the PII key when PII
/// pseudonymisation is on), shared through `jetstream` when there is one.
async fn open_privacy(
    settings: &Settings,
    jetstream: Option<&JetStreamJournal>,
) -> Result<crate::privacy::Privacy, ServerError> {
    let pseudonym_key = match settings.enrich.pii.enabled {
        true => Some(
            settings
                .enrich
                .pii
                .resolved_key()
                .map_err(ServerError::Config)?,
        ),
        false => None,
    };
    let (dir, key) = (settings.data_dir.clone(), pseudonym_key);
    let mut privacy = blocking("privacy", move || crate::privacy::Privacy::open(&dir, key)).await?;
    if let Some(j) = jetstream {
        // Deletions requested on any node suppress the person on every runner node.
        let set = j
            .shared_set(crate::privacy::SHARED_SET, privacy.feed())
            .await
            .map_err(|e| ServerError::stage("privacy", e))?;
        privacy.share(set);
    }
    Ok(privacy)
}

/// On a shared journal: the tasks that take the other nodes' functions, keys and tokens, and
/// schemas every second, until `stop`.
fn follow_other_nodes(
    (functions, credentials, schemas): (
        Option<crate::shared_functions::SharedFunctions>,
        Option<crate::shared_credentials::SharedCredentials>,
        Option<crate::shared_schemas::SharedSchemas>,
    ),
    stop: &CancellationToken,
    tasks: &mut Vec<Task>,
) {
    if let Some(shared) = functions {
        let stop = stop.clone();
        tasks.push(Task::spawn("functions", async move {
            crate::shared_functions::follow(shared, stop).await
        }));
    }
    if let Some(shared) = credentials {
        let stop = stop.clone();
        tasks.push(Task::spawn("credentials", async move {
            crate::shared_credentials::follow(shared, stop).await
        }));
    }
    if let Some(shared) = schemas {
        let stop = stop.clone();
        tasks.push(Task::spawn("schemas", async move {
            crate::shared_schemas::follow(shared, stop).await
        }));
    }
}

/// The user functions of the runner role and, on a shared journal, what keeps them the same
/// on every runner node.
#[derive(Default)]
struct RunnerFunctions {
    deployed: Option<Arc<Functions>>,
    shared: Option<crate::shared_functions::SharedFunctions>,
}

/// The user functions, deployable on every node with the runner role, standing by or not; on a
/// shared journal every runner node runs the same functions.
async fn open_runner_functions(
    settings: &Settings,
    base: &Base,
    stage_runtime: &StageRuntime,
) -> Result<RunnerFunctions, ServerError> {
    if !settings.roles.runner {
        return Ok(RunnerFunctions::default());
    }
    let worker_start = stage_runtime.worker_start();
    let functions = open_functions(settings, worker_start, base.jetstream.is_some()).await?;
    let shared = match &base.jetstream {
        Some(j) => Some(crate::shared_functions::open(j, functions.clone()).await?),
        None => None,
    };
    Ok(RunnerFunctions {
        deployed: Some(functions),
        shared,
    })
}

/// The user functions of the runner role, deployed on this node (`<data_dir>/functions`).
/// Their worker threads run `worker_start` first (the stages' priority). Secrets are sealed
/// with the configured key; without one they are stored as given on a node of its own, and
/// refused on a shared journal, where every node's functions sit in NATS.
async fn open_functions(
    settings: &Settings,
    worker_start: sluice_functions::udf::WorkerStart,
    shared: bool,
) -> Result<Arc<Functions>, ServerError> {
    let (dir, partitions) = (settings.data_dir.join("functions"), settings.partitions);
    let secrets = match (&settings.runner.secrets_keys, shared) {
        (Some(key), _) => SecretsAtRest::Sealed(key.clone()),
        (None, true) => SecretsAtRest::Refused,
        (None, false) => SecretsAtRest::Plain,
    };
    Ok(Arc::new(
        blocking("runner", move || {
            Functions::open_with(&dir, partitions, Some(worker_start), secrets)
        })
        .await?,
    ))
}

/// On a shared journal the runner role starts at once: it takes its share of partitions on
/// leases of their own, whether or not this node holds the pipeline lease.
fn start_shared_runner(
    settings: &Settings,
    base: &Base,
    functions: &Option<Arc<Functions>>,
    stages: &mut Vec<(CancellationToken, Task)>,
) -> Result<Option<RunnerProgress>, ServerError> {
    match (functions, &base.jetstream) {
        (Some(f), Some(_)) => start_runner(settings, base, f.clone(), stages).map(Some),
        _ => Ok(None),
    }
}

/// The runner role: raw → good/bad through the function chain and the user functions. On a
/// shared journal this node runs its share of the partitions (`share.rs`), else all of them.
fn start_runner(
    settings: &Settings,
    base: &Base,
    functions: Arc<Functions>,
    stages: &mut Vec<(CancellationToken, Task)>,
) -> Result<RunnerProgress, ServerError> {
    let dir = settings.data_dir.join("functions");
    let chain = Chain::new(
        base.registry.clone(),
        settings.validation.clone(),
        settings.enrich.clone(),
        settings.runner.max_event_bytes,
    )
    .map_err(ServerError::Config)?
    .with_time_window(settings.runner.event_time_window)
    .with_functions(functions)
    .with_suppression(base.privacy.suppressed());
    let chain = match base.privacy.shared() {
        Some(set) => chain.with_shared_suppression(set),
        None => chain,
    };
    let runner = Runner::new(
        base.dyn_journal.clone(),
        settings.runner.clone(),
        Arc::new(chain),
        Some(dir),
    )
    .map_err(|e| ServerError::stage("runner", e))?;
    let progress = runner.progress();
    let runner = runner.with_health(base.stages.consumer(
        "runner",
        topic::RAW,
        next_offsets(progress.clone()),
    ));
    let token = CancellationToken::new();
    let (t, shared, abandon) = (token.clone(), base.jetstream.clone(), base.abandon.clone());
    let task = Task::stage(base, "runner", async move {
        match shared {
            Some(journal) => crate::share::run(journal, runner, t, abandon).await,
            None => runner.run(t).await,
        }
        .map_err(|e| ServerError::stage("runner", e))
    });
    stages.push((token, task));
    Ok(progress)
}

/// The lake role: the `events`, `bad_rows` and typed sinks and the loader under one token (each
/// drains its topic to the end on shutdown), and the upkeep schedule. Returns the `events`
/// sink's progress.
fn start_lake(
    settings: &Settings,
    base: &Base,
    stages: &mut Vec<(CancellationToken, Task)>,
    background: &mut Vec<Task>,
    housekeeping: &CancellationToken,
    watched: &mut Vec<crate::holds::Watched>,
) -> DeliveryProgress {
    use crate::holds::{self, watch};
    let (journal, root, lake) = (&base.dyn_journal, &base.lake_root, &settings.lake);
    let health = &base.stages;
    let events = LakeSink::new(journal.clone(), root.clone(), lake.clone());
    let progress = events.progress();
    let events = events.with_health(health.consumer(
        "lake/events",
        topic::GOOD,
        next_offsets(progress.clone()),
    ));
    let bad_rows = BadRowsSink::new(journal.clone(), root.clone(), lake.clone());
    watched.push(watch(holds::LAKE_EVENTS, topic::GOOD, progress.clone()));
    watched.push(watch(holds::LAKE_BAD_ROWS, topic::BAD, bad_rows.progress()));
    let bad_health = health.consumer(
        "lake/bad_rows",
        topic::BAD,
        next_offsets(bad_rows.progress()),
    );
    let bad_rows = bad_rows.with_health(bad_health);
    let typed = lake.typed_tables.then(|| {
        let declared =
            crate::declared::RegistryTypes::new(base.registry.clone(), &settings.validation);
        let typed = TypedSink::new(journal.clone(), root.clone(), lake.clone())
            .with_declared_types(Arc::new(declared));
        base.stages.warnings().watch_refusals(typed.refusals());
        let stage = health.consumer("typed", topic::GOOD, next_offsets(typed.progress()));
        typed.with_health(stage)
    });
    let loader = settings.loader.clone().map(|l| {
        let loader = PgLoader::new(journal.clone(), l);
        base.stages.warnings().watch_refusals(loader.refusals());
        let stage = health.consumer("loader", topic::GOOD, next_offsets(loader.progress()));
        loader.with_health(stage)
    });
    if let Some(t) = &typed {
        watched.push(watch(holds::LAKE_TYPED, topic::GOOD, t.progress()));
    }
    if let Some(l) = &loader {
        watched.push(watch(holds::LOADER, topic::GOOD, l.progress()));
    }
    let token = CancellationToken::new();
    let (t1, t2, t3, t4) = (token.clone(), token.clone(), token.clone(), token.clone());
    let task = Task::stage(base, "lake", async move {
        let typed = async move {
            match typed {
                Some(t) => t.run(t3).await,
                None => Ok(()),
            }
        };
        let loader = async move {
            match loader {
                Some(l) => l.run(t4).await.map_err(|e| ServerError::stage("loader", e)),
                None => Ok(()),
            }
        };
        let (a, b, c, d) = tokio::join!(events.run(t1), bad_rows.run(t2), typed, loader);
        a.and(b)
            .and(c)
            .map_err(|e| ServerError::stage("lake", e))
            .and(d)
    });
    stages.push((token, task));
    let upkeep = Upkeep::new(root.clone(), settings.upkeep.clone(), lake.zstd_level)
        .with_retention(lake.retention);
    base.stages.warnings().watch_damage(upkeep.damage());
    let stop = housekeeping.clone();
    background.push(Task::stage(base, "upkeep", async move {
        upkeep.run(stop).await;
        Ok(())
    }));
    progress
}

/// The hot role: the hot projection, with the online models riding along when the predict
/// role runs. Returns the reader of the read API.
async fn start_hot(
    settings: &Settings,
    base: &Base,
    stages: &mut Vec<(CancellationToken, Task)>,
    watched: &mut Vec<crate::holds::Watched>,
) -> Result<sluice_hot::HotReader, ServerError> {
    sluice_hot::metrics::describe();
    let store = sluice_hot::open_store(&settings.hot)
        .await
        .map_err(|e| ServerError::stage("hot", e))?;
    if settings.hot.backend == sluice_hot::Backend::Embedded {
        base.stages.warnings().watch_hot(&settings.hot.dir);
    }
    let hot_settings = Arc::new(settings.hot.clone());
    let reader = sluice_hot::HotReader::new(store.clone(), hot_settings.clone());
    let mut projector = sluice_hot::Projector::new(base.dyn_journal.clone(), store, hot_settings);
    let health = base
        .stages
        .consumer("hot", topic::GOOD, next_offsets(projector.progress()));
    projector = projector.with_health(health);
    if let Some(models) = start_predict(settings, base).await? {
        projector = projector.with_hook(Box::new(models));
    }
    watched.push(crate::holds::watch(
        crate::holds::HOT,
        topic::GOOD,
        projector.progress(),
    ));
    let token = CancellationToken::new();
    let t = token.clone();
    let task = Task::stage(base, "hot", async move {
        projector
            .run(t.cancelled_owned())
            .await
            .map_err(|e| ServerError::stage("hot", e))
    });
    stages.push((token, task));
    Ok(reader)
}

/// The predict role, beside the hot role: the online models, which learn from the events the
/// hot projection applies (persons on the suppression list left out), when any is configured.
async fn start_predict(
    settings: &Settings,
    base: &Base,
) -> Result<Option<sluice_predict::Models>, ServerError> {
    if !settings.roles.predict || settings.predict.models.is_empty() {
        return Ok(None);
    }
    let ps = settings.predict.clone();
    // With the lake on an object store, the checkpoints live beside it (`<root>/_models/`),
    // so a node that replaces this one finds them; otherwise under `[predict] dir`.
    let store: Arc<dyn sluice_predict::checkpoint::CheckpointStore> =
        match base.lake_root.local_path() {
            Some(_) => Arc::new(sluice_predict::checkpoint::LocalCheckpoints::new(&ps.dir)),
            None => Arc::new(LakeCheckpoints(
                base.lake_root
                    .files(MODELS_DIR)
                    .map_err(|e| ServerError::stage("predict", e))?,
            )),
        };
    let models = blocking("predict", move || {
        sluice_predict::Models::open_in(&ps, store)
    })
    .await?;
    Ok(Some(models.with_suppression(base.privacy.suppressed())))
}

/// What the stages after the journal hand to the routes once they run.
struct RoleParts {
    runner: Option<RunnerProgress>,
    events: Option<DeliveryProgress>,
    hot: Option<sluice_hot::HotReader>,
}

/// The roles that answer clients, when this node runs one of the collector, warehouse and hot
/// roles: the collector, the warehouse with its Postgres wire server, and the HTTP listener
/// with the routes of every role, all stopped by the node's `intake`. The routes of the stages
/// after the journal find their parts in the node's `pipeline` once those run. Returns the
/// bound HTTP address and the warehouse.
async fn start_serving(
    settings: &Settings,
    base: &Base,
    node: &Node,
    (prometheus, functions): (PrometheusHandle, &RunnerFunctions),
    listeners: &mut Vec<Task>,
) -> Result<(Option<SocketAddr>, Option<Arc<Warehouse>>), ServerError> {
    let roles = settings.roles;
    if !(roles.collector || roles.warehouse || roles.hot) {
        return Ok((None, None));
    }
    let intake = &node.intake;
    let collector = start_collector(settings, base, intake, listeners).await?;
    let (auth, access) = access_control(settings)?;
    let warehouse = start_warehouse(settings, base, &access, intake, listeners)?;
    let state = AppState {
        collector,
        warehouse: warehouse.clone(),
        journal: base.dyn_journal.clone(),
        prometheus,
        auth,
        access,
        registry: Some(base.registry.clone()),
        shared_schemas: base.shared_schemas.clone(),
        functions: functions.deployed.clone(),
        shared_functions: functions.shared.clone(),
        pipeline: node.pipeline.clone(),
        stages: base.stages.clone(),
        cluster: node.cluster_view(base),
    };
    let addr = start_http(settings, state, intake, listeners)?;
    Ok((Some(addr), warehouse))
}

/// The collector role: intake into `raw`, gated by the stages' backlog; where other nodes
/// append to `raw` too, a task (stopped by `intake`) that follows their records.
async fn start_collector(
    settings: &Settings,
    base: &Base,
    intake: &CancellationToken,
    listeners: &mut Vec<Task>,
) -> Result<Option<Arc<Collector>>, ServerError> {
    if !settings.roles.collector {
        return Ok(None);
    }
    let (j, cs) = (base.dyn_journal.clone(), settings.collector.clone());
    let collector = blocking("collector", move || Collector::open(j, cs)).await?;
    if let Some(follow) = collector.follower() {
        // Other nodes append to `raw` too: read their records into the dedupe index.
        let stop = intake.clone();
        listeners.push(Task::spawn("collector", async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = follow => {}
            }
            Ok(())
        }));
    }
    let stages = base.stages.clone();
    Ok(Some(Arc::new(
        collector
            .with_health(base.stages.stage("journal"))
            .with_gate(Arc::new(move || stages.pressure())),
    )))
}

/// The write keys (`[[sources]]` and `keys.json`) and the roles' tokens (`admin_token` and
/// `tokens.json`) every route and the Postgres wire server check.
fn access_control(
    settings: &Settings,
) -> Result<(Arc<crate::auth::Auth>, Arc<Access>), ServerError> {
    let auth = Arc::new(
        crate::auth::Auth::new(
            settings.sources.clone(),
            Some(crate::auth::KeyFile::path(&settings.data_dir)),
        )
        .map_err(ServerError::Config)?,
    );
    let access = Arc::new(
        Access::new(
            auth.clone(),
            settings.admin_token.clone(),
            Some(crate::access::TokenFile::path(&settings.data_dir)),
        )
        .map_err(ServerError::Config)?,
    );
    Ok((auth, access))
}

/// The warehouse role: SQL over the lake, served by the routes and by its Postgres wire server
/// (stopped by `intake`).
fn start_warehouse(
    settings: &Settings,
    base: &Base,
    access: &Arc<Access>,
    intake: &CancellationToken,
    listeners: &mut Vec<Task>,
) -> Result<Option<Arc<Warehouse>>, ServerError> {
    if !settings.roles.warehouse {
        return Ok(None);
    }
    let w =
        Warehouse::open(base.lake_root.clone()).map_err(|e| ServerError::stage("warehouse", e))?;
    let w = Arc::new(w);
    listeners.push(start_pg(settings, w.clone(), access.clone(), intake)?);
    Ok(Some(w))
}

/// The HTTP listener with every route module's routes over `state`, stopped (gracefully) by
/// `intake`. Returns the bound address.
fn start_http(
    settings: &Settings,
    state: AppState,
    intake: &CancellationToken,
    listeners: &mut Vec<Task>,
) -> Result<SocketAddr, ServerError> {
    let listener = crate::listen::bind(settings.http, settings.listener.max_connections).map_err(
        |source| ServerError::Bind {
            addr: settings.http,
            source,
        },
    )?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: settings.http,
        source,
    })?;
    let max_body_bytes = settings.collector.max_body_bytes();
    let app = http::router(routes(&state, settings), state, max_body_bytes);
    let limits = crate::listen::Limits {
        listener: settings.listener.clone(),
        max_body_bytes,
        tls: settings.tls.as_ref().map(|t| t.http.clone()),
    };
    let serve = crate::listen::serve(listener, app, limits, intake.clone());
    listeners.push(Task::spawn("http", async move {
        serve.await.map_err(|e| ServerError::stage("http", e))
    }));
    tracing::info!(%addr, tls = settings.tls.is_some(), "http listening");
    Ok(addr)
}

/// The routes' parts of the stages after the journal, and the tasks that serve them (the
/// deletion requests' eraser, stopped by `intake`).
fn pipeline_parts(
    settings: &Settings,
    base: &Base,
    roles: RoleParts,
    warehouse: Option<Arc<Warehouse>>,
    intake: &CancellationToken,
) -> (crate::http::PipelineParts, Vec<Task>) {
    let mut tasks = Vec::new();
    let replay = match (&roles.runner, &roles.events, &warehouse) {
        (Some(runner), Some(events), Some(w)) => Some(Arc::new(crate::replay::Replayer {
            journal: base.dyn_journal.clone(),
            runner: runner.clone(),
            events: events.clone(),
            warehouse: w.clone(),
            lock: tokio::sync::Mutex::new(()),
        })),
        _ => None,
    };
    let privacy = match (&roles.runner, &roles.events, &warehouse) {
        (Some(_), Some(_), Some(w)) => {
            let eraser = crate::privacy::Eraser {
                privacy: base.privacy.clone(),
                journal: base.dyn_journal.clone(),
                stages: base.stages.clone(),
                lake: base.lake_root.clone(),
                warehouse: w.clone(),
                hot: roles.hot.clone(),
                loader: settings.loader.clone(),
                not_covered: match roles.hot {
                    Some(_) => Vec::new(),
                    None => vec!["hot tier (the hot role is not on this node)".into()],
                },
                vacuum_retention: settings.upkeep.vacuum_retention,
            };
            let stop = intake.clone();
            tasks.push(Task::spawn("privacy", async move {
                eraser.run(stop).await;
                Ok(())
            }));
            Some(base.privacy.clone())
        }
        _ => None,
    };
    let models = match settings.roles.predict {
        true => settings
            .predict
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect(),
        false => Vec::new(),
    };
    let parts = crate::http::PipelineParts {
        replay,
        privacy,
        hot: roles.hot,
        models,
    };
    (parts, tasks)
}

/// Every route module's routes.
fn routes(state: &AppState, settings: &Settings) -> Router<AppState> {
    use crate::quota::{Shape, limited};
    let quota = Arc::new(AddressQuota::new(settings.collector.quotas()));
    let kinesis = crate::kinesis::router(
        state,
        settings.kinesis.clone(),
        settings.journal.retention_age,
    );
    let snowplow = crate::snowplow::routes(&settings.snowplow);
    Router::new()
        .merge(limited(
            crate::native::routes(),
            &quota,
            Shape::Json,
            "events",
        ))
        .merge(crate::sql::routes())
        .merge(crate::ops::routes())
        .merge(crate::cluster::routes())
        .merge(crate::deletions::routes())
        .merge(crate::schemas::routes())
        .merge(crate::functions::routes())
        .merge(crate::hot::routes())
        .merge(limited(
            crate::segment::routes(),
            &quota,
            Shape::Json,
            "segment",
        ))
        .merge(limited(snowplow, &quota, Shape::Json, "snowplow"))
        .merge(limited(kinesis, &quota, Shape::Aws, "kinesis"))
}

/// The Postgres wire server of the warehouse role.
fn start_pg(
    settings: &Settings,
    warehouse: Arc<Warehouse>,
    access: Arc<Access>,
    stop: &CancellationToken,
) -> Result<Task, ServerError> {
    let addr = settings.pg;
    // Checked here so that a taken port is a start-up error, not a log line.
    if addr.port() != 0 {
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    }
    let login = PgLogin {
        credentials: settings.pg_credentials.clone(),
        tokens: Some(access),
        tls: settings.tls.as_ref().map(|t| t.pg.clone()),
    };
    let stop = stop.clone();
    tracing::info!(%addr, tls = settings.tls.is_some(), "postgres wire listening");
    Ok(Task::spawn("pg", async move {
        // A failing Postgres wire server leaves HTTP and the stages running, as before.
        if let Err(e) = sluice_warehouse::serve_pg_login(warehouse, addr, login, stop).await {
            tracing::error!(error = %e, %addr, "postgres wire server stopped");
        }
        Ok(())
    }))
}

/// Retention over the journal, `every` so often, until `stop`; what it held back for lagging
/// consumers goes to `warnings`.
async fn retention(
    journal: Arc<LocalJournal>,
    warnings: crate::warnings::Warnings,
    every: Duration,
    stop: CancellationToken,
) -> Result<(), ServerError> {
    let mut every = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = every.tick() => {
                let j = journal.clone();
                match tokio::task::spawn_blocking(move || j.enforce_retention()).await {
                    Ok(Ok(report)) => warnings.set_held(&report.held),
                    Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
                    Err(e) => tracing::warn!(error = %e, "retention task failed"),
                }
            }
        }
    }
}

/// Runs blocking start-up work off the async workers.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    stage: &'static str,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::stage(stage, e))?
        .map_err(|e| ServerError::stage(stage, e))
}

/// Longest [`Running::abandon`] waits for the runner's partitions to give their leases up.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// The journal this server writes, for a tool that embeds the server. A handle kept past
    /// [`Running::shutdown`] finds the file journal closed.
    pub fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    /// Stops without draining, after [`ServerError::JournalFailed`] or
    /// [`ServerError::LeaseLost`]: intake stops, this node leaves the list of nodes, and the
    /// runner's partitions stop where they are and release their leases, so that other nodes
    /// take them at once instead of after the lease TTL (a write still in flight is refused by
    /// the journal's fence: the next holder's `sync` comes first). Nothing else is drained: the
    /// caller exits, and what was not delivered is in the journal.
    pub async fn abandon(mut self) {
        self.announced = None;
        self.intake.cancel();
        self.abandon.cancel();
        if let Some((cancel, _)) = self.pending.take() {
            cancel.cancel();
        }
        let deadline = tokio::time::Instant::now() + ABANDON_WAIT;
        for (_, task) in self.stages {
            if task.name == "runner"
                && let Err(e) = task.join_by(deadline).await
            {
                tracing::warn!(error = %e, "the runner did not stop cleanly");
            }
        }
    }

    /// Stops intake, drains the runner, the lake sink and the hot projection, stops upkeep and
    /// retention, and returns once everything acked is committed to the lake and the hot
    /// store. Returns the first error, if any. A stage still draining when `drain_timeout` has
    /// passed (its store keeps failing) is stopped where it is and reported as an error:
    /// everything it had not delivered is still in the journal, and the next start delivers
    /// it from the stage's committed position.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        // Leaving the list of nodes first: the others count their shares of the runner's
        // partitions without this node, and take each as soon as it is drained and released.
        self.announced = None;
        // A node standing by gives up waiting; one that just took the lease drains as usual.
        if let Some((cancel, starting)) = self.pending.take() {
            cancel.cancel();
            if let Ok(Ok(started)) = starting.await {
                self.install(started);
            }
        }
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let mut first_err = None;
        let mut note = |r: Result<(), ServerError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        self.intake.cancel();
        for task in self.listeners {
            note(task.join().await);
        }
        tracing::info!("intake stopped; draining");
        for (token, task) in self.stages {
            token.cancel();
            note(task.join_by(deadline).await);
        }
        self.housekeeping.cancel();
        for task in self.background {
            note(task.join().await);
        }
        tracing::info!(failed = self.journal.is_failed(), "drained");
        // Nothing appends any more: the next start continues at the exact end, without the
        // offset gap an unclean stop leaves.
        if let Some(local) = self.local.take() {
            let closed = tokio::task::spawn_blocking(move || local.shutdown()).await;
            note(closed.map_err(|e| ServerError::stage("journal", e)));
        }
        // Given up only now that the stages stopped, so the next holder is the only writer.
        if let Some(lease) = self.lease {
            lease.release().await;
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Resolves when a stage stopped by itself (an error), with [`ServerError::JournalFailed`]
    /// when the journal failed, or with [`ServerError::LeaseLost`] when this node lost its
    /// lease. After a stage error the caller should shut down; after a journal failure it
    /// should exit without draining (nothing can be made durable any more) and let the next
    /// start recover from disk; after a lost lease too (another node runs the stages now).
    pub async fn stopped(&mut self) -> ServerError {
        if let Some((_, starting)) = self.pending.as_mut() {
            let journal = self.journal.clone();
            let started = tokio::select! {
                started = starting => started,
                e = journal_failure(journal) => return e,
                // The runner's share of partitions runs while the node stands by.
                e = stage_ended(&mut self.stages), if !self.stages.is_empty() => return e,
            };
            self.pending = None;
            match started {
                Ok(Ok(started)) => self.install(started),
                Ok(Err(e)) => return e,
                Err(e) => return ServerError::stage("lease", e),
            }
        }
        let journal = self.journal.clone();
        let lease = self.lease.as_ref();
        let watchdog = async move {
            let lost = async {
                match lease {
                    Some(lease) => lease.lost().await,
                    None => std::future::pending().await,
                }
            };
            let failed = journal_failure(journal);
            tokio::select! {
                e = failed => e,
                () = lost => {
                    tracing::error!("this node lost its lease on the pipeline");
                    ServerError::LeaseLost
                }
            }
        };
        if self.stages.is_empty() {
            return watchdog.await;
        }
        tokio::select! {
            e = watchdog => e,
            e = stage_ended(&mut self.stages) => e,
        }
    }
}

/// Resolves when one of `stages` (not empty) stopped by itself, with its error; the stage is
/// removed.
async fn stage_ended(stages: &mut Vec<(CancellationToken, Task)>) -> ServerError {
    let (result, i, _) =
        futures::future::select_all(stages.iter_mut().map(|(_, t)| &mut t.handle)).await;
    let (_, task) = stages.remove(i);
    match result {
        Ok(Ok(())) => ServerError::stage(task.name, "stopped unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => ServerError::stage(task.name, e),
    }
}

impl Running {
    /// Starts the stages after the journal: at once, or, on a shared journal with the lake or
    /// hot role, in a task that stands by for the pipeline lease. A start that fails stops
    /// the listeners.
    async fn start_pipeline(mut self, starting: StartPipeline) -> Result<Self, ServerError> {
        let roles = starting.settings.roles;
        if starting.base.jetstream.is_some() && (roles.lake || roles.hot) {
            // Standing by until the lease comes; `stopped` and `shutdown` take it from here.
            let cancel = starting.cancel.clone();
            self.pending = Some((cancel, tokio::spawn(starting.run())));
            return Ok(self);
        }
        match starting.run().await {
            Ok(started) => {
                self.install(started);
                Ok(self)
            }
            Err(e) => {
                let listeners = std::mem::take(&mut self.listeners);
                Err(stop_listeners(&self.intake, listeners, e).await)
            }
        }
    }

    /// Takes over the stages after the journal, once started.
    fn install(&mut self, started: Started) {
        self.lease = started.lease;
        // After the runner, when it runs on its own partition leases: drained in this order.
        self.stages.extend(started.stages);
        self.background.extend(started.background);
        self.listeners.extend(started.listeners);
    }
}

/// Resolves when the journal failed (checked every [`WATCHDOG_EVERY`]).
async fn journal_failure(journal: Arc<dyn Journal>) -> ServerError {
    let mut every = tokio::time::interval(WATCHDOG_EVERY);
    loop {
        every.tick().await;
        if journal.is_failed() {
            tracing::error!("journal failed (fsync or write error)");
            return ServerError::JournalFailed;
        }
    }
}

/// The directory below an object-store lake root that holds the model checkpoints (a leading
/// `_`: never taken for a table).
const MODELS_DIR: &str = "_models";

/// Model checkpoints as objects below the lake root.
struct LakeCheckpoints(sluice_lake::ObjectFiles);

impl sluice_predict::checkpoint::CheckpointStore for LakeCheckpoints {
    fn location(&self, name: &str) -> String {
        self.0.location(name)
    }

    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.get(name)
    }

    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        self.0.put(name, bytes)
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), String> {
        self.0.rename(from, to)
    }
}
