//! [`OnlineModel`]: one model's learner, its examples waiting for a label, and its
//! progressive-validation figures.
//!
//! Labels arrive later than the events they label. Each example event (by default every event
//! but the outcome) is scored, and its features and score wait as a *pending example* until
//! either the user's outcome event arrives within `horizon` (label 1) or the stream's event
//! time passes the deadline (label 0). Time is event time (the highest timestamp seen in the
//! example's partition, which is its user's: partitions are read at different paces), never
//! the wall clock, so replaying the journal gives the same labels. The score recorded with an
//! example was made before the model learned anything from that example: the log-loss and AUC
//! over labeled examples are therefore progressive validation, an honest out-of-sample
//! estimate.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sluice_event::Position;
use sluice_hot::{EventView, Positions, Prediction, Profile};

use crate::config::ModelSpec;
use crate::features::{FeatureWriter, featurize};
use crate::ftrl::{Features, Ftrl, log_loss};
use crate::metrics;

/// Score bins of the AUC estimate.
const AUC_BINS: usize = 1000;

/// An example waiting for its label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The journal partition of its event (the user's partition).
    pub partition: u32,
    /// Whose.
    pub user: String,
    /// Labeled 0 once event time passes this.
    pub deadline: i64,
    /// The score made at event time.
    pub score: f64,
    /// Its features.
    pub features: Features,
}

/// Progressive-validation figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progressive {
    /// Labeled examples.
    pub examples: u64,
    /// Of which positive.
    pub positives: u64,
    /// Sum of the model's log-loss.
    pub log_loss_sum: f64,
    /// Sum of the log-loss of the running base rate (the rate of positives before each
    /// example, smoothed).
    pub baseline_log_loss_sum: f64,
    /// Positive examples per score bin.
    pub positive_bins: Vec<u64>,
    /// Negative examples per score bin.
    pub negative_bins: Vec<u64>,
}

impl Default for Progressive {
    fn default() -> Self {
        Self {
            examples: 0,
            positives: 0,
            log_loss_sum: 0.0,
            baseline_log_loss_sum: 0.0,
            positive_bins: vec![0; AUC_BINS],
            negative_bins: vec![0; AUC_BINS],
        }
    }
}

impl Progressive {
    /// Records one labeled example scored `score`.
    pub fn record(&mut self, score: f64, label: bool) {
        let base = (self.positives as f64 + 0.5) / (self.examples as f64 + 1.0);
        self.baseline_log_loss_sum += log_loss(base, label);
        self.log_loss_sum += log_loss(score, label);
        self.examples += 1;
        let bin = ((score.clamp(0.0, 1.0) * AUC_BINS as f64) as usize).min(AUC_BINS - 1);
        if label {
            self.positives += 1;
            if let Some(b) = self.positive_bins.get_mut(bin) {
                *b += 1;
            }
        } else if let Some(b) = self.negative_bins.get_mut(bin) {
            *b += 1;
        }
    }

    /// Mean log-loss (NaN before any example).
    pub fn log_loss(&self) -> f64 {
        self.log_loss_sum / self.examples as f64
    }

    /// Mean log-loss of the running base rate.
    pub fn baseline_log_loss(&self) -> f64 {
        self.baseline_log_loss_sum / self.examples as f64
    }

    /// AUC from the score bins (ties within a bin count half); NaN without both labels.
    pub fn auc(&self) -> f64 {
        let positives: u64 = self.positive_bins.iter().sum();
        let negatives: u64 = self.negative_bins.iter().sum();
        if positives == 0 || negatives == 0 {
            return f64::NAN;
        }
        let mut negatives_below = 0u64;
        let mut area = 0.0;
        for (pos, neg) in self.positive_bins.iter().zip(&self.negative_bins) {
            area += *pos as f64 * (negatives_below as f64 + *neg as f64 / 2.0);
            negatives_below += neg;
        }
        area / (positives as f64 * negatives as f64)
    }
}

/// One labeled example, as handed to an observer (the benchmark's stream).
#[derive(Clone, Debug)]
pub struct Labeled {
    /// The hashed features.
    pub features: Features,
    /// The label.
    pub label: bool,
}

/// One online model. See the module docs.
pub struct OnlineModel {
    pub(crate) spec: ModelSpec,
    pub(crate) ftrl: Ftrl,
    pub(crate) pending: BTreeMap<u64, Pending>,
    /// (partition, deadline, seq) of every pending example.
    pub(crate) expiry: BTreeSet<(u32, i64, u64)>,
    pub(crate) by_user: HashMap<String, Vec<u64>>,
    pub(crate) next_seq: u64,
    /// Per partition: the highest event time learned from.
    pub(crate) watermarks: BTreeMap<u32, i64>,
    pub(crate) stats: Progressive,
    /// Partition → next offset this model has learned from.
    pub(crate) positions: Positions,
    /// Labeled examples not yet reported to metrics: (positives, negatives).
    unreported: (u64, u64),
    scored: u64,
    /// When set, labeled examples are also kept here (the benchmark).
    pub(crate) tap: Option<Vec<Labeled>>,
    /// Heap bytes the pending examples hold, as [`example_bytes`] counts them.
    pending_bytes: usize,
}

/// Heap bytes one pending example holds in the model's three indexes: its features, its user
/// id (twice: in the example and as the key of the user's list), the example's map entry, its
/// expiry entry and its sequence number in the user's list, with half again for B-tree and
/// hash-table slack. An estimate (the allocator's own overhead is not counted), exposed as
/// `sluice_predict_pending_bytes`.
fn example_bytes(p: &Pending) -> usize {
    let entries = size_of::<(u64, Pending)>() + size_of::<(u32, i64, u64)>() + size_of::<u64>();
    p.features.capacity() * size_of::<(u32, f32)>() + 2 * p.user.len() + entries * 3 / 2
}

impl OnlineModel {
    /// A fresh model.
    pub fn new(spec: ModelSpec) -> Self {
        Self {
            ftrl: Ftrl::new(spec.params),
            spec,
            pending: BTreeMap::new(),
            expiry: BTreeSet::new(),
            by_user: HashMap::new(),
            next_seq: 0,
            watermarks: BTreeMap::new(),
            stats: Progressive::default(),
            positions: Positions::new(),
            unreported: (0, 0),
            scored: 0,
            tap: None,
            pending_bytes: 0,
        }
    }

    /// The model's spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Its progressive figures.
    pub fn stats(&self) -> &Progressive {
        &self.stats
    }

    /// Drops, without learning from them, the pending examples of the people in `suppressed`
    /// (a deletion request: their features and id leave the model's state and its next
    /// checkpoint). How many went.
    pub fn forget(&mut self, suppressed: &sluice_event::suppress::Suppressed) -> usize {
        let users: Vec<String> = self
            .by_user
            .keys()
            .filter(|u| suppressed.contains(u))
            .cloned()
            .collect();
        let mut dropped = 0;
        for user in users {
            for seq in self.by_user.get(&user).cloned().unwrap_or_default() {
                dropped += usize::from(self.take_pending(seq).is_some());
            }
        }
        dropped
    }

    /// Examples waiting for a label.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Heap bytes the pending examples hold (an estimate, see [`example_bytes`]).
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// What the pending examples would hold at `max_pending`, at today's average size (rounded
    /// up, so that a full set never shows above its own ceiling).
    pub fn pending_ceiling_bytes(&self) -> usize {
        let average = match self.pending.len() {
            0 => 0,
            n => self.pending_bytes.div_ceil(n),
        };
        average * self.spec.max_pending
    }

    /// Files `example` as pending under `seq` in the three indexes.
    pub(crate) fn insert_pending(&mut self, seq: u64, mut example: Pending) {
        example.features.shrink_to_fit();
        self.pending_bytes += example_bytes(&example);
        self.expiry
            .insert((example.partition, example.deadline, seq));
        self.by_user
            .entry(example.user.clone())
            .or_default()
            .push(seq);
        if let Some(old) = self.pending.insert(seq, example) {
            debug_assert!(false, "pending example {seq} filed twice");
            self.pending_bytes -= example_bytes(&old);
        }
    }

    /// Removes the pending example `seq` from the three indexes.
    fn take_pending(&mut self, seq: u64) -> Option<Pending> {
        let example = self.pending.remove(&seq)?;
        self.pending_bytes -= example_bytes(&example);
        self.expiry
            .remove(&(example.partition, example.deadline, seq));
        if let Some(list) = self.by_user.get_mut(&example.user) {
            list.retain(|s| *s != seq);
            if list.is_empty() {
                self.by_user.remove(&example.user);
            }
        }
        Some(example)
    }

    /// The learner.
    pub fn ftrl(&self) -> &Ftrl {
        &self.ftrl
    }

    /// Keeps every labeled example from now on (for benchmarks).
    pub fn tap_examples(&mut self) {
        self.tap = Some(Vec::new());
    }

    /// The examples kept since [`OnlineModel::tap_examples`].
    pub fn take_tapped(&mut self) -> Vec<Labeled> {
        self.tap.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Scores `view`, writes the score into `profile` when `live`, and learns from it if this
    /// model has not yet (per its positions).
    pub fn observe(
        &mut self,
        position: Position,
        view: &EventView<'_>,
        profile: Option<&mut Profile>,
        live: bool,
    ) {
        let learn = position.offset
            >= self
                .positions
                .get(&position.partition)
                .copied()
                .unwrap_or(0);
        if !learn && !live {
            return;
        }
        let e = view.event;
        if learn {
            let wm = self
                .watermarks
                .entry(position.partition)
                .or_insert(i64::MIN);
            if e.timestamp > *wm {
                *wm = e.timestamp;
                self.expire(position.partition);
            }
        }
        let mut w = FeatureWriter::for_event();
        featurize(&mut w, view, profile.as_deref(), &self.spec.outcome);
        let features = w.finish();
        let score = self.ftrl.predict(&features);
        self.scored += 1;
        if live && let Some(p) = profile {
            match p.predictions.get_mut(&self.spec.name) {
                Some(latest) => {
                    latest.score = score;
                    latest.at = e.timestamp;
                    latest.event_id.clone_from(&e.event_id);
                }
                None => {
                    let latest = Prediction {
                        score,
                        at: e.timestamp,
                        event_id: e.event_id.clone(),
                    };
                    p.predictions.insert(self.spec.name.clone(), latest);
                }
            }
        }
        if !learn {
            return;
        }
        let Some(user) = view.profile_id else { return };
        if e.event == self.spec.outcome {
            self.label_user(user, e.timestamp);
        } else if self.spec.is_example(&e.event) {
            self.add_pending(Pending {
                partition: position.partition,
                user: user.to_string(),
                deadline: e.timestamp.saturating_add(self.spec.horizon_us),
                score,
                features,
            });
        }
    }

    fn add_pending(&mut self, example: Pending) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let partition = example.partition;
        self.insert_pending(seq, example);
        while self.pending.len() > self.spec.max_pending {
            // The oldest example of this partition is labeled early.
            let Some(&(_, _, seq)) = self
                .expiry
                .range((partition, i64::MIN, 0)..=(partition, i64::MAX, u64::MAX))
                .next()
            else {
                break;
            };
            self.resolve(seq, false);
        }
    }

    /// Labels 0 every pending example of `partition` whose deadline its event time has passed.
    /// Per partition, since a user's events (example and outcome) share one partition and
    /// partitions are read at different paces.
    fn expire(&mut self, partition: u32) {
        let watermark = self.watermarks.get(&partition).copied().unwrap_or(i64::MIN);
        while let Some(&(_, deadline, seq)) = self
            .expiry
            .range((partition, i64::MIN, 0)..=(partition, i64::MAX, u64::MAX))
            .next()
        {
            if deadline >= watermark {
                break;
            }
            self.resolve(seq, false);
        }
    }

    fn label_user(&mut self, user: &str, at: i64) {
        let Some(seqs) = self.by_user.remove(user) else {
            return;
        };
        for seq in seqs {
            let within = self.pending.get(&seq).is_some_and(|p| p.deadline >= at);
            self.resolve(seq, within);
        }
    }

    fn resolve(&mut self, seq: u64, label: bool) {
        let Some(example) = self.take_pending(seq) else {
            return;
        };
        self.stats.record(example.score, label);
        self.ftrl.learn(&example.features, label);
        if label {
            self.unreported.0 += 1;
        } else {
            self.unreported.1 += 1;
        }
        if let Some(tap) = &mut self.tap {
            tap.push(Labeled {
                features: example.features,
                label,
            });
        }
    }

    /// Marks everything below `next` as learned from.
    pub fn advance(&mut self, next: &Positions) {
        for (p, n) in next {
            let e = self.positions.entry(*p).or_insert(0);
            *e = (*e).max(*n);
        }
    }

    /// Publishes the metrics.
    pub fn report(&mut self) {
        let (pos, neg) = std::mem::take(&mut self.unreported);
        metrics::learned(&self.spec.name, pos, neg);
        metrics::scored(&self.spec.name, std::mem::take(&mut self.scored));
        if self.stats.examples > 0 {
            metrics::quality(
                &self.spec.name,
                self.stats.log_loss(),
                self.stats.baseline_log_loss(),
                self.stats.auc(),
                self.pending.len(),
            );
        }
        metrics::pending_memory(
            &self.spec.name,
            self.pending_bytes,
            self.pending_ceiling_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_event::{Event, EventType};

    fn event(id: &str, name: &str, user: &str, minute: i64) -> Event {
        Event {
            event_id: id.into(),
            event_type: EventType::Track,
            event: name.into(),
            source: "t".into(),
            user_id: Some(user.into()),
            anonymous_id: None,
            timestamp: minute * 60_000_000,
            sent_at: None,
            received_at: 0,
            device_timestamp: None,
            enriched: Default::default(),
            properties: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
            context: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
            raw: Position {
                partition: 0,
                offset: 0,
            },
        }
    }

    #[test]
    fn labels_come_from_the_outcome_within_the_horizon_or_the_partitions_event_time() {
        let config: crate::ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "m", "outcome": "Buy", "horizon": "30m", "bits": 10
        }))
        .unwrap();
        let mut m = OnlineModel::new(config.validate().unwrap());
        let feed = |m: &mut OnlineModel, partition: u32, offset: u64, e: &Event| {
            m.observe(
                Position { partition, offset },
                &EventView::new(e, false),
                None,
                true,
            );
        };
        feed(&mut m, 0, 0, &event("a", "View", "u0", 0));
        feed(&mut m, 0, 1, &event("b", "View", "u0", 10));
        // Partition 1 runs far ahead in event time: partition 0's examples still wait.
        feed(&mut m, 1, 0, &event("c", "View", "u1", 500));
        assert_eq!(m.pending_len(), 3);
        assert_eq!(m.stats().examples, 0);
        // u0 buys at minute 35: "a" (deadline 30) is past its horizon, "b" (deadline 40) is not.
        feed(&mut m, 0, 2, &event("d", "Buy", "u0", 35));
        assert_eq!(m.stats().examples, 2);
        assert_eq!(m.stats().positives, 1);
        // Partition 1's own time passes "c"'s deadline.
        feed(&mut m, 1, 1, &event("e", "View", "u1", 531));
        assert_eq!(m.stats().examples, 3);
        assert_eq!(m.stats().positives, 1);
        assert_eq!(m.pending_len(), 1);
        // The one left is counted at its size; once labeled, nothing is.
        let one = m.pending_bytes();
        assert!(one > size_of::<Pending>(), "{one}");
        assert_eq!(m.pending_ceiling_bytes(), one * m.spec.max_pending);
        feed(&mut m, 1, 2, &event("f", "Buy", "u1", 532));
        assert_eq!((m.pending_len(), m.pending_bytes()), (0, 0));
    }

    #[test]
    fn a_full_set_of_pending_examples_is_never_above_its_ceiling() {
        let config: crate::ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "m", "outcome": "Buy", "horizon": "30m", "bits": 10, "max_pending": 3
        }))
        .unwrap();
        let mut m = OnlineModel::new(config.validate().unwrap());
        // Users of different lengths: examples of different sizes, so the average has a
        // remainder that rounding down would drop.
        for (offset, user) in ["u", "user-22", "a-much-longer-user-id-3333"]
            .iter()
            .enumerate()
        {
            let e = event(&format!("e{offset}"), "View", user, offset as i64);
            m.observe(
                Position {
                    partition: 0,
                    offset: offset as u64,
                },
                &EventView::new(&e, false),
                None,
                true,
            );
        }
        assert_eq!(m.pending_len(), 3);
        assert_ne!(
            m.pending_bytes() % 3,
            0,
            "sizes chosen to leave a remainder"
        );
        assert!(
            m.pending_bytes() <= m.pending_ceiling_bytes(),
            "{} above {}",
            m.pending_bytes(),
            m.pending_ceiling_bytes()
        );
    }

    #[test]
    fn auc_of_perfect_and_reversed_scores() {
        let mut s = Progressive::default();
        for _ in 0..10 {
            s.record(0.9, true);
            s.record(0.1, false);
        }
        assert!((s.auc() - 1.0).abs() < 1e-12);
        let mut s = Progressive::default();
        s.record(0.1, true);
        s.record(0.9, false);
        assert!(s.auc().abs() < 1e-12);
        let mut s = Progressive::default();
        s.record(0.5, true);
        s.record(0.5, false);
        assert!((s.auc() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn a_deleted_persons_pending_examples_are_dropped_unlearned() {
        let config: crate::ModelConfig = serde_json::from_value(serde_json::json!({
            "name": "m", "outcome": "Buy", "horizon": "30m", "bits": 10
        }))
        .unwrap();
        let mut m = OnlineModel::new(config.validate().unwrap());
        let example = |user: &str, deadline| Pending {
            partition: 0,
            user: user.into(),
            deadline,
            score: 0.5,
            features: Vec::new(),
        };
        m.add_pending(example("alice", 10));
        m.add_pending(example("alice", 20));
        m.add_pending(example("bob", 30));
        let set = sluice_event::suppress::Suppressed::default();
        assert_eq!(m.forget(&set), 0);
        set.add([sluice_event::suppress::subject_hash("alice")]);
        assert_eq!(m.forget(&set), 2);
        assert_eq!(m.pending_len(), 1);
        assert!(!m.by_user.contains_key("alice") && m.by_user.contains_key("bob"));
        assert_eq!(m.expiry.len(), 1);
        assert_eq!(
            m.stats,
            Progressive::default(),
            "nothing was learned from them"
        );
    }
}
