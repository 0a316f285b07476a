//! A client's request fields as the gateway reads them, whichever protocol
//! carried the request: an HTTP/1 request's [`Fields`] (the head's bytes,
//! each field classified once as it was parsed), or a header map (an
//! HTTP/2 request from hyper, or one sluice made: an async route's
//! delivery, a test's).
//!
//! The gateway reads a field by what it is ([`Kind`]: Host, Connection,
//! X-Request-Id, the forwarding fields) or by a configured name, and gets
//! the same answer from either: it never sees the HTTP/1 wire format.

use http::header::{self, HeaderMap, HeaderName, HeaderValue, ValueIter};

use super::h1::Fields;
pub(crate) use super::h1::fields::Kind;
use super::h1::fields::Values as H1Values;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// A request's fields, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum ClientFields<'a> {
    /// As an HTTP/1 client sent them (the request's header map is empty).
    H1(&'a Fields),
    /// A header map.
    Map(&'a HeaderMap),
}

impl<'a> ClientFields<'a> {
    /// A request's fields: its HTTP/1 [`Fields`] if it came with them
    /// (its map is then empty), else its map.
    pub(crate) fn new(fields: Option<&'a Fields>, headers: &'a HeaderMap) -> ClientFields<'a> {
        match fields {
            Some(fields) => ClientFields::H1(fields),
            None => ClientFields::Map(headers),
        }
    }

    /// The values of the fields of a [`Kind`] sluice reads (not
    /// [`Kind::Other`] or [`Kind::Dropped`], which no name stands for), in
    /// order.
    pub(crate) fn values(self, kind: Kind) -> Values<'a> {
        match self {
            ClientFields::H1(fields) => Values::H1(fields.of_kind(kind)),
            ClientFields::Map(map) => match name_of(kind) {
                Some(name) => Values::Map(map.get_all(name).iter()),
                None => Values::None,
            },
        }
    }

    /// The values of the fields named `name`, in order.
    pub(crate) fn named(self, name: &'a HeaderName) -> Values<'a> {
        match self {
            ClientFields::H1(fields) => Values::H1(fields.named(name.as_str().as_bytes())),
            ClientFields::Map(map) => Values::Map(map.get_all(name).iter()),
        }
    }

    /// Whether a field of the [`Kind`] is there.
    pub(crate) fn has(self, kind: Kind) -> bool {
        match self {
            ClientFields::H1(fields) => fields.has(kind),
            ClientFields::Map(map) => name_of(kind).is_some_and(|name| map.contains_key(name)),
        }
    }

    /// The first value of a [`Kind`], sharing the request's bytes.
    pub(crate) fn first(self, kind: Kind) -> Option<HeaderValue> {
        match self {
            ClientFields::H1(fields) => fields.first(kind),
            ClientFields::Map(map) => map.get(name_of(kind)?).cloned(),
        }
    }

    /// How many fields there are.
    pub(crate) fn len(self) -> usize {
        match self {
            ClientFields::H1(fields) => fields.len(),
            ClientFields::Map(map) => map.len(),
        }
    }
}

/// The header name a [`Kind`] stands for.
fn name_of(kind: Kind) -> Option<HeaderName> {
    Some(match kind {
        Kind::ContentLength => header::CONTENT_LENGTH,
        Kind::Date => header::DATE,
        Kind::Connection => header::CONNECTION,
        Kind::TransferEncoding => header::TRANSFER_ENCODING,
        Kind::Host => header::HOST,
        Kind::Expect => header::EXPECT,
        Kind::Upgrade => header::UPGRADE,
        Kind::Trailer => header::TRAILER,
        Kind::RequestId => X_REQUEST_ID,
        Kind::ForwardedFor => X_FORWARDED_FOR,
        Kind::Forwarded => header::FORWARDED,
        Kind::ForwardedProto => X_FORWARDED_PROTO,
        Kind::ForwardedHost => X_FORWARDED_HOST,
        Kind::Other | Kind::Dropped => return None,
    })
}

/// The values of some fields, in order (either end), as bytes.
#[derive(Debug)]
pub(crate) enum Values<'a> {
    H1(H1Values<'a>),
    Map(ValueIter<'a, HeaderValue>),
    None,
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::H1(values) => values.next(),
            Values::Map(values) => values.next().map(HeaderValue::as_bytes),
            Values::None => None,
        }
    }
}

impl DoubleEndedIterator for Values<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Values::H1(values) => values.next_back(),
            Values::Map(values) => values.next_back().map(HeaderValue::as_bytes),
            Values::None => None,
        }
    }
}

/// A field value as text, if it is visible ASCII (and tabs): what
/// `HeaderValue::to_str` accepts.
pub(crate) fn text(value: &[u8]) -> Option<&str> {
    if value.is_ascii() {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}
