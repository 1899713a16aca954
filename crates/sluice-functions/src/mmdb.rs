//! A small writer of MaxMind DB files (the `.mmdb` format of GeoIP2 and GeoLite2): for a
//! database of your own networks (offices, data centres) read by the `geo` enricher, and for
//! tests and benchmarks that need a database with known answers.
//!
//! Format (MaxMind DB spec 2.0): a binary search tree over the address bits (IPv6 tree, IPv4
//! under `::/96`; 32-bit records), 16 zero bytes, the data section (typed, self-delimiting
//! values), then `\xAB\xCD\xEFMaxMind.com` and the metadata map.

use std::net::IpAddr;

/// A value of the data section.
#[derive(Clone, Debug)]
pub enum Val {
    /// UTF-8 string.
    Str(String),
    /// IEEE 754 double.
    F64(f64),
    /// Unsigned 16-bit integer.
    U16(u16),
    /// Unsigned 32-bit integer.
    U32(u32),
    /// Unsigned 64-bit integer.
    U64(u64),
    /// Boolean.
    Bool(bool),
    /// Map with string keys.
    Map(Vec<(String, Val)>),
    /// Array.
    Arr(Vec<Val>),
}

/// A map from `(key, value)` pairs.
pub fn map<const N: usize>(pairs: [(&str, Val); N]) -> Val {
    Val::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A string value.
pub fn s(v: &str) -> Val {
    Val::Str(v.to_string())
}

/// A GeoIP2-City record.
pub fn city(
    country: &str,
    region: (&str, &str),
    city_name: &str,
    postal: &str,
    (lat, lon): (f64, f64),
    tz: &str,
) -> Val {
    map([
        ("city", map([("names", map([("en", s(city_name))]))])),
        (
            "country",
            map([
                ("iso_code", s(country)),
                ("names", map([("en", s(country))])),
            ]),
        ),
        (
            "subdivisions",
            Val::Arr(vec![map([
                ("iso_code", s(region.0)),
                ("names", map([("en", s(region.1))])),
            ])]),
        ),
        (
            "location",
            map([
                ("latitude", Val::F64(lat)),
                ("longitude", Val::F64(lon)),
                ("time_zone", s(tz)),
            ]),
        ),
        ("postal", map([("code", s(postal))])),
    ])
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

/// Builds a database from networks and their records.
pub struct Writer {
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
    database_type: String,
}

impl Writer {
    /// An empty database of `database_type` (`GeoIP2-City`).
    pub fn new(database_type: &str) -> Self {
        Self {
            nodes: vec![[Rec::Empty, Rec::Empty]],
            data: Vec::new(),
            database_type: database_type.to_string(),
        }
    }

    /// Maps the network `ip/prefix` to `value`. A network inside one inserted before replaces
    /// that part of it only if inserted later; a network that contains earlier ones replaces
    /// them. `Err` for a prefix longer than the address.
    pub fn insert(&mut self, ip: IpAddr, prefix: u8, value: &Val) -> Result<(), String> {
        let (addr, bits) = match ip {
            IpAddr::V4(a) if prefix <= 32 => (u128::from(u32::from(a)), u32::from(prefix) + 96),
            IpAddr::V6(a) if prefix <= 128 && prefix > 0 => (u128::from(a), u32::from(prefix)),
            _ => return Err(format!("{ip}/{prefix} is not a network")),
        };
        let off = u32::try_from(self.data.len()).map_err(|_| "the data section is full")?;
        encode(value, &mut self.data);
        let mut node = 0usize;
        for i in 0..bits {
            let bit = ((addr >> (127 - i)) & 1) as usize;
            if i == bits - 1 {
                self.nodes[node][bit] = Rec::Data(off);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(j) => j as usize,
                other => {
                    // A wider network's data (or nothing) continues on both sides below.
                    let j = self.nodes.len();
                    self.nodes.push([other, other]);
                    self.nodes[node][bit] = Rec::Node(j as u32);
                    j
                }
            };
        }
        Ok(())
    }

    /// The database file.
    pub fn finish(self) -> Vec<u8> {
        let n = u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        for node in &self.nodes {
            for rec in node {
                let v = match *rec {
                    Rec::Empty => n,
                    Rec::Node(j) => j,
                    Rec::Data(off) => n + 16 + off,
                };
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.extend_from_slice(&[0u8; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let meta = map([
            ("binary_format_major_version", Val::U16(2)),
            ("binary_format_minor_version", Val::U16(0)),
            ("build_epoch", Val::U64(1_764_000_000)),
            ("database_type", Val::Str(self.database_type)),
            ("description", map([("en", s("sluice test database"))])),
            ("ip_version", Val::U16(6)),
            ("languages", Val::Arr(vec![s("en")])),
            ("node_count", Val::U32(n)),
            ("record_size", Val::U16(32)),
        ]);
        encode(&meta, &mut out);
        out
    }
}

fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if ty <= 7 {
        out.push((ty << 5) | bits);
    } else {
        out.push(bits);
        out.push(ty - 7);
    }
    out.extend_from_slice(&extra);
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, ty, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends the encoding of `v`.
pub fn encode(v: &Val, out: &mut Vec<u8>) {
    match v {
        Val::Str(s) => {
            control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Val::F64(f) => {
            control(out, 3, 8);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Val::U16(n) => uint(out, 5, u64::from(*n)),
        Val::U32(n) => uint(out, 6, u64::from(*n)),
        Val::U64(n) => uint(out, 9, *n),
        Val::Bool(b) => control(out, 14, usize::from(*b)),
        Val::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(&Val::Str(k.clone()), out);
                encode(v, out);
            }
        }
        Val::Arr(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(v, out);
            }
        }
    }
}
