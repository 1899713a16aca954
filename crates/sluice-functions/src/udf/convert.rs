//! Events as a function sees them, and back.
//!
//! A function gets each event as an object (built directly in the runtime, see `value.rs`)
//! with the columns of `events`: `event_id`,
//! `event_type`, `event`, `source`, `user_id`, `anonymous_id`, the times as RFC 3339 strings
//! with microseconds (`timestamp`, `sent_at`, `received_at`, `device_timestamp`),
//! `properties`, `context`, `enriched` and `raw` (`{partition, offset}`, read-only lineage).
//!
//! What it returns is read (as `JSON.stringify` would write it) with these rules:
//! - a missing `event_id`, `source`, `timestamp` or `received_at` is taken from the event the
//!   output came from; a missing `event_type` is `track`; a missing optional field is empty;
//! - times may be RFC 3339 strings or milliseconds since the epoch (as the collector accepts
//!   them);
//! - any other top-level key is a property (`{...e, plan: "pro"}` adds `properties.plan`), as a
//!   native event's extra keys are;
//! - `enriched` may only hold the enrichment columns; `raw` is ignored.

use rquickjs::object::{AsProperty, Property, PropertyFlags};
use rquickjs::{Atom, Ctx, Function, Object, Value as Js, qjs};
use serde_json::{Map, Value};
#[cfg(test)]
use sluice_event::Position;
use sluice_event::{Enrichment, EventType, format_micros, parse_timestamp};

use super::{columns, value};
use crate::Draft;

#[cfg(test)]
#[derive(serde::Serialize)]
struct View<'a> {
    event_id: &'a str,
    event_type: &'static str,
    event: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_id: Option<&'a str>,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sent_at: Option<String>,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_timestamp: Option<String>,
    properties: &'a Map<String, Value>,
    context: &'a Map<String, Value>,
    enriched: &'a Enrichment,
    raw: Position,
}

/// The JSON text of what a function gets for `d` (the reference [`to_js`] is tested against).
#[cfg(test)]
pub(crate) fn to_text(d: &Draft) -> String {
    let view = View {
        event_id: &d.event_id,
        event_type: d.event_type.as_str(),
        event: &d.event,
        source: &d.source,
        user_id: d.user_id.as_deref(),
        anonymous_id: d.anonymous_id.as_deref(),
        timestamp: format_micros(d.timestamp),
        sent_at: d.sent_at.map(format_micros),
        received_at: format_micros(d.received_at),
        device_timestamp: d.device_timestamp.map(format_micros),
        properties: &d.properties,
        context: &d.context,
        enriched: &d.enriched,
        raw: d.raw,
    };
    // Strings, numbers and JSON maps always serialise.
    sluice_event::json::to_string(&view).unwrap_or_else(|_| "null".into())
}

/// The members of an event built on first use, in this order (bit `i` of a [`Kept`] mask is
/// member `i`).
pub(crate) const LAZY_MEMBERS: [&str; 3] = ["properties", "context", "enriched"];
/// `enriched`'s place in [`LAZY_MEMBERS`].
pub(crate) const ENRICHED: usize = 2;

/// The wrapper's accessors for the members of [`LAZY_MEMBERS`] (`__sluice_lazy`).
///
/// Building an event's objects and reading them back is most of what a call costs, and most
/// functions touch one member of the three, if any. So each goes in as its JSON text under a
/// symbol, behind an accessor that makes it on first read or write and puts the result in its
/// place as a plain property (with `JSON.parse`'s values, as the whole build gives). A member
/// still behind its accessor when the reading of the answer reaches it was never touched: it is
/// taken back from the event the runtime was given, without reading anything. Once a function
/// has read an `enriched`, its events get `enriched` as column values instead (`columns.rs`),
/// and one that still holds those very values is taken back too.
pub(crate) struct Lazy<'js> {
    /// [`LAZY_MEMBERS`] as atoms.
    pub(crate) names: [Atom<'js>; 3],
    /// The other members' names as atoms: made once per call, not once per member.
    pub(crate) keys: Keys<'js>,
    texts: [Atom<'js>; 3],
    gets: [Function<'js>; 3],
    sets: [Function<'js>; 3],
    /// `untouched(event)`: the mask of members still behind their accessor on `event`.
    pub(crate) untouched: Function<'js>,
    /// `enrichedValue(event)`: `enriched` as a data property (or held), else `undefined`.
    pub(crate) enriched_value: Function<'js>,
    /// [`sluice_event::Enrichment::columns`] as atoms, when events get `enriched` as column
    /// values: once the function has read an `enriched` (`columns.rs`).
    pub(crate) columns: Option<Vec<Atom<'js>>>,
}

impl<'js> Lazy<'js> {
    /// The accessors the wrapper made.
    pub(crate) fn load(ctx: &Ctx<'js>) -> rquickjs::Result<Self> {
        let lazy: Object = ctx.globals().get("__sluice_lazy")?;
        let texts: Vec<Js> = lazy.get("texts")?;
        let gets: Vec<Function> = lazy.get("gets")?;
        let sets: Vec<Function> = lazy.get("sets")?;
        let three = |n: usize| {
            (n == LAZY_MEMBERS.len())
                .then_some(())
                .ok_or_else(|| rquickjs::Error::new_from_js("array", "three accessors"))
        };
        three(texts.len())?;
        three(gets.len())?;
        three(sets.len())?;
        let atom = |v: &Js<'js>| Atom::from_value(ctx.clone(), v);
        let name = |n: &str| Atom::from_str(ctx.clone(), n);
        Ok(Self {
            names: [name("properties")?, name("context")?, name("enriched")?],
            keys: Keys::new(ctx)?,
            texts: [atom(&texts[0])?, atom(&texts[1])?, atom(&texts[2])?],
            gets: [gets[0].clone(), gets[1].clone(), gets[2].clone()],
            sets: [sets[0].clone(), sets[1].clone(), sets[2].clone()],
            untouched: lazy.get("untouched")?,
            enriched_value: lazy.get("enrichedValue")?,
            columns: match lazy.get::<_, Function>("enrichedRead")?.call(())? {
                true => Some(column_atoms(ctx)?),
                false => None,
            },
        })
    }

    /// Defines member `i` of `o` as its accessor over `given`: its JSON text, or for
    /// `enriched` its column values (`columns.rs`).
    fn define(&self, o: &Object<'js>, i: usize, given: Js<'js>) -> rquickjs::Result<()> {
        o.prop(
            self.names[i].clone(),
            Deferred(self.gets[i].clone(), self.sets[i].clone()),
        )?;
        // Read-only, hidden from keys, spread and JSON.
        o.prop(self.texts[i].clone(), Property::from(given))
    }
}

/// The members an event is given as strings, in this order (bit `3 + i` of a [`Kept`] mask is
/// member `i`): one the answer still holds as the very string it was given is taken back from
/// the event without reading it.
///
/// [`Kept`]: super::value::Kept
pub(crate) const STRING_MEMBERS: [&str; 10] = [
    "event_id",
    "event_type",
    "event",
    "source",
    "user_id",
    "anonymous_id",
    "timestamp",
    "sent_at",
    "received_at",
    "device_timestamp",
];
const EVENT_ID: usize = 0;
const EVENT_TYPE: usize = 1;
const EVENT: usize = 2;
const SOURCE: usize = 3;
const USER_ID: usize = 4;
const ANONYMOUS_ID: usize = 5;
const TIMESTAMP: usize = 6;
const SENT_AT: usize = 7;
const RECEIVED_AT: usize = 8;
const DEVICE_TIMESTAMP: usize = 9;

/// What an event was given that its answer may still hold as it was.
#[derive(Default)]
pub(crate) struct Given<'js> {
    /// The strings, by [`STRING_MEMBERS`] (`None` where it has none).
    pub(crate) strings: [Option<Js<'js>>; STRING_MEMBERS.len()],
    /// `enriched`'s column values, when it was given them (`columns.rs`).
    pub(crate) columns: Option<columns::Given<'js>>,
}

/// The names of an event's members other than [`LAZY_MEMBERS`], as atoms.
pub(crate) struct Keys<'js> {
    /// [`STRING_MEMBERS`].
    pub(crate) strings: [Atom<'js>; STRING_MEMBERS.len()],
    raw: Atom<'js>,
    partition: Atom<'js>,
    offset: Atom<'js>,
}

impl<'js> Keys<'js> {
    pub(crate) fn new(ctx: &Ctx<'js>) -> rquickjs::Result<Self> {
        let a = |n: &str| Atom::from_str(ctx.clone(), n);
        let mut strings = Vec::with_capacity(STRING_MEMBERS.len());
        for name in STRING_MEMBERS {
            strings.push(a(name)?);
        }
        let strings = strings
            .try_into()
            .map_err(|_| rquickjs::Error::new_from_js("array", "member names"))?;
        Ok(Self {
            strings,
            raw: a("raw")?,
            partition: a("partition")?,
            offset: a("offset")?,
        })
    }
}

/// [`sluice_event::Enrichment::columns`] as atoms.
fn column_atoms<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<Vec<Atom<'js>>> {
    Enrichment::columns()
        .iter()
        .map(|c| Atom::from_str(ctx.clone(), c))
        .collect()
}

/// An enumerable, configurable accessor made of two functions that exist already.
struct Deferred<'js>(Function<'js>, Function<'js>);

impl<'js> AsProperty<'js, ()> for Deferred<'js> {
    fn config(
        self,
        ctx: &Ctx<'js>,
    ) -> rquickjs::Result<(PropertyFlags, Js<'js>, Js<'js>, Js<'js>)> {
        let flags = qjs::JS_PROP_HAS_GET
            | qjs::JS_PROP_HAS_SET
            | qjs::JS_PROP_ENUMERABLE
            | qjs::JS_PROP_HAS_ENUMERABLE
            | qjs::JS_PROP_CONFIGURABLE
            | qjs::JS_PROP_HAS_CONFIGURABLE;
        Ok((
            flags as PropertyFlags,
            Js::new_undefined(ctx.clone()),
            self.0.into_value(),
            self.1.into_value(),
        ))
    }
}

/// The object a function gets for `d` (its fields in this order), its properties, context and
/// enriched built on first use, and the strings it was given.
pub(crate) fn to_js<'js>(
    ctx: &Ctx<'js>,
    d: &Draft,
    lazy: &Lazy<'js>,
) -> rquickjs::Result<(Object<'js>, Given<'js>)> {
    let mut given_columns = None;
    let (o, mut given) = event_object(ctx, d, &lazy.keys, |o| {
        let mut buf = Vec::with_capacity(1024);
        lazy.define(o, 0, text_value(ctx, &mut buf, &d.properties)?)?;
        lazy.define(o, 1, text_value(ctx, &mut buf, &d.context)?)?;
        let as_columns = match lazy.columns {
            Some(_) => columns::enriched_columns(ctx, &d.enriched)?,
            None => None,
        };
        let enriched = match as_columns {
            Some((values, given)) => {
                given_columns = Some(given);
                values.into_value()
            }
            None => text_value(ctx, &mut buf, &d.enriched)?,
        };
        lazy.define(o, ENRICHED, enriched)
    })?;
    given.columns = given_columns;
    Ok((o, given))
}

/// `value`'s JSON text as a runtime string, written into `buf` first (`{}` if it could not be
/// written: maps of JSON values and the enrichment's strings, numbers and booleans always can).
fn text_value<'js, T: serde::Serialize>(
    ctx: &Ctx<'js>,
    buf: &mut Vec<u8>,
    value: &T,
) -> rquickjs::Result<Js<'js>> {
    buf.clear();
    if sluice_event::json::to_writer(buf, value).is_err() {
        buf.clear();
    }
    let text = std::str::from_utf8(buf)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or("{}");
    Ok(rquickjs::String::from_str(ctx.clone(), text)?.into_value())
}

/// [`to_js`] with every member built whole: the reference the deferred build is tested
/// against.
#[cfg(test)]
pub(crate) fn to_js_whole<'js>(ctx: &Ctx<'js>, d: &Draft) -> rquickjs::Result<Object<'js>> {
    event_object(ctx, d, &Keys::new(ctx)?, |o| {
        o.set("properties", value::map_to_js(ctx, &d.properties)?)?;
        o.set("context", value::map_to_js(ctx, &d.context)?)?;
        // Its text parsed: a `Value`'s map would put the columns in alphabetical order.
        let enriched = serde_json::to_string(&d.enriched).unwrap_or_else(|_| "{}".into());
        o.set("enriched", ctx.json_parse(enriched)?)
    })
    .map(|(o, _)| o)
}

/// The event's object: its columns in order, `members` adding properties, context and enriched
/// before `raw`; and the strings it was given.
fn event_object<'js>(
    ctx: &Ctx<'js>,
    d: &Draft,
    k: &Keys<'js>,
    members: impl FnOnce(&Object<'js>) -> rquickjs::Result<()>,
) -> rquickjs::Result<(Object<'js>, Given<'js>)> {
    let o = Object::new(ctx.clone())?;
    let mut given: Given<'js> = Default::default();
    let mut put = |i: usize, s: Option<&str>| -> rquickjs::Result<()> {
        let Some(s) = s else {
            return Ok(());
        };
        let s = rquickjs::String::from_str(ctx.clone(), s)?.into_value();
        o.set(k.strings[i].clone(), s.clone())?;
        given.strings[i] = Some(s);
        Ok(())
    };
    let time = |t: i64| format_micros(t);
    put(EVENT_ID, Some(&d.event_id))?;
    put(EVENT_TYPE, Some(d.event_type.as_str()))?;
    put(EVENT, Some(&d.event))?;
    put(SOURCE, Some(&d.source))?;
    put(USER_ID, d.user_id.as_deref())?;
    put(ANONYMOUS_ID, d.anonymous_id.as_deref())?;
    put(TIMESTAMP, Some(&time(d.timestamp)))?;
    put(SENT_AT, d.sent_at.map(time).as_deref())?;
    put(RECEIVED_AT, Some(&time(d.received_at)))?;
    put(DEVICE_TIMESTAMP, d.device_timestamp.map(time).as_deref())?;
    members(&o)?;
    let raw = Object::new(ctx.clone())?;
    raw.set(k.partition.clone(), d.raw.partition)?;
    raw.set(
        k.offset.clone(),
        value::number_to_js(ctx, &d.raw.offset.into()),
    )?;
    o.set(k.raw.clone(), raw)?;
    Ok((o, given))
}

/// The `raw` offset an output names, if it names one of partition `partition`.
pub(crate) fn raw_offset(v: &Value, partition: u32) -> Option<u64> {
    raw_position(v.get("raw")?, partition)
}

/// The offset a `raw` member names, if it names one of partition `partition`.
pub(crate) fn raw_position(raw: &Value, partition: u32) -> Option<u64> {
    if raw.get("partition")?.as_u64()? != u64::from(partition) {
        return None;
    }
    raw.get("offset")?.as_u64()
}

/// Reads an output event that came from `origin`. `kept` names the event the runtime was given
/// whose members this output still holds as given, left out of `v` unread (a mask: bit `i` for
/// [`LAZY_MEMBERS`]`[i]`, bit `3 + i` for [`STRING_MEMBERS`]`[i]`).
#[cfg(test)]
pub(crate) fn from_json(
    v: Value,
    origin: &Draft,
    kept: Option<(&Draft, u16)>,
) -> Result<Draft, String> {
    let (mut out, deferred) = from_json_deferred(v, origin, kept)?;
    if let Some((d, _)) = kept
        && deferred != 0
    {
        fill(&mut out, deferred, &mut d.clone());
    }
    Ok(out)
}

/// The members [`from_json_deferred`] leaves for [`fill`]: those that own memory.
const DEFERRED: u16 = 0b111
    | 1 << (LAZY_MEMBERS.len() + EVENT_ID)
    | 1 << (LAZY_MEMBERS.len() + EVENT)
    | 1 << (LAZY_MEMBERS.len() + SOURCE)
    | 1 << (LAZY_MEMBERS.len() + USER_ID)
    | 1 << (LAZY_MEMBERS.len() + ANONYMOUS_ID);

/// [`from_json`], with the members `kept` names that own memory left empty: the mask of those,
/// for [`fill`] to move in from the kept event once nothing else reads it (the events a call
/// was given are dropped once its answer is read, so most are moved, not copied).
pub(crate) fn from_json_deferred(
    v: Value,
    origin: &Draft,
    kept: Option<(&Draft, u16)>,
) -> Result<(Draft, u16), String> {
    let Value::Object(mut obj) = v else {
        return Err(format!("an event must be an object, not {}", type_name(&v)));
    };
    let given = |i: usize| {
        kept.filter(|(_, members)| members & (1 << (LAZY_MEMBERS.len() + i)) != 0)
            .map(|(d, _)| d)
    };
    let (event_id, event_type, event) = naming(&mut obj, origin, &given)?;
    let source = match given(SOURCE) {
        Some(_) => String::new(),
        None => take_string(&mut obj, "source")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| origin.source.clone()),
    };
    let id = |obj: &mut Map<String, Value>, i: usize| match given(i) {
        Some(_) => Ok(None),
        None => take_string(obj, STRING_MEMBERS[i]),
    };
    let user_id = id(&mut obj, USER_ID)?;
    let anonymous_id = id(&mut obj, ANONYMOUS_ID)?;
    let time =
        |obj: &mut Map<String, Value>, i: usize, of: fn(&Draft) -> Option<i64>| match given(i) {
            Some(d) => Ok(of(d)),
            None => take_time(obj, STRING_MEMBERS[i]),
        };
    let timestamp = time(&mut obj, TIMESTAMP, |d| Some(d.timestamp))?.unwrap_or(origin.timestamp);
    let sent_at = time(&mut obj, SENT_AT, |d| d.sent_at)?;
    let received_at =
        time(&mut obj, RECEIVED_AT, |d| Some(d.received_at))?.unwrap_or(origin.received_at);
    let device_timestamp = time(&mut obj, DEVICE_TIMESTAMP, |d| d.device_timestamp)?;
    let (mut properties, context, enriched) = lazy_members(&mut obj, kept)?;
    obj.remove("raw");
    properties.extend(obj);
    let mut deferred = kept.map_or(0, |(_, members)| members & DEFERRED);
    if !event.is_empty() {
        // Named here: the name kept was blank.
        deferred &= !(1 << (LAZY_MEMBERS.len() + EVENT));
    }
    let draft = Draft {
        event_id,
        event_type,
        event,
        source,
        user_id,
        anonymous_id,
        timestamp,
        sent_at,
        received_at,
        device_timestamp,
        properties,
        context,
        enriched,
        raw: origin.raw,
    };
    Ok((draft, deferred))
}

/// Moves into `out` the members `deferred` names (see [`from_json_deferred`]) out of `from`,
/// the event it kept them from. Properties the output added at its top level stay on top of
/// the kept ones.
pub(crate) fn fill(out: &mut Draft, deferred: u16, from: &mut Draft) {
    use std::mem::take;
    let has = |bit: usize| deferred & (1 << bit) != 0;
    let string = |i: usize| has(LAZY_MEMBERS.len() + i);
    if string(EVENT_ID) {
        out.event_id = take(&mut from.event_id);
    }
    if string(EVENT) {
        out.event = take(&mut from.event);
    }
    if string(SOURCE) {
        out.source = take(&mut from.source);
    }
    if string(USER_ID) {
        out.user_id = from.user_id.take();
    }
    if string(ANONYMOUS_ID) {
        out.anonymous_id = from.anonymous_id.take();
    }
    if has(0) {
        let added = take(&mut out.properties);
        out.properties = take(&mut from.properties);
        out.properties.extend(added);
    }
    if has(1) {
        out.context = take(&mut from.context);
    }
    if has(2) {
        out.enriched = take(&mut from.enriched);
    }
}

/// Takes the string member `key` (a number too, for an id); null is none.
fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if key.ends_with("_id") => Ok(Some(n.to_string())),
        Some(other) => Err(format!("{key} must be a string, not {}", type_name(&other))),
    }
}

/// Takes the time member `key`, in microseconds; null is none.
fn take_time(obj: &mut Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_timestamp(&v)
            .map(Some)
            .ok_or_else(|| format!("{key} is not a valid time: {v}")),
    }
}

/// Takes the object member `key`; null is an empty one.
fn take_object(obj: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>, String> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(other) => Err(format!(
            "{key} must be an object, not {}",
            type_name(&other)
        )),
    }
}

/// The output's event id (else `origin`'s), type (default `track`) and name (a track event
/// needs one; any other is named for its type).
/// `given(i)`: the event the output still holds string member `i` of as given, if it does.
fn naming<'a>(
    obj: &mut Map<String, Value>,
    origin: &Draft,
    given: &dyn Fn(usize) -> Option<&'a Draft>,
) -> Result<(String, EventType, String), String> {
    // A member kept as given is left empty here (see `from_json_deferred`): it was valid.
    let event_id = match given(EVENT_ID) {
        Some(_) => String::new(),
        None => take_string(obj, "event_id")?
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| origin.event_id.clone()),
    };
    if event_id.len() > 256 {
        return Err("event_id is longer than 256 bytes".into());
    }
    let event_type = match given(EVENT_TYPE) {
        Some(d) => d.event_type,
        None => match take_string(obj, "event_type")? {
            None => EventType::Track,
            Some(t) => EventType::parse(&t).ok_or_else(|| format!("unknown event_type {t:?}"))?,
        },
    };
    let name = match given(EVENT) {
        Some(d) if !d.event.trim().is_empty() => return Ok((event_id, event_type, String::new())),
        Some(_) => None,
        None => take_string(obj, "event")?,
    };
    let event = match name.filter(|s| !s.trim().is_empty()) {
        Some(e) => e,
        None if event_type == EventType::Track => {
            return Err("a track event needs a name (event)".into());
        }
        None => event_type.as_str().to_string(),
    };
    Ok((event_id, event_type, event))
}

/// A JSON object's members.
type JsonObject = Map<String, Value>;

/// The output's properties, context and enrichment: each copied from the `kept` event when
/// the output still holds it untouched, else read from the output.
fn lazy_members(
    obj: &mut Map<String, Value>,
    kept: Option<(&Draft, u16)>,
) -> Result<(JsonObject, JsonObject, Enrichment), String> {
    // A member kept as given is left empty here (see `from_json_deferred`).
    let kept_member = |i: usize| kept.filter(|(_, members)| members & (1 << i) != 0);
    let properties = match kept_member(0) {
        Some(_) => Map::new(),
        None => take_object(obj, "properties")?,
    };
    let context = match kept_member(1) {
        Some(_) => Map::new(),
        None => take_object(obj, "context")?,
    };
    let enriched = match (kept_member(2), obj.remove("enriched")) {
        (Some(_), _) => Enrichment::default(),
        (None, None | Some(Value::Null)) => Enrichment::default(),
        (None, Some(Value::Object(m))) => enrichment(m)?,
        (None, Some(other)) => {
            return Err(format!(
                "enriched must be an object, not {}",
                type_name(&other)
            ));
        }
    };
    Ok((properties, context, enriched))
}

fn enrichment(m: Map<String, Value>) -> Result<Enrichment, String> {
    let columns = Enrichment::columns();
    if let Some((unknown, _)) = m
        .iter()
        .find(|(k, v)| !v.is_null() && !columns.contains(&k.as_str()))
    {
        return Err(format!(
            "enriched.{unknown} is not an enrichment column; put your own fields in properties"
        ));
    }
    serde_json::from_value(Value::Object(m)).map_err(|e| format!("enriched is not valid: {e}"))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin() -> Draft {
        let raw: sluice_event::RawEvent = serde_json::from_value(json!({
            "event_id": "e1", "source": "web", "protocol": "native",
            "received_at": 1_764_237_600_000_000i64,
            "payload": {"event": "Signed Up", "userId": "u1", "properties": {"plan": "pro"},
                        "timestamp": "2026-11-27T10:00:00.123456Z"}
        }))
        .unwrap();
        crate::draft(
            &raw,
            Position {
                partition: 2,
                offset: 9,
            },
        )
        .unwrap()
    }

    #[test]
    fn round_trips_and_reads_additions() {
        let d = origin();
        let v: Value = serde_json::from_str(&to_text(&d)).unwrap();
        assert_eq!(v["timestamp"], "2026-11-27T10:00:00.123456Z");
        assert_eq!(v["raw"], json!({"partition": 2, "offset": 9}));
        assert_eq!(raw_offset(&v, 2), Some(9));
        assert_eq!(raw_offset(&v, 1), None);
        let back = from_json(v.clone(), &d, None).unwrap();
        assert_eq!(back.timestamp, d.timestamp);
        assert_eq!(back.received_at, d.received_at);
        assert_eq!(back.properties, d.properties);
        assert_eq!(back.user_id.as_deref(), Some("u1"));
        let mut added = v.clone();
        added["tier"] = json!("gold");
        added["properties"]["n"] = json!(1);
        added.as_object_mut().unwrap().remove("user_id");
        let back = from_json(added, &d, None).unwrap();
        assert_eq!(back.properties["tier"], "gold");
        assert_eq!(back.properties["n"], 1);
        assert_eq!(back.user_id, None);
        let fresh = from_json(
            json!({"event": "Split", "timestamp": 1_764_237_600_000i64}),
            &d,
            None,
        )
        .unwrap();
        assert_eq!(fresh.event_id, "e1");
        assert_eq!(fresh.source, "web");
        assert_eq!(fresh.timestamp, 1_764_237_600_000_000);
        assert_eq!(fresh.raw, d.raw);
    }

    #[test]
    fn bad_outputs_have_reasons() {
        let d = origin();
        for (v, want) in [
            (json!(5), "must be an object"),
            (json!({"event_type": "track"}), "needs a name"),
            (
                json!({"event": "x", "timestamp": "soon"}),
                "not a valid time",
            ),
            (
                json!({"event": "x", "properties": []}),
                "properties must be an object",
            ),
            (
                json!({"event": "x", "enriched": {"mine": 1}}),
                "enriched.mine",
            ),
            (
                json!({"event": "x", "enriched": {"geo_city": 1}}),
                "enriched is not valid",
            ),
            (
                json!({"event": "x", "event_type": "poke"}),
                "unknown event_type",
            ),
        ] {
            let err = from_json(v.clone(), &d, None).unwrap_err();
            assert!(err.contains(want), "{v}: {err}");
        }
        let ok = from_json(
            json!({"event": "x", "enriched": {"geo_city": "Paris"}}),
            &d,
            None,
        )
        .unwrap();
        assert_eq!(ok.enriched.geo_city.as_deref(), Some("Paris"));
    }

    #[test]
    fn the_object_a_function_gets_is_what_its_json_text_parses_to() {
        let mut d = origin();
        d.sent_at = Some(d.timestamp + 1);
        d.device_timestamp = Some(d.timestamp - 1);
        d.anonymous_id = Some("a-1".into());
        d.enriched.geo_city = Some("Zürich".into());
        d.enriched.is_bot = Some(true);
        d.enriched.geo_longitude = Some(-0.5);
        d.enriched.session_index = Some(7);
        d.properties.insert("big".into(), json!(u64::MAX));
        d.properties.insert("neg".into(), json!(i64::MIN));
        d.properties
            .insert("__proto__".into(), json!({"x": [1, 2.5, null]}));
        d.context.insert("日本".into(), json!({"😀": true}));
        d.raw.offset = 1 << 40;
        let runtime = rquickjs::Runtime::new().unwrap();
        let context = rquickjs::Context::full(&runtime).unwrap();
        let (direct, parsed) = context.with(|ctx| {
            let stringify: rquickjs::Function = ctx.eval("(v) => JSON.stringify(v)").unwrap();
            let direct: String = stringify.call((to_js_whole(&ctx, &d).unwrap(),)).unwrap();
            let parsed: rquickjs::Value = ctx.json_parse(to_text(&d)).unwrap();
            let parsed: String = stringify.call((parsed,)).unwrap();
            (direct, parsed)
        });
        // Same text: same keys, values and key order.
        assert_eq!(direct, parsed);
    }
}
