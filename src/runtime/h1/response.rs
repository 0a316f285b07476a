//! The head of an HTTP/1 response as written to the client, and how its
//! body is framed: `Content-Length` when the length is known, chunked (with
//! trailers) for an HTTP/1.1 client otherwise, and delimited by the close
//! of the connection for an HTTP/1.0 client; no body at all after a `HEAD`
//! request or with a 1xx, 204 or 304 status.
//!
//! Invariant: the head says `Connection: close` whenever the connection
//! closes after this response, and the framing it announces is the one the
//! body is written with.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

use crate::http::h1::body::Encoder;
use crate::http::h1::request::parse_length;

/// What the request decided about its response.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked {
    pub head: bool,
    pub version: Version,
    /// The connection may stay open after this response.
    pub keep_alive: bool,
}

/// How the body of a response goes out.
#[derive(Debug)]
pub(super) enum Framing {
    /// No body is written (whatever the body holds).
    None,
    /// The body, framed by the encoder.
    Body(Encoder),
}

/// Writes the response head into `dst` and says how to frame the body and
/// whether the connection closes afterwards.
pub(super) fn encode_head(
    parts: &mut Parts,
    hint: &SizeHint,
    asked: Asked,
    dst: &mut BytesMut,
) -> (Framing, bool) {
    let status = parts.status;
    let headers = &mut parts.headers;
    let mut close = !asked.keep_alive;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless_status {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(header::CONTENT_LENGTH);
        }
        headers.remove(header::TRANSFER_ENCODING);
        Framing::None
    } else if asked.head {
        // The answer to a HEAD says what a GET would get, as the backend
        // (or the local answer) said it.
        if !headers.contains_key(header::CONTENT_LENGTH)
            && let Some(n) = hint.exact()
            && n > 0
        {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::None
    } else if let Some(n) = hint.exact() {
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        Framing::Body(Encoder::length(n))
    } else if let Some(n) = declared_length(headers) {
        headers.remove(header::TRANSFER_ENCODING);
        Framing::Body(Encoder::length(n))
    } else if asked.version == Version::HTTP_11 {
        headers.remove(header::CONTENT_LENGTH);
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        Framing::Body(Encoder::chunked())
    } else {
        headers.remove(header::CONTENT_LENGTH);
        close = true;
        Framing::Body(Encoder::close_delimited())
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Connection: upgrade stays; the connection is handed on.
    } else if close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if asked.version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    } else {
        headers.remove(header::CONNECTION);
    }
    write_status_line(status, dst);
    if !headers.contains_key(header::DATE) {
        dst.put_slice(b"date: ");
        put_date(dst);
        dst.put_slice(b"\r\n");
    }
    for (name, value) in headers.iter() {
        dst.put_slice(name.as_str().as_bytes());
        dst.put_slice(b": ");
        dst.put_slice(value.as_bytes());
        dst.put_slice(b"\r\n");
    }
    dst.put_slice(b"\r\n");
    (framing, close)
}

/// A refusal written before any request reached the gateway (a head that
/// does not parse, or is too large): no body, and the connection closes.
pub(super) fn encode_refusal(status: StatusCode, dst: &mut BytesMut) {
    write_status_line(status, dst);
    dst.put_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    put_date(dst);
    dst.put_slice(b"\r\n\r\n");
}

/// `100 Continue`, sent when an `Expect: 100-continue` body is first read.
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

fn write_status_line(status: StatusCode, dst: &mut BytesMut) {
    dst.put_slice(b"HTTP/1.1 ");
    dst.put_slice(status.as_str().as_bytes());
    dst.put_u8(b' ');
    dst.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.put_slice(b"\r\n");
}

/// A `Content-Length` the response carries in its headers (a HEAD answer,
/// or a body that does not know its own length).
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_length(value.as_bytes())
}

/// The method a request's response must not carry a body for.
pub(super) fn is_head(method: &Method) -> bool {
    method == Method::HEAD
}

/// The `Date` of this second, formatted once a second per thread.
struct DateCache {
    second: u64,
    text: [u8; 29],
}

thread_local! {
    static DATE: RefCell<DateCache> = const { RefCell::new(DateCache { second: u64::MAX, text: [0; 29] }) };
}

fn put_date(dst: &mut BytesMut) {
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.second != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == cache.text.len() {
                cache.text.copy_from_slice(text.as_bytes());
                cache.second = second;
            } else {
                dst.put_slice(text.as_bytes());
                return;
            }
        }
        dst.put_slice(&cache.text);
    });
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Response;

    use super::*;

    fn encode(response: Response<()>, hint: SizeHint, asked: Asked) -> (String, Framing, bool) {
        let (mut parts, ()) = response.into_parts();
        let mut dst = BytesMut::new();
        let (framing, close) = encode_head(&mut parts, &hint, asked, &mut dst);
        (String::from_utf8(dst.to_vec()).unwrap(), framing, close)
    }

    const GET11: Asked = Asked {
        head: false,
        version: Version::HTTP_11,
        keep_alive: true,
    };

    #[test]
    fn known_lengths_are_declared_and_unknown_ones_chunked_or_closed() {
        let (head, framing, close) = encode(Response::new(()), SizeHint::with_exact(5), GET11);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ndate: "), "{head}");
        assert!(head.contains("content-length: 5\r\n") && head.ends_with("\r\n\r\n"));
        assert!(matches!(framing, Framing::Body(e) if !e.is_chunked()) && !close);

        let (head, framing, close) = encode(Response::new(()), SizeHint::new(), GET11);
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert!(matches!(framing, Framing::Body(e) if e.is_chunked()) && !close);

        let old = Asked {
            version: Version::HTTP_10,
            ..GET11
        };
        let (head, _, close) = encode(Response::new(()), SizeHint::new(), old);
        assert!(head.contains("connection: close\r\n") && close, "{head}");
        let (head, _, close) = encode(Response::new(()), SizeHint::with_exact(0), old);
        assert!(
            head.contains("connection: keep-alive\r\n") && !close,
            "{head}"
        );
        let _ = Bytes::new();
    }

    #[test]
    fn head_answers_and_bodiless_statuses_carry_no_body() {
        let mut response = Response::new(());
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        let head_req = Asked {
            head: true,
            ..GET11
        };
        let (head, framing, _) = encode(response, SizeHint::with_exact(0), head_req);
        assert!(head.contains("content-length: 42\r\n"), "{head}");
        assert!(matches!(framing, Framing::None));
        let mut no_content = Response::new(());
        *no_content.status_mut() = StatusCode::NO_CONTENT;
        let (head, framing, _) = encode(no_content, SizeHint::with_exact(0), GET11);
        assert!(!head.contains("content-length"), "{head}");
        assert!(matches!(framing, Framing::None));
    }

    #[test]
    fn a_refusal_closes() {
        let mut dst = BytesMut::new();
        encode_refusal(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &mut dst);
        let text = String::from_utf8(dst.to_vec()).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("connection: close\r\n"));
    }
}
