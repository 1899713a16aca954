//! The online model on a synthetic stream with a known true purchase model, and checkpoints.

use sluice_hot::{HotConfig, HotSettings};
use sluice_predict::{ModelConfig, ModelSpec, OnlineModel, checkpoint, run_offline, synthetic};

fn spec() -> ModelSpec {
    let c: ModelConfig = serde_json::from_value(serde_json::json!({
        "name": "purchase_30m",
        "outcome": "Order Completed",
        "horizon": "30m",
        "bits": 18,
        "examples": ["Product Viewed"],
    }))
    .unwrap();
    c.validate().unwrap()
}

fn hot() -> HotSettings {
    HotConfig::default().validate().unwrap()
}

#[test]
fn the_online_model_beats_the_base_rate_on_a_known_click_model() {
    let stream = synthetic::generate(7, 3000, 12);
    let mut model = OnlineModel::new(spec());
    run_offline(&mut model, &stream.events, &hot());
    let s = model.stats();
    // Every view is labeled once its horizon passed (the last ones may still wait).
    assert!(s.examples as usize + model.pending_len() == stream.truth.len());
    let truth_loss: f64 = {
        // The best achievable log-loss: the true probabilities' expected loss.
        let ps: Vec<f64> = stream.truth.values().copied().collect();
        ps.iter()
            .map(|p| -(p * p.ln() + (1.0 - p) * (1.0 - p).ln()))
            .sum::<f64>()
            / ps.len() as f64
    };
    let (loss, base, auc) = (s.log_loss(), s.baseline_log_loss(), s.auc());
    println!(
        "examples {} positives {} log-loss {loss:.4} base rate {base:.4} true model {truth_loss:.4} auc {auc:.3}",
        s.examples, s.positives
    );
    assert!(loss < 0.85 * base, "log-loss {loss} vs base rate {base}");
    assert!(auc > 0.7, "auc {auc}");
    assert!(
        loss < truth_loss + 0.01,
        "close to the true model: {loss} vs {truth_loss}"
    );
}

#[test]
fn a_checkpoint_restores_the_model_exactly() {
    let stream = synthetic::generate(8, 500, 6);
    let (first, second) = stream.events.split_at(stream.events.len() / 2);
    let mut model = OnlineModel::new(spec());
    run_offline(&mut model, first, &hot());
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(&model, dir.path()).unwrap();
    let restored = checkpoint::read(&spec(), dir.path()).unwrap();
    assert_eq!(restored.stats(), model.stats());
    assert_eq!(restored.pending_len(), model.pending_len());
    assert_eq!(restored.ftrl(), model.ftrl());
    // Learning goes on identically from the restored model.
    let mut a = model;
    let mut b = restored;
    run_offline(&mut a, second, &hot());
    run_offline(&mut b, second, &hot());
    assert_eq!(a.stats(), b.stats());

    // Another definition starts afresh; a damaged file is set aside.
    let mut other = spec();
    other.horizon_us *= 2;
    assert_eq!(
        checkpoint::read(&other, dir.path())
            .unwrap()
            .stats()
            .examples,
        0
    );
    let path = checkpoint::path_of(dir.path(), "purchase_30m");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert_eq!(
        checkpoint::read(&spec(), dir.path())
            .unwrap()
            .stats()
            .examples,
        0
    );
    assert!(path.with_extension("ftrl.corrupt").exists());
}
