//! Header rewriting between the client and the backend: the request id,
//! the Host check, hop-by-hop headers and the forwarding headers
//! (X-Forwarded-*, Forwarded).
//!
//! Invariant: what reaches the backend carries exactly one sane
//! `X-Request-Id`, no hop-by-hop header (nor any the client's Connection
//! header names, except those sluice owns), and forwarding headers that only
//! a trusted proxy can extend.

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Version};

use crate::http::client_fields::{
    ClientFields, Kind, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use crate::http::h1::Fields;
use crate::http::h1::write::put_field;

/// The request's `X-Request-Id`, for the access log and the backend: the
/// client's when it sent one sane token (see [`is_sane_request_id`]),
/// otherwise one made here, which replaces whatever was sent on the way to
/// the backend ([`Forwarding::request_id`]). Either way the value shares
/// its bytes (a clone is a reference count). The request is not changed.
pub(crate) fn request_id(fields: ClientFields<'_>) -> HeaderValue {
    let mut sent = fields.values(Kind::RequestId);
    if let (Some(id), None) = (sent.next(), sent.next())
        && is_sane_request_id(id)
        && let Some(id) = fields.first(Kind::RequestId)
    {
        return id;
    }
    new_request_id()
}

/// A fresh request id: 32 lower-case hex digits, the process's 64-bit
/// prefix then a counter, cut from this thread's id slab.
fn new_request_id() -> HeaderValue {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // The prefix's 16 digits are written once per process.
    static PROCESS: std::sync::LazyLock<[u8; 16]> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        hex16(nanos ^ (u64::from(std::process::id()) << 32))
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut text = [0u8; 32];
    text[..16].copy_from_slice(&*PROCESS);
    text[16..].copy_from_slice(&hex16(n));
    cut(&ID_SLAB, ID_SLAB_SIZE, |out| {
        out.extend_from_slice(&text);
        Ok(())
    })
    .unwrap_or_else(|| HeaderValue::from_static("-"))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `n` as 16 lower-case hex digits.
fn hex16(n: u64) -> [u8; 16] {
    let mut text = [0u8; 16];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX_DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    text
}

/// How big a thread's slab is, and how little room left in it makes the
/// next value start a fresh one (or, once every value cut from it is gone,
/// the same one from its start).
#[derive(Clone, Copy)]
struct SlabSize {
    bytes: usize,
    low_water: usize,
}

/// X-Forwarded-For and Forwarded: made once the request is admitted, gone
/// once its head is written to the backend.
const TEXT_SLAB_SIZE: SlabSize = SlabSize {
    bytes: 4096,
    low_water: 512,
};

/// Request ids (32 bytes each): made when the request arrives and held
/// while it waits in a queue, so their slab is small — a waiting request
/// keeps at most 512 bytes alive (16 ids), 32 when its neighbours wait too.
const ID_SLAB_SIZE: SlabSize = SlabSize {
    bytes: 512,
    low_water: 32,
};

thread_local! {
    /// The text of the header values sluice makes per request, cut one
    /// after another from slabs of this thread's: each value holds a share
    /// of its slab, and a slab whose values have all been dropped is
    /// written again from its start. So a stream of requests makes its
    /// header values without touching the allocator; a new slab is
    /// allocated only when one runs low while values cut from it are still
    /// held (requests in flight or queued). Two slabs, because the values
    /// live for different times (see [`TEXT_SLAB_SIZE`], [`ID_SLAB_SIZE`]).
    static TEXT_SLAB: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
    static ID_SLAB: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A header value of the text `write` produces, cut from this thread's
/// `slab`; `None` if the text is not a valid header value (or `write`
/// failed).
fn cut(
    slab: &'static std::thread::LocalKey<std::cell::RefCell<BytesMut>>,
    size: SlabSize,
    write: impl FnOnce(&mut BytesMut) -> std::fmt::Result,
) -> Option<HeaderValue> {
    slab.with_borrow_mut(|slab| {
        // Back to the slab's start when no value cut from it is left (an
        // atomic load); a fresh slab when it runs low while some still are.
        if !slab.try_reclaim(size.bytes) && slab.capacity() < size.low_water {
            slab.reserve(size.bytes);
        }
        let written = write(slab);
        let text = slab.split().freeze();
        written.ok()?;
        HeaderValue::from_maybe_shared(text).ok()
    })
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

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and it must
/// be a host with an optional port (no user info, path or spaces). The URI's
/// authority (HTTP/2's `:authority`, or an absolute-form target) follows the
/// same rule, and in HTTP/2 a Host that names another entity makes the
/// request malformed (RFC 9113 §8.3.1).
pub(crate) fn check_host<B>(
    req: &Request<B>,
    fields: ClientFields<'_>,
) -> Result<(), &'static str> {
    let mut hosts = fields.values(Kind::Host);
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
            && first.is_some_and(|host| !host.eq_ignore_ascii_case(authority))
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
        Some(host) if is_host_text(host) => Ok(()),
        Some(_) => Err("invalid Host header\n"),
    }
}

/// RFC 3986 host and port characters only: no user info (`@`), path,
/// query, spaces or controls. Checked in place, one table look-up per
/// byte: this runs per request.
fn is_host_text(host: &[u8]) -> bool {
    !host.is_empty() && host.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// The bytes [`is_host_text`] allows.
static HOST_BYTES: [bool; 256] = alphanumeric_and(b"-._~!$&'()*+,;=:[]%");

/// The bytes of a host `Forwarded` carries unquoted (RFC 7239 §4: a token).
static FORWARDED_HOST_BYTES: [bool; 256] = alphanumeric_and(b"-.:[]");

/// A table of the bytes that are ASCII letters and digits or in `others`.
const fn alphanumeric_and(others: &[u8]) -> [bool; 256] {
    let mut allowed = [false; 256];
    let mut b = 0;
    while b < 256 {
        allowed[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < others.len() {
        allowed[others[i] as usize] = true;
        i += 1;
    }
    allowed
}

/// The host the client asked for: the URI's authority when it has one
/// (HTTP/2, or an absolute-form target, whose Host RFC 9112 §3.2.2 says to
/// ignore), else the Host header. The value shares the request's bytes.
pub(crate) fn request_host<B>(req: &Request<B>, fields: ClientFields<'_>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => fields.first(Kind::Host),
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

/// The index in [`HOP_BY_HOP`] of the header named `name` (lower case, as
/// every `HeaderName` is), if it is one: a `match` on the text, so most
/// names cost one length comparison rather than seven name comparisons.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    match name {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "te" => Some(2),
        "trailer" => Some(3),
        "upgrade" => Some(4),
        "transfer-encoding" => Some(5),
        "http2-settings" => Some(6),
        _ => None,
    }
}

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
        match hop_by_hop_index(name.as_str()) {
            Some(i) => present[i] = true,
            None => proxy_headers |= is_proxy_header(name),
        }
    }
    // Other headers named by Connection (rare): tokens that are not already
    // hop-by-hop, not the `close` option and not a header sluice owns.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        for token in connection_tokens(headers) {
            if !is_known(token)
                && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
            {
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

/// The client's address as text, for X-Forwarded-For and Forwarded, an
/// IPv4 address without the formatting machinery (this runs per request).
fn write_ip(out: &mut BytesMut, ip: std::net::IpAddr, forwarded: bool) -> std::fmt::Result {
    use std::fmt::Write;
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.put_u8(b'.');
                }
                if octet >= 100 {
                    out.put_u8(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.put_u8(b'0' + octet / 10 % 10);
                }
                out.put_u8(b'0' + octet % 10);
            }
            Ok(())
        }
        // Forwarded quotes and brackets an IPv6 node (RFC 7239 §6).
        std::net::IpAddr::V6(v6) if forwarded => write!(out, "\"[{v6}]\""),
        std::net::IpAddr::V6(v6) => write!(out, "{v6}"),
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
    let forwarded_for = cut(&TEXT_SLAB, TEXT_SLAB_SIZE, |text| {
        if peer.trusted {
            append_lines(text, ClientFields::Map(headers).values(Kind::ForwardedFor));
        }
        write_ip(text, peer.ip, false)
    });
    set(headers, X_FORWARDED_FOR, forwarded_for);
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(peer.proto));
    }
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    let forwarded = cut(&TEXT_SLAB, TEXT_SLAB_SIZE, |text| {
        if peer.trusted {
            append_lines(text, ClientFields::Map(headers).values(Kind::Forwarded));
        }
        write_forwarded_element(text, peer, host)
    });
    set(headers, header::FORWARDED, forwarded);
}

/// What sluice changes in a request's head on its way to the backend,
/// decided by the gateway and applied where the head is written: on the
/// HTTP/1.1 path while the client's header lines are copied out
/// ([`Forwarding::write_fields`], one pass, the header map untouched), on
/// the general client's path to the header map ([`Forwarding::apply`]).
/// Both give the backend the same fields.
pub(crate) struct Forwarding {
    pub(crate) peer: Peer,
    /// Sent as the one `X-Request-Id` (see [`request_id`]).
    pub(crate) request_id: HeaderValue,
    /// The host routed on: sent as Host and X-Forwarded-Host (and in
    /// Forwarded).
    pub(crate) host: Option<HeaderValue>,
    /// An Upgrade the route allows: sent as `Upgrade: <protocol>` with
    /// `Connection: upgrade`, after every hop-by-hop field is gone.
    pub(crate) upgrade: Option<HeaderValue>,
    /// The client's fields as they arrived, from an HTTP/1 client (the
    /// request's map is then empty); `None`: the request's map holds them.
    pub(crate) fields: Option<Fields>,
}

impl Forwarding {
    /// The client's fields the rewrite applies to: as they arrived, else
    /// the request's map.
    pub(crate) fn client_fields<'a>(&'a self, headers: &'a HeaderMap) -> ClientFields<'a> {
        ClientFields::new(self.fields.as_ref(), headers)
    }

    /// The rewrite on a header map: hop-by-hop fields gone, the forwarding
    /// fields written, Host set, the upgrade asked for.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        // First, so that nothing the client's Connection names can touch
        // what sluice adds below.
        strip_hop_by_hop(headers);
        write_forwarding_headers(headers, &self.peer, self.host.as_ref());
        headers.insert(X_REQUEST_ID, self.request_id.clone());
        if let Some(host) = &self.host {
            headers.insert(header::HOST, host.clone());
        }
        if let Some(protocol) = &self.upgrade {
            headers.insert(header::UPGRADE, protocol.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }

    /// Writes the client's fields as HTTP/1.1 field lines, as
    /// [`Forwarding::apply`] would have left them, except `Content-Length`
    /// and `Transfer-Encoding` (the body's framing is the writer's). Host
    /// comes first: the one routed on, else the client's, else
    /// `default_host`. The client's lines are copied in their order (from
    /// an HTTP/1 client, as it spelled them); sluice's follow.
    pub(crate) fn write_fields(
        &self,
        fields: ClientFields<'_>,
        default_host: &HeaderValue,
        dst: &mut BytesMut,
    ) {
        let trusted = self.peer.trusted;
        match &self.host {
            Some(host) => put_field(dst, b"host", host.as_bytes()),
            None if fields.has(Kind::Host) => {
                for host in fields.values(Kind::Host) {
                    put_field(dst, b"host", host);
                }
            }
            None => put_field(dst, b"host", default_host.as_bytes()),
        }
        let keep_proto = trusted && fields.has(Kind::ForwardedProto);
        let keep_host = trusted && fields.has(Kind::ForwardedHost);
        match fields {
            ClientFields::H1(fields) => copy_relayed(fields, (keep_proto, keep_host), dst),
            ClientFields::Map(headers) => {
                let named_by_connection = names_a_field(headers);
                for (name, value) in headers {
                    let keep = match Field::of(name.as_str()) {
                        Field::Other => !(named_by_connection && named_by(headers, name)),
                        Field::HopByHop | Field::Host | Field::Proxy | Field::RequestId => false,
                        Field::ForwardedFor | Field::Forwarded => false,
                        Field::ForwardedProto => keep_proto,
                        Field::ForwardedHost => keep_host,
                    };
                    if keep {
                        put_field(dst, name.as_str().as_bytes(), value.as_bytes());
                    }
                }
            }
        }
        put_field(dst, b"x-request-id", self.request_id.as_bytes());
        dst.put_slice(b"x-forwarded-for: ");
        if trusted {
            append_lines(dst, fields.values(Kind::ForwardedFor));
        }
        let _ = write_ip(dst, self.peer.ip, false);
        dst.put_slice(b"\r\n");
        if !keep_proto {
            put_field(dst, b"x-forwarded-proto", self.peer.proto.as_bytes());
        }
        if !keep_host && let Some(host) = &self.host {
            put_field(dst, b"x-forwarded-host", host.as_bytes());
        }
        dst.put_slice(b"forwarded: ");
        if trusted {
            append_lines(dst, fields.values(Kind::Forwarded));
        }
        let _ = write_forwarded_element(dst, &self.peer, self.host.as_ref());
        dst.put_slice(b"\r\n");
        if let Some(protocol) = &self.upgrade {
            put_field(dst, b"upgrade", protocol.as_bytes());
            dst.put_slice(b"connection: upgrade\r\n");
        }
    }
}

/// The end-to-end fields of an HTTP/1 client's request, copied as they
/// came (classified at parse: hop-by-hop fields, `Proxy-*` and those the
/// client's Connection names are already marked dropped), with the client's
/// X-Forwarded-Proto and -Host when they are kept (`keep`).
fn copy_relayed(fields: &Fields, (keep_proto, keep_host): (bool, bool), dst: &mut BytesMut) {
    for (name, value, kind) in fields.classified() {
        let keep = match kind {
            Kind::Other | Kind::Date | Kind::Expect => true,
            Kind::ForwardedProto => keep_proto,
            Kind::ForwardedHost => keep_host,
            // Framing, connection control and what sluice writes itself.
            Kind::ContentLength
            | Kind::Connection
            | Kind::TransferEncoding
            | Kind::Host
            | Kind::Upgrade
            | Kind::Trailer
            | Kind::RequestId
            | Kind::ForwardedFor
            | Kind::Forwarded
            | Kind::Dropped => false,
        };
        if keep {
            put_field(dst, name, value);
        }
    }
}

/// What a request's field name means to the rewrite.
enum Field {
    HopByHop,
    Proxy,
    Host,
    RequestId,
    ForwardedFor,
    Forwarded,
    ForwardedProto,
    ForwardedHost,
    Other,
}

impl Field {
    /// By the name's text (lower case, as every `HeaderName` is).
    fn of(name: &str) -> Field {
        if hop_by_hop_index(name).is_some() || name == "content-length" {
            return Field::HopByHop;
        }
        match name {
            "host" => Field::Host,
            "x-request-id" => Field::RequestId,
            "x-forwarded-for" => Field::ForwardedFor,
            "forwarded" => Field::Forwarded,
            "x-forwarded-proto" => Field::ForwardedProto,
            "x-forwarded-host" => Field::ForwardedHost,
            "proxy" => Field::Proxy,
            _ if name.starts_with("proxy-") => Field::Proxy,
            _ => Field::Other,
        }
    }
}

/// Whether the Connection header names a field that is not hop-by-hop
/// anyway (nor `close`, nor one sluice owns): rare, and then each field is
/// checked against it. The common Connection (`keep-alive` or `close`, one
/// line) names nothing more, and is known without splitting it.
fn names_a_field(headers: &HeaderMap) -> bool {
    let mut lines = headers.get_all(header::CONNECTION).iter();
    match (lines.next(), lines.next()) {
        (None, _) => false,
        (Some(line), None)
            if line.as_bytes().eq_ignore_ascii_case(b"keep-alive")
                || line.as_bytes().eq_ignore_ascii_case(b"close") =>
        {
            false
        }
        _ => connection_tokens(headers).any(|token| !is_known(token)),
    }
}

/// The tokens of every Connection line.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// A Connection token that names no field to remove beyond the hop-by-hop
/// ones: empty, `close`, hop-by-hop, or a field sluice owns.
pub(crate) fn is_known(token: &str) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case("close")
        || HOP_BY_HOP
            .iter()
            .chain(&OWNED)
            .any(|h| h.as_str().eq_ignore_ascii_case(token))
}

/// Whether the Connection header names `name` (as a field to remove).
fn named_by(headers: &HeaderMap, name: &HeaderName) -> bool {
    connection_tokens(headers)
        .any(|token| !is_known(token) && token.eq_ignore_ascii_case(name.as_str()))
}

/// This hop's element of Forwarded: `for=` the client, `proto=`, and
/// `host=` when the host is plain enough to need no quoting.
fn write_forwarded_element(
    text: &mut BytesMut,
    peer: &Peer,
    host: Option<&HeaderValue>,
) -> std::fmt::Result {
    text.extend_from_slice(b"for=");
    write_ip(text, peer.ip, true)?;
    text.extend_from_slice(b";proto=");
    text.extend_from_slice(peer.proto.as_bytes());
    if let Some(host) = host
        && host
            .as_bytes()
            .iter()
            .all(|&b| FORWARDED_HOST_BYTES[usize::from(b)])
    {
        text.extend_from_slice(b";host=");
        text.extend_from_slice(host.as_bytes());
    }
    Ok(())
}

/// Every line of a list header, in order, each followed by ", ".
fn append_lines<'a>(text: &mut BytesMut, lines: impl Iterator<Item = &'a [u8]>) {
    for line in lines {
        let line = line.trim_ascii();
        if !line.is_empty() {
            text.extend_from_slice(line);
            text.extend_from_slice(b", ");
        }
    }
}

/// Replaces every line of `name` with `value`; should the text not have
/// made a valid value, the header is dropped rather than left as the client
/// sent it.
fn set(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    match value {
        Some(value) => {
            headers.insert(name, value);
        }
        None => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests;
