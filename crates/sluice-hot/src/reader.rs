//! [`HotReader`]: the read side the HTTP API serves from: profiles, counters, predictions.

use std::sync::Arc;

use crate::codec::{CodecError, decode_counter, decode_profile};
use crate::counter::{Aggregate, CounterReading, CounterSpec, CounterState, WindowKind};
use crate::profile::{Prediction, Profile, RecentEvent};
use crate::store::HotStore;
use crate::{HotError, HotSettings, MAX_KEY_BYTES};

/// Reads the hot tier. Cheap to clone.
#[derive(Clone)]
pub struct HotReader {
    store: Arc<dyn HotStore>,
    settings: Arc<HotSettings>,
}

/// A counter's answer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CounterAnswer {
    /// The counter.
    pub counter: String,
    /// The key.
    pub key: String,
    /// count, sum or top_k.
    pub aggregate: Aggregate,
    /// tumbling or sliding.
    pub kind: WindowKind,
    /// Window length, seconds.
    pub window_seconds: f64,
    /// The read time, µs since the epoch.
    pub at: i64,
    /// The window and its value.
    #[serde(flatten)]
    pub reading: CounterReading,
    /// Events this key received after their bucket had been pruned.
    pub late: u64,
}

/// Reads of a profile whose recent events changed meanwhile, at most.
const READ_ATTEMPTS: u32 = 3;

fn decode<T>(
    key: &str,
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, CodecError>,
) -> Result<T, HotError> {
    decode(bytes).map_err(|e| HotError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// A recent event (`e:` keys, JSON).
fn recent_event(bytes: &[u8]) -> Result<RecentEvent, CodecError> {
    Ok(serde_json::from_slice(bytes)?)
}

fn check_key(what: &str, key: &str) -> Result<(), HotError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(HotError::Invalid(format!(
            "{what} must be 1 to {MAX_KEY_BYTES} bytes"
        )));
    }
    Ok(())
}

impl HotReader {
    /// A reader over `store`.
    pub fn new(store: Arc<dyn HotStore>, settings: Arc<HotSettings>) -> Self {
        Self { store, settings }
    }

    /// The settings (counter names, for listings).
    pub fn settings(&self) -> &HotSettings {
        &self.settings
    }

    /// The profiles of `ids`, in order (`None` for an unknown id), each with its newest
    /// `recent_events` recent events.
    pub async fn profiles(&self, ids: &[String]) -> Result<Vec<Option<Profile>>, HotError> {
        for id in ids {
            check_key("a profile id", id)?;
        }
        // A profile and its recent events are two reads: a batch written between them may
        // have replaced the oldest events. Then the profile is read again.
        let mut attempt = 1;
        loop {
            let (profiles, complete) = self.read_profiles(ids).await?;
            if complete || attempt == READ_ATTEMPTS {
                return Ok(profiles);
            }
            attempt += 1;
        }
    }

    /// The profiles of `ids` with their recent events, and whether every recent event their
    /// ranges name was found.
    async fn read_profiles(
        &self,
        ids: &[String],
    ) -> Result<(Vec<Option<Profile>>, bool), HotError> {
        let keys: Vec<String> = ids.iter().map(|id| Profile::store_key(id)).collect();
        let values = self.store.get_many(&keys).await?;
        let mut profiles: Vec<Option<Profile>> = keys
            .iter()
            .zip(values)
            .map(|(key, v)| {
                v.map(|bytes| decode(key, &bytes, decode_profile))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for (at, (id, profile)) in ids.iter().zip(&profiles).enumerate() {
            if let Some(range) = profile.as_ref().and_then(|p| p.recent) {
                let newest = range.newest(self.settings.recent_events);
                wanted.extend(newest.map(|i| (at, Profile::recent_key(id, i))));
            }
        }
        let recent_keys: Vec<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
        let values = self.store.get_many(&recent_keys).await?;
        let mut complete = true;
        for ((at, key), value) in wanted.into_iter().zip(values) {
            match value {
                Some(bytes) => {
                    if let Some(p) = profiles[at].as_mut() {
                        p.last_events.push_back(decode(&key, &bytes, recent_event)?);
                    }
                }
                None => complete = false,
            }
        }
        for p in profiles.iter_mut().flatten() {
            p.recent = None;
            p.counters = None;
        }
        Ok((profiles, complete))
    }

    /// One profile.
    pub async fn profile(&self, id: &str) -> Result<Option<Profile>, HotError> {
        Ok(self
            .profiles(&[id.to_string()])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Counter `name` for `key`, read at `at` (µs since the epoch).
    pub async fn counter(&self, name: &str, key: &str, at: i64) -> Result<CounterAnswer, HotError> {
        let spec = self
            .settings
            .counter(name)
            .ok_or_else(|| HotError::NotFound(format!("no counter named {name:?}")))?;
        check_key("a counter key", key)?;
        let state = self.counter_state(spec, key).await?;
        Ok(CounterAnswer {
            counter: spec.name.clone(),
            key: key.to_string(),
            aggregate: spec.aggregate,
            kind: spec.kind,
            window_seconds: spec.window_us as f64 / 1e6,
            at,
            reading: spec.read(&state, at),
            late: state.late,
        })
    }

    /// `spec`'s state for `key`: in the profile `key` when the counter lives in profiles and
    /// the profile holds its counters, else under the counter's own key (where a profile
    /// stored before its counters moved in still has them).
    async fn counter_state(&self, spec: &CounterSpec, key: &str) -> Result<CounterState, HotError> {
        if spec.in_profile() {
            let profile_key = Profile::store_key(key);
            if let Some(bytes) = self.get_one(&profile_key).await? {
                let profile = decode(&profile_key, &bytes, decode_profile)?;
                if let Some(mut counters) = profile.counters {
                    let kept = counters.remove(&spec.name).unwrap_or_default();
                    return kept.read().map_err(|e| HotError::Corrupt {
                        key: profile_key,
                        reason: format!("counter {}: {e}", spec.name),
                    });
                }
            }
        }
        let store_key = spec.store_key(key);
        match self.get_one(&store_key).await? {
            None => Ok(CounterState::default()),
            Some(bytes) => decode(&store_key, &bytes, decode_counter),
        }
    }

    async fn get_one(&self, key: &str) -> Result<Option<Vec<u8>>, HotError> {
        let keys = [key.to_string()];
        Ok(self
            .store
            .get_many(&keys)
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Deletes what the hot tier keeps about the people `ids` (deletion requests): their
    /// profiles, with the model scores and the `user` counters kept in them, and their values
    /// of every counter keyed by person under its own key (`user_id`, `anonymous_id`, and
    /// `user` in a profile stored before those moved in). Counters keyed by another field are
    /// aggregates over many people and stay. How many keys existed.
    pub async fn erase(&self, ids: &[String]) -> Result<usize, HotError> {
        let ids: Vec<String> = ids.iter().filter(|id| !id.is_empty()).cloned().collect();
        let profile_keys: Vec<String> = ids.iter().map(|id| Profile::store_key(id)).collect();
        let stored = self.store.get_many(&profile_keys).await?;
        let mut keys = Vec::new();
        for ((id, key), value) in ids.iter().zip(profile_keys).zip(stored) {
            match value.map(|bytes| decode(&key, &bytes, decode_profile)) {
                Some(Ok(profile)) => {
                    if let Some(range) = profile.recent {
                        keys.extend(range.indices().map(|i| Profile::recent_key(id, i)));
                    }
                }
                // A profile that does not decode cannot name its recent events: they are found
                // by their keys instead.
                Some(Err(_)) => keys.extend(self.recent_keys_of(id).await?),
                None => {}
            }
            keys.push(key);
            for c in &self.settings.counters {
                if c.key.is_person() {
                    keys.push(c.store_key(id));
                }
            }
        }
        self.store.delete(&keys).await
    }

    /// The keys of every recent event stored for profile `id`, found by a scan: `e:<id>:<n>`
    /// (the prefix alone would also match the events of an id that continues `<id>:`).
    async fn recent_keys_of(&self, id: &str) -> Result<Vec<String>, HotError> {
        let prefix = Profile::recent_key(id, 0);
        let prefix = prefix.strip_suffix('0').unwrap_or(&prefix);
        let found = self.store.keys_with_prefix(prefix).await?;
        Ok(found
            .into_iter()
            .filter(|k| {
                k.strip_prefix(prefix)
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect())
    }

    /// The latest score of `model` for profile `id`; `NotFound` when the profile or its score
    /// does not exist. Whether `model` is declared is the caller's check.
    pub async fn prediction(&self, model: &str, id: &str) -> Result<Prediction, HotError> {
        let profile = self
            .profile(id)
            .await?
            .ok_or_else(|| HotError::NotFound(format!("no profile {id:?}")))?;
        profile
            .predictions
            .get(model)
            .cloned()
            .ok_or_else(|| HotError::NotFound(format!("no {model:?} score for {id:?} yet")))
    }
}
