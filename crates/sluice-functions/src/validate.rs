//! Schema policing: which schemas an event is checked against, and what a failure does.
//!
//! An event is checked against:
//! - the schema its tracker named: a Snowplow self-describing event's `context.schema`
//!   (its `properties` are the event's `data`);
//! - the schema of each entity it carries (`context.entities[*]`, `{schema, data}`);
//! - the schema bound to its name for its source (`[validation] bindings` and
//!   `[validation.sources.<source>] bindings`), which is how Segment-style events, which name no
//!   schema, are policed. `properties` is checked (`traits` for identify and group calls).
//!
//! A violation sends the event to `bad` as `schema_violation` (policy `bad`, the default) or lets
//! it pass with its violations in `validation_errors` (policy `flag`). A schema the registry does
//! not have is a `schema_violation` too under `on_unknown_schema = "bad"`, flagged under
//! `"flag"`, and ignored under `"pass"` (the default, since trackers send entities of Iglu
//! Central's public schemas, which a registry without network access cannot hold).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_event::BadKind;

use crate::canonical::{Draft, Failure};
use crate::registry::Registry;

/// What a violation does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// The event goes to `bad` as a `schema_violation`.
    #[default]
    Bad,
    /// The event passes, with `validation_errors` set.
    Flag,
}

/// What an unknown schema does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnknown {
    /// Nothing.
    #[default]
    Pass,
    /// The event passes, with `validation_errors` set.
    Flag,
    /// The event goes to `bad` as a `schema_violation`.
    Bad,
}

/// One source's policy, overriding the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourcePolicy {
    /// See [`ValidationConfig::on_invalid`].
    pub on_invalid: Option<OnInvalid>,
    /// See [`ValidationConfig::on_unknown_schema`].
    pub on_unknown_schema: Option<OnUnknown>,
    /// Event name → schema URI, for this source (on top of the global bindings).
    pub bindings: BTreeMap<String, String>,
}

/// The `[validation]` section of the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Whether events are validated at all. Default true.
    pub enabled: bool,
    /// What a violation does: `bad` (default) or `flag`.
    pub on_invalid: OnInvalid,
    /// What a schema missing from the registry does: `pass` (default), `flag` or `bad`.
    pub on_unknown_schema: OnUnknown,
    /// Most violations reported per event. Default 10.
    pub max_errors: usize,
    /// Event name → schema URI, for every source.
    pub bindings: BTreeMap<String, String>,
    /// Per-source policies, by source name.
    pub sources: BTreeMap<String, SourcePolicy>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            on_invalid: OnInvalid::Bad,
            on_unknown_schema: OnUnknown::Pass,
            max_errors: 10,
            bindings: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }
}

impl ValidationConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_errors == 0 || self.max_errors > 1000 {
            return Err("validation.max_errors must be between 1 and 1000".into());
        }
        let all = self
            .bindings
            .iter()
            .chain(self.sources.values().flat_map(|s| s.bindings.iter()));
        for (event, uri) in all {
            crate::registry::SchemaKey::parse_uri(uri)
                .map_err(|e| format!("validation binding for {event:?}: {e}"))?;
        }
        Ok(())
    }
}

/// The validation step of the chain.
pub(crate) struct Validation {
    registry: Arc<Registry>,
    config: ValidationConfig,
}

impl Validation {
    pub(crate) fn new(registry: Arc<Registry>, config: ValidationConfig) -> Self {
        Self { registry, config }
    }

    /// Checks `draft` (counting the outcome in the metrics when `count`); `Err` when it must go
    /// to `bad`. Sets `enriched.schema` and, for a flagged
    /// event, `enriched.validation_errors`.
    pub(crate) fn check(&self, draft: &mut Draft, count: bool) -> Result<(), Failure> {
        if !self.config.enabled {
            return Ok(());
        }
        let source = self.config.sources.get(&draft.source);
        let on_invalid = source
            .and_then(|s| s.on_invalid)
            .unwrap_or(self.config.on_invalid);
        let on_unknown = source
            .and_then(|s| s.on_unknown_schema)
            .unwrap_or(self.config.on_unknown_schema);
        let bound = source
            .and_then(|s| s.bindings.get(&draft.event))
            .or_else(|| self.config.bindings.get(&draft.event))
            .cloned();
        let named = draft
            .context
            .get("schema")
            .and_then(Value::as_str)
            .map(str::to_string);
        let primary = named.or(bound);

        let mut errors: Vec<Value> = Vec::new();
        let mut fatal = false;
        let mut checked = false;
        let max = self.config.max_errors;
        if let Some(uri) = &primary {
            checked = true;
            draft.enriched.schema = Some(uri.clone());
            let props = Value::Object(std::mem::take(&mut draft.properties));
            let r = self.check_one(uri, &props, "properties", on_unknown, max, &mut errors);
            if let Value::Object(m) = props {
                draft.properties = m;
            }
            fatal |= r.is_some_and(|invalid| invalid && on_invalid == OnInvalid::Bad)
                || self.unknown_is_fatal(uri, on_unknown);
        }
        if let Some(Value::Array(entities)) = draft.context.get("entities") {
            for (i, entity) in entities.iter().enumerate() {
                let Some(uri) = entity.get("schema").and_then(Value::as_str) else {
                    continue;
                };
                checked = true;
                let data = entity.get("data").unwrap_or(&Value::Null);
                let at = format!("context.entities[{i}].data");
                let r = self.check_one(uri, data, &at, on_unknown, max, &mut errors);
                fatal |= r.is_some_and(|invalid| invalid && on_invalid == OnInvalid::Bad)
                    || self.unknown_is_fatal(uri, on_unknown);
            }
        }
        if checked && count {
            metrics_outcome(&errors, fatal);
        }
        if errors.is_empty() {
            return Ok(());
        }
        let text = Value::Array(errors).to_string();
        if fatal {
            return Err(Failure {
                kind: BadKind::SchemaViolation,
                reason: format!("schema violation: {text}"),
            });
        }
        draft.enriched.validation_errors = Some(text);
        Ok(())
    }

    fn unknown_is_fatal(&self, uri: &str, on_unknown: OnUnknown) -> bool {
        on_unknown == OnUnknown::Bad && matches!(self.registry.validator(uri), Ok(None) | Err(_))
    }

    /// Checks `data` against `uri`, appending violations to `errors`. `Some(true)` when the data
    /// is invalid, `Some(false)` when valid, `None` when the schema is unknown.
    fn check_one(
        &self,
        uri: &str,
        data: &Value,
        at: &str,
        on_unknown: OnUnknown,
        max: usize,
        errors: &mut Vec<Value>,
    ) -> Option<bool> {
        let compiled = match self.registry.validator(uri) {
            Ok(Some(c)) => c,
            Ok(None) => {
                if on_unknown != OnUnknown::Pass && errors.len() < max {
                    errors.push(json!({"schema": uri, "path": at, "message": "schema not found in the registry"}));
                }
                return None;
            }
            Err(e) => {
                if on_unknown != OnUnknown::Pass && errors.len() < max {
                    errors.push(json!({"schema": uri, "path": at, "message": e}));
                }
                return None;
            }
        };
        let mut invalid = false;
        for e in compiled.validator.iter_errors(data) {
            invalid = true;
            if errors.len() >= max {
                break;
            }
            let path = format!("{at}{}", e.instance_path());
            errors.push(json!({"schema": uri, "path": path, "message": e.to_string()}));
        }
        Some(invalid)
    }
}

fn metrics_outcome(errors: &[Value], fatal: bool) {
    let outcome = match (errors.is_empty(), fatal) {
        (true, _) => "valid",
        (false, true) => "bad",
        (false, false) => "flagged",
    };
    metrics::counter!("sluice_validation_events_total", "outcome" => outcome).increment(1);
}
