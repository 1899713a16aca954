//! [`to_writer`]: a value as compact JSON, byte for byte what `serde_json::to_writer` writes,
//! faster for the records the runner writes (`good`). `serde_json` looks at a string's bytes
//! one at a time to find those to escape; this writer looks at eight at a time, so a string
//! with nothing to escape costs about its copy. Anything it does not write itself (bytes, a map
//! key that is not a string, a value whose `Serialize` fails) makes it start the value again
//! with `serde_json`, which then writes it or gives the error it gives.

use serde::Serialize;
use serde::ser::{self, Error as _, Impossible};

use crate::swar;

/// The name `serde_json` serializes a `RawValue` as: a struct whose one field is its text,
/// written as it is.
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Appends `value` as compact JSON to `out`: exactly what `serde_json::to_writer(out, value)`
/// appends, and the same error where it fails (`out` is then as it was).
pub fn to_writer<T: ?Sized + Serialize>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    let start = out.len();
    let mut json = Json { out, raw: false };
    if value.serialize(&mut json).is_ok() {
        return Ok(());
    }
    out.truncate(start);
    let written = serde_json::to_writer(&mut *out, value);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// [`to_writer`] into a new string: what `serde_json::to_string` gives.
pub fn to_string<T: ?Sized + Serialize>(value: &T) -> serde_json::Result<String> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    // Written from Rust strings, the JSON is UTF-8.
    String::from_utf8(out).map_err(serde_json::Error::custom)
}

/// The writer: the output, and whether the next string is a raw value's text.
struct Json<'a> {
    out: &'a mut Vec<u8>,
    raw: bool,
}

/// What this writer leaves to `serde_json` (see the module docs).
fn unsupported() -> serde_json::Error {
    serde_json::Error::custom("left to serde_json")
}

/// A number written by `serde_json` itself (`itoa` and `ryu`, `null` for a float that is not
/// finite).
fn number<N: Serialize>(out: &mut Vec<u8>, n: N) -> serde_json::Result<()> {
    serde_json::to_writer(out, &n)
}

/// `ESCAPE[b]`: how byte `b` is written inside a string — `0` as it is, `u` as `\u00XX`, else
/// `\` and that letter (as `serde_json` does).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Where the first byte of `s` to escape is (`"`, `\` or below 0x20), eight bytes a step
/// (`swar.rs`).
fn first_escape(s: &[u8]) -> Option<usize> {
    let marks = |w| swar::below(w, 0x20) | swar::equal(w, b'"') | swar::equal(w, b'\\');
    swar::first(s, marks, |b| ESCAPE[usize::from(b)] != 0)
}

/// Appends `s` as a JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 2);
    out.push(b'"');
    while let Some(k) = first_escape(rest) {
        debug_assert_ne!(
            ESCAPE[usize::from(rest[k])],
            0,
            "{:#x} needs no escape",
            rest[k]
        );
        out.extend_from_slice(&rest[..k]);
        write_escape(out, rest[k]);
        rest = &rest[k + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

fn write_escape(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[usize::from(byte)] {
        b'u' => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]),
        letter => out.extend_from_slice(&[b'\\', letter]),
    }
}

/// An array, object or variant being written: whether an element came yet, what closes it, and
/// whether it is a raw value's struct (nothing around its one field).
struct Compound<'a, 'b> {
    json: &'a mut Json<'b>,
    first: bool,
    close: &'static [u8],
    raw: bool,
}

impl<'a, 'b> Compound<'a, 'b> {
    fn open(json: &'a mut Json<'b>, open: &[u8], close: &'static [u8]) -> Self {
        json.out.extend_from_slice(open);
        Self {
            json,
            first: true,
            close,
            raw: false,
        }
    }

    /// A variant holding a sequence or struct: `{"variant":` then `open`, closed by `close`.
    fn variant(json: &'a mut Json<'b>, variant: &str, open: &[u8], close: &'static [u8]) -> Self {
        json.out.push(b'{');
        write_str(json.out, variant);
        json.out.push(b':');
        Self::open(json, open, close)
    }

    fn comma(&mut self) {
        if !self.first {
            self.json.out.push(b',');
        }
        self.first = false;
    }

    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        self.comma();
        value.serialize(&mut *self.json)
    }

    fn field<T: ?Sized + Serialize>(&mut self, key: &str, value: &T) -> serde_json::Result<()> {
        if self.raw {
            self.json.raw = true;
            let written = value.serialize(&mut *self.json);
            self.json.raw = false;
            return written;
        }
        self.comma();
        write_str(self.json.out, key);
        self.json.out.push(b':');
        value.serialize(&mut *self.json)
    }

    fn close(self) -> serde_json::Result<()> {
        self.json.out.extend_from_slice(self.close);
        Ok(())
    }
}

/// The serializer's number methods: each written by `serde_json` ([`number`]).
macro_rules! numbers {
    ($($method:ident($ty:ty)),*) => {$(
        fn $method(self, v: $ty) -> serde_json::Result<()> {
            number(self.out, v)
        }
    )*};
}

impl<'a, 'b> ser::Serializer for &'a mut Json<'b> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Compound<'a, 'b>;
    type SerializeTuple = Compound<'a, 'b>;
    type SerializeTupleStruct = Compound<'a, 'b>;
    type SerializeTupleVariant = Compound<'a, 'b>;
    type SerializeMap = Compound<'a, 'b>;
    type SerializeStruct = Compound<'a, 'b>;
    type SerializeStructVariant = Compound<'a, 'b>;

    fn serialize_bool(self, v: bool) -> serde_json::Result<()> {
        self.out
            .extend_from_slice(if v { b"true" } else { b"false" });
        Ok(())
    }

    numbers! {
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64)
    }

    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }

    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        if self.raw {
            self.out.extend_from_slice(v.as_bytes());
        } else {
            write_str(self.out, v);
        }
        Ok(())
    }

    fn serialize_bytes(self, _: &[u8]) -> serde_json::Result<()> {
        Err(unsupported())
    }

    fn serialize_none(self) -> serde_json::Result<()> {
        self.serialize_unit()
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> serde_json::Result<()> {
        value.serialize(self)
    }

    fn serialize_unit(self) -> serde_json::Result<()> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }

    fn serialize_unit_struct(self, _: &'static str) -> serde_json::Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        write_str(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        self.out.push(b'{');
        write_str(self.out, variant);
        self.out.push(b':');
        value.serialize(&mut *self)?;
        self.out.push(b'}');
        Ok(())
    }

    fn serialize_seq(self, _: Option<usize>) -> serde_json::Result<Compound<'a, 'b>> {
        Ok(Compound::open(self, b"[", b"]"))
    }

    fn serialize_tuple(self, len: usize) -> serde_json::Result<Compound<'a, 'b>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'a, 'b>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> serde_json::Result<Compound<'a, 'b>> {
        Ok(Compound::variant(self, variant, b"[", b"]}"))
    }

    fn serialize_map(self, _: Option<usize>) -> serde_json::Result<Compound<'a, 'b>> {
        Ok(Compound::open(self, b"{", b"}"))
    }

    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> serde_json::Result<Compound<'a, 'b>> {
        if name == RAW_VALUE {
            let mut raw = Compound::open(self, b"", b"");
            raw.raw = true;
            return Ok(raw);
        }
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> serde_json::Result<Compound<'a, 'b>> {
        Ok(Compound::variant(self, variant, b"{", b"}}"))
    }
}

/// The sequence traits: each element written after a comma.
macro_rules! elements {
    ($($trait:ident::$method:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = serde_json::Error;

            fn $method<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
                self.element(value)
            }

            fn end(self) -> serde_json::Result<()> {
                self.close()
            }
        }
    )*};
}

elements!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = serde_json::Error;

    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> serde_json::Result<()> {
        self.comma();
        key.serialize(Key(self.json.out))
    }

    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> serde_json::Result<()> {
        self.json.out.push(b':');
        value.serialize(&mut *self.json)
    }

    fn end(self) -> serde_json::Result<()> {
        self.close()
    }
}

/// The struct traits: each field written as a member.
macro_rules! fields {
    ($($trait:ident),*) => {$(
        impl ser::$trait for Compound<'_, '_> {
            type Ok = ();
            type Error = serde_json::Error;

            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> serde_json::Result<()> {
                self.field(key, value)
            }

            fn end(self) -> serde_json::Result<()> {
                self.close()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

/// A map key: a string, written as one; any other key is left to `serde_json` (which quotes
/// numbers and booleans, and refuses the rest).
struct Key<'a>(&'a mut Vec<u8>);

/// Methods of [`Key`] for keys it leaves to `serde_json`.
macro_rules! left_to_serde_json {
    ($($method:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $method(self, $(_: $arg),*) -> serde_json::Result<$ret> {
            Err(unsupported())
        })*
    };
}

impl ser::Serializer for Key<'_> {
    type Ok = ();
    type Error = serde_json::Error;
    type SerializeSeq = Impossible<(), serde_json::Error>;
    type SerializeTuple = Impossible<(), serde_json::Error>;
    type SerializeTupleStruct = Impossible<(), serde_json::Error>;
    type SerializeTupleVariant = Impossible<(), serde_json::Error>;
    type SerializeMap = Impossible<(), serde_json::Error>;
    type SerializeStruct = Impossible<(), serde_json::Error>;
    type SerializeStructVariant = Impossible<(), serde_json::Error>;

    fn serialize_str(self, v: &str) -> serde_json::Result<()> {
        write_str(self.0, v);
        Ok(())
    }

    fn serialize_char(self, v: char) -> serde_json::Result<()> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> serde_json::Result<()> {
        self.serialize_str(variant)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> serde_json::Result<()> {
        value.serialize(self)
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> serde_json::Result<()> {
        Err(unsupported())
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> serde_json::Result<()> {
        Err(unsupported())
    }

    left_to_serde_json! {
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
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
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
    use super::*;
    use serde_json::json;
    use serde_json::value::RawValue;
    use std::collections::BTreeMap;

    /// What [`to_writer`] appends after `prefix`, checked against `serde_json`.
    fn same<T: ?Sized + Serialize + std::fmt::Debug>(value: &T) {
        let mut ours = b"prefix".to_vec();
        let got = to_writer(&mut ours, value);
        let mut theirs = b"prefix".to_vec();
        let want = serde_json::to_writer(&mut theirs, value);
        assert_eq!(
            got.as_ref().map_err(ToString::to_string),
            want.as_ref().map_err(ToString::to_string),
            "{value:?}"
        );
        if want.is_err() {
            // `serde_json` leaves what it wrote before the error; this leaves nothing.
            theirs.truncate(b"prefix".len());
        }
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{value:?}"
        );
    }

    #[test]
    fn every_byte_at_every_place_in_a_word_is_written_as_serde_json_writes_it() {
        let mut chars: Vec<char> = (0u8..=0x7f).map(char::from).collect();
        chars.extend(['é', '€', '𝄞', '\u{2028}', '\u{ffff}', '\u{80}']);
        for c in chars {
            for before in 0..=17 {
                for after in [0, 1, 7, 8, 9] {
                    let s = format!("{}{c}{}", "a".repeat(before), "é".repeat(after));
                    same(&s);
                    // Two of them, the second in the same word or the next.
                    same(&format!("{s}{c}{s}"));
                }
            }
        }
    }

    #[test]
    fn strings_of_many_escapes_and_none() {
        for s in [
            "",
            "\"",
            "\\\\\\\\\\\\\\\\\\",
            "\u{0}\u{1}\u{1f}\u{7f}\u{20}",
            "\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
            "plain text with nothing to escape, and then some more of it",
            "\t\n\r\u{8}\u{c}tab\tnew\nline",
            "ascii then \u{1b}[31m colour \u{1b}[0m",
        ] {
            same(s);
            same(&s.repeat(9));
        }
        // Every 3-byte string over a few bytes that matter.
        let alphabet = ['a', '"', '\\', '\n', '\u{1}', 'é', ' ', '~'];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let s: String = [a, b, c].iter().collect();
                    same(&s.repeat(3));
                }
            }
        }
    }

    #[derive(Debug, Serialize)]
    enum Shape {
        Unit,
        Newtype(u8),
        Tuple(i32, String),
        Struct { a: Option<f64>, b: Vec<bool> },
    }

    #[derive(Debug, Serialize)]
    struct Unit;

    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
    struct Newtype(String);

    #[derive(Debug, Serialize)]
    struct Tuple(u8, char);

    #[derive(Debug, Serialize)]
    struct Record {
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<String>,
        shapes: Vec<Shape>,
        unit: Unit,
        newtype: Newtype,
        tuple: Tuple,
        empty: Vec<u8>,
        nested: BTreeMap<String, Vec<Option<i64>>>,
        raw: Box<RawValue>,
        unit_value: (),
        pair: (u64, f32),
    }

    #[test]
    fn values_of_every_shape_are_written_as_serde_json_writes_them() {
        same(&json!({
            "n": [0, -1, 1.5, -0.0, 1e300, 5e-324, u64::MAX, i64::MIN, 0.1],
            "s": "x\"y", "b": [true, false], "null": null, "": {}, "e": [],
            "deep": {"a": [[[{"é\u{1}": {"k": "v"}}]]]}
        }));
        for shape in [
            Shape::Unit,
            Shape::Newtype(7),
            Shape::Tuple(-3, "t\n".into()),
            Shape::Struct {
                a: Some(2.5),
                b: vec![true],
            },
            Shape::Struct { a: None, b: vec![] },
        ] {
            same(&shape);
        }
        let record = Record {
            skipped: None,
            shapes: vec![Shape::Unit, Shape::Newtype(1)],
            unit: Unit,
            newtype: Newtype("new\u{7}type".into()),
            tuple: Tuple(9, '"'),
            empty: vec![],
            nested: BTreeMap::from([
                ("a\\b".to_string(), vec![Some(1), None]),
                (String::new(), vec![]),
            ]),
            raw: RawValue::from_string(r#"{"kept": [1, "as is"] }"#.into()).unwrap(),
            unit_value: (),
            pair: (3, 0.5),
        };
        same(&record);
        same(&[f64::NAN, f64::INFINITY, -f64::INFINITY]);
        same(&'\u{1f}');
        same(&i128::MIN);
        same(&u128::MAX);
    }

    #[test]
    fn a_string_is_what_serde_json_gives() {
        let value = json!({"a": ["é\u{1}", 1.5, null], "b": {"c": "\"d\""}});
        assert_eq!(
            to_string(&value).unwrap(),
            serde_json::to_string(&value).unwrap()
        );
    }

    #[test]
    fn what_is_left_to_serde_json_gives_what_serde_json_gives() {
        // Map keys that are not strings: quoted numbers and booleans, refused others.
        same(&BTreeMap::from([(1, "one"), (-2, "minus two")]));
        same(&BTreeMap::from([(true, 1)]));
        same(&BTreeMap::from([((1, 2), 3)]));
        same(&BTreeMap::from([(Some("k"), 1)]));
        same(&BTreeMap::from([(Newtype("k".into()), 1)]));
        same(&BTreeMap::from([('c', 1)]));
        // Bytes are an array of numbers.
        same(&serde_bytes_like(b"ab\0"));
        // A value whose serialization fails leaves nothing behind.
        same(&Failing);
        same(&vec![json!(1), json!("two")]);
    }

    fn serde_bytes_like(b: &[u8]) -> Bytes<'_> {
        Bytes(b)
    }

    #[derive(Debug)]
    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[derive(Debug)]
    struct Failing;

    impl Serialize for Failing {
        fn serialize<S: ser::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::SerializeSeq;
            let mut seq = s.serialize_seq(None)?;
            seq.serialize_element("written before the failure")?;
            Err(S::Error::custom("this value cannot be written"))
        }
    }
}
