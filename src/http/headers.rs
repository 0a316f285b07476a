//! Header rewriting between the client and the backend: the request id,
//! the Host check, hop-by-hop headers and the forwarding headers
//! (X-Forwarded-*, Forwarded).
//!
//! Invariant: what reaches the backend carries exactly one sane
//! `X-Request-Id`, no hop-by-hop header (nor any the client's Connection
//! header names, except those sluice owns), and forwarding headers that only
//! a trusted proxy can extend.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

/// Makes sure the request carries one `X-Request-Id` and returns it, for the
/// access log and the backend. The client's is kept when it is one sane
/// token (see [`is_sane_request_id`]); otherwise one is made here and
/// replaces whatever was sent.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(id), None) = (sent.next(), sent.next())
        && is_sane_request_id(id.as_bytes())
    {
        return id.clone();
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 32 lower-case hex digits: the process's 64-bit prefix, then the counter.
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        let word = if i < 16 { *PROCESS } else { n };
        let nibble = (word >> (60 - 4 * (i % 16))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    let id = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// The longest client request id kept; a UUID is 36 bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// A request id worth keeping: 1 to 128 bytes of letters, digits and
/// `-_.:+/=@`, which covers UUIDs, ULIDs, hex and base64 ids and cannot
/// break a log line or smuggle anything to the backend.
fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and it must
/// be a host with an optional port (no user info, path or spaces). The URI's
/// authority (HTTP/2's `:authority`, or an absolute-form target) follows the
/// same rule, and in HTTP/2 a Host that names another entity makes the
/// request malformed (RFC 9113 §8.3.1).
pub(crate) fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    if let Some(authority) = authority {
        if !is_host_text(authority) {
            return Err("invalid authority\n");
        }
        if req.version() == Version::HTTP_2
            && first.is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(authority))
        {
            return Err("Host disagrees with :authority\n");
        }
    }
    match first {
        None if authority.is_none()
            && matches!(req.version(), Version::HTTP_11 | Version::HTTP_2) =>
        {
            Err("missing Host header\n")
        }
        None => Ok(()),
        Some(host) if is_host_text(host.as_bytes()) => Ok(()),
        Some(_) => Err("invalid Host header\n"),
    }
}

/// RFC 3986 host and port characters only: no user info (`@`), path,
/// query, spaces or controls. Checked in place: this runs per request.
fn is_host_text(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// The host the client asked for: the URI's authority when it has one
/// (HTTP/2, or an absolute-form target, whose Host RFC 9112 §3.2.2 says to
/// ignore), else the Host header. A header value clone shares the request's
/// bytes.
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Headers that describe one connection, never the message: RFC 9110 §7.6.1.
/// Every `Proxy-*` header is dropped too (credentials for this hop, and the
/// `Proxy` header of the "httpoxy" attack), as is Transfer-Encoding: framing
/// is each connection's own, and hyper re-frames the body.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    // RFC 9113 §3.2.1 (h2c's upgrade): settings for this connection only.
    HeaderName::from_static("http2-settings"),
];

/// Headers sluice writes (or checks) itself: a Connection header naming one
/// is not obeyed, so a client cannot strip them on the way to the backend.
static OWNED: [HeaderName; 6] = [
    header::HOST,
    header::FORWARDED,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

fn is_proxy_header(name: &HeaderName) -> bool {
    let text = name.as_str();
    text == "proxy" || text.starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those the Connection header names.
/// This runs twice per request, so the common case (a `Connection:
/// keep-alive` and nothing else) costs one pass over the names and no
/// allocation.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut proxy_headers = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|h| h == name) {
            Some(i) => present[i] = true,
            None => proxy_headers |= is_proxy_header(name),
        }
    }
    // Other headers named by Connection (rare): tokens that are not already
    // hop-by-hop, not the `close` option and not a header sluice owns.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            let known = token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .chain(&OWNED)
                    .any(|h| h.as_str().eq_ignore_ascii_case(token));
            if !known && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    if proxy_headers {
        named.extend(headers.keys().filter(|n| is_proxy_header(n)).cloned());
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// The client's address as text, for X-Forwarded-For and Forwarded, without
/// the formatting machinery (this runs once per request).
fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr, forwarded: bool) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Forwarded quotes and brackets an IPv6 node (RFC 7239 §6).
        std::net::IpAddr::V6(v6) if forwarded => out.extend(format!("\"[{v6}]\"").as_bytes()),
        std::net::IpAddr::V6(v6) => out.extend(v6.to_string().as_bytes()),
    }
}

/// The connection a request came in on, as the forwarding headers tell it.
pub(crate) struct Peer {
    pub(crate) ip: std::net::IpAddr,
    pub(crate) proto: &'static str,
    /// Whether the peer is in `server.trusted_proxies`.
    pub(crate) trusted: bool,
}

/// X-Forwarded-For / -Proto / -Host and Forwarded. From a trusted proxy,
/// its chain is kept (every header line, in order) and this hop appended;
/// its -Proto and -Host, which describe the client's original request, are
/// kept. From anyone else, whatever they sent is replaced: the chain starts
/// here.
pub(crate) fn write_forwarding_headers(
    headers: &mut HeaderMap,
    peer: &Peer,
    host: Option<&HeaderValue>,
) {
    let mut text = Vec::with_capacity(64);
    if peer.trusted {
        append_lines(&mut text, headers, &X_FORWARDED_FOR);
    }
    write_ip(&mut text, peer.ip, false);
    insert_text(headers, X_FORWARDED_FOR, &text);
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(peer.proto));
    }
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    text.clear();
    if peer.trusted {
        append_lines(&mut text, headers, &header::FORWARDED);
    }
    text.extend_from_slice(b"for=");
    write_ip(&mut text, peer.ip, true);
    text.extend_from_slice(b";proto=");
    text.extend_from_slice(peer.proto.as_bytes());
    if let Some(host) = host
        && host
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(b))
    {
        text.extend_from_slice(b";host=");
        text.extend_from_slice(host.as_bytes());
    }
    insert_text(headers, header::FORWARDED, &text);
}

/// Every line of a list header, in order, each followed by ", ".
fn append_lines(text: &mut Vec<u8>, headers: &HeaderMap, name: &HeaderName) {
    for line in headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            text.extend_from_slice(line);
            text.extend_from_slice(b", ");
        }
    }
}

/// Replaces every line of `name` with `text`; should `text` not be a valid
/// value, the header is dropped rather than left as the client sent it.
fn insert_text(headers: &mut HeaderMap, name: HeaderName, text: &[u8]) {
    match HeaderValue::from_bytes(text) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert("proxy", HeaderValue::from_static("http://evil:8080"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("proxyish", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["proxyish", "x-kept"]);
    }

    #[test]
    fn connection_cannot_name_the_headers_sluice_owns() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Request-Id, host, forwarded, x-forwarded-for, x-other"),
        );
        for name in [
            "x-request-id",
            "host",
            "forwarded",
            "x-forwarded-for",
            "x-other",
        ] {
            headers.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["forwarded", "host", "x-forwarded-for", "x-request-id"]
        );
    }

    #[test]
    fn a_request_id_is_kept_only_when_sane() {
        for sane in [
            "abc-123",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "a:b.c_d+e/f=@",
        ] {
            assert!(is_sane_request_id(sane.as_bytes()), "{sane}");
        }
        let long = "a".repeat(MAX_REQUEST_ID_BYTES + 1);
        for insane in ["", "a b", "a\"b", "<script>", "a,b", long.as_str()] {
            assert!(!is_sane_request_id(insane.as_bytes()), "{insane}");
        }
        let mut headers = HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = ensure_request_id(&mut headers);
        assert_eq!(id.len(), 32);
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let h2 = |uri: &str, host: Option<&str>| {
            let mut req = Request::get(uri).version(Version::HTTP_2);
            if let Some(host) = host {
                req = req.header(header::HOST, host);
            }
            check_host(&req.body(()).unwrap())
        };
        assert!(h2("http://a.example/x", None).is_ok());
        assert!(h2("http://a.example/x", Some("A.EXAMPLE")).is_ok());
        assert!(h2("http://a.example/x", Some("b.example")).is_err());
        assert!(h2("http://a.example:8080/x", Some("a.example")).is_err());
        assert!(h2("http://u:p@a.example/x", None).is_err());
        assert!(h2("/x", None).is_err(), "neither :authority nor Host");
        assert!(h2("/x", Some("a.example")).is_ok());
    }

    #[test]
    fn a_plain_keep_alive_message_keeps_everything_else() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert(header::DATE, HeaderValue::from_static("today"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        assert!(!headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn forwarding_headers_are_added_without_formatting_surprises() {
        let mut text = Vec::new();
        write_ip(&mut text, "10.0.255.7".parse().unwrap(), true);
        assert_eq!(text, b"10.0.255.7");
        text.clear();
        write_ip(&mut text, "2001:db8::1".parse().unwrap(), true);
        assert_eq!(text, b"\"[2001:db8::1]\"");
        text.clear();
        write_ip(&mut text, "2001:db8::1".parse().unwrap(), false);
        assert_eq!(text, b"2001:db8::1");
        let mut ids = HeaderMap::new();
        let id = ensure_request_id(&mut ids);
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(ensure_request_id(&mut ids), id, "an id once made is kept");
    }
}
