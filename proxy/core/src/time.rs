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
