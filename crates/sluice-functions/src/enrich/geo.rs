//! IP geolocation from a MaxMind-format database (GeoIP2 / GeoLite2 City or Country, or any
//! database with the same record shape) and IP anonymisation.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use sluice_event::Enrichment;

use super::{Built, Draft, EnrichConfig, Facts, IpAnonymizationConfig, Step, when};

/// An opened database.
pub(crate) struct Geo {
    reader: maxminddb::Reader<Vec<u8>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Names<'a> {
    #[serde(borrow)]
    en: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Place<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
    #[serde(borrow)]
    names: Names<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Location<'a> {
    latitude: Option<f64>,
    longitude: Option<f64>,
    #[serde(borrow)]
    time_zone: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Postal<'a> {
    #[serde(borrow)]
    code: Option<&'a str>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct City<'a> {
    #[serde(borrow)]
    city: Place<'a>,
    #[serde(borrow)]
    country: Place<'a>,
    #[serde(borrow)]
    subdivisions: Vec<Place<'a>>,
    #[serde(borrow)]
    location: Location<'a>,
    #[serde(borrow)]
    postal: Postal<'a>,
}

impl Geo {
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let reader = maxminddb::Reader::open_readfile(path)
            .map_err(|e| format!("enrich.geo.database {}: {e}", path.display()))?;
        Ok(Self { reader })
    }

    /// Fills the `geo_*` fields for `ip`. An address the database does not cover leaves them
    /// empty; a record that does not decode is an error (a damaged or foreign database).
    pub(crate) fn lookup(&self, ip: IpAddr, out: &mut Enrichment) -> Result<(), String> {
        // An IPv4-mapped address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 peers) is
        // looked up as the IPv4 address it is.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return Ok(());
        }
        let found = self
            .reader
            .lookup(ip)
            .map_err(|e| format!("geo lookup of {ip}: {e}"))?;
        let Some(city) = found
            .decode::<City>()
            .map_err(|e| format!("geo record for {ip} does not decode: {e}"))?
        else {
            return Ok(());
        };
        let s = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
        out.geo_country = s(city.country.iso_code);
        if let Some(sub) = city.subdivisions.first() {
            out.geo_region = s(sub.iso_code);
            out.geo_region_name = s(sub.names.en);
        }
        out.geo_city = s(city.city.names.en);
        out.geo_zipcode = s(city.postal.code);
        out.geo_latitude = city.location.latitude.filter(|l| l.is_finite());
        out.geo_longitude = city.location.longitude.filter(|l| l.is_finite());
        out.geo_timezone = s(city.location.time_zone);
        Ok(())
    }
}

/// `geo`: the `geo_*` fields of the client address.
pub(super) fn build(c: &EnrichConfig) -> Built {
    if !c.geo.enabled {
        return Ok(None);
    }
    let path = c
        .geo
        .database
        .as_ref()
        .ok_or("enrich.geo is enabled but enrich.geo.database is not set")?;
    Ok(Some(Box::new(Geo::open(path)?)))
}

impl Step for Geo {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        match facts.ip {
            Some(ip) => self.lookup(ip, &mut draft.enriched),
            None => Ok(()),
        }
    }
}

pub(super) fn build_anonymization(c: &EnrichConfig) -> Built {
    let a = &c.ip_anonymization;
    if a.enabled && (!(1..=4).contains(&a.ipv4_octets) || !(1..=8).contains(&a.ipv6_segments)) {
        return Err(
            "enrich.ip_anonymization: ipv4_octets must be 1-4 and ipv6_segments 1-8".into(),
        );
    }
    when(a.enabled, || a.clone())
}

/// `ip_anonymization`: the client address with its last parts zeroed, in the context and the
/// `ip` column.
impl Step for IpAnonymizationConfig {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        if let Some(ip) = facts.ip {
            let masked = address_text(anonymize(ip, self.ipv4_octets, self.ipv6_segments));
            draft
                .context
                .insert("ip".into(), Value::String(masked.clone()));
            draft.enriched.ip = Some(masked);
        } else if draft.context.remove("ip").is_some() {
            // Not an address: nothing can be kept safely.
            draft.enriched.ip = None;
        }
        Ok(())
    }
}

/// Zeroes the last `v4_octets` octets of an IPv4 address and the last `v6_segments` 16-bit
/// segments of an IPv6 address (an IPv4-mapped IPv6 address counts as IPv4).
pub(crate) fn anonymize(ip: IpAddr, v4_octets: u8, v6_segments: u8) -> IpAddr {
    let v4 = |a: std::net::Ipv4Addr| {
        let bits = u32::from(v4_octets.min(4)) * 8;
        let mask = u32::MAX.checked_shl(bits).unwrap_or(0);
        std::net::Ipv4Addr::from(u32::from(a) & mask)
    };
    match ip {
        IpAddr::V4(a) => IpAddr::V4(v4(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(m) => IpAddr::V4(v4(m)),
            None => {
                let bits = u32::from(v6_segments.min(8)) * 16;
                let mask = u128::MAX.checked_shl(bits).unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) & mask))
            }
        },
    }
}

/// `ip` as `Display` writes it; an IPv4 address written directly (`Display` formats it into a
/// buffer first, which was most of this step's work).
fn address_text(ip: IpAddr) -> String {
    let IpAddr::V4(a) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in a.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The first address of an `X-Forwarded-For`-style list, parsed; `None` when it is not an
/// address.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    let first = s.split(',').next()?.trim();
    let first = first.trim_start_matches('[');
    let first = match first.split_once(']') {
        Some((a, _)) => a,
        None => first,
    };
    first.parse().ok().or_else(|| {
        // `1.2.3.4:5678`
        first
            .rsplit_once(':')
            .and_then(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        for octet in 0..=255u8 {
            let spread = [octet, 255 - octet, octet / 7, octet.wrapping_mul(31)];
            let a = IpAddr::V4(std::net::Ipv4Addr::from(spread));
            assert_eq!(address_text(a), a.to_string());
        }
        for a in ["::1", "2001:db8::", "::ffff:1.2.3.4", "fe80::1:2"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(address_text(a), a.to_string());
        }
    }

    #[test]
    fn anonymisation_zeroes_the_configured_parts() {
        let a = |s: &str, o, g| anonymize(s.parse().unwrap(), o, g).to_string();
        assert_eq!(a("203.0.113.195", 1, 0), "203.0.113.0");
        assert_eq!(a("203.0.113.195", 2, 0), "203.0.0.0");
        assert_eq!(a("203.0.113.195", 4, 0), "0.0.0.0");
        assert_eq!(a("203.0.113.195", 9, 0), "0.0.0.0");
        assert_eq!(
            a("2001:db8:85a3:8d3:1319:8a2e:370:7348", 0, 3),
            "2001:db8:85a3:8d3:1319::"
        );
        assert_eq!(a("2001:db8:85a3:8d3:1319:8a2e:370:7348", 0, 8), "::");
        assert_eq!(a("::ffff:203.0.113.195", 1, 0), "203.0.113.0");
    }

    #[test]
    fn addresses_parse_from_forwarded_lists_and_ports() {
        let p = |s: &str| parse_ip(s).map(|i| i.to_string());
        assert_eq!(p("203.0.113.7").as_deref(), Some("203.0.113.7"));
        assert_eq!(p("203.0.113.7, 10.0.0.1").as_deref(), Some("203.0.113.7"));
        assert_eq!(p("203.0.113.7:443").as_deref(), Some("203.0.113.7"));
        assert_eq!(p("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(p("2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(p("unknown"), None);
        assert_eq!(p(""), None);
    }
}
