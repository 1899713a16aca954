//! Hashed features of an event and its profile. A feature is a name (`e=Product Viewed`,
//! `p:category=shoes`, `u:events`) hashed with xxh3 into the model's table, with a value: 1 for
//! categorical features, a signed `ln(1 + |x|)` for numbers, so that prices and counts of any
//! scale stay usable.

use serde_json::{Map, Value};
use sluice_hot::{EventView, Profile};
use xxhash_rust::xxh3::xxh3_64;

use crate::ftrl::Features;

/// Properties or traits used per event, at most (in key order).
const MAX_FIELDS: usize = 32;
/// String values longer than this are not features (ids, free text).
const MAX_VALUE_LEN: usize = 64;

/// Collects named features.
#[derive(Default)]
pub struct FeatureWriter {
    out: Features,
    /// The names, when asked for (the benchmark's Vowpal Wabbit export).
    names: Option<Vec<(String, f32)>>,
    /// Where a name made of parts is put together (one buffer for every feature).
    joined: String,
}

fn scaled(x: f64) -> f32 {
    (x.signum() * x.abs().ln_1p()) as f32
}

impl FeatureWriter {
    /// A writer that also keeps the feature names.
    pub fn with_names() -> Self {
        Self {
            names: Some(Vec::new()),
            ..Self::default()
        }
    }

    /// A writer for one event's features, with room for as many as an event usually has and
    /// their longest names, so that neither grows feature by feature.
    pub fn for_event() -> Self {
        Self {
            out: Features::with_capacity(32),
            names: None,
            joined: String::with_capacity(64),
        }
    }

    /// Adds feature `name` with `value`.
    pub fn add(&mut self, name: &str, value: f32) {
        if value == 0.0 || !value.is_finite() {
            return;
        }
        self.out.push((xxh3_64(name.as_bytes()) as u32, value));
        if let Some(names) = &mut self.names {
            names.push((name.to_string(), value));
        }
    }

    /// Adds the feature named by `parts` put together (`["e=", name]`), with `value`: the same
    /// feature as [`FeatureWriter::add`] of the whole name, without a string made for it.
    pub fn add_joined(&mut self, parts: &[&str], value: f32) {
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        for part in parts {
            joined.push_str(part);
        }
        self.add(&joined, value);
        self.joined = joined;
    }

    /// The hashed features.
    pub fn finish(self) -> Features {
        self.out
    }

    /// The hashed features and their names.
    pub fn finish_named(self) -> (Features, Vec<(String, f32)>) {
        (self.out, self.names.unwrap_or_default())
    }

    fn scalars(&mut self, prefix: &str, map: &Map<String, Value>) {
        for (k, v) in map.iter().take(MAX_FIELDS) {
            match v {
                Value::String(s) if s.len() <= MAX_VALUE_LEN => {
                    self.add_joined(&[prefix, k, "=", s], 1.0)
                }
                Value::Bool(b) => {
                    self.add_joined(&[prefix, k, if *b { "=true" } else { "=false" }], 1.0)
                }
                Value::Number(n) => {
                    if let Some(x) = n.as_f64() {
                        self.add_joined(&[prefix, k], scaled(x));
                    }
                }
                _ => {}
            }
        }
    }
}

/// The features of `view` given its user's `profile` (after the event was applied) and the
/// model's outcome event name.
pub fn featurize(
    w: &mut FeatureWriter,
    view: &EventView<'_>,
    profile: Option<&Profile>,
    outcome: &str,
) {
    let e = view.event;
    w.add("bias", 1.0);
    w.add_joined(&["e=", &e.event], 1.0);
    w.add_joined(&["t=", e.event_type.as_str()], 1.0);
    if let Value::Object(props) = &view.properties {
        w.scalars("p:", props);
    }
    if let Some(p) = profile {
        w.add("u:events", scaled(p.events_total as f64));
        let this = p.event_counts.get(&e.event).copied().unwrap_or(0);
        w.add("u:this_event", scaled(this as f64));
        let outcomes = p.event_counts.get(outcome).copied().unwrap_or(0);
        w.add("u:outcomes", scaled(outcomes as f64));
        if outcomes > 0 {
            w.add("u:has_outcome", 1.0);
        }
        if let Some(s) = &p.session {
            w.add("u:session_events", scaled(s.events as f64));
            let minutes = (s.last - s.started).max(0) as f64 / 60e6;
            w.add("u:session_minutes", scaled(minutes));
        }
        w.add("u:sessions", scaled(p.sessions as f64));
        w.scalars("tr:", &p.traits);
    } else {
        w.add("u:none", 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_event::{Event, EventType, Position};

    #[test]
    fn a_feature_named_in_parts_hashes_as_its_whole_name() {
        let event = Event {
            event_id: "e1".into(),
            event_type: EventType::Track,
            event: "Product Viewed".into(),
            source: "t".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            timestamp: 0,
            sent_at: None,
            received_at: 0,
            device_timestamp: None,
            enriched: Default::default(),
            properties: serde_json::value::to_raw_value(&serde_json::json!({
                "category": "shoes", "in_stock": false, "price": 42.5, "sku": "x".repeat(65)
            }))
            .unwrap(),
            context: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
            raw: Position {
                partition: 0,
                offset: 0,
            },
        };
        let view = EventView::new(&event, false);
        let mut w = FeatureWriter::with_names();
        featurize(&mut w, &view, None, "Order Completed");
        let (features, names) = w.finish_named();
        let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "bias",
                "e=Product Viewed",
                "t=track",
                "p:category=shoes",
                "p:in_stock=false",
                "p:price",
                "u:none"
            ]
        );
        for ((hash, value), name) in features.iter().zip(&names) {
            assert_eq!(*hash, xxh3_64(name.as_bytes()) as u32, "{name}");
            let expected = if *name == "p:price" {
                scaled(42.5)
            } else {
                1.0
            };
            assert_eq!(*value, expected, "{name}");
        }
    }
}
