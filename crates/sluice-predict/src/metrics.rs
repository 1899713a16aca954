//! Every metric the prediction engine emits. No per-user labels; `model` is a configured name.

use metrics::{counter, describe_counter, describe_gauge, gauge};

/// Registers descriptions.
pub fn describe() {
    describe_gauge!(
        "sluice_predict_log_loss",
        "progressive-validation log-loss of a model (each example scored before it was learned)"
    );
    describe_gauge!(
        "sluice_predict_baseline_log_loss",
        "progressive log-loss of the running base rate on the same examples"
    );
    describe_gauge!(
        "sluice_predict_auc",
        "progressive-validation AUC of a model (1,000 score bins)"
    );
    describe_gauge!(
        "sluice_predict_pending_examples",
        "examples waiting for their label"
    );
    describe_gauge!(
        "sluice_predict_pending_bytes",
        "heap bytes the pending examples hold (an estimate)"
    );
    describe_gauge!(
        "sluice_predict_pending_ceiling_bytes",
        "heap bytes the pending examples would hold at max_pending, at today's average size"
    );
    describe_counter!(
        "sluice_predict_examples_total",
        "labeled examples learned, by label"
    );
    describe_counter!("sluice_predict_scored_total", "events scored");
    describe_counter!("sluice_predict_checkpoints_total", "checkpoints written");
    describe_counter!(
        "sluice_predict_errors_total",
        "checkpoint failures, by kind"
    );
}

pub(crate) fn quality(model: &str, log_loss: f64, baseline: f64, auc: f64, pending: usize) {
    gauge!("sluice_predict_log_loss", "model" => model.to_string()).set(log_loss);
    gauge!("sluice_predict_baseline_log_loss", "model" => model.to_string()).set(baseline);
    gauge!("sluice_predict_auc", "model" => model.to_string()).set(auc);
    gauge!("sluice_predict_pending_examples", "model" => model.to_string()).set(pending as f64);
}

/// `sluice_predict_pending_bytes{model}` and `sluice_predict_pending_ceiling_bytes{model}`:
/// what the pending examples hold, and would hold at `max_pending`.
pub(crate) fn pending_memory(model: &str, bytes: usize, ceiling: usize) {
    gauge!("sluice_predict_pending_bytes", "model" => model.to_string()).set(bytes as f64);
    gauge!("sluice_predict_pending_ceiling_bytes", "model" => model.to_string())
        .set(ceiling as f64);
}

pub(crate) fn learned(model: &str, positives: u64, negatives: u64) {
    if positives > 0 {
        counter!("sluice_predict_examples_total", "model" => model.to_string(), "label" => "1")
            .increment(positives);
    }
    if negatives > 0 {
        counter!("sluice_predict_examples_total", "model" => model.to_string(), "label" => "0")
            .increment(negatives);
    }
}

pub(crate) fn scored(model: &str, n: u64) {
    counter!("sluice_predict_scored_total", "model" => model.to_string()).increment(n);
}

pub(crate) fn checkpoint(model: &str, ok: bool) {
    if ok {
        counter!("sluice_predict_checkpoints_total", "model" => model.to_string()).increment(1);
    } else {
        counter!("sluice_predict_errors_total", "model" => model.to_string(), "kind" => "checkpoint")
            .increment(1);
    }
}
