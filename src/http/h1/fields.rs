//! A head's fields kept as they arrived: the head's bytes and where each
//! field lies in them, each field classified once as it is parsed. Both
//! directions use it: a backend's response, and a client's HTTP/1 request.
//!
//! A pass-through message goes from one HTTP/1 connection to the other
//! without an `http::HeaderMap` in between: the map's per-field name
//! lookup, hashing, value validation and inserts cost more than the rest
//! of the head's handling together (~5,000 instructions per head in
//! `bench/profile`). The writers copy the fields they relay straight from
//! these bytes, names as they were spelled. Where a map is needed (an
//! HTTP/2 client, whose connection is hyper's; a `101 Switching
//! Protocols`, which the gateway inspects; a request sent through hyper's
//! client or stored by an async route), [`Fields::restore`],
//! [`Fields::to_header_map`] or [`Fields::kept_map`] makes one.
//!
//! A message carries its [`Fields`] in its extensions, its header map
//! left empty (sluice may add fields of its own to a response's map; they
//! are written after these). The gateway reads a request's fields through
//! [`crate::http::ClientFields`], whichever protocol carried it.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// What a field is, by its name: the fields either direction's framing,
/// keep-alive or forwarding reads, the hop-by-hop ones, and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An end-to-end field sluice has no business with: relayed as it is.
    Other,
    /// `Content-Length`: read for the framing; each writer states its own
    /// length. Never dropped for being named by Connection (the framing
    /// must see it).
    ContentLength,
    /// `Date`: relayed; its presence spares a response's writer its own.
    Date,
    /// `Connection`: hop-by-hop; read for keep-alive and upgrades.
    Connection,
    /// `Transfer-Encoding`: hop-by-hop (each hop frames its own body);
    /// read for the framing.
    TransferEncoding,
    /// `Host`: checked and routed on; the request's writer sends the one
    /// routed on.
    Host,
    /// `Expect`: read for `100-continue`; relayed.
    Expect,
    /// `Upgrade`: hop-by-hop; read for a request's switch of protocol.
    Upgrade,
    /// `Trailer`: relayed on a response (it names the fields the body ends
    /// with, end to end); not on a request, whose body sluice may re-frame.
    Trailer,
    /// `X-Request-Id`: on a request, kept if sane, else replaced.
    RequestId,
    /// `X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`,
    /// `X-Forwarded-Host`: on a request, believed and extended only from a
    /// trusted proxy, else replaced.
    ForwardedFor,
    Forwarded,
    ForwardedProto,
    ForwardedHost,
    /// Other hop-by-hop fields (RFC 9110 §7.6.1: Keep-Alive, TE,
    /// HTTP2-Settings), `Proxy-*`, a field named by the Connection field,
    /// or a request's `Content-Length` beside `chunked` (ignored): never
    /// relayed.
    Dropped,
}

/// One field: where its name and value lie in the head, and its [`Kind`].
#[derive(Debug, Clone, Copy)]
struct Entry {
    name: [u32; 2],
    value: [u32; 2],
    kind: Kind,
}

/// A head's fields, sharing the head's bytes.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    head: Bytes,
    entries: Vec<Entry>,
    /// Which kinds are among the entries (bit `1 << kind`).
    present: u16,
}

impl Fields {
    /// The fields of `head`, each `[name start, name end, value start, value
    /// end]` an offset into it, already checked by `httparse` (names are
    /// tokens; values have no control bytes but tab, which is what `http`'s
    /// types accept too).
    pub(crate) fn new(head: Bytes, located: impl ExactSizeIterator<Item = [u32; 4]>) -> Fields {
        let mut entries = Vec::with_capacity(located.len());
        let mut present = 0u16;
        let mut named = false;
        for [name_start, name_end, value_start, value_end] in located {
            let name = &head[name_start as usize..name_end as usize];
            let value = &head[value_start as usize..value_end as usize];
            let kind = kind_of(name);
            if kind == Kind::Connection {
                named |= !is_plain_connection(value);
            }
            present |= kind.bit();
            entries.push(Entry {
                name: [name_start, name_end],
                value: [value_start, value_end],
                kind,
            });
        }
        let mut fields = Fields {
            head,
            entries,
            present,
        };
        if named {
            fields.drop_named_by_connection();
        }
        fields
    }

    /// Every field, in order: name (as it was spelled) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (self.name(e), self.value(e)))
    }

    /// Every field but the dropped ones (hop-by-hop and `Proxy-*` fields
    /// but Connection, Transfer-Encoding and Upgrade, which are read; those
    /// named by Connection; a request's Content-Length beside `chunked`),
    /// in order.
    pub fn kept(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .filter(|e| e.kind != Kind::Dropped)
            .map(|e| (self.name(e), self.value(e)))
    }

    /// Every field with its [`Kind`], in order.
    pub(crate) fn classified(&self) -> impl Iterator<Item = (&[u8], &[u8], Kind)> {
        self.entries
            .iter()
            .map(|e| (self.name(e), self.value(e), e.kind))
    }

    /// The fields a proxy relays on a response, with their [`Kind`]:
    /// everything but the hop-by-hop ones.
    pub(crate) fn relayed(&self) -> impl Iterator<Item = (&[u8], &[u8], Kind)> {
        self.classified().filter(|(_, _, kind)| kind.is_relayed())
    }

    /// The values of the fields of one [`Kind`], in order.
    pub(crate) fn of_kind(&self, kind: Kind) -> Values<'_> {
        // Most kinds are absent from most heads: no walk for them.
        let entries = if self.has(kind) {
            &self.entries[..]
        } else {
            &[]
        };
        Values {
            head: &self.head,
            entries: entries.iter(),
            want: Want::Kind(kind),
        }
    }

    /// The values of every field named `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.named(name.as_bytes())
    }

    /// [`Fields::get_all`] as a double-ended iterator.
    pub(crate) fn named<'a>(&'a self, name: &'a [u8]) -> Values<'a> {
        Values {
            head: &self.head,
            entries: self.entries.iter(),
            want: Want::Name(name),
        }
    }

    /// Whether a field of this [`Kind`] is among them.
    pub(crate) fn has(&self, kind: Kind) -> bool {
        self.present & kind.bit() != 0
    }

    /// The first value of a [`Kind`], sharing the head's bytes.
    pub(crate) fn first(&self, kind: Kind) -> Option<HeaderValue> {
        if !self.has(kind) {
            return None;
        }
        let entry = self.entries.iter().find(|e| e.kind == kind)?;
        self.shared_value(entry)
    }

    /// Whether a `Date` field is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.has(Kind::Date)
    }

    /// The values of the `Content-Length` fields.
    pub(crate) fn lengths(&self) -> Values<'_> {
        self.of_kind(Kind::ContentLength)
    }

    /// Drops every field of a [`Kind`] (a request's Content-Length beside
    /// `chunked`, which no one may read as its length).
    pub(crate) fn drop_kind(&mut self, kind: Kind) {
        for entry in self.entries.iter_mut().filter(|e| e.kind == kind) {
            entry.kind = Kind::Dropped;
        }
        self.present &= !kind.bit();
        self.present |= Kind::Dropped.bit();
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every field as an `http` header map (values share the head's bytes).
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.entries.len());
        self.append_to(&mut map, |_| true);
        map
    }

    /// The [kept](Fields::kept) fields as an `http` header map: a request
    /// for a connection that takes a map (hyper's client) or for an async
    /// route's record.
    pub fn kept_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.entries.len());
        self.append_to(&mut map, |kind| kind != Kind::Dropped);
        map
    }

    /// Moves the relayed fields of a backend's head that came beside
    /// `response` (if any) into its header map, before those sluice added:
    /// for a connection that writes the map (hyper's HTTP/2).
    pub fn restore<B>(response: &mut http::Response<B>, fields: Option<Fields>) {
        let Some(fields) = fields else {
            return;
        };
        let added = std::mem::replace(
            response.headers_mut(),
            HeaderMap::with_capacity(fields.len()),
        );
        let headers = response.headers_mut();
        fields.append_to(headers, Kind::is_relayed);
        let mut last = None;
        for (name, value) in added {
            // `None`: another value of the name before.
            let Some(name) = name.or_else(|| last.clone()) else {
                continue;
            };
            headers.append(name.clone(), value);
            last = Some(name);
        }
    }

    fn append_to(&self, map: &mut HeaderMap, keep: fn(Kind) -> bool) {
        for entry in self.entries.iter().filter(|e| keep(e.kind)) {
            // httparse checked both as `http` would: neither fails.
            let (Ok(name), Some(value)) = (
                HeaderName::from_bytes(self.name(entry)),
                self.shared_value(entry),
            ) else {
                continue;
            };
            map.append(name, value);
        }
    }

    fn shared_value(&self, entry: &Entry) -> Option<HeaderValue> {
        HeaderValue::from_maybe_shared(
            self.head
                .slice(entry.value[0] as usize..entry.value[1] as usize),
        )
        .ok()
    }

    fn name(&self, entry: &Entry) -> &[u8] {
        &self.head[entry.name[0] as usize..entry.name[1] as usize]
    }

    fn value(&self, entry: &Entry) -> &[u8] {
        &self.head[entry.value[0] as usize..entry.value[1] as usize]
    }

    /// Marks the fields the Connection fields name (RFC 9110 §7.6.1), other
    /// than `close` and the fields sluice owns or reads (see
    /// [`Kind::may_be_named`]): rare, so done in a second pass only when a
    /// Connection field names more than `keep-alive` or `close`.
    fn drop_named_by_connection(&mut self) {
        let mut named: Vec<[u32; 2]> = Vec::new();
        for entry in &self.entries {
            if entry.kind == Kind::Connection {
                let value = self.value(entry);
                let start = entry.value[0];
                let mut at = 0u32;
                for token in value.split(|&b| b == b',') {
                    let len = token.len() as u32;
                    let trimmed = token.trim_ascii();
                    if let Ok(text) = std::str::from_utf8(trimmed)
                        && !crate::http::headers::is_known(text)
                    {
                        let lead = (token.len() - token.trim_ascii_start().len()) as u32;
                        let from = start + at + lead;
                        named.push([from, from + trimmed.len() as u32]);
                    }
                    at += len + 1;
                }
            }
        }
        let head = &self.head;
        let mut present = 0u16;
        for entry in &mut self.entries {
            let name = &head[entry.name[0] as usize..entry.name[1] as usize];
            if entry.kind.may_be_named()
                && named
                    .iter()
                    .any(|&[s, e]| head[s as usize..e as usize].eq_ignore_ascii_case(name))
            {
                entry.kind = Kind::Dropped;
            }
            present |= entry.kind.bit();
        }
        self.present = present;
    }
}

impl Kind {
    /// Whether a proxy passes such a field of a response on.
    pub(crate) fn is_relayed(self) -> bool {
        !matches!(
            self,
            Kind::Connection | Kind::TransferEncoding | Kind::Upgrade | Kind::Dropped
        )
    }

    /// Whether the Connection field may drop such a field by naming it:
    /// an end-to-end field that neither the framing nor sluice's own
    /// forwarding reads. (Names sluice owns are not obeyed at all: see
    /// `headers::is_known`.)
    fn may_be_named(self) -> bool {
        matches!(self, Kind::Other | Kind::Date | Kind::Expect)
    }

    fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// What [`Values`] picks out.
#[derive(Debug, Clone, Copy)]
enum Want<'a> {
    Kind(Kind),
    /// A name, in any case.
    Name(&'a [u8]),
}

/// The values of the fields of one kind or name, in order (either end).
#[derive(Debug, Clone)]
pub(crate) struct Values<'a> {
    head: &'a [u8],
    entries: std::slice::Iter<'a, Entry>,
    want: Want<'a>,
}

impl Want<'_> {
    fn is(self, head: &[u8], entry: &Entry) -> bool {
        match self {
            Want::Kind(kind) => entry.kind == kind,
            Want::Name(name) => {
                head[entry.name[0] as usize..entry.name[1] as usize].eq_ignore_ascii_case(name)
            }
        }
    }
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let (head, want) = (self.head, self.want);
        let entry = self.entries.find(|entry| want.is(head, entry))?;
        Some(&head[entry.value[0] as usize..entry.value[1] as usize])
    }
}

impl DoubleEndedIterator for Values<'_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        let (head, want) = (self.head, self.want);
        let entry = self.entries.rfind(|entry| want.is(head, entry))?;
        Some(&head[entry.value[0] as usize..entry.value[1] as usize])
    }
}

/// A Connection value that names no field: `keep-alive` or `close`.
fn is_plain_connection(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// A field's [`Kind`] by its name, in any case: one length comparison for
/// most names.
fn kind_of(name: &[u8]) -> Kind {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    let dropped = match name.len() {
        2 => is(b"te"),
        4 if is(b"date") => return Kind::Date,
        4 if is(b"host") => return Kind::Host,
        5 => is(b"proxy"),
        6 if is(b"expect") => return Kind::Expect,
        7 if is(b"upgrade") => return Kind::Upgrade,
        7 if is(b"trailer") => return Kind::Trailer,
        9 if is(b"forwarded") => return Kind::Forwarded,
        10 if is(b"connection") => return Kind::Connection,
        10 => is(b"keep-alive"),
        12 if is(b"x-request-id") => return Kind::RequestId,
        14 if is(b"content-length") => return Kind::ContentLength,
        14 => is(b"http2-settings"),
        15 if is(b"x-forwarded-for") => return Kind::ForwardedFor,
        16 if is(b"x-forwarded-host") => return Kind::ForwardedHost,
        17 if is(b"transfer-encoding") => return Kind::TransferEncoding,
        17 if is(b"x-forwarded-proto") => return Kind::ForwardedProto,
        _ => false,
    };
    if dropped || (name.len() > 6 && name[..6].eq_ignore_ascii_case(b"proxy-")) {
        Kind::Dropped
    } else {
        Kind::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of `text` (`name: value` lines), located by hand.
    fn fields(text: &str) -> Fields {
        let head = Bytes::copy_from_slice(text.as_bytes());
        let mut located = Vec::new();
        let mut at = 0;
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let colon = line.find(':').unwrap();
            let value = line[colon + 1..].trim_start();
            let value_at = at + line.len() - value.len();
            located.push([
                at as u32,
                (at + colon) as u32,
                value_at as u32,
                (value_at + value.len()) as u32,
            ]);
            at += line.len() + 2;
        }
        Fields::new(head, located.into_iter())
    }

    fn relayed(fields: &Fields) -> Vec<(String, String)> {
        fields
            .relayed()
            .map(|(n, v, _)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_and_proxy_fields_are_not_relayed_and_trailer_is() {
        let f = fields(
            "Server: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Upgrade: h2c\r\nTransfer-Encoding: chunked\r\nProxy-Authenticate: Basic\r\n\
             Proxy: evil\r\nTrailer: Expires\r\nProxyish: kept\r\nContent-Length: 5\r\nDate: d\r\n",
        );
        assert_eq!(
            relayed(&f),
            [
                ("Server".into(), "x".into()),
                ("Trailer".into(), "Expires".into()),
                ("Proxyish".into(), "kept".into()),
                ("Content-Length".into(), "5".into()),
                ("Date".into(), "d".into()),
            ]
        );
        let kinds: Vec<Kind> = f.relayed().map(|(_, _, k)| k).collect();
        assert_eq!(
            kinds,
            [
                Kind::Other,
                Kind::Trailer,
                Kind::Other,
                Kind::ContentLength,
                Kind::Date
            ]
        );
        assert_eq!(f.len(), 12);
    }

    #[test]
    fn fields_named_by_connection_are_dropped_but_not_owned_ones() {
        let f = fields(
            "Connection: close, X-Secret , x-request-id\r\nx-secret: 1\r\nX-Request-Id: r\r\nX-Other: 2\r\n",
        );
        assert_eq!(
            relayed(&f),
            [
                ("X-Request-Id".into(), "r".into()),
                ("X-Other".into(), "2".into())
            ]
        );
    }

    #[test]
    fn every_known_name_is_classified_in_any_case() {
        let known = [
            ("te", Kind::Dropped),
            ("date", Kind::Date),
            ("host", Kind::Host),
            ("proxy", Kind::Dropped),
            ("expect", Kind::Expect),
            ("upgrade", Kind::Upgrade),
            ("trailer", Kind::Trailer),
            ("forwarded", Kind::Forwarded),
            ("connection", Kind::Connection),
            ("keep-alive", Kind::Dropped),
            ("x-request-id", Kind::RequestId),
            ("content-length", Kind::ContentLength),
            ("http2-settings", Kind::Dropped),
            ("x-forwarded-for", Kind::ForwardedFor),
            ("x-forwarded-host", Kind::ForwardedHost),
            ("transfer-encoding", Kind::TransferEncoding),
            ("x-forwarded-proto", Kind::ForwardedProto),
            ("proxy-authorization", Kind::Dropped),
            ("proxy-x", Kind::Dropped),
        ];
        for (name, kind) in known {
            assert_eq!(kind_of(name.as_bytes()), kind, "{name}");
            assert_eq!(
                kind_of(name.to_ascii_uppercase().as_bytes()),
                kind,
                "{name}"
            );
        }
        for other in [
            "",
            "t",
            "ta",
            "dote",
            "hosts",
            "proxy_",
            "proxyx",
            "x-forwarded-fox",
            "@onnection",
            "etag",
        ] {
            assert_eq!(kind_of(other.as_bytes()), Kind::Other, "{other}");
        }
    }

    #[test]
    fn connection_cannot_hide_what_the_framing_or_sluice_reads() {
        let f = fields(
            "Connection: Content-Length, host, date, expect, x-a\r\nContent-Length: 2\r\n\
             Host: h\r\nDate: d\r\nExpect: e\r\nX-A: a\r\n",
        );
        assert_eq!(f.lengths().collect::<Vec<_>>(), [b"2"]);
        assert_eq!(f.first(Kind::Host).unwrap(), "h");
        assert!(f.has(Kind::ContentLength) && !f.has(Kind::Date) && !f.has(Kind::Expect));
        let kept: Vec<&[u8]> = f.kept().map(|(n, _)| n).collect();
        assert_eq!(kept, [&b"Connection"[..], b"Content-Length", b"Host"]);
        assert_eq!(f.of_kind(Kind::Host).next_back(), Some(&b"h"[..]));
    }

    #[test]
    fn a_map_is_made_on_demand_and_restore_keeps_sluices_fields_after() {
        let f = fields("Server: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nConnection: close\r\n");
        let map = f.to_header_map();
        assert_eq!(map.len(), 4);
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        let got: Vec<&[u8]> = f.get_all("SET-COOKIE").collect();
        assert_eq!(got, [&b"a=1"[..], b"b=2"]);

        let mut response = http::Response::new(());
        response
            .headers_mut()
            .append("x-mine", HeaderValue::from_static("1"));
        response
            .headers_mut()
            .append("x-mine", HeaderValue::from_static("2"));
        Fields::restore(&mut response, Some(f));
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "set-cookie", "x-mine"]);
        assert_eq!(response.headers().get_all("x-mine").iter().count(), 2);
        assert!(!response.headers().contains_key("connection"));
    }
}
