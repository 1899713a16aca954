//! Timestamps: microseconds since the Unix epoch, UTC, everywhere inside the pipeline.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

/// The current time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Parses a tracker timestamp: RFC 3339 / ISO 8601 with an offset (`2026-11-27T10:00:00.123Z`),
/// or a number of milliseconds since the epoch (as JSON number or digit string, which is what
/// Snowplow and many mobile trackers send). Returns microseconds since the epoch.
pub fn parse_timestamp(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(s) => parse_timestamp_str(s),
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .and_then(millis_to_micros),
        _ => None,
    }
}

fn parse_timestamp_str(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().and_then(millis_to_micros);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc).timestamp_micros()).filter(|m| in_range(*m));
    }
    // ISO 8601 without an offset is taken as UTC (common in server-side trackers).
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
        .filter(|m| in_range(*m))
}

fn millis_to_micros(ms: i64) -> Option<i64> {
    ms.checked_mul(1000).filter(|m| in_range(*m))
}

/// When an event happened, with the device clock's skew removed (Segment's rule): `received −
/// (sent − device)`, where `sent` and `device` are both read off the device's clock. Both come
/// from the tracker, so a broken one can push the result out of any calendar (a `device` in 1900
/// sent "in" 9999 lands in year −6074); then the device's own time is kept, which parsing has
/// already bounded to years 1900 ..= 9999.
pub fn skew_corrected(received: i64, sent: i64, device: i64) -> i64 {
    let corrected = received.saturating_sub(sent.saturating_sub(device));
    if in_range(corrected) {
        corrected
    } else {
        device
    }
}

/// Years 1900 ..= 9999: anything outside is a tracker bug, not a time.
fn in_range(micros: i64) -> bool {
    (-2_208_988_800_000_000..=253_402_300_799_000_000).contains(&micros)
}

/// The UTC calendar date of a timestamp, as `YYYY-MM-DD`.
pub fn date_of(micros: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .date_naive()
}

/// RFC 3339 with microseconds and `Z`.
pub fn format_micros(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn skew_correction_never_leaves_the_calendar() {
        let at = |s: &str| parse_timestamp(&json!(s)).unwrap();
        let received = at("2026-12-03T12:00:00Z");
        // Sent 10 s after it happened by the device's clock.
        let sent = at("2027-01-01T00:00:10Z");
        let device = at("2027-01-01T00:00:00Z");
        assert_eq!(
            skew_corrected(received, sent, device),
            received - 10_000_000
        );
        // A device "in" 1900 that says it sent in 9999: the correction would give year -6074.
        let (device, sent) = (at("1900-01-02T00:00:00Z"), at("9999-12-30T00:00:00Z"));
        assert_eq!(skew_corrected(received, sent, device), device);
        let year_1900 = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        assert!(date_of(skew_corrected(received, sent, device)) >= year_1900);
    }

    #[test]
    fn parses_the_forms_trackers_send() {
        let want = 1_764_237_600_123_000; // 2025-11-27T10:00:00.123Z
        assert_eq!(
            parse_timestamp(&json!("2025-11-27T10:00:00.123Z")),
            Some(want)
        );
        assert_eq!(
            parse_timestamp(&json!("2025-11-27T11:00:00.123+01:00")),
            Some(want)
        );
        assert_eq!(
            parse_timestamp(&json!("2025-11-27T10:00:00.123")),
            Some(want)
        );
        assert_eq!(parse_timestamp(&json!(1_764_237_600_123_i64)), Some(want));
        assert_eq!(parse_timestamp(&json!("1764237600123")), Some(want));
        assert_eq!(parse_timestamp(&json!("yesterday")), None);
        assert_eq!(parse_timestamp(&json!(i64::MAX)), None);
        assert_eq!(parse_timestamp(&json!(true)), None);
        assert_eq!(date_of(want).to_string(), "2025-11-27");
        assert_eq!(format_micros(want), "2025-11-27T10:00:00.123000Z");
    }
}
