//! The one clock (Unix nanoseconds, as everything in Picket counts time) and its text forms.

use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Now, in Unix nanoseconds.
pub fn now_ns() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}

/// RFC 3339 in UTC as a JSON string (`2026-11-28T10:00:00Z`), or null for a time it cannot
/// show.
pub fn rfc3339(ns: i64) -> Value {
    rfc3339_opt(ns).map_or(Value::Null, Value::String)
}

/// RFC 3339 in UTC, or `?` for a time it cannot show.
pub fn rfc3339_text(ns: i64) -> String {
    rfc3339_opt(ns).unwrap_or_else(|| "?".into())
}

fn rfc3339_opt(ns: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(ns.into())
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
}

/// A time given as RFC 3339 or as Unix seconds, in Unix nanoseconds. Times past what 64 bits of
/// nanoseconds hold (1677-09-21 to 2262-04-11) are taken as those ends: a `since` in the year
/// 9999 means "nothing yet", not a wrap to the past. The error says which forms are understood.
pub fn parse_time(v: &str) -> Result<i64, String> {
    if let Ok(secs) = v.parse::<i64>() {
        return Ok(secs.saturating_mul(1_000_000_000));
    }
    OffsetDateTime::parse(v, &Rfc3339)
        .map(|t| {
            let ns = t.unix_timestamp_nanos();
            i64::try_from(ns).unwrap_or(if ns < 0 { i64::MIN } else { i64::MAX })
        })
        .map_err(|_| format!("`{v}` is neither RFC 3339 (2026-11-28T10:00:00Z) nor Unix seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_and_parse_both_ways() {
        assert_eq!(rfc3339(1_795_860_000_000_000_000), "2026-11-28T10:00:00Z");
        assert_eq!(rfc3339_text(i64::MAX), "2262-04-11T23:47:16.854775807Z");
        assert_eq!(
            parse_time("2026-11-28T10:00:00Z"),
            Ok(1_795_860_000_000_000_000)
        );
        assert_eq!(parse_time("1795860000"), Ok(1_795_860_000_000_000_000));
        assert_eq!(parse_time("99999999999999"), Ok(i64::MAX));
        assert_eq!(parse_time("-99999999999999"), Ok(i64::MIN));
        assert_eq!(
            parse_time("9999-12-31T23:59:59Z"),
            Ok(i64::MAX),
            "no wrap to 1816"
        );
        assert_eq!(parse_time("0001-01-01T00:00:00Z"), Ok(i64::MIN));
        assert!(parse_time("yesterday").is_err());
    }
}
