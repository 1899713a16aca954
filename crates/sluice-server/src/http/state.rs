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
    pub(crate) replay: Option<Arc<Replayer>>,
    /// Deletion requests, on a node with the runner, lake and warehouse roles.
    pub(crate) privacy: Option<Arc<crate::privacy::Privacy>>,
    /// The hot tier's reader, on a node with the hot role.
    pub(crate) hot: Option<sluice_hot::HotReader>,
    /// The models this node runs (predict role).
    pub(crate) models: Arc<Vec<String>>,
    /// The user functions, on a node with the runner role.
    pub(crate) functions: Option<Arc<sluice_functions::Functions>>,
    /// Every stage's health and lag (`/health`).
    pub(crate) stages: Stages,
}
