//! `GET /v1/cluster` (a [`MetricsReader`] request): the nodes, the leases and, per topic
//! partition, its end and every consumer's position and lag — what `sluice status` prints.
//!
//! On a shared journal (JetStream) the nodes are those that announced themselves in the lease
//! bucket within the lease TTL ([`NodeCard`], written by every node while it runs, standing by
//! or not), the leases are the pipeline's and those of the runner's partitions, and the positions are every node's (the journal
//! watches them). On the file journal the one node is this one and there are no leases.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use sluice_event::{ErrorKind, topic};
use sluice_journal::{JetStreamJournal, Journal};

use crate::http::{AppState, ClusterView, MetricsReader, NodeCard, error_response};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/cluster", get(cluster))
}

async fn cluster(_: MetricsReader, State(state): State<AppState>) -> Response {
    let view = &state.cluster;
    let this = view.this.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (backend, nodes, leases) = match &view.jetstream {
        None => ("file", vec![node_json(&this, 0.0)], Vec::new()),
        Some(j) => match shared(j, view.lease).await {
            Ok((nodes, leases)) => ("jetstream", nodes, leases),
            Err(e) => {
                return error_response(ErrorKind::Unavailable, format!("reading the cluster: {e}"));
            }
        },
    };
    let partitions = match partitions(state.journal.as_ref(), view) {
        Ok(p) => p,
        Err(e) => return error_response(e.kind(), format!("reading the journal: {e}")),
    };
    Json(json!({
        "backend": backend,
        "node": this.name,
        "nodes": nodes,
        "leases": leases,
        "partitions": partitions,
    }))
    .into_response()
}

fn node_json(card: &NodeCard, seen_s_ago: f64) -> Value {
    let mut v = serde_json::to_value(card).unwrap_or_default();
    v["seen_s_ago"] = json!(seen_s_ago);
    v
}

/// The nodes that announced themselves and the leases, from the shared journal.
async fn shared(
    j: &JetStreamJournal,
    lease: &str,
) -> Result<(Vec<Value>, Vec<Value>), sluice_journal::JournalError> {
    let nodes = j
        .nodes()
        .await?
        .into_iter()
        .map(|n| {
            let mut v: Value = serde_json::from_str(&n.details).unwrap_or_else(|_| json!({}));
            v["name"] = json!(n.name);
            v["seen_s_ago"] = json!((n.age.as_secs_f64() * 10.0).round() / 10.0);
            v
        })
        .collect();
    // The pipeline's lease first (held or not), then every other held one: the runner's
    // partitions (`runner.<p>`), in partition order.
    let mut leases = vec![json!({"name": lease, "holder": j.lease_holder(lease).await?})];
    let mut others: Vec<(String, String)> = j
        .leases()
        .await?
        .into_iter()
        .filter(|(name, _)| name != lease)
        .collect();
    others.sort_by_key(|(name, _)| {
        let p = name
            .rsplit_once('.')
            .and_then(|(_, p)| p.parse::<u32>().ok());
        (p.is_none(), p, name.clone())
    });
    leases.extend(
        others
            .into_iter()
            .map(|(name, holder)| json!({"name": name, "holder": holder})),
    );
    Ok((nodes, leases))
}

/// Per topic partition: first and next offset, and each consumer group's position and lag.
fn partitions(
    journal: &dyn Journal,
    view: &ClusterView,
) -> Result<Vec<Value>, sluice_journal::JournalError> {
    let mut out = Vec::new();
    for t in [topic::RAW, topic::GOOD, topic::BAD] {
        for p in 0..journal.partitions(t)? {
            let (start, end) = (journal.start(t, p)?, journal.end(t, p)?);
            let mut consumers = serde_json::Map::new();
            for (group, _) in view.groups.iter().filter(|(_, of)| *of == t) {
                if let Some(next) = journal.committed(group, t, p)? {
                    let lag = end.saturating_sub(next.max(start));
                    consumers.insert(group.to_string(), json!({"next": next, "lag": lag}));
                }
            }
            out.push(json!({
                "topic": t, "partition": p, "start": start, "end": end, "consumers": consumers,
            }));
        }
    }
    Ok(out)
}
