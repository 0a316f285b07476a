//! NGINX "combined" access logs, with `[time_local]` or with `$msec` as
//! the first field.

use std::borrow::Cow;

use super::time::parse_decimal_seconds;
use super::{Fields, NANOS_PER_SEC, clip};

pub(super) fn looks_like_nginx(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    text.find(" [")
        .is_some_and(|open| text[open..].contains("] \""))
}

/// One NGINX "combined" line, optionally with `$msec` first:
/// `[$msec ]$remote_addr - $remote_user [$time_local] "$request" $status ...`.
/// The key is `$remote_addr`; the time `$msec` when present, else
/// `[time_local]` (whole seconds, spread over the second).
pub(super) fn parse_nginx_line(line: &str) -> Result<Fields<'_>, String> {
    let (first, rest) = line
        .split_once(' ')
        .ok_or("not an NGINX combined log line")?;
    let (msec, rest) = match parse_decimal_seconds(first) {
        Some(nanos) => (Some(nanos), rest.trim_start()),
        None => (None, line),
    };
    let (addr, rest) = rest
        .split_once(' ')
        .ok_or("not an NGINX combined log line: no fields after the address")?;
    let open = rest.find('[').ok_or("no `[time_local]` field")?;
    let close = rest[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or("unterminated `[time_local]` field")?;
    let time_local = &rest[open + 1..close];
    let after = rest[close + 1..].trim_start();
    let request = after
        .strip_prefix('"')
        .and_then(|r| r.split_once('"'))
        .map(|(request, _)| request)
        .ok_or("no quoted request line after `[time_local]`")?;
    let mut parts = request.split(' ');
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) if !m.is_empty() && t.starts_with('/') => (m, t),
        _ => {
            return Err(format!(
                "request line `{}` is not `METHOD /path PROTOCOL`",
                clip(request)
            ));
        }
    };
    let (at, coarse) = match msec {
        Some(nanos) => (nanos, false),
        None => (parse_time_local(time_local)? * NANOS_PER_SEC, true),
    };
    Ok(Fields {
        at,
        coarse,
        path: Cow::Borrowed(target),
        key: Some(Cow::Borrowed(addr.as_bytes())),
        class: None,
        method: Some(Cow::Borrowed(method)),
        host: None,
    })
}

/// `10/Oct/2000:13:55:36 -0700` to seconds since the Unix epoch.
fn parse_time_local(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`[{}]` is not a time like `10/Oct/2000:13:55:36 -0700`",
            clip(text)
        )
    };
    let (datetime, zone) = text.split_once(' ').ok_or_else(bad)?;
    let mut parts = datetime.splitn(4, ':');
    let date = parts.next().ok_or_else(bad)?;
    let hms: Vec<i64> = parts
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [hour, minute, second] = hms[..] else {
        return Err(bad());
    };
    let mut d = date.split('/');
    let (Some(day), Some(month), Some(year), None) = (d.next(), d.next(), d.next(), d.next())
    else {
        return Err(bad());
    };
    let day: i64 = day.parse().map_err(|_| bad())?;
    let year: i64 = year.parse().map_err(|_| bad())?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month).ok_or_else(bad)? as i64 + 1;
    let zone = zone.as_bytes();
    if zone.len() != 5 || !(zone[0] == b'+' || zone[0] == b'-') {
        return Err(bad());
    }
    let zone_digits = std::str::from_utf8(&zone[1..]).map_err(|_| bad())?;
    let zone_num: i64 = zone_digits.parse().map_err(|_| bad())?;
    let offset =
        (zone_num / 100 * 3600 + zone_num % 100 * 60) * if zone[0] == b'-' { -1 } else { 1 };
    if !(1..=31).contains(&day)
        || !(0..24).contains(&hour)
        || !(0..60).contains(&minute)
        || !(0..=60).contains(&second)
    {
        return Err(bad());
    }
    let secs =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).map_err(|_| format!("`[{}]` is before 1970", clip(text)))
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_local_with_zone() {
        // 2000-10-10T20:55:36Z
        assert_eq!(
            parse_time_local("10/Oct/2000:13:55:36 -0700"),
            Ok(971_211_336)
        );
        assert_eq!(parse_time_local("01/Jan/1970:00:00:00 +0000"), Ok(0));
        assert!(parse_time_local("10/Foo/2000:13:55:36 -0700").is_err());
    }

    #[test]
    fn nginx_line_with_and_without_msec() {
        let line = r#"203.0.113.9 - - [10/Oct/2000:13:55:36 -0700] "GET /a/b?x=1 HTTP/1.1" 200 2326 "-" "curl/8""#;
        let f = parse_nginx_line(line).unwrap();
        assert_eq!(f.path, "/a/b?x=1");
        assert_eq!(f.key.as_deref(), Some(&b"203.0.113.9"[..]));
        assert!(f.coarse);
        let line = format!("1700000000.250 {line}");
        let f = parse_nginx_line(&line).unwrap();
        assert_eq!(f.at, 1_700_000_000_250_000_000);
        assert!(!f.coarse);
        assert!(
            parse_nginx_line(r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "-" 400 0 "-" "-""#)
                .is_err()
        );
    }
}
