//! Timestamps: decimal seconds (exact), RFC 3339, and JSON numbers.

use std::time::SystemTime;

use super::{NANOS_PER_SEC, clip};

/// Decimal seconds ("12", "1700000000.123456") to nanoseconds, exactly
/// (digits past the ninth decimal are dropped); or an RFC 3339 time
/// ("2026-01-31T12:00:00.250Z").
pub(super) fn parse_timestamp(text: &str) -> Result<u64, String> {
    if let Some(nanos) = parse_decimal_seconds(text) {
        return Ok(nanos);
    }
    if text.len() >= 10 && text.as_bytes()[4] == b'-' {
        let time = humantime::parse_rfc3339_weak(text)
            .map_err(|err| format!("timestamp `{}`: {err}", clip(text)))?;
        let since = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| format!("timestamp `{}` is before 1970", clip(text)))?;
        return u64::try_from(since.as_nanos())
            .map_err(|_| format!("timestamp `{}` is out of range", clip(text)));
    }
    Err(format!(
        "expected a timestamp (seconds, e.g. `12.5`, or RFC 3339), found `{}`",
        clip(text)
    ))
}

pub(super) fn parse_decimal_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos: u64 = 0;
    for (i, b) in fraction.bytes().take(9).enumerate() {
        nanos += u64::from(b - b'0') * 10u64.pow(8 - i as u32);
    }
    secs.checked_mul(NANOS_PER_SEC)?.checked_add(nanos)
}

/// Seconds as a JSON number to nanoseconds. A JSON number is read as an
/// f64, which holds a Unix time only to about 0.2 us: from 10^6 s up the
/// fraction is rounded to the microsecond (so `1769860800.125` is exact),
/// below that to the nanosecond. Give a string for exact nanoseconds.
pub(super) fn float_seconds(secs: f64) -> Result<u64, String> {
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("timestamp {secs} is not a non-negative number"));
    }
    if secs >= 1.8e10 {
        return Err(format!("timestamp {secs} is out of range"));
    }
    let whole = secs.trunc();
    let fraction = secs - whole;
    let fraction_nanos = if secs >= 1e6 {
        (fraction * 1e6).round() as u64 * 1_000
    } else {
        (fraction * 1e9).round() as u64
    };
    Ok(whole as u64 * NANOS_PER_SEC + fraction_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_seconds_are_exact() {
        assert_eq!(parse_timestamp("0"), Ok(0));
        assert_eq!(parse_timestamp("1.5"), Ok(1_500_000_000));
        assert_eq!(parse_timestamp(".25"), Ok(250_000_000));
        assert_eq!(
            parse_timestamp("1700000000.123456789"),
            Ok(1_700_000_000_123_456_789)
        );
        assert!(parse_timestamp("-1").is_err());
        assert!(parse_timestamp("abc").is_err());
        assert!(parse_timestamp("").is_err());
        assert_eq!(parse_timestamp("1970-01-01T00:00:01.5Z"), Ok(1_500_000_000));
    }

    #[test]
    fn float_seconds_keep_what_f64_holds() {
        assert_eq!(
            float_seconds(1_769_860_800.125),
            Ok(1_769_860_800_125_000_000)
        );
        assert_eq!(
            float_seconds(1_769_860_800.123),
            Ok(1_769_860_800_123_000_000)
        );
        assert_eq!(float_seconds(0.1), Ok(100_000_000));
        assert_eq!(float_seconds(2.000_000_001), Ok(2_000_000_001));
        assert!(float_seconds(-1.0).is_err());
        assert!(float_seconds(f64::NAN).is_err());
    }
}
