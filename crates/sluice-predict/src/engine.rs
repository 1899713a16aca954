//! [`Models`]: every configured model as one [`EventHook`] on the hot projection, with periodic
//! checkpoints; and [`run_offline`], the same path without a store (tests, benchmarks).
//!
//! A periodic checkpoint is encoded in the projection's loop (the models change with the next
//! event) and then checksummed and written on a thread of its own, one at a time: writing and
//! fsyncing up to hundreds of megabytes of pending examples held the loop, and the stage's lag,
//! for that long once a minute. The next one first waits for it; so does shutdown, which then
//! writes the last checkpoint in line.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_event::suppress::Suppressed;
use sluice_event::{Event, Position};
use sluice_hot::{EventHook, EventView, HotSettings, Positions, Profile};

use crate::model::OnlineModel;
use crate::{PredictError, PredictSettings, checkpoint};

/// The models of a node.
pub struct Models {
    models: Vec<OnlineModel>,
    store: Arc<dyn checkpoint::CheckpointStore>,
    interval: Duration,
    last_checkpoint: Instant,
    /// Deleted people, whose pending examples are dropped; the generation last applied.
    suppressed: Option<(Arc<Suppressed>, u64)>,
    /// The periodic checkpoint being written, if any.
    writing: Option<std::thread::JoinHandle<()>>,
}

impl Models {
    /// Restores every model of `settings` from its checkpoint (or starts it afresh).
    pub fn open(settings: &PredictSettings) -> Result<Self, PredictError> {
        Self::open_in(
            settings,
            Arc::new(checkpoint::LocalCheckpoints::new(&settings.dir)),
        )
    }

    /// [`Models::open`] with the checkpoints in `store` rather than `settings.dir`.
    pub fn open_in(
        settings: &PredictSettings,
        store: Arc<dyn checkpoint::CheckpointStore>,
    ) -> Result<Self, PredictError> {
        crate::metrics::describe();
        let models = settings
            .models
            .iter()
            .map(|spec| checkpoint::read_from(spec, store.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            models,
            store,
            interval: settings.checkpoint_interval,
            last_checkpoint: Instant::now(),
            suppressed: None,
            writing: None,
        })
    }

    /// Drops the pending examples of the people in `suppressed`, after the batch in which
    /// they were added to it (and before the last checkpoint).
    pub fn with_suppression(mut self, suppressed: Arc<Suppressed>) -> Self {
        self.suppressed = Some((suppressed, 0));
        self
    }

    /// Applies a change of the suppressed set.
    fn forget_suppressed(&mut self) {
        let Some((set, seen)) = &mut self.suppressed else {
            return;
        };
        let generation = set.generation();
        if generation == *seen {
            return;
        }
        *seen = generation;
        let dropped: usize = self.models.iter_mut().map(|m| m.forget(set)).sum();
        if dropped > 0 {
            tracing::info!(dropped, "pending examples of deleted people dropped");
        }
    }

    /// The models.
    pub fn models(&self) -> &[OnlineModel] {
        &self.models
    }

    /// Writes every model's checkpoint, once the one being written (if any) is.
    pub fn checkpoint(&mut self) -> Result<(), PredictError> {
        self.last_checkpoint = Instant::now();
        self.finish_writing();
        let mut first = None;
        for m in &self.models {
            let result = checkpoint::write_to(m, self.store.as_ref());
            crate::metrics::checkpoint(&m.spec.name, result.is_ok());
            if let Err(e) = result {
                failed(&m.spec.name, &e);
                first = first.or(Some(e));
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Encodes every model's checkpoint now and writes them on a thread of their own, once
    /// the ones written before are (see the module docs). Failures are logged and counted.
    fn checkpoint_in_background(&mut self) {
        self.last_checkpoint = Instant::now();
        self.finish_writing();
        let mut encoded = Vec::with_capacity(self.models.len());
        for m in &self.models {
            match checkpoint::encode_named(m, self.store.as_ref()) {
                Ok((name, bytes)) => encoded.push((m.spec.name.clone(), name, bytes)),
                Err(e) => {
                    crate::metrics::checkpoint(&m.spec.name, false);
                    failed(&m.spec.name, &e);
                }
            }
        }
        let names: Vec<String> = encoded.iter().map(|(model, ..)| model.clone()).collect();
        let store = self.store.clone();
        let spawned = std::thread::Builder::new()
            .name("model-checkpoint".into())
            .spawn(move || {
                for (model, name, bytes) in encoded {
                    let result = checkpoint::put_encoded(&name, bytes, store.as_ref());
                    crate::metrics::checkpoint(&model, result.is_ok());
                    if let Err(e) = result {
                        failed(&model, &e);
                    }
                }
            });
        match spawned {
            Ok(writing) => self.writing = Some(writing),
            Err(e) => {
                for model in &names {
                    crate::metrics::checkpoint(model, false);
                }
                tracing::error!(error = %e, "no thread to write the model checkpoints on; the next interval tries again");
            }
        }
    }

    /// Waits for the checkpoint being written, if any.
    fn finish_writing(&mut self) {
        if let Some(writing) = self.writing.take()
            && writing.join().is_err()
        {
            tracing::error!("writing the model checkpoints failed");
        }
    }
}

/// Logs a checkpoint that could not be written (the error names the file).
fn failed(model: &str, error: &PredictError) {
    tracing::error!(%model, %error, "model checkpoint failed");
}

impl EventHook for Models {
    fn resume_from(&self) -> Positions {
        // Per partition, the least any model has learned.
        let mut out = Positions::new();
        for (i, m) in self.models.iter().enumerate() {
            for (p, n) in &m.positions {
                let e = out.entry(*p).or_insert(*n);
                *e = (*e).min(*n);
            }
            if i > 0 {
                out.retain(|p, _| m.positions.contains_key(p));
            }
        }
        out
    }

    fn on_event(
        &mut self,
        position: Position,
        view: &EventView<'_>,
        mut profile: Option<&mut Profile>,
        live: bool,
    ) {
        for m in &mut self.models {
            m.observe(position, view, profile.as_deref_mut(), live);
        }
    }

    fn after_batch(&mut self, next: &Positions) {
        self.forget_suppressed();
        for m in &mut self.models {
            m.advance(next);
            m.report();
        }
        if self.last_checkpoint.elapsed() >= self.interval {
            // Failures are logged and counted; the next interval tries again.
            self.checkpoint_in_background();
        }
    }

    fn close(&mut self) {
        self.forget_suppressed();
        let _ = self.checkpoint();
    }
}

/// Runs `events` (in order, as partition 0) through `model` with profiles kept in memory: the
/// projection's path without a store.
pub fn run_offline(model: &mut OnlineModel, events: &[Event], hot: &HotSettings) {
    let mut profiles: HashMap<String, Profile> = HashMap::new();
    for (offset, event) in events.iter().enumerate() {
        let view = EventView::new(event, false);
        let profile = view.profile_id.map(|id| {
            let p = profiles.entry(id.to_string()).or_insert_with(|| Profile {
                id: id.to_string(),
                ..Profile::default()
            });
            p.apply(&view, hot);
            p
        });
        model.observe(
            Position {
                partition: 0,
                offset: offset as u64,
            },
            &view,
            profile,
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::checkpoint::CheckpointStore;
    use crate::{PredictConfig, synthetic};

    /// Keeps every checkpoint put, in order.
    #[derive(Default)]
    struct Kept(Mutex<Vec<(String, Vec<u8>)>>);

    impl CheckpointStore for Kept {
        fn location(&self, name: &str) -> String {
            format!("memory:{name}")
        }
        fn get(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
            let puts = self.0.lock().map_err(|e| e.to_string())?;
            Ok(puts
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone()))
        }
        fn put(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
            let mut puts = self.0.lock().map_err(|e| e.to_string())?;
            puts.push((name.to_string(), bytes.to_vec()));
            Ok(())
        }
        fn rename(&self, _: &str, _: &str) -> Result<(), String> {
            Err("not here".into())
        }
    }

    #[test]
    fn a_periodic_checkpoint_written_on_its_own_thread_is_complete_and_restores_the_models() {
        let config: PredictConfig = serde_json::from_value(serde_json::json!({
            "models": [{"name": "purchase_30m", "outcome": "Order Completed", "horizon": "30m",
                        "bits": 12, "examples": ["Product Viewed"]}]
        }))
        .unwrap();
        let mut settings = config.validate().unwrap();
        settings.checkpoint_interval = Duration::ZERO;
        let kept = Arc::new(Kept::default());
        let mut models = Models::open_in(&settings, kept.clone()).unwrap();
        let stream = synthetic::generate(3, 200, 6);
        let hot = sluice_hot::HotConfig::default().validate().unwrap();
        run_offline(&mut models.models[0], &stream.events, &hot);
        let end = Positions::from([(0, stream.events.len() as u64)]);
        models.after_batch(&end);
        assert!(models.writing.is_some(), "written on a thread of its own");
        // The next one waits for it: two whole checkpoints, in order.
        models.close();
        let puts = kept.0.lock().unwrap().clone();
        assert_eq!(puts.len(), 2, "the periodic checkpoint and the last one");
        for (name, bytes) in &puts {
            assert_eq!(name, "purchase_30m.ftrl");
            let restored = checkpoint::decode(&settings.models[0], bytes)
                .unwrap()
                .expect("the same definition");
            assert_eq!(restored.positions, end);
            assert_eq!(restored.pending_len(), models.models[0].pending_len());
            assert!(restored.pending_len() > 0);
        }
        let reopened = Models::open_in(&settings, kept).unwrap();
        assert_eq!(reopened.models[0].stats(), models.models[0].stats());
    }
}
