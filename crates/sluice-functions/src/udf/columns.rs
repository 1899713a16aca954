//! An event's `enriched` as the values of its columns, for a function that reads it.
//!
//! `enriched` is flat: strings, numbers and booleans under the column names of
//! [`Enrichment::columns`]. A function that has read it goes on getting it as an array of those
//! values in column order (`undefined` for an empty column) instead of its JSON text: made into
//! its object on first use by [`from_columns`] (the same object `JSON.parse` makes of the
//! text), and, on the way back, known to be unchanged when the object still holds the very
//! values it was given ([`holds_given`]), so that it is taken from the event the runtime was
//! given rather than read. Parsing the text and reading the object back were most of what such
//! a function cost; the array costs more than the text to make, so a function that never reads
//! `enriched` goes on getting the text (`convert.rs`).

use rquickjs::object::Property;
use rquickjs::{Array, Atom, Ctx, Object, Type, Value as Js};
use serde::Serialize;
use serde::ser::{self, Impossible};
use serde_json::Number;
use sluice_event::Enrichment;

use super::value;

/// The values an `enriched` was given: (column, value) in column order.
pub(crate) type Given<'js> = Vec<(usize, Js<'js>)>;

/// `e`'s column values as an array in [`Enrichment::columns`] order (`undefined` where a column
/// is empty), and the values given; `None` when a column holds anything but a string, number or
/// boolean (the event then gets the text).
pub(crate) fn enriched_columns<'js>(
    ctx: &Ctx<'js>,
    e: &Enrichment,
) -> rquickjs::Result<Option<(Array<'js>, Given<'js>)>> {
    let columns = Enrichment::columns();
    let mut row = Row {
        ctx,
        columns,
        next: 0,
        given: Vec::with_capacity(columns.len()),
    };
    if e.serialize(&mut row).is_err() {
        return Ok(None);
    }
    let array = Array::new(ctx.clone())?;
    let undefined = Js::new_undefined(ctx.clone());
    let mut given = row.given.iter().peekable();
    for i in 0..columns.len() {
        match given.next_if(|(column, _)| *column == i) {
            Some((_, v)) => array.set(i, v.clone())?,
            None => array.set(i, undefined.clone())?,
        }
    }
    Ok(Some((array, row.given)))
}

/// The object of `values` (an array as [`enriched_columns`] makes it): each value defined under
/// its column, in column order, as `JSON.parse` defines the members of the columns' text.
pub(crate) fn from_columns<'js>(
    ctx: &Ctx<'js>,
    values: &Array<'js>,
) -> rquickjs::Result<Object<'js>> {
    let o = Object::new(ctx.clone())?;
    for (i, column) in Enrichment::columns().iter().enumerate() {
        let v: Js = values.get(i)?;
        if v.is_undefined() {
            continue;
        }
        let column = Atom::from_str(ctx.clone(), column)?;
        o.prop(
            column,
            Property::from(v).writable().enumerable().configurable(),
        )?;
    }
    Ok(o)
}

/// Whether `v` is an `enriched` that still holds exactly the columns it was `given` (each the
/// very value, in column order, and nothing else) on a plain object (`object_proto`): reading
/// it back would give them again. A getter the function put on a column runs here, and again
/// when the values differ and the member is read.
pub(crate) fn holds_given<'js>(
    v: &Js<'js>,
    given: &Given<'js>,
    columns: &[Atom<'js>],
    object_proto: &Object<'js>,
) -> rquickjs::Result<bool> {
    let Some(o) = v.as_object().filter(|_| v.type_of() == Type::Object) else {
        return Ok(false);
    };
    if o.get_prototype().as_ref() != Some(object_proto) {
        return Ok(false);
    }
    let mut given = given.iter();
    for key in o.keys::<Atom>() {
        let key = key?;
        let Some((column, value)) = given.next() else {
            return Ok(false);
        };
        if columns.get(*column) != Some(&key) || o.get::<_, Js>(key)? != *value {
            return Ok(false);
        }
    }
    Ok(given.next().is_none())
}

fn refused() -> serde_json::Error {
    ser::Error::custom("not a flat enrichment column")
}

/// The serializer methods a [`Row`] or [`Scalar`] refuses.
macro_rules! refused {
    ($($method:ident$(<$t:ident>)?($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method$(<$t: ?Sized + Serialize>)?(self, $(_: $arg),*) -> serde_json::Result<$ret> {
            Err(refused())
        })*
    };
}

/// [`Scalar`]'s methods for integers that widen to `i64` without loss.
macro_rules! widened {
    ($($method:ident($ty:ty)),*) => {
        $(fn $method(self, v: $ty) -> serde_json::Result<Self::Ok> {
            self.serialize_i64(v.into())
        })*
    };
}

/// The struct's fields, each value kept with its column.
struct Row<'a, 'js> {
    ctx: &'a Ctx<'js>,
    columns: &'static [&'static str],
    /// The next column a field can be: fields come in column order.
    next: usize,
    given: Given<'js>,
}

impl<'js> ser::Serializer for &mut Row<'_, 'js> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> serde_json::Result<Self> {
        Ok(self)
    }

    refused! {
        serialize_some<T>(&T) -> ();
        serialize_newtype_struct<T>(&'static str, &T) -> ();
        serialize_newtype_variant<T>(&'static str, u32, &'static str, &T) -> ();
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
}

impl ser::SerializeStruct for &mut Row<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        let at = self.columns[self.next..]
            .iter()
            .position(|c| *c == key)
            .map(|k| self.next + k)
            .ok_or_else(refused)?;
        if let Some(v) = value.serialize(Scalar(self.ctx))? {
            self.given.push((at, v));
        }
        self.next = at + 1;
        Ok(())
    }

    fn end(self) -> serde_json::Result<()> {
        Ok(())
    }
}

/// A column's value: what `JSON.parse` makes of its text (`None` for an empty column).
struct Scalar<'a, 'js>(&'a Ctx<'js>);

impl<'a, 'js> ser::Serializer for Scalar<'a, 'js> {
    type Ok = Option<Js<'js>>;
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<Self::Ok, serde_json::Error>;
    type SerializeTuple = Impossible<Self::Ok, serde_json::Error>;
    type SerializeTupleStruct = Impossible<Self::Ok, serde_json::Error>;
    type SerializeTupleVariant = Impossible<Self::Ok, serde_json::Error>;
    type SerializeMap = Impossible<Self::Ok, serde_json::Error>;
    type SerializeStruct = Impossible<Self::Ok, serde_json::Error>;
    type SerializeStructVariant = Impossible<Self::Ok, serde_json::Error>;

    fn serialize_bool(self, v: bool) -> serde_json::Result<Self::Ok> {
        Ok(Some(Js::new_bool(self.0.clone(), v)))
    }

    widened!(
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32)
    );

    fn serialize_i64(self, v: i64) -> serde_json::Result<Self::Ok> {
        Ok(Some(value::number_to_js(self.0, &v.into())))
    }

    fn serialize_u64(self, v: u64) -> serde_json::Result<Self::Ok> {
        Ok(Some(value::number_to_js(self.0, &v.into())))
    }

    fn serialize_f32(self, v: f32) -> serde_json::Result<Self::Ok> {
        self.serialize_f64(v.into())
    }

    fn serialize_f64(self, v: f64) -> serde_json::Result<Self::Ok> {
        // Not finite: written as `null`.
        match Number::from_f64(v) {
            Some(n) => Ok(Some(value::number_to_js(self.0, &n))),
            None => self.serialize_unit(),
        }
    }

    fn serialize_char(self, v: char) -> serde_json::Result<Self::Ok> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_str(self, v: &str) -> serde_json::Result<Self::Ok> {
        let s = rquickjs::String::from_str(self.0.clone(), v).map_err(ser::Error::custom)?;
        Ok(Some(s.into_value()))
    }

    fn serialize_none(self) -> serde_json::Result<Self::Ok> {
        Ok(None)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> serde_json::Result<Self::Ok> {
        v.serialize(self)
    }

    fn serialize_unit(self) -> serde_json::Result<Self::Ok> {
        Ok(Some(Js::new_null(self.0.clone())))
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        v: &T,
    ) -> serde_json::Result<Self::Ok> {
        v.serialize(self)
    }

    refused! {
        serialize_newtype_variant<T>(&'static str, u32, &'static str, &T) -> Self::Ok;
        serialize_bytes(&[u8]) -> Self::Ok;
        serialize_unit_struct(&'static str) -> Self::Ok;
        serialize_unit_variant(&'static str, u32, &'static str) -> Self::Ok;
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct(&'static str, usize) -> Self::SerializeStruct;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }
}

#[cfg(test)]
mod tests {
    use rquickjs::{Context, Function, Runtime};

    use super::*;

    #[test]
    fn the_object_of_the_columns_is_what_json_parse_makes_of_the_text() {
        let full = Enrichment {
            ip: Some("203.0.113.0".into()),
            ua_browser: Some("Chrome \"x\" \\ \u{1}".into()),
            is_bot: Some(false),
            geo_city: Some("Zürich 😀".into()),
            geo_latitude: Some(f64::NAN),
            geo_longitude: Some(8.0),
            session_index: Some(i32::MIN),
            event_fingerprint: Some(String::new()),
            ..Enrichment::default()
        };
        let runtime = Runtime::new().unwrap();
        let context = Context::full(&runtime).unwrap();
        for e in [full, Enrichment::default()] {
            let text = serde_json::to_string(&e).unwrap();
            context.with(|ctx| {
                let (values, given) = enriched_columns(&ctx, &e).unwrap().unwrap();
                assert_eq!(values.len(), Enrichment::columns().len());
                let object = from_columns(&ctx, &values).unwrap();
                let stringify: Function = ctx.eval("(v) => JSON.stringify(v)").unwrap();
                let direct: String = stringify.call((object.clone(),)).unwrap();
                let parsed: String = stringify
                    .call((ctx.json_parse(text.clone()).unwrap(),))
                    .unwrap();
                // Same keys in the same order, same values.
                assert_eq!(direct, parsed);
                let atoms: Vec<Atom> = Enrichment::columns()
                    .iter()
                    .map(|c| Atom::from_str(ctx.clone(), c).unwrap())
                    .collect();
                let proto: Object = ctx.eval("Object.prototype").unwrap();
                let v = object.into_value();
                assert!(holds_given(&v, &given, &atoms, &proto).unwrap());
                // Another value, or the same one made anew, is not the one given.
                if let Some((column, _)) = given.first() {
                    let o = v.as_object().unwrap();
                    o.set(atoms[*column].clone(), "other").unwrap();
                    assert!(!holds_given(&v, &given, &atoms, &proto).unwrap());
                }
            });
        }
    }
}
