//! [`Models`]: every configured model as one [`EventHook`] on the hot projection, with periodic
//! checkpoints; and [`run_offline`], the same path without a store (tests, benchmarks).

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

    /// Writes every model's checkpoint.
    pub fn checkpoint(&mut self) -> Result<(), PredictError> {
        self.last_checkpoint = Instant::now();
        let mut first = None;
        for m in &self.models {
            let result = checkpoint::write_to(m, self.store.as_ref());
            crate::metrics::checkpoint(&m.spec.name, result.is_ok());
            if let Err(e) = result {
                tracing::error!(model = %m.spec.name, error = %e, "model checkpoint failed");
                first = first.or(Some(e));
            }
        }
        first.map_or(Ok(()), Err)
    }
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
            let _ = self.checkpoint();
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
