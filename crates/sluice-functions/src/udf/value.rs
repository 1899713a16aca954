//! Values between Rust and a QuickJS runtime, built directly (no JSON text either way).
//!
//! Into the runtime, a `serde_json::Value` becomes what `JSON.parse` would make of its text.
//! Out of it, a value is read as `JSON.stringify` would write it and `serde_json` read that
//! text back:
//! - `toJSON()` is called when the value has one (a `Date` becomes its ISO string);
//! - boxed numbers, strings and booleans are their primitive;
//! - `undefined`, functions and symbols are left out of objects and are `null` in arrays;
//! - `NaN` and `±Infinity` are `null`; an integral number below 1e21 is an integer (`i64`, else
//!   `u64`), any other number a float;
//! - a cycle, a BigInt, a string with an unpaired surrogate, or nesting deeper than
//!   [`MAX_DEPTH`] make the value unreadable, with the reason and where it is;
//! - the whole answer may hold at most its budget, counted as bytes of JSON text.

use rquickjs::object::Property;
use rquickjs::{Array, Atom, Ctx, Function, Object, Type, Value as Js, function::This};
use serde_json::{Map, Number, Value};

use super::columns;
use super::convert::{ENRICHED, Given, STRING_MEMBERS};

/// Deepest nesting read back (`serde_json`'s own limit when parsing text).
pub(crate) const MAX_DEPTH: usize = 128;

/// The JavaScript value of `v`: what `JSON.parse` gives for `v`'s JSON text.
pub(crate) fn to_js<'js>(ctx: &Ctx<'js>, v: &Value) -> rquickjs::Result<Js<'js>> {
    Ok(match v {
        Value::Null => Js::new_null(ctx.clone()),
        Value::Bool(b) => Js::new_bool(ctx.clone(), *b),
        Value::Number(n) => number_to_js(ctx, n),
        Value::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        Value::Array(items) => {
            let array = Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                array.set(i, to_js(ctx, item)?)?;
            }
            array.into_value()
        }
        Value::Object(map) => map_to_js(ctx, map)?.into_value(),
    })
}

/// The JavaScript object of `map`.
pub(crate) fn map_to_js<'js>(
    ctx: &Ctx<'js>,
    map: &Map<String, Value>,
) -> rquickjs::Result<Object<'js>> {
    let object = Object::new(ctx.clone())?;
    for (k, item) in map {
        // Defined, as JSON.parse does: a key `__proto__` is a property, not the prototype.
        let item = Property::from(to_js(ctx, item)?)
            .writable()
            .enumerable()
            .configurable();
        object.prop(k.as_str(), item)?;
    }
    Ok(object)
}

/// A JavaScript number (every number is a double; small integers are tagged as such).
pub(crate) fn number_to_js<'js>(ctx: &Ctx<'js>, n: &Number) -> Js<'js> {
    match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
        Some(i) => Js::new_int(ctx.clone(), i),
        None => Js::new_float(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// The number `JSON.stringify` writes for `x`, as `serde_json` reads that text.
pub(crate) fn number_from_js(x: f64) -> Value {
    const TWO_53: f64 = 9_007_199_254_740_992.0;
    if !x.is_finite() {
        return Value::Null;
    }
    if x.fract() == 0.0 && x.abs() < TWO_53 {
        return Value::from(x as i64);
    }
    if x.fract() == 0.0 && x.abs() < 1e21 {
        // Written without exponent, as its shortest digits padded with zeros: an integer to
        // serde_json when that decimal fits one.
        if let Some(v) = padded_integer(x) {
            return v;
        }
    }
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// `x` (integral, below 1e21) as JavaScript writes it, read as an `i64` or `u64` if it fits.
fn padded_integer(x: f64) -> Option<Value> {
    // `{:e}` gives the shortest digits that read back as `x`, as JavaScript's do.
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e')?;
    let exponent: usize = exponent.parse().ok()?;
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let zeros = exponent.checked_sub(frac.len())?;
    let decimal = format!("{sign}{int}{frac}{}", "0".repeat(zeros));
    if let Ok(i) = decimal.parse::<i64>() {
        return Some(Value::from(i));
    }
    decimal.parse::<u64>().ok().map(Value::from)
}

/// Why a value cannot be read.
#[derive(Debug)]
pub(crate) enum Fault {
    /// This value is not readable; the rest of the answer may be.
    Bad(Why),
    /// The code threw (a getter or `toJSON`) or the runtime failed: the answer is lost.
    Js(rquickjs::Error),
    /// The answer is larger than the budget.
    TooBig,
}

/// What is wrong with a value, and where.
#[derive(Debug)]
pub(crate) struct Why {
    what: String,
    /// Innermost step first (filled in while unwinding).
    path: Vec<Step>,
}

#[derive(Debug)]
enum Step {
    Key(String),
    Index(usize),
}

impl Why {
    fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            path: Vec::new(),
        }
    }

    /// `what (at a.b[2])`, or `what` for the value itself.
    pub(crate) fn message(&self) -> String {
        if self.path.is_empty() {
            return self.what.clone();
        }
        let mut at = String::new();
        for step in self.path.iter().rev() {
            match step {
                Step::Key(k) if at.is_empty() => at.push_str(k),
                Step::Key(k) => {
                    at.push('.');
                    at.push_str(k);
                }
                Step::Index(i) => at.push_str(&format!("[{i}]")),
            }
        }
        format!("{} (at {at})", self.what)
    }
}

fn bad(what: impl Into<String>) -> Fault {
    Fault::Bad(Why::new(what))
}

fn js_fault(e: rquickjs::Error) -> Fault {
    match e {
        rquickjs::Error::Utf8(_) => {
            bad("a string holds an unpaired surrogate (it is not valid Unicode)")
        }
        e => Fault::Js(e),
    }
}

fn within(r: Result<Value, Fault>, step: impl FnOnce() -> Step) -> Result<Value, Fault> {
    r.map_err(|f| match f {
        Fault::Bad(mut why) => {
            why.path.push(step());
            Fault::Bad(why)
        }
        f => f,
    })
}

/// What `type_name` says of a value an event cannot be.
fn kind(v: &Js<'_>) -> &'static str {
    match v.type_of() {
        Type::Function | Type::Constructor => "a function",
        Type::Symbol => "a symbol",
        Type::BigInt => "a BigInt",
        _ => "an unknown value",
    }
}

/// One event read back.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Read {
    /// What was read; the members named by `kept` are left out.
    pub value: Value,
    pub kept: Kept,
}

/// Members an event read back still holds untouched, as the runtime was given them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Kept {
    /// Which of the inputs the event is.
    pub input: usize,
    /// Bit `i`: deferred member `i` (`Inputs::names`), still untouched; bit `3 + i`: string
    /// member `i` (`Inputs::strings`), still the very string the input was given.
    pub members: u16,
}

/// The inputs of a call whose members may still be deferred (see `convert::Lazy`).
pub(crate) struct Inputs<'js> {
    pub objects: Vec<Object<'js>>,
    /// `untouched(event)`: the mask of `names` still deferred on `event`.
    pub untouched: Function<'js>,
    /// `enrichedValue(event)`: its `enriched` as a data property (or held), else `undefined`.
    pub enriched_value: Function<'js>,
    /// The enrichment columns as atoms, when events were given `enriched` as column values.
    pub columns: Option<Vec<Atom<'js>>>,
    pub names: [Atom<'js>; 3],
    /// The names of the members given as strings, and per object (`None` for a value that is
    /// not an event) the strings it was given under them.
    pub strings: [Atom<'js>; STRING_MEMBERS.len()],
    pub given: Vec<Option<Given<'js>>>,
}

/// Reads values out of the runtime under one budget (one answer).
pub(crate) struct Reader<'js> {
    /// Bytes of JSON text still allowed.
    budget: usize,
    /// The objects being read, outermost first: a cycle is an object among them.
    ancestors: Vec<Object<'js>>,
    to_json: Atom<'js>,
    /// `Number.prototype`, `String.prototype`, `Boolean.prototype`: boxed primitives.
    boxes: [Object<'js>; 3],
    /// `Object.prototype`: a plain object's.
    object_proto: Object<'js>,
    inputs: Option<Inputs<'js>>,
}

impl<'js> Reader<'js> {
    /// A reader allowed `budget` bytes of JSON text in all.
    pub(crate) fn new(ctx: &Ctx<'js>, budget: usize) -> rquickjs::Result<Self> {
        let globals = ctx.globals();
        let proto = |name: &str| -> rquickjs::Result<Object<'js>> {
            globals.get::<_, Object>(name)?.get("prototype")
        };
        Ok(Self {
            budget,
            ancestors: Vec::new(),
            to_json: Atom::from_str(ctx.clone(), "toJSON")?,
            boxes: [proto("Number")?, proto("String")?, proto("Boolean")?],
            object_proto: proto("Object")?,
            inputs: None,
        })
    }

    /// Reads events that may be `inputs`, taking their untouched deferred members as given.
    pub(crate) fn with_inputs(self, inputs: Inputs<'js>) -> Self {
        Self {
            inputs: Some(inputs),
            ..self
        }
    }

    /// Reads one event slot of an answer: `None` for `null` or `undefined` (nothing to keep).
    /// A function, symbol or BigInt is not an event. `hint`: the input it most likely is.
    pub(crate) fn event(&mut self, v: Js<'js>, hint: usize) -> Result<Option<Read>, Fault> {
        if v.is_null() || v.is_undefined() {
            return Ok(None);
        }
        if matches!(
            v.type_of(),
            Type::Function | Type::Constructor | Type::Symbol | Type::BigInt
        ) {
            return Err(bad(format!("an event must be an object, not {}", kind(&v))));
        }
        self.ancestors.clear();
        let read = self.top(v, hint);
        self.ancestors.clear();
        // What JSON writes as `null` (`toJSON` giving nothing, say) is dropped like `null`.
        Ok(read?.filter(|r| !r.value.is_null()))
    }

    /// An event slot's value, its untouched deferred members left out when it is an input.
    fn top(&mut self, v: Js<'js>, hint: usize) -> Result<Option<Read>, Fault> {
        let v = self.prepare(v, &|| String::new())?;
        let input = match v.as_object() {
            Some(o) if v.type_of() == Type::Object => self.input_of(o, hint),
            _ => None,
        };
        let Some(input) = input else {
            let value = self.typed(v)?;
            return Ok(value.map(|value| Read {
                value,
                kept: Kept::default(),
            }));
        };
        let (value, members) = self.object(v, Some(input))?;
        self.charge(4)?;
        Ok(Some(Read {
            value,
            kept: Kept { input, members },
        }))
    }

    /// Which of the inputs `o` is.
    fn input_of(&self, o: &Object<'js>, hint: usize) -> Option<usize> {
        let inputs = self.inputs.as_ref()?;
        match inputs.objects.get(hint) {
            Some(h) if h == o => Some(hint),
            _ => inputs.objects.iter().position(|i| i == o),
        }
    }

    /// The `raw` member of `v` as far as it can be read (`null` if not), for an output that
    /// cannot be read as a whole.
    pub(crate) fn raw_of(&mut self, v: &Js<'js>) -> Value {
        self.ancestors.clear();
        let raw = v
            .as_object()
            .and_then(|o| o.get::<_, Js>("raw").ok())
            .and_then(|r| self.value(r, &|| "raw".into()).ok().flatten());
        self.ancestors.clear();
        raw.unwrap_or(Value::Null)
    }

    /// The length of an array, charged at one byte per element at least.
    pub(crate) fn length(&mut self, a: &Object<'js>) -> Result<usize, Fault> {
        let len: Js = a.get("length").map_err(js_fault)?;
        let len = len.as_number().unwrap_or(0.0);
        if len.is_nan() || len < 0.0 || len > self.budget as f64 {
            return Err(Fault::TooBig);
        }
        let len = len as usize;
        self.charge(len)?;
        Ok(len)
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Fault> {
        self.budget = self.budget.checked_sub(bytes).ok_or(Fault::TooBig)?;
        Ok(())
    }

    /// `v` as `JSON.stringify` writes it under `key`; `None` where it writes nothing.
    fn value(&mut self, v: Js<'js>, key: &dyn Fn() -> String) -> Result<Option<Value>, Fault> {
        let v = self.prepare(v, key)?;
        self.typed(v)
    }

    /// [`Reader::value`] of a value `toJSON` and unboxing were applied to.
    fn typed(&mut self, v: Js<'js>) -> Result<Option<Value>, Fault> {
        let out = match v.type_of() {
            Type::Undefined
            | Type::Uninitialized
            | Type::Function
            | Type::Constructor
            | Type::Symbol => return Ok(None),
            Type::Null => Value::Null,
            Type::Bool => Value::Bool(v.as_bool().unwrap_or(false)),
            Type::Int => Value::from(v.as_int().unwrap_or(0)),
            Type::Float => number_from_js(v.as_float().unwrap_or(f64::NAN)),
            Type::String => {
                let s = v.as_string().map(rquickjs::String::to_string);
                let s = s.ok_or_else(|| bad("a string could not be read"))?;
                Value::String(s.map_err(js_fault)?)
            }
            Type::BigInt => {
                return Err(bad(
                    "a BigInt has no JSON form; convert it with Number() or String()",
                ));
            }
            Type::Array => self.array(v)?,
            Type::Object | Type::Exception | Type::Promise | Type::Proxy => self.object(v, None)?.0,
            Type::Module | Type::Unknown => return Err(bad("a value of an unknown kind")),
        };
        self.charge(match &out {
            Value::String(s) => s.len() + 2,
            _ => 4,
        })?;
        Ok(Some(out))
    }

    /// Applies `toJSON` and unboxes boxed primitives, as `JSON.stringify` does.
    fn prepare(&mut self, v: Js<'js>, key: &dyn Fn() -> String) -> Result<Js<'js>, Fault> {
        let Some(object) = v.as_object() else {
            return Ok(v);
        };
        let f: Js = object.get(self.to_json.clone()).map_err(js_fault)?;
        let v = match f.as_function() {
            Some(f) => f.call((This(v.clone()), key())).map_err(js_fault)?,
            None => v,
        };
        let Some(object) = v.as_object() else {
            return Ok(v);
        };
        if v.is_array() || v.is_function() {
            return Ok(v);
        }
        match object.get_prototype() {
            Some(p) if self.boxes.contains(&p) => {
                let value_of: Function = object.get("valueOf").map_err(js_fault)?;
                value_of.call((This(v.clone()),)).map_err(js_fault)
            }
            _ => Ok(v),
        }
    }

    fn enter(&mut self, o: &Object<'js>) -> Result<(), Fault> {
        if self.ancestors.contains(o) {
            return Err(bad("a cycle: the value contains itself"));
        }
        if self.ancestors.len() >= MAX_DEPTH {
            return Err(bad(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.ancestors.push(o.clone());
        Ok(())
    }

    fn leave(&mut self) {
        let left = self.ancestors.pop();
        debug_assert!(left.is_some(), "leave without enter");
    }

    fn array(&mut self, v: Js<'js>) -> Result<Value, Fault> {
        let array = v
            .into_array()
            .ok_or_else(|| bad("an array could not be read"))?;
        self.enter(array.as_object())?;
        let len = self.length(array.as_object())?;
        let mut out = Vec::with_capacity(len.min(4096));
        for i in 0..len {
            let item: Js = array.get(i).map_err(js_fault)?;
            let item = match self.value(item, &|| i.to_string()) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    self.charge(4)?;
                    Value::Null
                }
                Err(f) => return within(Err(f), || Step::Index(i)),
            };
            out.push(item);
        }
        self.leave();
        Ok(Value::Array(out))
    }

    /// An object's members as JSON writes them. For `input` (the object is that input event),
    /// the members it still holds as it was given them are left out unread (see [`Kept`]): the
    /// mask of those is returned.
    fn object(&mut self, v: Js<'js>, input: Option<usize>) -> Result<(Value, u16), Fault> {
        let object = v
            .into_object()
            .ok_or_else(|| bad("an object could not be read"))?;
        self.enter(&object)?;
        let (map, kept) = match input {
            Some(input) => {
                // Taken out while its members are read (nothing nested is an input), then back.
                let inputs = self.inputs.take();
                let read = match &inputs {
                    Some(inputs) => self.input_members(&object, inputs, input),
                    None => self.members(&object).map(|map| (map, 0)),
                };
                self.inputs = inputs;
                read?
            }
            None => (self.members(&object)?, 0),
        };
        self.leave();
        Ok((Value::Object(map), kept))
    }

    fn members(&mut self, object: &Object<'js>) -> Result<Map<String, Value>, Fault> {
        let mut map = Map::new();
        for prop in object.props::<String, Js>() {
            let (k, item) = prop.map_err(js_fault)?;
            self.member(&mut map, k, item)?;
        }
        Ok(map)
    }

    /// The members of input event `input` that it does not hold as it was given them.
    fn input_members(
        &mut self,
        object: &Object<'js>,
        inputs: &Inputs<'js>,
        input: usize,
    ) -> Result<(Map<String, Value>, u16), Fault> {
        let given = inputs.given.get(input).and_then(Option::as_ref);
        let mut map = Map::new();
        let mut kept = 0u16;
        // Which deferred members are untouched, as last asked; reading anything may run code
        // (a getter) that touches one, so the answer holds only until then.
        let mut asked: Option<u8> = None;
        for k in object.keys::<Atom>() {
            let k = k.map_err(js_fault)?;
            if let Some(i) = inputs.names.iter().position(|n| *n == k) {
                let mask = match asked {
                    Some(m) => m,
                    None => {
                        let m: i32 = inputs.untouched.call((object.clone(),)).map_err(js_fault)?;
                        *asked.insert(u8::try_from(m).unwrap_or(0))
                    }
                };
                if mask & (1 << i) != 0 {
                    kept |= 1 << i;
                    continue;
                }
                if i == ENRICHED
                    && let (Some(columns), Some(given)) = (
                        inputs.columns.as_ref(),
                        given.and_then(|g| g.columns.as_ref()),
                    )
                {
                    // Getters the function put on its columns may run: ask again after.
                    asked = None;
                    let v: Js = inputs
                        .enriched_value
                        .call((object.clone(),))
                        .map_err(js_fault)?;
                    if columns::holds_given(&v, given, columns, &self.object_proto)
                        .map_err(js_fault)?
                    {
                        kept |= 1 << i;
                        continue;
                    }
                }
            }
            asked = None;
            let item: Js = object.get(k.clone()).map_err(js_fault)?;
            // The same string value is the same string: nothing to read.
            if let Some(given) = given
                && let Some(i) = inputs.strings.iter().position(|n| *n == k)
                && given.strings[i].as_ref() == Some(&item)
            {
                kept |= 1 << (inputs.names.len() + i);
                continue;
            }
            self.member(&mut map, k.to_string().map_err(js_fault)?, item)?;
        }
        Ok((map, kept))
    }

    /// Reads member `k` of an object into `map`.
    fn member(
        &mut self,
        map: &mut Map<String, Value>,
        k: String,
        item: Js<'js>,
    ) -> Result<(), Fault> {
        match self.value(item, &|| k.clone()) {
            Ok(Some(item)) => {
                self.charge(k.len() + 3)?;
                map.insert(k, item);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(f) => within(Err(f), || Step::Key(k)).map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rquickjs::{CatchResultExt, Context, Runtime};
    use serde_json::json;

    fn with<R>(f: impl FnOnce(&Ctx<'_>) -> R) -> R {
        let runtime = Runtime::new().unwrap();
        runtime.set_max_stack_size(1 << 20);
        let context = Context::full(&runtime).unwrap();
        context.with(|ctx| f(&ctx))
    }

    fn message(f: Fault) -> String {
        match f {
            Fault::Bad(why) => why.message(),
            Fault::Js(e) => format!("thrown: {e}"),
            Fault::TooBig => "too big".into(),
        }
    }

    /// What `code` evaluates to, read as one event slot with `budget` bytes.
    fn read_with(code: &str, budget: usize) -> Result<Option<Value>, String> {
        with(|ctx| {
            let v: Js = ctx.eval(code).catch(ctx).unwrap();
            let mut reader = Reader::new(ctx, budget).unwrap();
            reader
                .event(v, 0)
                .map(|r| r.map(|r| r.value))
                .map_err(message)
        })
    }

    fn read(code: &str) -> Result<Option<Value>, String> {
        read_with(code, 1 << 20)
    }

    /// What serde_json reads from `JSON.stringify` of what `code` evaluates to.
    fn via_text(code: &str) -> Value {
        with(|ctx| {
            let text: String = ctx
                .eval(format!("JSON.stringify({code})"))
                .catch(ctx)
                .unwrap();
            serde_json::from_str(&text).unwrap()
        })
    }

    #[test]
    fn reads_what_json_text_would_give() {
        for code in [
            r#"({a: 1, b: [1, 2.5, "x", [[]]], c: {d: null, e: true, f: {g: {h: "deep"}}}})"#,
            r#"({s: "héllo wörld 日本 😀 \u0000 \n \"", "ключ": "значение", "": "empty key"})"#,
            "({a: 2**53, b: 2**53 + 2, c: -(2**63), d: 2**63, e: 2**64, f: 1e21, g: 1e20, h: -0, i: 0.1, j: 1e-7, k: -123456789012, l: 2**31, m: 1.5e300, n: 2**64 - 2048, o: -(2**60) - 256, p: 123456789012345680000, q: 2**53 + 1})",
            "({a: NaN, b: Infinity, c: -Infinity, d: [NaN, -Infinity]})",
            r#"({a: undefined, b: () => 1, c: Symbol("s"), d: [undefined, () => 1, Symbol("t")], [Symbol("k")]: 1})"#,
            "({t: new Date(0), o: {toJSON(k) { return {x: 1, k}; }}, a: [{toJSON(k) { return k; }}]})",
            r#"({n: new Number(3), s: new String("ab"), b: new Boolean(false)})"#,
            r#"({m: new Map([[1, 2]]), r: /x/g, e: new Error("boom"), u: new Uint8Array([1, 2]), p: Promise.resolve(1)})"#,
            "(() => { const a = [1]; a[3] = 4; const s = {x: 1}; return {a, b: s, c: s}; })()",
            "({get g() { return 5; }, __proto__: {inherited: 1}})",
            "new (class { constructor() { this.x = 1; } get y() { return 2; } })()",
            r#"JSON.parse('{"__proto__": {"p": 1}, "q": 2}')"#,
            "(() => { let o = {leaf: 1}; for (let i = 0; i < 120; i++) o = {o}; return o; })()",
        ] {
            assert_eq!(read(code).unwrap(), Some(via_text(code)), "{code}");
        }
    }

    #[test]
    fn numbers_keep_their_json_kind() {
        let v = read("({i: 7, big: 2**63, neg: -(2**63), f: 0.5, e: 1e21, z: -0})")
            .unwrap()
            .unwrap();
        assert_eq!(v["i"].as_i64(), Some(7));
        // Written 9223372036854776000 and -9223372036854776000.
        assert_eq!(v["big"].as_u64(), Some(9_223_372_036_854_776_000));
        assert!(v["neg"].is_f64());
        assert_eq!(v["f"].as_f64(), Some(0.5));
        assert!(v["e"].is_f64());
        assert_eq!(v["z"].as_i64(), Some(0));
    }

    #[test]
    fn nothing_to_keep_and_not_an_event() {
        assert_eq!(read("null"), Ok(None));
        assert_eq!(read("undefined"), Ok(None));
        assert_eq!(read("({toJSON() { return undefined; }})"), Ok(None));
        assert_eq!(read("5"), Ok(Some(json!(5))));
        for (code, want) in [
            ("(() => 1)", "not a function"),
            ("(class {})", "not a function"),
            ("Symbol('s')", "not a symbol"),
            ("10n", "not a BigInt"),
        ] {
            let err = read(code).unwrap_err();
            assert!(
                err.contains("an event must be an object") && err.contains(want),
                "{code}: {err}"
            );
        }
    }

    #[test]
    fn unreadable_values_say_why_and_where() {
        for (code, want) in [
            (
                "(() => { const o = {a: {}}; o.a.b = o; return o; })()",
                "a cycle: the value contains itself (at a.b)",
            ),
            (
                "(() => { const a = [1]; a.push(a); return {list: a}; })()",
                "a cycle: the value contains itself (at list[1])",
            ),
            (
                "({n: [1, {big: 1n}]})",
                "a BigInt has no JSON form; convert it with Number() or String() (at n[1].big)",
            ),
            (
                r#"({s: "ok", t: {u: "\ud800"}})"#,
                "a string holds an unpaired surrogate (it is not valid Unicode) (at t.u)",
            ),
            (
                "(() => { let o = {}; for (let i = 0; i < 200; i++) o = {o}; return o; })()",
                "nested deeper than 128 levels (at o.o.o",
            ),
        ] {
            let err = read(code).unwrap_err();
            assert!(err.starts_with(want), "{code}: {err}");
        }
    }

    #[test]
    fn throwing_code_and_size_stop_the_whole_answer() {
        let err = read("({get g() { throw new Error('no'); }})").unwrap_err();
        assert!(err.starts_with("thrown:"), "{err}");
        let err = read("({toJSON() { throw 1; }})").unwrap_err();
        assert!(err.starts_with("thrown:"), "{err}");
        let too_big = Some("too big".to_string());
        assert_eq!(read_with("({s: 'x'.repeat(2000)})", 1000).err(), too_big);
        // A huge sparse array is refused before it is walked, or as it is; an array length past
        // i32 trips nothing.
        for len in ["2**31", "2**32 - 1", "1e6"] {
            let code = format!("(() => {{ const a = []; a.length = {len}; return {{a}}; }})()");
            assert_eq!(read(&code).err(), too_big, "{len}");
        }
        // The same object many times over is counted each time, as its text would be.
        let code =
            "(() => { const s = {pad: 'x'.repeat(1000)}; return {a: new Array(5000).fill(s)}; })()";
        assert_eq!(read(code).err(), too_big);
    }

    #[test]
    fn values_go_in_as_json_parse_makes_them() {
        for v in [
            json!({"a": 1, "b": [1, 2.5, "x", null, true, {"c": []}], "d": {}}),
            json!({"s": "héllo 日本 😀 \u{0} \n \"", "ключ": "значение", "": 0}),
            json!({"max": i64::MAX, "min": i64::MIN, "u": u64::MAX, "i32": i32::MAX, "past": 2_147_483_648_i64, "f": -0.0, "small": 1e-300}),
            json!({"__proto__": {"p": 1}, "constructor": 2, "toJSON": 3}),
        ] {
            let text = v.to_string();
            let (direct, parsed) = with(|ctx| {
                let stringify: Function = ctx.eval("(v) => JSON.stringify(v)").unwrap();
                let direct: String = stringify.call((to_js(ctx, &v).unwrap(),)).unwrap();
                let parsed: Js = ctx.json_parse(text.clone()).unwrap();
                let parsed: String = stringify.call((parsed,)).unwrap();
                (direct, parsed)
            });
            assert_eq!(direct, parsed, "{text}");
        }
    }
}
