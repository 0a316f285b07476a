//! Leaf parsers for single values (targets, hosts, networks, methods,
//! secret files): plain `Result<_, String>`, the caller adds the location.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use ipnet::IpNet;

use crate::config::bounds::{MAX_INFLIGHT, MAX_SECRET_FILE_BYTES, MAX_TOTAL_WEIGHT};
use crate::config::model::{KeyPart, TargetConfig};

/// A secret file's content, its trailing newline (`\n` or `\r\n`) trimmed.
/// The messages name the file, never its content.
pub(crate) fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    let cannot = |err: std::io::Error| format!("cannot read {}: {err}", path.display());
    // A FIFO or a device (`/dev/stdin`) could block the load forever.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(MAX_SECRET_FILE_BYTES + 1)
                .read_to_string(&mut text)
        })
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes; it should hold only the secret",
            path.display()
        ));
    }
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value.to_string())
}

/// A relative `file` is taken from the directory of `config`, and made
/// absolute (against the working directory, without touching the file system)
/// so the path stays the same when the rendered config is read from elsewhere.
pub(crate) fn resolve_path(config: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        return file.to_path_buf();
    }
    let joined = config.parent().unwrap_or(Path::new("")).join(file);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A `targets` entry: "host:port", then space-separated options, each at most
/// once: `weight=N` and `max_inflight=N`, both at least 1.
pub(crate) fn parse_target_spec(s: &str) -> Result<TargetConfig, String> {
    let mut words = s.split_ascii_whitespace();
    let mut target = TargetConfig::new(parse_target(words.next().unwrap_or_default())?);
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "option {word:?} is not NAME=VALUE; expected weight=N or max_inflight=N"
            ));
        };
        if seen.contains(&name) {
            return Err(format!(
                "duplicate option {name:?}: each option may be given once"
            ));
        }
        match name {
            "weight" => {
                target.weight = target_option(name, value, u64::from(MAX_TOTAL_WEIGHT))?;
            }
            "max_inflight" => {
                target.max_inflight = Some(target_option(name, value, MAX_INFLIGHT as u64)?);
            }
            _ => {
                return Err(format!(
                    "unknown option {name:?}: expected weight=N or max_inflight=N"
                ));
            }
        }
        seen.push(name);
    }
    Ok(target)
}

/// The N of a target's `name=N`: a plain decimal number from 1 to `max`.
pub(crate) fn target_option<T: TryFrom<std::num::NonZeroU64>>(
    name: &str,
    value: &str,
    max: u64,
) -> Result<T, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name}={value}: expected a whole number from 1 to {max}"
        ));
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .and_then(std::num::NonZeroU64::new)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{name} must be from 1 to {max}, got {value}"))
}

/// What TLS verifies the targets' certificate against and sends as SNI: a
/// DNS name (lower-cased) or an IP address (IPv6 without brackets).
pub(crate) fn parse_server_name(s: &str) -> Result<String, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if s.starts_with('[') {
        return Err("write an IPv6 address without brackets, e.g. \"::1\"".into());
    }
    if s.contains(':') {
        return Err("must not include a port".into());
    }
    let name = s.to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(
                "each dot-separated label must be 1 to 63 characters (no trailing dot)".into(),
            );
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "invalid character {c:?} (use ASCII/punycode letters, digits, '-'; no wildcards)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with '-'".into());
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not an IP address, and a DNS name cannot end in a numeric label".into());
    }
    Ok(name)
}

/// "host:port" with an explicit, non-zero port and nothing else.
pub(crate) fn parse_target(s: &str) -> Result<Authority, String> {
    let authority: Authority = s
        .parse()
        .map_err(|err| format!("{err}; expected \"host:port\", e.g. \"127.0.0.1:9000\""))?;
    if authority.as_str().contains('@') {
        return Err("must not contain user info ('@')".into());
    }
    if authority.host().is_empty() {
        return Err("missing host; expected \"host:port\"".into());
    }
    match authority.port_u16() {
        None => Err("missing port; expected \"host:port\", e.g. \"127.0.0.1:9000\"".into()),
        Some(0) => Err("port must not be 0".into()),
        Some(_) => Ok(authority),
    }
}

/// An exact host or a leading `*.` wildcard, lower-cased, without a port.
pub(crate) fn parse_host(s: &str) -> Result<String, String> {
    let host = s.to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.is_empty() {
        return Err("empty host".into());
    }
    if bare.starts_with('[') {
        // An IPv6 literal, as it appears in a Host header.
        let ok = bare
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        return match ok && bare.len() == host.len() {
            true => Ok(host),
            false => Err("expected an IPv6 literal like \"[::1]\" (no wildcard, no port)".into()),
        };
    }
    if bare.contains('*') {
        return Err("a wildcard is only allowed as a leading \"*.\"".into());
    }
    if bare.contains(':') {
        return Err("must not include a port (routes match any port)".into());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "invalid character {c:?} (use ASCII/punycode letters, digits, '-')"
            ));
        }
    }
    Ok(host)
}

/// A header name, lower-cased as HTTP/2 and `http::HeaderName` want it.
pub(crate) fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| {
        format!("invalid header name {s:?} (a token such as \"x-api-key\": letters, digits, '-', no spaces)")
    })
}

/// A CIDR ("10.0.0.0/8") or a bare address (one host: /32 or /128).
pub(crate) fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            "expected an address or a CIDR, e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"fd00::/8\""
                .to_string()
        })?,
    };
    if net.trunc() != net {
        return Err(format!(
            "host bits are set after the /{len}; write the network \"{}\" or the single address \"{}/{}\"",
            net.trunc(),
            net.addr(),
            net.max_prefix_len(),
            len = net.prefix_len(),
        ));
    }
    // Peers and forwarded hops are compared in their IPv4 form, so an
    // IPv4-mapped network would never match anything.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return Err(format!(
            "an IPv4-mapped IPv6 network never matches; write it as IPv4: \"{v4}/{}\"",
            v6.prefix_len() - 96
        ));
    }
    Ok(net)
}

/// A key part as it is written in the file.
pub(crate) fn key_part_str(part: &KeyPart) -> String {
    match part {
        KeyPart::ClientIp => "client_ip".to_string(),
        KeyPart::Path => "path".to_string(),
        KeyPart::Header(name) => format!("header:{name}"),
    }
}

/// An HTTP method token, which is case-sensitive: "get" is not GET.
pub(crate) fn parse_method(s: &str) -> Result<http::Method, String> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method {s:?} must be upper case (e.g. {:?})",
            s.to_ascii_uppercase()
        ));
    }
    http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
}

pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    #[test]
    fn target_specs() {
        let spec = |s: &str| parse_target_spec(s).map(|t| t.to_string());
        assert_eq!(spec("a:1").as_deref(), Ok("a:1"));
        assert_eq!(spec("a:1 weight=1").as_deref(), Ok("a:1"));
        assert_eq!(
            spec("a:1 max_inflight=5 weight=3").as_deref(),
            Ok("a:1 weight=3 max_inflight=5")
        );
        assert_eq!(spec(" a:1\tweight=07 ").as_deref(), Ok("a:1 weight=7"));
        let target = parse_target_spec("[::1]:80 weight=10000 max_inflight=1").expect("ok");
        assert_eq!(target.weight.get(), MAX_TOTAL_WEIGHT);
        assert_eq!(target.max_inflight, Some(NonZeroUsize::MIN));
        let target = parse_target_spec("a:1 max_inflight=1048576").expect("ok");
        assert_eq!(
            target.max_inflight.map(NonZeroUsize::get),
            Some(MAX_INFLIGHT)
        );
        for bad in [
            "",
            "weight=1",
            "a:1 weight=0",
            "a:1 weight=00",
            "a:1 weight=+1",
            "a:1 weight=1.5",
            "a:1 weight=4294967296",
            "a:1 max_inflight=0",
            "a:1 max_inflight=99999999999999999999999",
            "a:1 weight=1 weight=1",
            "a:1 Weight=1",
            "a:1 weight",
            "a:1 =1",
            "a:1 a:2",
            "a:0 weight=1",
        ] {
            assert!(parse_target_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn value_parsers() {
        assert!(parse_host("API.Example.com").is_ok_and(|h| h == "api.example.com"));
        assert!(parse_host("*.example.com").is_ok());
        assert!(parse_host("localhost").is_ok());
        assert!(parse_host("10.0.0.1").is_ok());
        assert!(parse_host("[::1]").is_ok());
        for bad in [
            "*", "*.", "**.a", "a*.b", "a..b", "a.", "exa mple", "ü.de", "[::1]:80", "*.[::1]",
            "[zz]",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_target("a:1").is_ok());
        assert!(parse_target("[::1]:80").is_ok());
        for bad in ["a", ":80", "a:0", "a:99999", "a:b", "u@a:1", "", "a:1/x"] {
            assert!(parse_target(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_net("10.1.0.0/16").is_ok_and(|n| n.to_string() == "10.1.0.0/16"));
        assert!(parse_net("10.1.2.3").is_ok_and(|n| n.to_string() == "10.1.2.3/32"));
        assert!(parse_net("::1").is_ok_and(|n| n.to_string() == "::1/128"));
        assert!(parse_net("0.0.0.0/0").is_ok());
        assert!(parse_net("::/0").is_ok());
        assert!(parse_net("::fffe:0:0/95").is_ok());
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "fd00::1/8",
            "10.0.0.0/8 ",
            "::ffff:10.0.0.0/104",
            "10/8",
            "example.com",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} accepted");
        }
        let why = parse_net("10.0.0.1/8").expect_err("host bits");
        assert!(
            why.contains("10.0.0.0/8") && why.contains("10.0.0.1/32"),
            "{why}"
        );
        let why = parse_net("::ffff:10.0.0.0/104").expect_err("mapped");
        assert!(why.contains("10.0.0.0/8"), "{why}");
        assert!(parse_header_name("X-Api-Key").is_ok_and(|n| n.as_str() == "x-api-key"));
        for bad in ["", "a b", "a:b", "é", "a\n"] {
            assert!(parse_header_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_method("PATCH").is_ok());
        for bad in ["", "get", "Get", "GE T", "GET\n"] {
            assert!(parse_method(bad).is_err(), "{bad:?} accepted");
        }
    }
}
