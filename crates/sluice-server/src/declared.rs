//! [`RegistryTypes`]: the typed tables' declared property types, read from the schema registry.
//!
//! An event name's schema is the one bound to it (`[validation] bindings`, then any source's
//! binding for that name), else the newest registered schema whose name is the event's name in
//! snake_case (a Snowplow self-describing event is named after its schema, `add_to_cart`).
//! Answers are cached for a few seconds, so a newly pushed schema applies to new columns soon
//! after; columns that exist keep their type (typed tables never retype a column).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_functions::{Registry, SchemaKey, ValidationConfig};
use sluice_lake::typed::{DeclaredTypes, PropType, snake_case, types_from_json_schema};

/// How long an answer is reused.
const TTL: Duration = Duration::from_secs(5);

type Answer = Option<BTreeMap<String, PropType>>;

/// Declared types from the registry and the validation bindings.
pub(crate) struct RegistryTypes {
    registry: Arc<Registry>,
    bindings: BTreeMap<String, String>,
    cache: Mutex<HashMap<String, (Instant, Answer)>>,
}

impl RegistryTypes {
    pub(crate) fn new(registry: Arc<Registry>, validation: &ValidationConfig) -> Self {
        let mut bindings = BTreeMap::new();
        for policy in validation.sources.values() {
            for (event, uri) in &policy.bindings {
                bindings.insert(event.clone(), uri.clone());
            }
        }
        // Global bindings win over per-source ones.
        for (event, uri) in &validation.bindings {
            bindings.insert(event.clone(), uri.clone());
        }
        Self {
            registry,
            bindings,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn lookup(&self, event: &str) -> Answer {
        let key = match self.bindings.get(event) {
            Some(uri) => SchemaKey::parse_uri(uri).ok()?,
            None => {
                let name = snake_case(event);
                self.registry
                    .list()
                    .ok()?
                    .iter()
                    .filter_map(|uri| SchemaKey::parse_uri(uri).ok())
                    .filter(|k| snake_case(&k.name) == name)
                    .max_by_key(|k| k.version)?
            }
        };
        let text = self.registry.get(&key).ok()??;
        let schema: serde_json::Value = serde_json::from_str(&text).ok()?;
        Some(types_from_json_schema(&schema))
    }
}

impl DeclaredTypes for RegistryTypes {
    fn property_types(&self, event: &str) -> Answer {
        if let Some((at, answer)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(event)
            && at.elapsed() < TTL
        {
            return answer.clone();
        }
        let answer = self.lookup(event);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(event.to_string(), (Instant::now(), answer.clone()));
        answer
    }
}
