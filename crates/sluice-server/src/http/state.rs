//! [`AppState`]: what the handlers share.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sluice_collector::Collector;
use sluice_journal::Journal;
use sluice_warehouse::Warehouse;

use crate::access::Access;
use crate::auth::Auth;
use crate::replay::Replayer;
use crate::stages::Stages;

/// Shared state of the handlers. A role this node does not run is `None`, and its routes
/// answer 404.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) collector: Option<Arc<Collector>>,
    pub(crate) warehouse: Option<Arc<Warehouse>>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) auth: Arc<Auth>,
    /// Write keys and tokens: who may read and administer.
    pub(crate) access: Arc<Access>,
    pub(crate) registry: Option<Arc<sluice_functions::Registry>>,
    /// On a shared journal: the schemas every node validates with (`shared_schemas`).
    pub(crate) shared_schemas: Option<crate::shared_schemas::SharedSchemas>,
    /// The user functions, on a node with the runner role (deployable standing by too).
    pub(crate) functions: Option<Arc<sluice_functions::Functions>>,
    /// On a shared journal: the functions every runner node runs (`shared_functions`).
    pub(crate) shared_functions: Option<crate::shared_functions::SharedFunctions>,
    /// What the stages after the journal give the routes, once they run (on a shared journal a
    /// node standing by for the pipeline lease serves without them until it takes over).
    pub(crate) pipeline: Arc<std::sync::OnceLock<PipelineParts>>,
    /// Every stage's health and lag (`/health`).
    pub(crate) stages: Stages,
    /// This node and, on a shared journal, the others (`/v1/cluster`).
    pub(crate) cluster: ClusterView,
}

/// What the stages after the journal give the routes.
#[derive(Default)]
pub(crate) struct PipelineParts {
    pub(crate) replay: Option<Arc<Replayer>>,
    /// Deletion requests, on a node with the runner, lake and warehouse roles.
    pub(crate) privacy: Option<Arc<crate::privacy::Privacy>>,
    /// The hot tier's reader, on a node with the hot role.
    pub(crate) hot: Option<sluice_hot::HotReader>,
    /// The models this node runs (predict role).
    pub(crate) models: Vec<String>,
}

impl AppState {
    /// The stages' parts, once they run.
    pub(crate) fn parts(&self) -> Option<&PipelineParts> {
        self.pipeline.get()
    }

    /// The stages' parts, or the answer of a node standing by for the pipeline lease (503: the
    /// node holding it answers, and this one will once it takes over).
    #[allow(clippy::result_large_err)] // the error is the answer itself
    pub(crate) fn running_parts(&self) -> Result<&PipelineParts, axum::response::Response> {
        self.parts().ok_or_else(|| {
            super::error_response(
                sluice_event::ErrorKind::Unavailable,
                "this node stands by for the pipeline lease; the node holding it answers this \
                 (sluice status shows which)",
            )
        })
    }
}

/// What `/v1/cluster` needs beyond the journal.
#[derive(Clone)]
pub(crate) struct ClusterView {
    /// This node.
    pub(crate) this: Arc<std::sync::Mutex<NodeCard>>,
    /// The journal, when it is shared (JetStream): the other nodes and the lease.
    pub(crate) jetstream: Option<Arc<sluice_journal::JetStreamJournal>>,
    /// The lease of the node running the pipeline.
    pub(crate) lease: &'static str,
    /// Every consumer group with the topic it reads, in pipeline order.
    pub(crate) groups: Vec<(&'static str, &'static str)>,
}

/// What a node says about itself to the others (and to `/v1/cluster`).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct NodeCard {
    pub(crate) name: String,
    /// `standby` while it waits for the pipeline lease, else `running`.
    pub(crate) state: &'static str,
    pub(crate) roles: Vec<&'static str>,
    /// Its HTTP address, once it listens.
    pub(crate) http: Option<String>,
    pub(crate) started_at: String,
    pub(crate) version: &'static str,
}

impl NodeCard {
    /// A node named `name` running `roles`, standing by until it says otherwise.
    pub(crate) fn new(name: String, roles: Vec<&'static str>) -> Self {
        Self {
            name,
            state: "standby",
            roles,
            http: None,
            started_at: sluice_event::format_micros(sluice_event::now_micros()),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}
