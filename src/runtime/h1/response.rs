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
use http::header;
use http::response::Parts;
use http::{Method, StatusCode, Version};
use http_body::SizeHint;

use crate::http::h1::body::Encoder;
use crate::http::h1::fields::{Fields, Kind};
use crate::http::h1::request::parse_length;
use crate::http::h1::write::{decimal, put_field};

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

/// What the head says for one of the fields framing and connection control
/// decide: the response's own line(s), none, or one line of sluice's in
/// their place (where the first of them stood, else at the end), as
/// `HeaderMap::insert` would have put it.
#[derive(Clone, Copy)]
enum Field<'a> {
    Keep,
    Drop,
    Set(&'a [u8]),
}

/// The fields framing and connection control decide, in the order
/// content-length, transfer-encoding, connection.
const DECIDED: [&[u8]; 3] = [b"content-length", b"transfer-encoding", b"connection"];

/// What a response's head says about its body and its connection.
struct Plan<'a> {
    framing: Framing,
    /// The [`DECIDED`] fields.
    fields: [Field<'a>; 3],
    /// The connection closes after this response.
    close: bool,
}

/// Writes the response head into `dst` and says how to frame the body and
/// whether the connection closes afterwards. The response is read, not
/// changed: the framing and connection fields are decided first and written
/// in place as the fields are walked once — a backend's [`Fields`] as they
/// arrived (if some came beside the response), then the header map's.
pub(super) fn encode_head(
    (parts, raw): (&Parts, Option<&Fields>),
    hint: &SizeHint,
    asked: Asked,
    dst: &mut BytesMut,
) -> (Framing, bool) {
    let mut digits = [0u8; 20];
    let plan = plan(parts, raw, hint, asked, &mut digits);
    write_status_line(parts.status, dst);
    if !parts.headers.contains_key(header::DATE) && !raw.is_some_and(Fields::has_date) {
        dst.put_slice(b"date: ");
        put_date(dst);
        dst.put_slice(b"\r\n");
    }
    let mut fields = FieldWriter {
        decided: plan.fields,
        written: [false; 3],
    };
    if let Some(raw) = raw {
        for (name, value, kind) in raw.relayed() {
            let slot = (kind == Kind::ContentLength).then_some(0);
            fields.put(name, value, slot, dst);
        }
    }
    for (name, value) in &parts.headers {
        let slot = if name == header::CONTENT_LENGTH {
            Some(0)
        } else if name == header::TRANSFER_ENCODING {
            Some(1)
        } else if name == header::CONNECTION {
            Some(2)
        } else {
            None
        };
        fields.put(name.as_str().as_bytes(), value.as_bytes(), slot, dst);
    }
    fields.finish(dst);
    dst.put_slice(b"\r\n");
    (plan.framing, plan.close)
}

/// Decides the body's framing and the [`DECIDED`] fields (`digits` holds a
/// length written out).
fn plan<'a>(
    parts: &Parts,
    raw: Option<&Fields>,
    hint: &SizeHint,
    asked: Asked,
    digits: &'a mut [u8; 20],
) -> Plan<'a> {
    let status = parts.status;
    let headers = &parts.headers;
    let mut close = !asked.keep_alive;
    let bodiless_status = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let (framing, length, coding) = if bodiless_status {
        let length = if status == StatusCode::NOT_MODIFIED {
            Field::Keep
        } else {
            Field::Drop
        };
        (Framing::None, length, Field::Drop)
    } else if asked.head {
        // The answer to a HEAD says what a GET would get, as the backend
        // (or the local answer) said it.
        let declared = headers.contains_key(header::CONTENT_LENGTH)
            || raw.is_some_and(|raw| raw.lengths().next().is_some());
        let length = match hint.exact() {
            Some(n) if n > 0 && !declared => Field::Set(decimal(n, digits)),
            _ => Field::Keep,
        };
        (Framing::None, length, Field::Keep)
    } else if let Some(n) = hint.exact() {
        let length = Field::Set(decimal(n, digits));
        (Framing::Body(Encoder::length(n)), length, Field::Drop)
    } else if let Some(n) = declared_length(headers, raw) {
        (Framing::Body(Encoder::length(n)), Field::Keep, Field::Drop)
    } else if asked.version == Version::HTTP_11 {
        let chunked = Framing::Body(Encoder::chunked());
        (chunked, Field::Drop, Field::Set(b"chunked"))
    } else {
        close = true;
        let to_close = Framing::Body(Encoder::close_delimited());
        (to_close, Field::Drop, Field::Keep)
    };
    let connection = if status == StatusCode::SWITCHING_PROTOCOLS {
        // Connection: upgrade stays; the connection is handed on.
        Field::Keep
    } else if close {
        Field::Set(b"close")
    } else if asked.version == Version::HTTP_10 {
        Field::Set(b"keep-alive")
    } else {
        Field::Drop
    };
    Plan {
        framing,
        fields: [length, coding, connection],
        close,
    }
}

/// Writes a response's fields, each [`DECIDED`] one as `decided` says: a
/// `Set` one in place of the first line it replaces, else at the end.
struct FieldWriter<'a> {
    decided: [Field<'a>; 3],
    /// Whether each `Set` field has been written yet.
    written: [bool; 3],
}

impl FieldWriter<'_> {
    /// One field; `slot`: which of the [`DECIDED`] ones it is, if any.
    fn put(&mut self, name: &[u8], value: &[u8], slot: Option<usize>, dst: &mut BytesMut) {
        let Some(slot) = slot else {
            put_field(dst, name, value);
            return;
        };
        match self.decided[slot] {
            Field::Keep => put_field(dst, name, value),
            Field::Drop => {}
            Field::Set(text) => {
                if !std::mem::replace(&mut self.written[slot], true) {
                    put_field(dst, name, text);
                }
            }
        }
    }

    /// The `Set` fields no line of the response stood in for.
    fn finish(self, dst: &mut BytesMut) {
        for (slot, field) in self.decided.into_iter().enumerate() {
            if let Field::Set(text) = field
                && !self.written[slot]
            {
                put_field(dst, DECIDED[slot], text);
            }
        }
    }
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

/// A `Content-Length` the response carries in its fields (a HEAD answer,
/// or a body that does not know its own length): one line, one number.
fn declared_length(headers: &http::HeaderMap, raw: Option<&Fields>) -> Option<u64> {
    let mut values = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .map(|v| v.as_bytes())
        .chain(raw.into_iter().flat_map(Fields::lengths));
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_length(value)
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
    use http::header::HeaderValue;

    use super::*;

    fn encode(response: Response<()>, hint: SizeHint, asked: Asked) -> (String, Framing, bool) {
        let (parts, ()) = response.into_parts();
        let mut dst = BytesMut::new();
        let (framing, close) = encode_head((&parts, None), &hint, asked, &mut dst);
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
