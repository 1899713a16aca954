//! [`Chain`]: what happens to one raw record — canonicalise, validate, enrich, check the size —
//! and the bad row it becomes when a step fails.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use sluice_event::{BadKind, BadRow, Position, RawEvent, now_micros};

use crate::canonical::{Failure, draft};
use crate::enrich::{EnrichConfig, Enrichers, Sessions};
use crate::registry::Registry;
use crate::validate::{Validation, ValidationConfig};

/// The largest good record by default (after enrichment), in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// The function chain every raw record goes through. Built once; shared by every partition
/// (per-partition state, the sessions, is passed in).
pub struct Chain {
    validation: Validation,
    enrichers: Enrichers,
    max_event_bytes: usize,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").finish_non_exhaustive()
    }
}

impl Chain {
    /// Builds the chain; `Err` names what is wrong in the config.
    pub fn new(
        registry: Arc<Registry>,
        validation: ValidationConfig,
        enrich: EnrichConfig,
        max_event_bytes: usize,
    ) -> Result<Self, String> {
        validation.validate()?;
        Ok(Self {
            validation: Validation::new(registry, validation),
            enrichers: Enrichers::new(enrich)?,
            max_event_bytes,
        })
    }

    /// Whether the chain keeps per-user sessions (state the runner must save and restore).
    pub fn uses_sessions(&self) -> bool {
        self.enrichers.uses_sessions()
    }

    /// One raw record → the bytes of a good record, or of a bad row.
    pub fn process(
        &self,
        value: &[u8],
        pos: Position,
        sessions: &mut Sessions,
    ) -> Result<Bytes, Bytes> {
        self.process_counted(value, pos, sessions, true)
    }

    /// [`Chain::process`] without counting anything in the metrics: for re-running records
    /// already processed once (the runner rebuilding its session state).
    pub(crate) fn process_uncounted(
        &self,
        value: &[u8],
        pos: Position,
        sessions: &mut Sessions,
    ) -> Result<Bytes, Bytes> {
        self.process_counted(value, pos, sessions, false)
    }

    fn process_counted(
        &self,
        value: &[u8],
        pos: Position,
        sessions: &mut Sessions,
        count: bool,
    ) -> Result<Bytes, Bytes> {
        let bad_of = |raw: &RawEvent, function: &str, f: Failure, pos: Position| {
            if count {
                crate::metrics::bad(f.kind, function);
            }
            bad_of(raw, function, f, pos)
        };
        let raw: RawEvent = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(e) => {
                let payload = match std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| RawValue::from_string(s.to_string()).ok())
                {
                    Some(v) => v,
                    None => serde_json::value::to_raw_value(&String::from_utf8_lossy(value))
                        .map_err(|_| Bytes::new())?,
                };
                if count {
                    crate::metrics::bad(BadKind::Parse, "canonicalize");
                }
                return Err(bad_row(
                    BadKind::Parse,
                    format!("raw record is unreadable: {e}"),
                    "canonicalize",
                    ("", "", 0),
                    payload,
                    pos,
                ));
            }
        };
        let mut d = draft(&raw, pos).map_err(|f| bad_of(&raw, "canonicalize", f, pos))?;
        self.validation
            .check(&mut d, count)
            .map_err(|f| bad_of(&raw, "validate", f, pos))?;
        self.enrichers.apply(&mut d, &raw, sessions).map_err(|f| {
            let function = f
                .reason
                .split_once(':')
                .and_then(|(a, rest)| rest.split_once(':').map(|(b, _)| format!("{a}:{b}")))
                .unwrap_or_else(|| "enrich".into());
            bad_of(&raw, &function, f, pos)
        })?;
        let event = d.into_event();
        let bytes = serde_json::to_vec(&event).map_err(|e| {
            bad_of(
                &raw,
                "canonicalize",
                Failure {
                    kind: BadKind::Parse,
                    reason: e.to_string(),
                },
                pos,
            )
        })?;
        if bytes.len() > self.max_event_bytes {
            return Err(bad_of(
                &raw,
                "size",
                Failure {
                    kind: BadKind::Size,
                    reason: format!(
                        "the enriched event is {} bytes, over the limit of {} (functions.max_event_bytes)",
                        bytes.len(),
                        self.max_event_bytes
                    ),
                },
                pos,
            ));
        }
        Ok(Bytes::from(bytes))
    }
}

fn bad_of(raw: &RawEvent, function: &str, f: Failure, pos: Position) -> Bytes {
    let payload = serde_json::value::to_raw_value(raw)
        .unwrap_or_else(|_| RawValue::from_string("null".into()).expect("literal is valid json"));
    bad_row(
        f.kind,
        f.reason,
        function,
        (&raw.event_id, &raw.source, raw.received_at),
        payload,
        pos,
    )
}

fn bad_row(
    kind: BadKind,
    reason: String,
    function: &str,
    (event_id, source, received_at): (&str, &str, i64),
    payload: Box<RawValue>,
    pos: Position,
) -> Bytes {
    let row = BadRow {
        kind,
        reason,
        function: function.into(),
        event_id: event_id.into(),
        source: source.into(),
        received_at,
        failed_at: now_micros(),
        payload,
        raw: pos,
    };
    // A BadRow of strings, numbers and valid JSON always serializes.
    Bytes::from(serde_json::to_vec(&row).unwrap_or_default())
}
