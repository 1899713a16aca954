//! Snowplow tracker-protocol events → canonical events (see ARCHITECTURE.md, "canonical event",
//! and `docs/protocols/snowplow.md` for the full parameter table).
//!
//! The raw payload is one event's parameters (`e`, `eid`, `aid`, ...) as a JSON object of
//! strings; numbers and booleans a tracker sent unquoted are read the same as their text.
//! - `e` picks the type: `pv` → page (event = the page title, else "page"); `pp` → track
//!   "page_ping"; `se` → track `se_ac`; `ue` → track named after the inner schema; `tr` → track
//!   "transaction"; `ti` → track "transaction_item".
//! - `ue_pr` (JSON text) or `ue_px` (base64), `co` (JSON text) or `cx` (base64): base64 in the
//!   standard or URL-safe alphabet, padded or not.
//! - ids: `uid` is the user id; the anonymous id is `duid`, else the network user id (`tnuid`,
//!   else the collector's cookie id).
//! - time: `ttm` (true timestamp) wins; with `dtm` and `stm` the device clock's skew is removed
//!   (`received_at − (stm − dtm)`, Segment's rule); else `dtm`; else `received_at`. `stm` is
//!   `sent_at`.
//! - context: Segment's names where they exist (`ip`, `userAgent`, `locale`, `timezone`,
//!   `page`, `screen`, `library`), the self-describing parts (`schema`, `entities`), and every
//!   other parameter under `snowplow` with Snowplow's enriched field name. A parameter this
//!   mapping does not read (unknown, or not meant for this event type) is kept as sent under
//!   `snowplow.unknown`: nothing the tracker sent is dropped.
//!
//! A parameter of the wrong type (a non-numeric `se_va`, bad base64 in `cx`, a `res` that is
//! not `WxH`) makes the event a `parse` bad row whose reason names the parameter.

use base64::Engine;
use serde_json::{Map, Number, Value, json};
use sluice_event::{EventType, Position, RawEvent, parse_timestamp};

use crate::canonical::{Draft, Failure, parse_err};

/// The outer schema of `ue_pr`/`ue_px` (any 1-x-x revision).
const UNSTRUCT_SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-";
/// The outer schema of `co`/`cx`.
const CONTEXTS_SCHEMAS: &[&str] = &[
    "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
    "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
];

/// How a parameter's value is typed under `context.snowplow`.
#[derive(Clone, Copy)]
enum Kind {
    /// Kept as text.
    Text,
    /// An integer.
    Int,
    /// `1`/`0` (or `true`/`false`) → a boolean.
    Flag,
    /// Milliseconds since the epoch → an integer (ms).
    Millis,
}

/// Parameters that land under `context.snowplow` with their enriched field name (those read
/// into canonical columns or Segment context fields are handled separately).
const SNOWPLOW_FIELDS: &[(&str, &str, Kind)] = &[
    ("aid", "app_id", Kind::Text),
    ("p", "platform", Kind::Text),
    ("tna", "name_tracker", Kind::Text),
    ("tv", "v_tracker", Kind::Text),
    ("sid", "domain_sessionid", Kind::Text),
    ("vid", "domain_sessionidx", Kind::Int),
    ("fp", "user_fingerprint", Kind::Text),
    ("cd", "br_colordepth", Kind::Text),
    ("cookie", "br_cookies", Kind::Flag),
    ("cs", "doc_charset", Kind::Text),
    ("mac", "mac_address", Kind::Text),
    ("tid", "txn_id", Kind::Text),
    ("ctype", "connection_type", Kind::Text),
    ("f_pdf", "br_features_pdf", Kind::Flag),
    ("f_qt", "br_features_quicktime", Kind::Flag),
    ("f_realp", "br_features_realplayer", Kind::Flag),
    ("f_wma", "br_features_windowsmedia", Kind::Flag),
    ("f_dir", "br_features_director", Kind::Flag),
    ("f_fla", "br_features_flash", Kind::Flag),
    ("f_java", "br_features_java", Kind::Flag),
    ("f_gears", "br_features_gears", Kind::Flag),
    ("f_ag", "br_features_silverlight", Kind::Flag),
    ("dtm", "dvce_created_tstamp", Kind::Millis),
    ("ttm", "true_tstamp", Kind::Millis),
];

/// Makes the canonical event for a Snowplow raw record.
pub(crate) fn canonicalize(raw: &RawEvent, raw_pos: Position) -> Result<Draft, Failure> {
    let params: Map<String, Value> = serde_json::from_str(raw.payload.get())
        .map_err(|e| parse_err(format!("payload is not a json object of parameters: {e}")))?;
    let mut p = Params(params);
    let e = p
        .text("e")?
        .ok_or_else(|| parse_err("event has no \"e\" (event type) parameter"))?;
    // Parameters are read in this order, so the first wrong one is the one a bad row names.
    let ids = Ids::read(&mut p, raw)?;
    let time = Time::read(&mut p, raw)?;
    let mut snowplow = Map::new();
    let (mut context, title) = segment_context(&mut p, raw, &mut snowplow)?;
    snowplow_fields(&mut p, ids.duid, ids.network_userid, &mut snowplow)?;
    if let Some(entities) = contexts(&mut p)? {
        context.insert("entities".into(), Value::Array(entities));
    }
    let (event_type, event, properties) = event(&e, &mut p, title, &mut context)?;
    // What is left was not read: keep it as sent.
    if !p.0.is_empty() {
        snowplow.insert("unknown".into(), Value::Object(std::mem::take(&mut p.0)));
    }
    if !snowplow.is_empty() {
        context.insert("snowplow".into(), Value::Object(snowplow));
    }
    Ok(Draft {
        event_id: raw.event_id.clone(),
        event_type,
        event,
        source: raw.source.clone(),
        user_id: ids.user_id,
        anonymous_id: ids.anonymous_id,
        timestamp: time.timestamp,
        sent_at: time.sent_at,
        received_at: raw.received_at,
        device_timestamp: time.device,
        properties,
        context,
        enriched: Default::default(),
        raw: raw_pos,
    })
}

/// Who sent the event.
struct Ids {
    user_id: Option<String>,
    anonymous_id: Option<String>,
    /// The tracker's domain user id.
    duid: Option<String>,
    /// The tracker's network user id, else the collector's cookie id.
    network_userid: Option<String>,
}

impl Ids {
    fn read(p: &mut Params, raw: &RawEvent) -> Result<Self, Failure> {
        let user_id = p.text("uid")?;
        let duid = p.text("duid")?;
        let network_userid = p.text("tnuid")?.or_else(|| raw.network_user_id.clone());
        // The raw record's event id is the `eid` the tracker sent (or one the collector stamped).
        p.take("eid");
        Ok(Self {
            user_id,
            anonymous_id: duid.clone().or_else(|| network_userid.clone()),
            duid,
            network_userid,
        })
    }
}

/// When the event happened, and was sent, in µs.
struct Time {
    timestamp: i64,
    sent_at: Option<i64>,
    /// The tracker's own time of the event.
    device: Option<i64>,
}

impl Time {
    fn read(p: &mut Params, raw: &RawEvent) -> Result<Self, Failure> {
        // `ttm` and `dtm` stay for `context.snowplow`.
        let ttm = p.peek_time("ttm")?;
        let dtm = p.peek_time("dtm")?;
        let sent_at = p.time("stm")?;
        let timestamp = match (ttm, dtm, sent_at) {
            (Some(t), _, _) => t,
            (None, Some(d), Some(s)) => sluice_event::skew_corrected(raw.received_at, s, d),
            (None, Some(d), None) => d,
            (None, None, _) => raw.received_at,
        };
        Ok(Self {
            timestamp,
            sent_at,
            device: ttm.or(dtm),
        })
    }
}

/// The context under Segment's names (`ip`, `userAgent`, `locale`, `timezone`, `page`,
/// `screen`, `library`), and the page title.
fn segment_context(
    p: &mut Params,
    raw: &RawEvent,
    snowplow: &mut Map<String, Value>,
) -> Result<(Map<String, Value>, Option<String>), Failure> {
    let mut context = Map::new();
    if let Some(ip) = p.text("ip")?.or_else(|| raw.ip.clone()) {
        context.insert("ip".into(), Value::String(ip));
    }
    if let Some(ua) = p.text("ua")?.or_else(|| raw.user_agent.clone()) {
        context.insert("userAgent".into(), Value::String(ua));
    }
    if let Some(lang) = p.text("lang")? {
        context.insert("locale".into(), Value::String(lang.clone()));
        snowplow.insert("br_lang".into(), Value::String(lang));
    }
    if let Some(tz) = p.text("tz")? {
        context.insert("timezone".into(), Value::String(tz.clone()));
        snowplow.insert("os_timezone".into(), Value::String(tz));
    }
    let url = p.text("url")?;
    let title = p.text("page")?;
    let referrer = p.text("refr")?;
    let mut page = Map::new();
    if let Some(url) = &url {
        page.insert("url".into(), Value::String(url.clone()));
        if let Some((path, search)) = split_url(url) {
            page.insert("path".into(), Value::String(path.to_string()));
            if let Some(search) = search {
                page.insert("search".into(), Value::String(search.to_string()));
            }
        }
    }
    if let Some(t) = &title {
        page.insert("title".into(), Value::String(t.clone()));
    }
    if let Some(r) = referrer {
        page.insert("referrer".into(), Value::String(r));
    }
    if !page.is_empty() {
        context.insert("page".into(), Value::Object(page));
    }
    if let Some((w, h)) = p.size("res")? {
        context.insert("screen".into(), json!({"width": w, "height": h}));
    }
    let mut library = Map::new();
    library.insert("name".into(), Value::String("snowplow".into()));
    if let Some(tv) = p.peek_text("tv")? {
        library.insert("version".into(), Value::String(tv));
    }
    context.insert("library".into(), Value::Object(library));
    Ok((context, title))
}

/// Everything else Snowplow knows, under its enriched names.
fn snowplow_fields(
    p: &mut Params,
    duid: Option<String>,
    network_userid: Option<String>,
    snowplow: &mut Map<String, Value>,
) -> Result<(), Failure> {
    for &(param, field, kind) in SNOWPLOW_FIELDS {
        let value = match kind {
            Kind::Text => p.text(param)?.map(Value::String),
            Kind::Int => p.int(param)?.map(Value::from),
            Kind::Flag => p.flag(param)?.map(Value::Bool),
            Kind::Millis => p.time(param)?.map(|us| Value::from(us / 1000)),
        };
        if let Some(v) = value {
            snowplow.insert(field.into(), v);
        }
    }
    if let Some(d) = duid {
        snowplow.insert("domain_userid".into(), Value::String(d));
    }
    if let Some(n) = network_userid {
        snowplow.insert("network_userid".into(), Value::String(n));
    }
    for (param, w, h) in [
        ("vp", "br_viewwidth", "br_viewheight"),
        ("ds", "doc_width", "doc_height"),
    ] {
        if let Some((width, height)) = p.size(param)? {
            snowplow.insert(w.into(), Value::from(width));
            snowplow.insert(h.into(), Value::from(height));
        }
    }
    Ok(())
}

/// An event's type, name and properties.
type Described = (EventType, String, Map<String, Value>);

/// The event itself, by its type `e`: type, name and properties.
fn event(
    e: &str,
    p: &mut Params,
    title: Option<String>,
    context: &mut Map<String, Value>,
) -> Result<Described, Failure> {
    match e {
        "pv" => Ok((
            EventType::Page,
            title
                .filter(|t| !t.trim().is_empty())
                .unwrap_or_else(|| "page".into()),
            Map::new(),
        )),
        "pp" => page_ping(p),
        "se" => structured(p),
        "ue" => unstructured(p, context),
        "tr" => transaction(p),
        "ti" => transaction_item(p),
        other => Err(parse_err(format!(
            "unknown event type e={other:?} (expected pv, pp, ue, se, tr or ti)"
        ))),
    }
}

/// A page ping (`e=pp`): the scroll offsets.
fn page_ping(p: &mut Params) -> Result<Described, Failure> {
    let mut properties = Map::new();
    p.numbers_into(
        &mut properties,
        &[
            ("pp_mix", "min_x"),
            ("pp_max", "max_x"),
            ("pp_miy", "min_y"),
            ("pp_may", "max_y"),
        ],
    )?;
    Ok((EventType::Track, "page_ping".to_string(), properties))
}

/// A structured event (`e=se`), named for its action.
fn structured(p: &mut Params) -> Result<Described, Failure> {
    let mut properties = Map::new();
    let action = p
        .peek_text("se_ac")?
        .filter(|a| !a.trim().is_empty())
        .ok_or_else(|| parse_err("structured event (e=se) needs se_ac (action)"))?;
    p.strings_into(
        &mut properties,
        &[
            ("se_ca", "category"),
            ("se_ac", "action"),
            ("se_la", "label"),
            ("se_pr", "property"),
        ],
    )?;
    p.numbers_into(&mut properties, &[("se_va", "value")])?;
    Ok((EventType::Track, action, properties))
}

/// An unstructured event (`e=ue`): named for its inner schema, which goes to `context`, with
/// its data as the properties.
fn unstructured(p: &mut Params, context: &mut Map<String, Value>) -> Result<Described, Failure> {
    let (schema, data) = unstruct(p)?;
    let name = iglu_name(&schema)
        .ok_or_else(|| parse_err(format!("ue: inner schema {schema:?} is not an iglu uri")))?
        .to_string();
    let properties = match data {
        Value::Object(m) => m,
        _ => return Err(parse_err("ue: the event's data must be a json object")),
    };
    context.insert("schema".into(), Value::String(schema));
    Ok((EventType::Track, name, properties))
}

/// An ecommerce transaction (`e=tr`).
fn transaction(p: &mut Params) -> Result<Described, Failure> {
    let mut properties = Map::new();
    p.strings_into(
        &mut properties,
        &[
            ("tr_id", "order_id"),
            ("tr_af", "affiliation"),
            ("tr_ci", "city"),
            ("tr_st", "state"),
            ("tr_co", "country"),
            ("tr_cu", "currency"),
        ],
    )?;
    p.numbers_into(
        &mut properties,
        &[("tr_tt", "total"), ("tr_tx", "tax"), ("tr_sh", "shipping")],
    )?;
    Ok((EventType::Track, "transaction".to_string(), properties))
}

/// An item of an ecommerce transaction (`e=ti`).
fn transaction_item(p: &mut Params) -> Result<Described, Failure> {
    let mut properties = Map::new();
    p.strings_into(
        &mut properties,
        &[
            ("ti_id", "order_id"),
            ("ti_sk", "sku"),
            ("ti_nm", "name"),
            ("ti_ca", "category"),
            ("ti_cu", "currency"),
        ],
    )?;
    if !properties.contains_key("name")
        && let Some(name) = p.text("ti_na")?
    {
        properties.insert("name".into(), Value::String(name));
    }
    p.numbers_into(
        &mut properties,
        &[("ti_pr", "price"), ("ti_qu", "quantity")],
    )?;
    Ok((EventType::Track, "transaction_item".to_string(), properties))
}

/// An event's parameters; reading one removes it, so what is left at the end was not read.
struct Params(Map<String, Value>);

impl Params {
    fn take(&mut self, key: &str) -> Option<Value> {
        self.0.remove(key).filter(|v| !v.is_null())
    }

    /// A text parameter (numbers and booleans as their text); an empty one is absent.
    fn text(&mut self, key: &str) -> Result<Option<String>, Failure> {
        let v = self.take(key);
        as_text(key, v)
    }

    /// Like [`Params::text`] but leaves the parameter for a later read.
    fn peek_text(&self, key: &str) -> Result<Option<String>, Failure> {
        as_text(key, self.0.get(key).filter(|v| !v.is_null()).cloned())
    }

    /// Copies text parameters into `props` under new names.
    fn strings_into(
        &mut self,
        props: &mut Map<String, Value>,
        pairs: &[(&str, &str)],
    ) -> Result<(), Failure> {
        for (param, prop) in pairs {
            if let Some(v) = self.text(param)? {
                props.insert((*prop).into(), Value::String(v));
            }
        }
        Ok(())
    }

    /// Copies number parameters into `props` under new names.
    fn numbers_into(
        &mut self,
        props: &mut Map<String, Value>,
        pairs: &[(&str, &str)],
    ) -> Result<(), Failure> {
        for (param, prop) in pairs {
            if let Some(n) = self.number(param)? {
                props.insert((*prop).into(), n);
            }
        }
        Ok(())
    }

    /// A number (integers stay integers).
    fn number(&mut self, key: &str) -> Result<Option<Value>, Failure> {
        let bad = || parse_err(format!("{key} must be a number"));
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(Some(Value::Number(n))),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => {
                let s = s.trim();
                if let Ok(i) = s.parse::<i64>() {
                    return Ok(Some(Value::from(i)));
                }
                s.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(|n| Some(Value::Number(n)))
                    .ok_or_else(bad)
            }
            Some(_) => Err(bad()),
        }
    }

    /// An integer.
    fn int(&mut self, key: &str) -> Result<Option<i64>, Failure> {
        let bad = || parse_err(format!("{key} must be an integer"));
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(bad),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    /// A `1`/`0` flag.
    fn flag(&mut self, key: &str) -> Result<Option<bool>, Failure> {
        match self.take(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => match v.as_str().map(str::trim).unwrap_or_default() {
                _ if v.as_i64() == Some(1) => Ok(Some(true)),
                _ if v.as_i64() == Some(0) => Ok(Some(false)),
                "1" | "true" => Ok(Some(true)),
                "0" | "false" => Ok(Some(false)),
                "" if v.is_string() => Ok(None),
                _ => Err(parse_err(format!("{key} must be 1 or 0, not {v}"))),
            },
        }
    }

    /// A time in ms since the epoch, as µs.
    fn time(&mut self, key: &str) -> Result<Option<i64>, Failure> {
        let v = self.peek_time(key)?;
        self.take(key);
        Ok(v)
    }

    fn peek_time(&self, key: &str) -> Result<Option<i64>, Failure> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(v) => parse_timestamp(v)
                .map(Some)
                .ok_or_else(|| parse_err(format!("{key} is not a valid time: {v}"))),
        }
    }

    /// A `WxH` size.
    fn size(&mut self, key: &str) -> Result<Option<(u64, u64)>, Failure> {
        let Some(s) = self.text(key)? else {
            return Ok(None);
        };
        s.split_once(['x', 'X'])
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
            .map(Some)
            .ok_or_else(|| parse_err(format!("{key} must be WIDTHxHEIGHT, not {s:?}")))
    }
}

fn as_text(key: &str, v: Option<Value>) -> Result<Option<String>, Failure> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
        Some(_) => Err(parse_err(format!("{key} must be a string"))),
    }
}

/// The self-describing JSON in `json_key` (JSON text) or `b64_key` (base64), with the name of
/// the parameter it came from.
fn self_describing(
    p: &mut Params,
    json_key: &'static str,
    b64_key: &'static str,
) -> Result<Option<(&'static str, Value)>, Failure> {
    let json = p.text(json_key)?;
    let b64 = p.text(b64_key)?;
    let (key, text) = match (json, b64) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(parse_err(format!(
                "both {json_key} and {b64_key} are given; send one"
            )));
        }
        (Some(t), None) => (json_key, t),
        (None, Some(b)) => {
            let bytes = decode_base64(&b)
                .ok_or_else(|| parse_err(format!("{b64_key} is not valid base64")))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| parse_err(format!("{b64_key} does not decode to utf-8 text")))?;
            (b64_key, text)
        }
    };
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| parse_err(format!("{key} is not valid json: {e}")))?;
    Ok(Some((key, value)))
}

/// Base64 in the standard or URL-safe alphabet, padded or not.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(cleaned)
        .ok()
}

/// Splits a self-describing JSON object into its schema and data.
fn schema_and_data(key: &str, value: Value) -> Result<(String, Value), Failure> {
    let Value::Object(mut m) = value else {
        return Err(parse_err(format!(
            "{key} is not a self-describing json object"
        )));
    };
    let schema = match m.remove("schema") {
        Some(Value::String(s)) => s,
        _ => return Err(parse_err(format!("{key} has no \"schema\" string"))),
    };
    let data = m
        .remove("data")
        .ok_or_else(|| parse_err(format!("{key} has no \"data\"")))?;
    Ok((schema, data))
}

/// `ue_pr`/`ue_px`: the inner (user's) schema and data.
fn unstruct(p: &mut Params) -> Result<(String, Value), Failure> {
    let (key, value) = self_describing(p, "ue_pr", "ue_px")?
        .ok_or_else(|| parse_err("self-describing event (e=ue) needs ue_pr or ue_px"))?;
    let (outer, inner) = schema_and_data(key, value)?;
    if !outer.starts_with(UNSTRUCT_SCHEMA) {
        return Err(parse_err(format!(
            "{key}: schema {outer:?} is not {UNSTRUCT_SCHEMA}0-0"
        )));
    }
    schema_and_data(key, inner)
}

/// `co`/`cx`: the entities, as sent.
fn contexts(p: &mut Params) -> Result<Option<Vec<Value>>, Failure> {
    let Some((key, value)) = self_describing(p, "co", "cx")? else {
        return Ok(None);
    };
    let (schema, data) = schema_and_data(key, value)?;
    if !CONTEXTS_SCHEMAS.contains(&schema.as_str()) {
        return Err(parse_err(format!(
            "{key}: schema {schema:?} is not contexts 1-0-0 or 1-0-1"
        )));
    }
    let Value::Array(entities) = data else {
        return Err(parse_err(format!(
            "{key}: data must be an array of entities"
        )));
    };
    for (i, entity) in entities.iter().enumerate() {
        let ok = entity.as_object().is_some_and(|m| {
            m.contains_key("data")
                && m.get("schema")
                    .and_then(Value::as_str)
                    .is_some_and(|s| iglu_name(s).is_some())
        });
        if !ok {
            return Err(parse_err(format!(
                "{key}: entity {i} is not a {{\"schema\": \"iglu:...\", \"data\": ...}} object"
            )));
        }
    }
    Ok(Some(entities))
}

/// The schema name of an iglu URI (`iglu:com.acme/add_to_cart/jsonschema/1-0-0` →
/// `add_to_cart`), or `None` when it is not one.
fn iglu_name(uri: &str) -> Option<&str> {
    let rest = uri.strip_prefix("iglu:")?;
    let mut parts = rest.split('/');
    let (vendor, name, format, version) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let version_ok = {
        let v: Vec<&str> = version.split('-').collect();
        v.len() == 3
            && v.iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    (parts.next().is_none()
        && !vendor.is_empty()
        && !name.is_empty()
        && !format.is_empty()
        && version_ok)
        .then_some(name)
}

/// The path and search (`?...`) of an absolute URL; `None` when it has no `scheme://`.
fn split_url(url: &str) -> Option<(&str, Option<&str>)> {
    let (_, after_scheme) = url.split_once("://")?;
    let rest = after_scheme
        .find(['/', '?', '#'])
        .map_or("", |i| &after_scheme[i..]);
    let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
    let (path, search) = match rest.find('?') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Some((path, search.filter(|s| s.len() > 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonicalize;
    use serde_json::value::RawValue;
    use sluice_event::Event;
    use sluice_event::{BadKind, Protocol};

    const POS: Position = Position {
        partition: 2,
        offset: 5,
    };
    const RECEIVED: i64 = 1_731_000_010_000_000;

    fn raw(payload: Value) -> RawEvent {
        RawEvent {
            event_id: "e1".into(),
            source: "web".into(),
            protocol: Protocol::Snowplow,
            received_at: RECEIVED,
            ip: Some("10.1.2.3".into()),
            user_agent: Some("Mozilla/5.0".into()),
            network_user_id: Some("nuid-cookie".into()),
            partition_key: None,
            replay_of: None,
            payload: serde_json::value::to_raw_value(&payload).unwrap(),
        }
    }

    fn ctx(e: &Event) -> Value {
        serde_json::from_str(e.context.get()).unwrap()
    }
    fn props(e: &Event) -> Value {
        serde_json::from_str(e.properties.get()).unwrap()
    }
    fn fail(payload: Value) -> Failure {
        let f = canonicalize(&raw(payload.clone()), POS).unwrap_err();
        assert_eq!(f.kind, BadKind::Parse, "{payload}");
        f
    }

    /// The `ue_px` example of protocols.md §2.2 (URL-safe, unpadded).
    const UE_PX: &str = "eyJzY2hlbWEiOiJpZ2x1OmNvbS5zbm93cGxvd2FuYWx5dGljcy5zbm93cGxvdy91bnN0cnVjdF9ldmVudC9qc29uc2NoZW1hLzEtMC0wIiwiZGF0YSI6eyJzY2hlbWEiOiJpZ2x1OmNvbS5hY21lL2FkZF90b19jYXJ0L2pzb25zY2hlbWEvMS0wLTAiLCJkYXRhIjp7InNrdSI6IlAtNDIiLCJxdHkiOjJ9fX0";
    const UE_PR: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.acme/add_to_cart/jsonschema/1-0-0","data":{"sku":"P-42","qty":2}}}"#;
    const CO: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"tier":"gold"}}]}"#;

    #[test]
    fn page_view_maps_every_field() {
        let e = canonicalize(
            &raw(json!({
                "e": "pv", "url": "https://shop.example.com/p/42?color=red#top", "page": "Product 42",
                "refr": "https://www.google.com/search?q=shoes",
                "eid": "7b3c", "tv": "js-4.1.0", "tna": "sp1",
                "aid": "shop", "p": "web", "dtm": "1731000000000", "stm": "1731000000123",
                "duid": "d-1", "sid": "s-1", "vid": "3",
                "uid": "customer-981", "res": "1920x1080", "vp": "1280x720", "ds": "1280x5400", "cd": "24",
                "cookie": "1", "lang": "en-US", "tz": "Asia/Kolkata", "cs": "UTF-8", "co": CO,
                "zz_custom": "kept", "f_pdf": "0"
            })),
            POS,
        )
        .unwrap();
        assert_eq!(e.event_type, EventType::Page);
        assert_eq!(e.event, "Product 42");
        assert_eq!(e.event_id, "e1");
        assert_eq!(e.source, "web");
        assert_eq!(e.user_id.as_deref(), Some("customer-981"));
        assert_eq!(e.anonymous_id.as_deref(), Some("d-1"));
        // Sent 123 ms after it happened, per the device clock.
        assert_eq!(e.timestamp, RECEIVED - 123_000);
        assert_eq!(e.sent_at, Some(1_731_000_000_123_000));
        assert_eq!(e.received_at, RECEIVED);
        assert_eq!(e.raw, POS);
        assert_eq!(props(&e), json!({}));
        assert_eq!(
            ctx(&e),
            json!({
                "ip": "10.1.2.3",
                "userAgent": "Mozilla/5.0",
                "locale": "en-US",
                "timezone": "Asia/Kolkata",
                "page": {
                    "url": "https://shop.example.com/p/42?color=red#top",
                    "path": "/p/42",
                    "search": "?color=red",
                    "title": "Product 42",
                    "referrer": "https://www.google.com/search?q=shoes"
                },
                "screen": {"width": 1920, "height": 1080},
                "library": {"name": "snowplow", "version": "js-4.1.0"},
                "entities": [{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"tier":"gold"}}],
                "snowplow": {
                    "app_id": "shop", "platform": "web", "name_tracker": "sp1", "v_tracker": "js-4.1.0",
                    "domain_sessionid": "s-1", "domain_sessionidx": 3, "domain_userid": "d-1",
                    "network_userid": "nuid-cookie", "br_lang": "en-US", "os_timezone": "Asia/Kolkata",
                    "br_viewwidth": 1280, "br_viewheight": 720, "doc_width": 1280, "doc_height": 5400,
                    "br_colordepth": "24", "br_cookies": true, "br_features_pdf": false,
                    "doc_charset": "UTF-8", "dvce_created_tstamp": 1_731_000_000_000_i64,
                    "unknown": {"zz_custom": "kept"}
                }
            })
        );
    }

    #[test]
    fn page_view_without_title_and_overrides() {
        let e = canonicalize(
            &raw(json!({"e":"pv","url":"https://x.io","ip":"1.2.3.4","ua":"Tracker/1","tnuid":"t-9"})),
            POS,
        )
        .unwrap();
        assert_eq!(e.event, "page");
        assert_eq!(e.timestamp, RECEIVED);
        assert_eq!(e.sent_at, None);
        // No duid: the network user id (tnuid over the cookie) is the anonymous id.
        assert_eq!(e.anonymous_id.as_deref(), Some("t-9"));
        let c = ctx(&e);
        assert_eq!(c["ip"], "1.2.3.4");
        assert_eq!(c["userAgent"], "Tracker/1");
        assert_eq!(c["page"], json!({"url":"https://x.io","path":"/"}));
        assert_eq!(c["library"], json!({"name":"snowplow"}));
        assert_eq!(c["snowplow"]["network_userid"], "t-9");

        let mut r = raw(json!({"e":"pv"}));
        r.ip = None;
        r.user_agent = None;
        let e = canonicalize(&r, POS).unwrap();
        assert_eq!(e.anonymous_id.as_deref(), Some("nuid-cookie"));
        let c = ctx(&e);
        assert!(c.get("ip").is_none() && c.get("userAgent").is_none(), "{c}");
    }

    #[test]
    fn page_ping_offsets_are_numbers() {
        let e = canonicalize(
            &raw(json!({"e":"pp","pp_mix":"0","pp_max":"1280","pp_miy":"-5","pp_may":2400.5,"se_ac":"stray"})),
            POS,
        )
        .unwrap();
        assert_eq!(
            (e.event_type, e.event.as_str()),
            (EventType::Track, "page_ping")
        );
        assert_eq!(
            props(&e),
            json!({"min_x":0,"max_x":1280,"min_y":-5,"max_y":2400.5})
        );
        // A parameter not meant for page pings is kept, not dropped.
        assert_eq!(ctx(&e)["snowplow"]["unknown"], json!({"se_ac":"stray"}));
        fail(json!({"e":"pp","pp_mix":"left"}));
    }

    #[test]
    fn structured_event() {
        let e = canonicalize(
            &raw(json!({"e":"se","se_ca":"shop","se_ac":"add-to-basket","se_la":"P-42","se_pr":"red","se_va":"2.5"})),
            POS,
        )
        .unwrap();
        assert_eq!(
            (e.event_type, e.event.as_str()),
            (EventType::Track, "add-to-basket")
        );
        assert_eq!(
            props(&e),
            json!({"category":"shop","action":"add-to-basket","label":"P-42","property":"red","value":2.5})
        );
        let e = canonicalize(&raw(json!({"e":"se","se_ac":"x","se_va":7})), POS).unwrap();
        assert_eq!(props(&e), json!({"action":"x","value":7}));
        assert!(
            fail(json!({"e":"se","se_ca":"shop"}))
                .reason
                .contains("se_ac")
        );
        assert!(fail(json!({"e":"se","se_ac":" "})).reason.contains("se_ac"));
        assert!(
            fail(json!({"e":"se","se_ac":"x","se_va":"lots"}))
                .reason
                .contains("se_va")
        );
    }

    #[test]
    fn self_describing_event_from_json_and_every_base64_form() {
        let want_props = json!({"sku":"P-42","qty":2});
        let std_padded = base64::engine::general_purpose::STANDARD.encode(UE_PR);
        let url_padded = base64::engine::general_purpose::URL_SAFE.encode(UE_PR);
        let std_unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(UE_PR);
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(UE_PR),
            UE_PX,
            "the protocols.md example is the URL-safe unpadded form"
        );
        let payloads = [
            json!({"e":"ue","ue_pr":UE_PR}),
            json!({"e":"ue","ue_px":UE_PX}),
            json!({"e":"ue","ue_px":std_padded}),
            json!({"e":"ue","ue_px":url_padded}),
            json!({"e":"ue","ue_px":std_unpadded}),
        ];
        for p in payloads {
            let e = canonicalize(&raw(p.clone()), POS).unwrap();
            assert_eq!(
                (e.event_type, e.event.as_str()),
                (EventType::Track, "add_to_cart"),
                "{p}"
            );
            assert_eq!(props(&e), want_props, "{p}");
            assert_eq!(
                ctx(&e)["schema"],
                "iglu:com.acme/add_to_cart/jsonschema/1-0-0"
            );
        }
    }

    #[test]
    fn contexts_from_co_and_cx() {
        for co in [
            json!({"e":"pv","co":CO}),
            json!({"e":"pv","cx":base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(CO)}),
            json!({"e":"pv","cx":base64::engine::general_purpose::STANDARD.encode(CO)}),
        ] {
            let e = canonicalize(&raw(co), POS).unwrap();
            assert_eq!(
                ctx(&e)["entities"],
                json!([{"schema":"iglu:com.acme/user/jsonschema/1-0-0","data":{"tier":"gold"}}])
            );
        }
        let v100 = CO.replace("1-0-1", "1-0-0");
        assert!(canonicalize(&raw(json!({"e":"pv","co":v100})), POS).is_ok());
    }

    #[test]
    fn bad_self_describing_parts_name_the_field() {
        for (payload, needle) in [
            (json!({"e":"ue"}), "ue_pr or ue_px"),
            (json!({"e":"ue","ue_px":"***"}), "ue_px is not valid base64"),
            (json!({"e":"ue","ue_px":"/w"}), "ue_px does not decode"),
            (json!({"e":"ue","ue_pr":"{nope"}), "ue_pr is not valid json"),
            (
                json!({"e":"ue","ue_pr":"[1]"}),
                "ue_pr is not a self-describing",
            ),
            (
                json!({"e":"ue","ue_pr":UE_PR,"ue_px":UE_PX}),
                "both ue_pr and ue_px",
            ),
            (
                json!({"e":"ue","ue_pr":r#"{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"schema":"iglu:a/b/jsonschema/1-0-0","data":{}}}"#}),
                "ue_pr: schema",
            ),
            (
                json!({"e":"ue","ue_pr":UE_PR.replace("iglu:com.acme/add_to_cart/jsonschema/1-0-0", "add_to_cart")}),
                "not an iglu uri",
            ),
            (
                json!({"e":"ue","ue_pr":r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:a/b/jsonschema/1-0-0","data":[1]}}"#}),
                "must be a json object",
            ),
            (
                json!({"e":"ue","ue_pr":r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"}"#}),
                "ue_pr has no \"data\"",
            ),
            (json!({"e":"pv","cx":"%%%"}), "cx is not valid base64"),
            (json!({"e":"pv","co":"{"}), "co is not valid json"),
            (
                json!({"e":"pv","co":CO.replace("contexts/jsonschema/1-0-1", "contexts/jsonschema/2-0-0")}),
                "co: schema",
            ),
            (
                json!({"e":"pv","co":r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":{}}"#}),
                "co: data must be an array",
            ),
            (
                json!({"e":"pv","co":r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{"data":{}}]}"#}),
                "co: entity 0",
            ),
        ] {
            let f = fail(payload.clone());
            assert!(f.reason.contains(needle), "{payload}: {}", f.reason);
        }
    }

    #[test]
    fn transaction_and_item() {
        let e = canonicalize(
            &raw(json!({"e":"tr","tr_id":"o-1","tr_af":"web","tr_tt":"99.5","tr_tx":"9","tr_sh":"4.5",
                "tr_ci":"Pune","tr_st":"MH","tr_co":"IN","tr_cu":"INR"})),
            POS,
        )
        .unwrap();
        assert_eq!(e.event, "transaction");
        assert_eq!(
            props(&e),
            json!({"order_id":"o-1","affiliation":"web","total":99.5,"tax":9,"shipping":4.5,
                "city":"Pune","state":"MH","country":"IN","currency":"INR"})
        );
        let e = canonicalize(
            &raw(
                json!({"e":"ti","ti_id":"o-1","ti_sk":"P-42","ti_nm":"Shoe","ti_ca":"shoes",
                "ti_pr":"49.75","ti_qu":"2","ti_cu":"INR"}),
            ),
            POS,
        )
        .unwrap();
        assert_eq!(
            (e.event_type, e.event.as_str()),
            (EventType::Track, "transaction_item")
        );
        assert_eq!(
            props(&e),
            json!({"order_id":"o-1","sku":"P-42","name":"Shoe","category":"shoes","price":49.75,
                "quantity":2,"currency":"INR"})
        );
        assert!(
            fail(json!({"e":"tr","tr_tt":"a lot"}))
                .reason
                .contains("tr_tt")
        );
        assert!(
            fail(json!({"e":"ti","ti_qu":"two"}))
                .reason
                .contains("ti_qu")
        );
    }

    #[test]
    fn time_rules() {
        let t = |p: Value| canonicalize(&raw(p), POS).unwrap();
        // ttm wins over everything.
        let e =
            t(json!({"e":"pv","ttm":"1700000000000","dtm":"1731000000000","stm":"1731000000500"}));
        assert_eq!(e.timestamp, 1_700_000_000_000_000);
        assert_eq!(e.sent_at, Some(1_731_000_000_500_000));
        // dtm alone.
        let e = t(json!({"e":"pv","dtm":1731000000000_i64}));
        assert_eq!(e.timestamp, 1_731_000_000_000_000);
        // stm alone: received_at.
        let e = t(json!({"e":"pv","stm":"1731000000500"}));
        assert_eq!(e.timestamp, RECEIVED);
        assert!(
            fail(json!({"e":"pv","dtm":"yesterday"}))
                .reason
                .contains("dtm")
        );
        assert!(fail(json!({"e":"pv","stm":"-"})).reason.contains("stm"));
    }

    #[test]
    fn wrong_types_are_parse_failures() {
        for (p, needle) in [
            (json!({"e":"pv","res":"big"}), "res"),
            (json!({"e":"pv","vp":"1x"}), "vp"),
            (json!({"e":"pv","vid":"third"}), "vid"),
            (json!({"e":"pv","cookie":"maybe"}), "cookie"),
            (json!({"e":"pv","uid":{"a":1}}), "uid"),
            (json!({"e":"zz"}), "unknown event type"),
            (json!({"url":"x"}), "no \"e\""),
        ] {
            assert!(fail(p.clone()).reason.contains(needle), "{p}");
        }
        let mut r = raw(json!({}));
        r.payload = RawValue::from_string("[1]".into()).unwrap();
        assert_eq!(canonicalize(&r, POS).unwrap_err().kind, BadKind::Parse);
    }

    #[test]
    fn url_parts() {
        assert_eq!(
            split_url("https://a.b/c/d?x=1#f"),
            Some(("/c/d", Some("?x=1")))
        );
        assert_eq!(split_url("https://a.b?x=1"), Some(("/", Some("?x=1"))));
        assert_eq!(split_url("https://a.b/#x?y"), Some(("/", None)));
        assert_eq!(split_url("https://a.b/p?"), Some(("/p", None)));
        assert_eq!(split_url("app-screen"), None);
        assert_eq!(
            iglu_name("iglu:com.acme/add_to_cart/jsonschema/1-0-0"),
            Some("add_to_cart")
        );
        for bad in [
            "iglu:com.acme/x/jsonschema/1-0",
            "com.acme/x/jsonschema/1-0-0",
            "iglu:a/b/c/1-0-0/x",
            "iglu://x/jsonschema/1-0-0",
        ] {
            assert_eq!(iglu_name(bad), None, "{bad}");
        }
    }
}
