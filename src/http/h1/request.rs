//! An HTTP/1 request head, parsed with `httparse` into [`http::request::Parts`]
//! (method, target, version) and [`Fields`] (the head's bytes, each field
//! classified once as it is parsed: no header map is made), and the
//! decisions RFC 9112 makes from it: how the body is framed, whether the
//! connection stays open after the answer, and whether the client waits
//! for `100 Continue`.
//!
//! Invariant: a head either parses into a request whose body framing is
//! unambiguous, or is refused with a 4xx ([`HeadError::status`]) before
//! anything reads it as a request; nothing here allocates more than the head
//! itself (one copy of the head bytes, the target sliced from it) and the
//! index of its fields.
//!
//! Deliberate differences from hyper's HTTP/1 server (the differential test
//! in `tests/it/codec.rs` checks that whatever hyper refuses is refused here,
//! and that these are the only heads hyper takes and sluice refuses):
//! - two `Content-Length` headers are refused even when they agree (hyper
//!   accepts equal copies; both refuse a list such as `1, 1`);
//! - `chunked` named twice in `Transfer-Encoding` is refused (hyper takes
//!   the body as chunked once);
//! - a head over `max_header_bytes` is refused with 431 as soon as the
//!   limit is passed (hyper: once its read buffer is full).
//!
//! `Content-Length` with `Transfer-Encoding` is handled as hyper does: chunked
//! wins, the `Content-Length` header is dropped, and the connection closes
//! after the answer (RFC 9112 §6.1 allows this or a 400), so nothing after
//! the body is read as a request.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, StatusCode, Uri, Version};

use super::fields::{Fields, Kind};

/// The most headers parsed into a stack array; a larger `max_headers`
/// parses into a vector.
const STACK_HEADERS: usize = 128;

/// The longest field name `http`'s `HeaderName` takes: a longer one is
/// refused here, so that a map made from the fields later holds them all.
const MAX_NAME_BYTES: usize = (1 << 16) - 1;

/// The limits a head is parsed under.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// `server.max_header_bytes`: request line and headers together.
    pub max_bytes: usize,
    /// `server.max_headers`.
    pub max_headers: usize,
}

/// How a request's body is delimited (RFC 9112 §6.3). A request is never
/// delimited by the close of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes (more than zero).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head and what it decides.
#[derive(Debug)]
pub struct Head {
    /// Method, target and version; the header map is left empty.
    pub parts: Parts,
    /// The fields as they arrived (a `Content-Length` beside `chunked`
    /// dropped).
    pub fields: Fields,
    /// Bytes of the buffer the head took, its blank line included.
    pub len: usize,
    pub framing: Framing,
    /// The connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1: send `100 Continue` before reading
    /// the body.
    pub expects_continue: bool,
    /// An `Upgrade` request (with `Connection: upgrade`).
    pub upgrade: bool,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Over `max_header_bytes`: 431.
    #[error("request head larger than max_header_bytes")]
    TooLarge,
    /// Over `max_headers`: 431.
    #[error("more headers than max_headers")]
    TooManyHeaders,
    /// Not a valid request head: 400.
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// Framing that could smuggle a request: 400.
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
}

impl HeadError {
    /// The status the client is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Malformed(_) | HeadError::Framing(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete
/// (and still within the limits).
pub fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<Head>, HeadError> {
    // httparse fills only what it parses: nothing to set up per request.
    if limits.max_headers <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        parse_into(buf, limits, &mut headers[..limits.max_headers])
    } else {
        let mut headers = Vec::with_capacity(limits.max_headers);
        headers.resize_with(limits.max_headers, MaybeUninit::uninit);
        parse_into(buf, limits, &mut headers)
    }
}

fn parse_into<'b>(
    buf: &'b [u8],
    limits: HeadLimits,
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<Head>, HeadError> {
    // Leading empty lines before a request line are ignored (RFC 9112 §2.2).
    let skipped = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    let buf = &buf[skipped..];
    let mut req = httparse::Request::new(&mut []);
    let status = req
        .parse_with_uninit_headers(buf, headers)
        .map_err(|err| match err {
            httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
            httparse::Error::Version => HeadError::Malformed("HTTP version"),
            httparse::Error::Token => HeadError::Malformed("method"),
            httparse::Error::HeaderName => HeadError::Malformed("header name"),
            httparse::Error::HeaderValue => HeadError::Malformed("header value"),
            httparse::Error::NewLine => HeadError::Malformed("line ending"),
            httparse::Error::Status => HeadError::Malformed("request line"),
        })?;
    let len = match status {
        httparse::Status::Partial if skipped + buf.len() > limits.max_bytes => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) if len + skipped > limits.max_bytes => {
            return Err(HeadError::TooLarge);
        }
        httparse::Status::Complete(len) => len,
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("request line"));
    };
    let version = match version {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return Err(HeadError::Malformed("HTTP version")),
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    // One copy of the head; the target and every header value are slices of
    // it, so the read buffer is free again as soon as this returns.
    let copy = Bytes::copy_from_slice(&buf[..len]);
    let slice = |part: &[u8]| {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        copy.slice(start..start + part.len())
    };
    let uri = Uri::from_maybe_shared(slice(path.as_bytes()))
        .map_err(|_| HeadError::Malformed("request target"))?;
    if req.headers.iter().any(|h| h.name.len() > MAX_NAME_BYTES) {
        return Err(HeadError::Malformed("header name"));
    }
    // Offsets into the copy, which starts where `buf` does; within the
    // head, so below `max_bytes` (at most 1 MiB): within u32.
    let offset = |part: &[u8]| (part.as_ptr() as usize - buf.as_ptr() as usize) as u32;
    let located = req.headers.iter().map(|h| {
        let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
        [
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        ]
    });
    let fields = Fields::new(copy, located);
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    decide(parts, fields, skipped + len).map(Some)
}

/// The framing, keep-alive, `Expect` and upgrade decisions for a parsed
/// head, each reading only the fields of its [`Kind`] (known at parse).
fn decide(parts: Parts, mut fields: Fields, len: usize) -> Result<Head, HeadError> {
    let chunked = transfer_encoding(&fields, parts.version)?;
    let length = content_length(&fields)?;
    if chunked && length.is_some() {
        // Ignored: it must not reach the backend beside a re-framed body.
        fields.drop_kind(Kind::ContentLength);
    }
    let (framing, smuggling_risk) = match (chunked, length) {
        // Transfer-Encoding wins over Content-Length; what follows the body
        // is not trusted as a request (RFC 9112 §6.1).
        (true, Some(_)) => (Framing::Chunked, true),
        (true, None) => (Framing::Chunked, false),
        (false, Some(0) | None) => (Framing::Empty, false),
        (false, Some(n)) => (Framing::Length(n), false),
    };
    let (close, keep_alive_token, upgrade_token) = connection_tokens(&fields);
    let keep_alive =
        !smuggling_risk && !close && (parts.version == Version::HTTP_11 || keep_alive_token);
    let expects_continue = parts.version == Version::HTTP_11
        && fields.has(Kind::Expect)
        && fields
            .of_kind(Kind::Expect)
            .next()
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let upgrade = upgrade_token && fields.has(Kind::Upgrade);
    Ok(Head {
        parts,
        fields,
        len,
        framing,
        keep_alive,
        expects_continue,
        upgrade,
    })
}

/// Whether the body is chunked. Any `Transfer-Encoding` on HTTP/1.0, or one
/// whose last coding is not `chunked` (or that names `chunked` twice), is
/// refused: its length could not be known.
fn transfer_encoding(fields: &Fields, version: Version) -> Result<bool, HeadError> {
    if !fields.has(Kind::TransferEncoding) {
        return Ok(false);
    }
    if version == Version::HTTP_10 {
        return Err(HeadError::Framing("Transfer-Encoding on HTTP/1.0"));
    }
    let mut last_is_chunked = false;
    let mut chunked_seen = false;
    for value in fields.of_kind(Kind::TransferEncoding) {
        // (Text only, as `HeaderValue::to_str` would have it.)
        if !value.is_ascii() {
            return Err(HeadError::Framing("Transfer-Encoding"));
        }
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.is_empty() {
                continue;
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if last_is_chunked {
                if chunked_seen {
                    return Err(HeadError::Framing("chunked twice"));
                }
                chunked_seen = true;
            }
        }
    }
    if last_is_chunked {
        Ok(true)
    } else {
        Err(HeadError::Framing(
            "Transfer-Encoding not ending in chunked",
        ))
    }
}

/// The declared `Content-Length`: one header, one value, digits only.
fn content_length(fields: &Fields) -> Result<Option<u64>, HeadError> {
    if !fields.has(Kind::ContentLength) {
        return Ok(None);
    }
    let mut values = fields.lengths();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(HeadError::Framing("more than one Content-Length"));
    }
    parse_length(value)
        .map(Some)
        .ok_or(HeadError::Framing("Content-Length"))
}

/// A decimal length: 1 to 19 digits (no sign, no spaces, no overflow).
pub fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// The `Connection` tokens that matter here: `close`, `keep-alive`, `upgrade`.
fn connection_tokens(fields: &Fields) -> (bool, bool, bool) {
    let (mut close, mut keep_alive, mut upgrade) = (false, false, false);
    if !fields.has(Kind::Connection) {
        return (close, keep_alive, upgrade);
    }
    for value in fields.of_kind(Kind::Connection) {
        for token in value.split(|b| *b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            upgrade |= token.eq_ignore_ascii_case(b"upgrade");
        }
    }
    (close, keep_alive, upgrade)
}

/// A whole head parsed with roomy limits (8 KiB, 100 fields), for tests
/// that need a request as an HTTP/1 client's arrives.
#[cfg(test)]
pub(crate) fn complete(raw: &str) -> Head {
    parse(raw.as_bytes(), tests::LIMITS).unwrap().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const LIMITS: HeadLimits = HeadLimits {
        max_bytes: 8192,
        max_headers: 100,
    };

    fn head(raw: &str) -> Result<Option<Head>, HeadError> {
        parse(raw.as_bytes(), LIMITS)
    }

    #[test]
    fn a_simple_get_parses_with_its_length_and_keeps_alive() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET";
        let h = complete(raw);
        assert_eq!(h.len, raw.len() - 3);
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert!(h.parts.headers.is_empty(), "no map is made");
        assert_eq!(h.fields.get_all("x-two").collect::<Vec<_>>(), [b"1", b"2"]);
        let names: Vec<&[u8]> = h.fields.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Host"[..], b"X-Two", b"x-two"], "as sent");
        assert_eq!(h.framing, Framing::Empty);
        assert!(h.keep_alive && !h.expects_continue && !h.upgrade);
    }

    #[test]
    fn incomplete_heads_wait_until_they_pass_the_limit() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let small = HeadLimits {
            max_bytes: 20,
            max_headers: 100,
        };
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: xxxxxxxx", small).unwrap_err(),
            HeadError::TooLarge
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", small).unwrap_err(),
            HeadError::TooLarge
        );
        let few = HeadLimits {
            max_bytes: 8192,
            max_headers: 2,
        };
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n", few).unwrap_err(),
            HeadError::TooManyHeaders
        );
        assert_eq!(HeadError::TooManyHeaders.status().as_u16(), 431);
    }

    #[test]
    fn lengths_and_chunked_frame_the_body_and_ambiguity_is_refused() {
        let framing = |raw: &str| head(raw).map(|h| h.unwrap().framing);
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1, 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: \r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: identity\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(HeadError::Framing(_))),
                "{bad:?}: {:?}",
                head(bad)
            );
        }
        // Both: chunked wins, and the connection closes afterwards.
        let both =
            complete("POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive);
        assert!(
            !both
                .fields
                .kept()
                .any(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
        );
        assert!(!both.fields.has(Kind::ContentLength));
        assert!(both.fields.kept_map().get("content-length").is_none());
        // A Connection naming Content-Length does not hide it from the framing.
        let named =
            complete("POST / HTTP/1.1\r\nConnection: content-length\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(named.framing, Framing::Length(3));
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").keep_alive);
        let up = complete("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        assert!(up.upgrade && up.keep_alive);
        assert!(!complete("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
    }

    #[test]
    fn expect_continue_is_honoured_on_http_1_1_only() {
        assert!(
            complete("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\ncontent-length: 1\r\n\r\n")
                .expects_continue
        );
        assert!(
            !complete("PUT / HTTP/1.0\r\nExpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
                .expects_continue
        );
    }

    #[test]
    fn absolute_targets_and_leading_blank_lines_parse() {
        let raw = "\r\n\r\nGET http://a.example/p?q HTTP/1.1\r\nHost: a.example\r\n\r\n";
        let h = complete(raw);
        assert_eq!(h.parts.uri.host(), Some("a.example"));
        assert_eq!(h.parts.uri.path(), "/p");
        assert_eq!(h.len, raw.len());
    }

    #[test]
    fn fields_are_classified_once_and_those_connection_names_dropped() {
        let h = complete(
            "GET / HTTP/1.1\r\nHOST: a\r\nConnection: keep-alive, X-Named\r\nx-named: 1\r\n\
             Keep-Alive: 5\r\nProxy-Authorization: b\r\nX-Request-Id: r\r\nX-Other: o\r\n\r\n",
        );
        let kinds: Vec<Kind> = h.fields.classified().map(|(_, _, k)| k).collect();
        assert_eq!(
            kinds,
            [
                Kind::Host,
                Kind::Connection,
                Kind::Dropped,
                Kind::Dropped,
                Kind::Dropped,
                Kind::RequestId,
                Kind::Other
            ]
        );
        assert_eq!(h.fields.first(Kind::Host).unwrap(), "a");
        let long = format!(
            "GET / HTTP/1.1\r\n{}: 1\r\n\r\n",
            "n".repeat(MAX_NAME_BYTES + 1)
        );
        let limits = HeadLimits {
            max_bytes: 1 << 20,
            max_headers: 100,
        };
        assert_eq!(
            parse(long.as_bytes(), limits).unwrap_err(),
            HeadError::Malformed("header name")
        );
    }

    #[test]
    fn malformed_heads_are_refused_with_400() {
        for bad in [
            "GET /\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nhost: x\r\n\r\n",
            "GET / HTTP/9.9\r\nhost: x\r\n\r\n",
            "G\x01T / HTTP/1.1\r\nhost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nx-ctl: a\x01b\r\n\r\n",
            "GET / HTTP/1.1\r\nname : 1\r\n\r\n",
            "GET / HTTP/1.1\r\nx: 1\r\n folded\r\n\r\n",
            "GET /\x7f HTTP/1.1\r\n\r\n",
        ] {
            let err = head(bad).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
