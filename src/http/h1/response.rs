//! A backend's HTTP/1.x response head: parsed with `httparse` off the front
//! of the connection's read buffer, and its body's framing decided per
//! RFC 9112 §6.3.
//!
//! Framing, in order: a response to HEAD, a 1xx, 204 or 304 has no body; a
//! Transfer-Encoding ending in `chunked` is chunked; any other
//! Transfer-Encoding is read until the connection closes (and on HTTP/1.0
//! is an error); Content-Length (every value equal, else an error) gives
//! the length; with neither, the body runs to the close. A body read to the
//! close leaves no connection to reuse, and neither does a 101 (the
//! connection then belongs to the new protocol).
//!
//! The rules match hyper's HTTP/1 client (a differential test in
//! tests/it/h1diff.rs holds them together), with one deliberate difference:
//! a head is bounded by [`HeadLimits`] (64 KiB, 100 fields by default).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{StatusCode, Version};

use super::body::Decoder;
use super::fields::{Fields, Kind};

/// Bounds on a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Status line, fields and the empty line, in bytes.
    pub max_head_bytes: usize,
    /// Header fields (at most [`MAX_HEADERS`]).
    pub max_headers: usize,
}

/// The most header fields a head may have, whatever the limits say.
pub const MAX_HEADERS: usize = 100;

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: 64 * 1024,
            max_headers: MAX_HEADERS,
        }
    }
}

/// A response head that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Longer than [`HeadLimits::max_head_bytes`] without ending.
    #[error("response head too large")]
    TooLarge,
    /// More fields than [`HeadLimits::max_headers`].
    #[error("too many header fields in the response head")]
    TooManyHeaders,
    /// Not an HTTP/1.x response head.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// A status code outside 100..=999 that `http` will not take.
    #[error("invalid status code")]
    Status,
    /// Content-Length values that are not digits or that disagree.
    #[error("invalid content-length")]
    ContentLength,
    /// Transfer-Encoding on an HTTP/1.0 response.
    #[error("transfer-encoding on an HTTP/1.0 response")]
    TransferEncodingOnHttp10,
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes.
    Close,
}

impl Framing {
    /// A decoder for the body so framed.
    pub fn decoder(self) -> Decoder {
        match self {
            Framing::Empty => Decoder::empty(),
            Framing::Length(len) => Decoder::length(len),
            Framing::Chunked => Decoder::chunked(),
            Framing::Close => Decoder::close_delimited(),
        }
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The fields as they arrived (no header map is made on the way
    /// through; see [`Fields`]).
    pub fields: Fields,
    pub framing: Framing,
    /// The connection may carry another request once this response's body
    /// has been read to its end.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx other than 101: an interim response, with a final one to
    /// follow on the same request.
    pub fn is_interim(&self) -> bool {
        self.status.is_informational() && self.status != StatusCode::SWITCHING_PROTOCOLS
    }
}

/// Where one field of the head lies in it: name start and end, value start
/// and end (a head is at most `u32::MAX` bytes). Small, so that the table of
/// [`MAX_HEADERS`] of them costs little to set up per response.
#[derive(Clone, Copy, Default)]
struct Field([u32; 4]);

/// What [`locate`] found at the front of the buffer: the head's length,
/// its status code and minor version, and how many of the fields it filled.
struct Located {
    len: usize,
    code: u16,
    minor: u8,
    count: usize,
}

/// Takes one response head off the front of `buf` (`None`: not all of it
/// has arrived). `head_request`: the request was a HEAD, so no body follows
/// whatever the head says.
pub fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    limits: &HeadLimits,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut fields = [Field::default(); MAX_HEADERS];
    let Some(located) = locate(buf, limits, &mut fields)? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(located.code).map_err(|_| HeadError::Status)?;
    let version = if located.minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let head: Bytes = buf.split_to(located.len).freeze();
    let fields = Fields::new(head, fields[..located.count].iter().map(|f| f.0));
    let mut keep_alive = keeps_alive(&fields, version);
    let framing = framing(status, version, &fields, head_request)?;
    if framing == Framing::Close || status == StatusCode::SWITCHING_PROTOCOLS {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        status,
        version,
        fields,
        framing,
        keep_alive,
    }))
}

/// Parses the head at the front of `buf` in place, within `limits`, noting
/// where each field lies in `fields`; takes nothing off the buffer.
#[inline]
fn locate(
    buf: &BytesMut,
    limits: &HeadLimits,
    fields: &mut [Field; MAX_HEADERS],
) -> Result<Option<Located>, HeadError> {
    // httparse fills only what it parses: no need to set up all 100.
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let max_headers = limits.max_headers.clamp(1, MAX_HEADERS);
    let max_head_bytes = limits.max_head_bytes.min(u32::MAX as usize);
    let bytes: &[u8] = buf;
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        &mut storage[..max_headers],
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= max_head_bytes => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(err) => return Err(HeadError::Malformed(err)),
    };
    if len > max_head_bytes {
        return Err(HeadError::TooLarge);
    }
    let start = bytes.as_ptr() as usize;
    // Within the head, so below `max_head_bytes`, so within u32.
    let offset = |part: &[u8]| {
        let at = part.as_ptr() as usize - start;
        [at as u32, (at + part.len()) as u32]
    };
    for (field, parsed) in fields.iter_mut().zip(response.headers.iter()) {
        let [name_start, name_end] = offset(parsed.name.as_bytes());
        let [value_start, value_end] = offset(parsed.value);
        *field = Field([name_start, name_end, value_start, value_end]);
    }
    Ok(Some(Located {
        len,
        code: response.code.unwrap_or_default(),
        minor: response.version.unwrap_or_default(),
        count: response.headers.len(),
    }))
}

/// Whether the Connection fields let the connection be kept alive.
fn keeps_alive(fields: &Fields, version: Version) -> bool {
    let mut keep_alive = version == Version::HTTP_11;
    if !fields.has(Kind::Connection) {
        return keep_alive;
    }
    for value in fields.of_kind(Kind::Connection) {
        // Once a Connection line says close, a later keep-alive does not
        // undo it.
        if has_token(value, "close") {
            return false;
        } else if !keep_alive {
            keep_alive = has_token(value, "keep-alive");
        }
    }
    keep_alive
}

/// The framing of a response's body (RFC 9112 §6.3).
pub fn framing(
    status: StatusCode,
    version: Version,
    fields: &Fields,
    head_request: bool,
) -> Result<Framing, HeadError> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || head_request
    {
        return Ok(Framing::Empty);
    }
    if fields.has(Kind::TransferEncoding)
        && let Some(last) = fields.of_kind(Kind::TransferEncoding).next_back()
    {
        if version == Version::HTTP_10 {
            return Err(HeadError::TransferEncodingOnHttp10);
        }
        return Ok(if ends_in_chunked(last) {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    if fields.has(Kind::ContentLength) {
        return content_length(fields.lengths()).map(Framing::Length);
    }
    Ok(Framing::Close)
}

/// The one length every Content-Length value (comma-separated lists too)
/// agrees on.
pub fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<u64, HeadError> {
    let mut length = None;
    for value in values {
        for part in value.split(|&b| b == b',') {
            let n = digits(part.trim_ascii()).ok_or(HeadError::ContentLength)?;
            if length.is_some_and(|length| length != n) {
                return Err(HeadError::ContentLength);
            }
            length = Some(n);
        }
    }
    // (hyper keeps the two largest values for its own markers.)
    length
        .filter(|&n| n < u64::MAX - 1)
        .ok_or(HeadError::ContentLength)
}

/// A decimal number of digits only (no sign, no space), without overflow.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Whether the last transfer coding of the last Transfer-Encoding line is
/// `chunked`.
fn ends_in_chunked(last: &[u8]) -> bool {
    last.rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether a comma-separated header value holds `token`.
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, head_request: bool) -> Result<Option<ResponseHead>, HeadError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_response(&mut buf, head_request, &HeadLimits::default())
    }

    fn head(text: &str) -> ResponseHead {
        parse(text, false).unwrap().unwrap()
    }

    #[test]
    fn a_head_is_split_off_and_the_body_left() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\nx-a: 2\r\n\r\nok"[..],
        );
        let parsed = parse_response(&mut buf, false, &HeadLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..], b"ok");
        assert_eq!(parsed.status, StatusCode::OK);
        assert_eq!(parsed.version, Version::HTTP_11);
        assert_eq!(parsed.framing, Framing::Length(2));
        assert!(parsed.keep_alive);
        let values: Vec<_> = parsed.fields.get_all("x-a").collect();
        assert_eq!(values, [&b"1"[..], b"2"]);
    }

    #[test]
    fn a_partial_head_waits_at_every_length() {
        let text = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n";
        for at in 0..text.len() {
            let mut buf = BytesMut::from(&text[..at]);
            assert_eq!(
                parse_response(&mut buf, false, &HeadLimits::default())
                    .unwrap()
                    .map(|h| h.status),
                None,
                "{at}"
            );
            assert_eq!(buf.len(), at);
        }
    }

    #[test]
    fn bodiless_statuses_and_head() {
        for status in [
            "100 Continue",
            "103 Early Hints",
            "204 No Content",
            "304 Not Modified",
        ] {
            let parsed = head(&format!(
                "HTTP/1.1 {status}\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
            ));
            assert_eq!(parsed.framing, Framing::Empty, "{status}");
            assert!(parsed.keep_alive);
        }
        let parsed = parse("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.framing, Framing::Empty);
        assert!(head("HTTP/1.1 103 Early Hints\r\n\r\n").is_interim());
        let switching = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert!(!switching.is_interim());
        assert_eq!(switching.framing, Framing::Empty);
        assert!(!switching.keep_alive);
    }

    #[test]
    fn transfer_encoding_framing() {
        let parsed = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(parsed.framing, Framing::Chunked);
        assert!(parsed.keep_alive);
        let parsed = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        assert_eq!(parsed.framing, Framing::Close);
        assert!(!parsed.keep_alive);
        assert_eq!(
            parse(
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .unwrap_err(),
            HeadError::TransferEncodingOnHttp10
        );
    }

    #[test]
    fn content_length_framing() {
        assert_eq!(
            head("HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7, 7\r\n\r\n").framing,
            Framing::Length(7)
        );
        for bad in [
            "5, 6",
            "-1",
            "+5",
            "0x5",
            "",
            "5 5",
            "18446744073709551616",
            "18446744073709551614",
        ] {
            assert_eq!(
                parse(
                    &format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n"),
                    false
                )
                .unwrap_err(),
                HeadError::ContentLength,
                "{bad}"
            );
        }
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false
            )
            .unwrap_err(),
            HeadError::ContentLength
        );
        let close = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(close.framing, Framing::Close);
        assert!(!close.keep_alive);
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        let cl = "Content-Length: 0\r\n";
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{cl}\r\n")).keep_alive);
        assert!(!head(&format!("HTTP/1.1 200 OK\r\n{cl}Connection: close\r\n\r\n")).keep_alive);
        assert!(!head(&format!("HTTP/1.0 200 OK\r\n{cl}\r\n")).keep_alive);
        assert!(
            head(&format!(
                "HTTP/1.0 200 OK\r\n{cl}Connection: Keep-Alive\r\n\r\n"
            ))
            .keep_alive
        );
        assert!(
            !head(&format!(
                "HTTP/1.1 200 OK\r\n{cl}Connection: upgrade, close\r\nConnection: keep-alive\r\n\r\n"
            ))
            .keep_alive
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 20 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: 1\r\n folded\r\n\r\n",
            "HTTP/1.1 200 OK\r\n: x\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, false), Err(HeadError::Malformed(_))),
                "{bad:?}: {:?}",
                parse(bad, false)
            );
        }
    }

    #[test]
    fn heads_are_bounded() {
        let limits = HeadLimits {
            max_head_bytes: 64,
            max_headers: 2,
        };
        let mut long = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        long.extend_from_slice(&[b'a'; 60]);
        assert_eq!(
            parse_response(&mut long, false, &limits).unwrap_err(),
            HeadError::TooLarge
        );
        let mut complete_but_long = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX: "[..]);
        complete_but_long.extend_from_slice(&[b'a'; 60]);
        complete_but_long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_response(&mut complete_but_long, false, &limits).unwrap_err(),
            HeadError::TooLarge
        );
        let mut many = BytesMut::from(&b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"[..]);
        assert_eq!(
            parse_response(&mut many, false, &limits).unwrap_err(),
            HeadError::TooManyHeaders
        );
    }

    #[test]
    fn framing_gives_the_decoder() {
        assert!(Framing::Empty.decoder().is_done());
        assert_eq!(Framing::Length(3).decoder().exact_remaining(), Some(3));
        assert!(Framing::Close.decoder().is_close_delimited());
        assert_eq!(Framing::Chunked.decoder().exact_remaining(), None);
    }
}
