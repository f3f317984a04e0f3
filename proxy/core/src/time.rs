//! Wall-clock helpers shared by records and policy context.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with millisecond precision, e.g. `2026-11-23T08:00:00.123Z`.
pub fn rfc3339_micros(micros: i64) -> String {
    let nanos = i128::from(micros) * 1000;
    match ::time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        }
        Err(_) => "1970-01-01T00:00:00.000Z".to_string(),
    }
}

/// Parse a point in time given on a command line: RFC 3339 (`2026-11-23T08:00:00Z`,
/// `2026-11-23T09:00:00+01:00`), a UTC date (`2026-11-23`, its midnight), `now`, or a time
/// relative to now (`-24h`, `-30m`, `-7d`, `-90s`). Returns µs since the Unix epoch.
pub fn parse_instant(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if t == "now" {
        return Ok(now_micros());
    }
    if let Some(rel) = t.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num
            .parse()
            .map_err(|_| format!("`{text}`: expected e.g. -24h, -30m, -7d"))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
        };
        return Ok(now_micros().saturating_sub(n.saturating_mul(secs).saturating_mul(1_000_000)));
    }
    let parsed = ::time::OffsetDateTime::parse(t, &::time::format_description::well_known::Rfc3339)
        .or_else(|_| {
            ::time::Date::parse(t, ::time::macros::format_description!("[year]-[month]-[day]"))
                .map(|d| d.midnight().assume_utc())
        })
        .map_err(|_| {
            format!("`{text}` is not an RFC 3339 time (2026-11-23T08:00:00Z), a date, `now` or -24h")
        })?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn instants_parse() {
        assert_eq!(parse_instant("1970-01-01T00:00:01Z").unwrap(), 1_000_000);
        assert_eq!(parse_instant("1970-01-01T01:00:01+01:00").unwrap(), 1_000_000);
        assert_eq!(parse_instant("1970-01-02").unwrap(), 86_400_000_000);
        let now = now_micros();
        let d = parse_instant("-1h").unwrap();
        assert!((now - d - 3_600_000_000).abs() < 5_000_000);
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("-5y").is_err());
    }
}
