//! [`Server`]: builds every stage from [`Settings`], runs them, and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_collector::Collector;
use sluice_event::topic;
use sluice_functions::{Chain, Functions, Registry, Runner};
use sluice_journal::{Journal, LocalJournal};
use sluice_lake::{BadRowsSink, LakeRoot, LakeSink, TypedSink, Upkeep};
use sluice_warehouse::Warehouse;
use sluice_warehouse::loader::PgLoader;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::{ServerError, Settings};

/// How often retention runs over the journal.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Entry point: start a server from settings.
pub struct Server;

/// A started server.
pub struct Running {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: Option<SocketAddr>,
    journal: Arc<LocalJournal>,
    intake: CancellationToken,
    http: Option<JoinHandle<Result<(), std::io::Error>>>,
    runner: Option<(CancellationToken, JoinHandle<Result<(), ServerError>>)>,
    lake: Option<(CancellationToken, JoinHandle<Result<(), ServerError>>)>,
    hot: Option<(CancellationToken, JoinHandle<Result<(), ServerError>>)>,
    housekeeping: CancellationToken,
}

impl Server {
    /// Opens the journal and starts every role in `settings`.
    pub async fn start(settings: Settings) -> Result<Running, ServerError> {
        let prometheus = crate::metrics::install();
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            ServerError::stage(
                "data dir",
                format!("cannot create {}: {e}", settings.data_dir.display()),
            )
        })?;
        let journal_cfg = settings.journal.clone();
        let journal = tokio::task::spawn_blocking(move || LocalJournal::open(journal_cfg))
            .await
            .map_err(|e| ServerError::stage("journal", e))?
            .map_err(|e| ServerError::stage("journal", e))?;
        let report = journal.recovery_report();
        for q in report.quarantined() {
            tracing::error!(topic = %q.topic, partition = q.partition, reason = ?q.quarantined,
                "journal partition quarantined: its durable data is corrupt; it will not be served");
        }
        for w in &report.warnings {
            tracing::warn!(warning = %w, "journal recovery");
        }
        sluice_lake::metrics::describe();
        for t in [topic::RAW, topic::GOOD, topic::BAD] {
            journal
                .create_topic(t, settings.partitions)
                .map_err(|e| ServerError::stage("journal", e))?;
        }
        let dyn_journal: Arc<dyn Journal> = journal.clone();
        let lake_dir = settings.data_dir.join("lake");
        std::fs::create_dir_all(&lake_dir).map_err(|e| {
            ServerError::stage("lake", format!("cannot create {}: {e}", lake_dir.display()))
        })?;
        let lake_root =
            LakeRoot::from_path(&lake_dir).map_err(|e| ServerError::stage("lake", e))?;
        let housekeeping = CancellationToken::new();

        // The registry lives with the data; every role that validates or serves schemas uses it.
        let registry = Arc::new(
            Registry::open(settings.data_dir.join("schemas"))
                .map_err(|e| ServerError::stage("schemas", e))?,
        );
        let mut runner_progress = None;
        let mut functions = None;
        let runner = if settings.roles.functions {
            let dir = settings.data_dir.join("functions");
            let partitions = settings.partitions;
            let udf = tokio::task::spawn_blocking(move || Functions::open(&dir, partitions))
                .await
                .map_err(|e| ServerError::stage("functions", e))?
                .map_err(|e| ServerError::stage("functions", e))?;
            let udf = Arc::new(udf);
            functions = Some(udf.clone());
            let chain = Chain::new(
                registry.clone(),
                settings.validation.clone(),
                settings.enrich.clone(),
                settings.functions.max_event_bytes,
            )
            .map_err(ServerError::Config)?
            .with_functions(udf);
            let runner = Runner::new(
                dyn_journal.clone(),
                settings.functions.clone(),
                Arc::new(chain),
                Some(settings.data_dir.join("functions")),
            )
            .map_err(|e| ServerError::stage("functions", e))?;
            runner_progress = Some(runner.progress());
            let token = CancellationToken::new();
            let t = token.clone();
            let handle = tokio::spawn(async move {
                runner
                    .run(t)
                    .await
                    .map_err(|e| ServerError::stage("functions", e))
            });
            Some((token, handle))
        } else {
            None
        };

        // Both sinks share one token: each drains its topic to the end on shutdown.
        let mut events_progress = None;
        let lake = if settings.roles.lake {
            let events = LakeSink::new(
                dyn_journal.clone(),
                lake_root.clone(),
                settings.lake.clone(),
            );
            events_progress = Some(events.progress());
            let bad_rows = BadRowsSink::new(
                dyn_journal.clone(),
                lake_root.clone(),
                settings.lake.clone(),
            );
            let typed = settings.lake.typed_tables.then(|| {
                TypedSink::new(
                    dyn_journal.clone(),
                    lake_root.clone(),
                    settings.lake.clone(),
                )
                .with_declared_types(Arc::new(
                    crate::declared::RegistryTypes::new(registry.clone(), &settings.validation),
                ))
            });
            let loader = settings
                .loader
                .clone()
                .map(|l| PgLoader::new(dyn_journal.clone(), l));
            let token = CancellationToken::new();
            let (t1, t2, t3, t4) = (token.clone(), token.clone(), token.clone(), token.clone());
            let handle = tokio::spawn(async move {
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
            let upkeep = Upkeep::new(
                lake_root.clone(),
                settings.upkeep.clone(),
                settings.lake.zstd_level,
            );
            tokio::spawn(upkeep.run(housekeeping.clone()));
            Some((token, handle))
        } else {
            None
        };

        // The hot projection, with the online models riding along when the predict role runs.
        let (hot_reader, hot) = if settings.roles.hot {
            sluice_hot::metrics::describe();
            let store = sluice_hot::open_store(&settings.hot)
                .await
                .map_err(|e| ServerError::stage("hot", e))?;
            let hot_settings = Arc::new(settings.hot.clone());
            let reader = sluice_hot::HotReader::new(store.clone(), hot_settings.clone());
            let mut projector =
                sluice_hot::Projector::new(dyn_journal.clone(), store, hot_settings);
            if settings.roles.predict && !settings.predict.models.is_empty() {
                let ps = settings.predict.clone();
                let models = tokio::task::spawn_blocking(move || sluice_predict::Models::open(&ps))
                    .await
                    .map_err(|e| ServerError::stage("predict", e))?
                    .map_err(|e| ServerError::stage("predict", e))?;
                projector = projector.with_hook(Box::new(models));
            }
            let token = CancellationToken::new();
            let t = token.clone();
            let handle = tokio::spawn(async move {
                projector
                    .run(t.cancelled_owned())
                    .await
                    .map_err(|e| ServerError::stage("hot", e))
            });
            (Some(reader), Some((token, handle)))
        } else {
            (None, None)
        };
        let models: Vec<String> = if settings.roles.predict {
            settings
                .predict
                .models
                .iter()
                .map(|m| m.name.clone())
                .collect()
        } else {
            Vec::new()
        };

        let intake = CancellationToken::new();
        let (http_addr, http) = if settings.roles.collector
            || settings.roles.warehouse
            || settings.roles.hot
        {
            let collector = if settings.roles.collector {
                let j = dyn_journal.clone();
                let cs = settings.collector.clone();
                let c = tokio::task::spawn_blocking(move || Collector::open(j, cs))
                    .await
                    .map_err(|e| ServerError::stage("collector", e))?
                    .map_err(|e| ServerError::stage("collector", e))?;
                Some(Arc::new(c))
            } else {
                None
            };
            let warehouse = if settings.roles.warehouse {
                Some(Arc::new(
                    Warehouse::open(lake_root.clone())
                        .map_err(|e| ServerError::stage("warehouse", e))?,
                ))
            } else {
                None
            };
            if let Some(w) = &warehouse {
                // Checked here so that a taken port is a start-up error, not a log line.
                if settings.pg.port() != 0 {
                    std::net::TcpListener::bind(settings.pg).map_err(|source| {
                        ServerError::Bind {
                            addr: settings.pg,
                            source,
                        }
                    })?;
                }
                let (w, addr, stop) = (w.clone(), settings.pg, intake.clone());
                let credentials = settings.pg_credentials.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        sluice_warehouse::serve_pg_with(w, addr, credentials, stop).await
                    {
                        tracing::error!(error = %e, %addr, "postgres wire server stopped");
                    }
                });
                tracing::info!(addr = %settings.pg, "postgres wire listening");
            }
            let auth = crate::auth::Auth::new(
                settings.sources.clone(),
                Some(crate::auth::KeyFile::path(&settings.data_dir)),
            )
            .map_err(ServerError::Config)?;
            let replay = match (&runner_progress, &events_progress, &warehouse) {
                (Some(runner), Some(events), Some(w)) => Some(Arc::new(crate::replay::Replayer {
                    journal: dyn_journal.clone(),
                    runner: runner.clone(),
                    events: events.clone(),
                    warehouse: w.clone(),
                    lock: tokio::sync::Mutex::new(()),
                })),
                _ => None,
            };
            let state = AppState {
                collector,
                warehouse,
                journal: dyn_journal.clone(),
                prometheus,
                auth: Arc::new(auth),
                registry: Some(registry.clone()),
                admin_token: settings.admin_token.clone(),
                replay,
                hot: hot_reader,
                models: Arc::new(models),
                functions,
            };
            let listener = crate::listen::bind(settings.http, settings.listener.max_connections)
                .map_err(|source| ServerError::Bind {
                    addr: settings.http,
                    source,
                })?;
            let addr = listener.local_addr().ok();
            let app = http::router(state, &settings);
            let stop = intake.clone();
            let limits = crate::listen::Limits {
                listener: settings.listener.clone(),
                max_body_bytes: settings.collector.max_body_bytes(),
            };
            let handle = tokio::spawn(crate::listen::serve(listener, app, limits, stop));
            tracing::info!(addr = ?addr, "http listening");
            (addr, Some(handle))
        } else {
            (None, None)
        };

        // Housekeeping: retention, and a watchdog that stops the process when the journal failed
        // (an fsync error means the on-disk state is unknown: recover from disk on restart).
        {
            let journal = journal.clone();
            let stop = housekeeping.clone();
            tokio::spawn(async move {
                let mut retention = tokio::time::interval(RETENTION_EVERY);
                let mut watchdog = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = retention.tick() => {
                            let j = journal.clone();
                            match tokio::task::spawn_blocking(move || j.enforce_retention()).await {
                                Ok(Ok(_)) => {}
                                Ok(Err(e)) => tracing::warn!(error = %e, "retention failed"),
                                Err(e) => tracing::warn!(error = %e, "retention task failed"),
                            }
                        }
                        _ = watchdog.tick() => {
                            if journal.is_failed() {
                                tracing::error!("journal failed (fsync or write error); exiting to recover from disk");
                                std::process::exit(70);
                            }
                        }
                    }
                }
            });
        }

        Ok(Running {
            http_addr,
            journal,
            intake,
            http,
            runner,
            lake,
            hot,
            housekeeping,
        })
    }
}

impl Running {
    /// Stops intake, drains the runner, the lake sink and the hot projection, and returns once
    /// everything acked is committed to the lake and the hot store. Returns the first stage error, if any.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let mut first_err = None;
        self.intake.cancel();
        if let Some(h) = self.http.take() {
            match h.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(ServerError::stage("http", e))),
                Err(e) => first_err = first_err.or(Some(ServerError::stage("http", e))),
            }
        }
        tracing::info!("intake stopped; draining");
        for (token, handle) in [self.runner.take(), self.lake.take(), self.hot.take()]
            .into_iter()
            .flatten()
        {
            token.cancel();
            match handle.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(ServerError::stage("task", e))),
            }
        }
        self.housekeeping.cancel();
        tracing::info!(failed = self.journal.is_failed(), "drained");
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Resolves when a stage stopped by itself (an error); the caller should then shut down.
    pub async fn stopped(&mut self) -> ServerError {
        let runner = async {
            match self.runner.as_mut() {
                Some((_, h)) => flatten(h.await, "functions"),
                None => std::future::pending().await,
            }
        };
        let lake = async {
            match self.lake.as_mut() {
                Some((_, h)) => flatten(h.await, "lake"),
                None => std::future::pending().await,
            }
        };
        let hot = async {
            match self.hot.as_mut() {
                Some((_, h)) => flatten(h.await, "hot"),
                None => std::future::pending().await,
            }
        };
        let e = tokio::select! {
            e = runner => { self.runner = None; e }
            e = lake => { self.lake = None; e }
            e = hot => { self.hot = None; e }
        };
        e
    }
}

fn flatten(
    r: Result<Result<(), ServerError>, tokio::task::JoinError>,
    stage: &'static str,
) -> ServerError {
    match r {
        Ok(Ok(())) => ServerError::stage(stage, "stopped unexpectedly"),
        Ok(Err(e)) => e,
        Err(e) => ServerError::stage(stage, e),
    }
}
