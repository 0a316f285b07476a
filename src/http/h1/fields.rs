//! A backend's response fields kept as they arrived: the head's bytes and
//! where each field lies in them, each field classified once as it is
//! parsed.
//!
//! A pass-through response goes from the backend's HTTP/1 connection to the
//! client's HTTP/1 connection without an `http::HeaderMap` in between: the
//! map's per-field name lookup, hashing, value validation and inserts cost
//! more than the rest of the head's handling together (~5,000 instructions
//! per response in `bench/profile`). The client's writer copies the fields
//! it relays straight from these bytes. Where a map is needed (an HTTP/2
//! client, whose connection is hyper's; a `101 Switching Protocols`, which
//! the gateway inspects), [`Fields::restore`] or [`Fields::to_header_map`]
//! makes one.
//!
//! A response carries its [`Fields`] in its extensions, its header map
//! left empty (sluice may add fields of its own to the map; they are
//! written after these).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// What a field is to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An end-to-end field: relayed as it is.
    Other,
    /// `Content-Length`: relayed unless the writer decides the length itself.
    ContentLength,
    /// `Date`: relayed; its presence spares the writer its own.
    Date,
    /// `Connection`: not relayed (hop-by-hop); read for keep-alive.
    Connection,
    /// `Transfer-Encoding`: not relayed (each hop frames its own body);
    /// read for the framing.
    TransferEncoding,
    /// Other hop-by-hop fields (RFC 9110 §7.6.1: Connection, Keep-Alive, TE, Upgrade,
    /// Transfer-Encoding, HTTP2-Settings), `Proxy-*`, or named by the
    /// Connection field: never relayed. (`Trailer` is relayed: it names the
    /// fields the body ends with, end to end.)
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
}

impl Fields {
    /// The fields of `head`, each `[name start, name end, value start, value
    /// end]` an offset into it, already checked by `httparse` (names are
    /// tokens; values have no control bytes but tab, which is what `http`'s
    /// types accept too).
    pub(crate) fn new(head: Bytes, located: impl ExactSizeIterator<Item = [u32; 4]>) -> Fields {
        let mut entries = Vec::with_capacity(located.len());
        let mut named = false;
        for [name_start, name_end, value_start, value_end] in located {
            let name = &head[name_start as usize..name_end as usize];
            let value = &head[value_start as usize..value_end as usize];
            let kind = kind_of(name);
            if kind == Kind::Connection {
                named |= !is_plain_connection(value);
            }
            entries.push(Entry {
                name: [name_start, name_end],
                value: [value_start, value_end],
                kind,
            });
        }
        let mut fields = Fields { head, entries };
        if named {
            fields.drop_named_by_connection();
        }
        fields
    }

    /// Every field, in order: name (as the backend wrote it) and value.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().map(|e| (self.name(e), self.value(e)))
    }

    /// The fields a proxy relays, with their [`Kind`]: everything but the
    /// dropped ones.
    pub(crate) fn relayed(&self) -> impl Iterator<Item = (&[u8], &[u8], Kind)> {
        self.entries
            .iter()
            .filter(|e| e.kind.is_relayed())
            .map(|e| (self.name(e), self.value(e), e.kind))
    }

    /// The values of the fields of one [`Kind`], in order.
    pub(crate) fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &[u8]> {
        self.entries
            .iter()
            .filter(move |e| e.kind == kind)
            .map(|e| self.value(e))
    }

    /// The values of every field named `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Whether a `Date` field is among them.
    pub(crate) fn has_date(&self) -> bool {
        self.entries.iter().any(|e| e.kind == Kind::Date)
    }

    /// The values of the `Content-Length` fields.
    pub(crate) fn lengths(&self) -> impl Iterator<Item = &[u8]> {
        self.of_kind(Kind::ContentLength)
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

    /// Moves the relayed fields of a response's [`Fields`] (if it carries
    /// any) into its header map, before those sluice added: for a
    /// connection that writes the map (hyper's HTTP/2).
    pub fn restore<B>(response: &mut http::Response<B>) {
        let Some(fields) = response.extensions_mut().remove::<Fields>() else {
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
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(self.name(entry)),
                HeaderValue::from_maybe_shared(
                    self.head
                        .slice(entry.value[0] as usize..entry.value[1] as usize),
                ),
            ) else {
                continue;
            };
            map.append(name, value);
        }
    }

    fn name(&self, entry: &Entry) -> &[u8] {
        &self.head[entry.name[0] as usize..entry.name[1] as usize]
    }

    fn value(&self, entry: &Entry) -> &[u8] {
        &self.head[entry.value[0] as usize..entry.value[1] as usize]
    }

    /// Marks the fields the Connection fields name (RFC 9110 §7.6.1), other
    /// than `close` and the fields sluice owns: rare, so done in a second
    /// pass only when a Connection field names more than `keep-alive` or
    /// `close`.
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
        for entry in &mut self.entries {
            let name = &head[entry.name[0] as usize..entry.name[1] as usize];
            if named
                .iter()
                .any(|&[s, e]| head[s as usize..e as usize].eq_ignore_ascii_case(name))
            {
                // (Connection itself stays what it is, for keep-alive.)
                if entry.kind.is_relayed() {
                    entry.kind = Kind::Dropped;
                }
            }
        }
    }
}

impl Kind {
    /// Whether a proxy passes such a field on.
    pub(crate) fn is_relayed(self) -> bool {
        matches!(self, Kind::Other | Kind::ContentLength | Kind::Date)
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
        5 => is(b"proxy"),
        7 => is(b"upgrade"),
        10 if is(b"connection") => return Kind::Connection,
        10 => is(b"keep-alive"),
        14 if is(b"content-length") => return Kind::ContentLength,
        14 => is(b"http2-settings"),
        17 if is(b"transfer-encoding") => return Kind::TransferEncoding,
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
                Kind::Other,
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
        response.extensions_mut().insert(f);
        Fields::restore(&mut response);
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server", "set-cookie", "x-mine"]);
        assert_eq!(response.headers().get_all("x-mine").iter().count(), 2);
        assert!(!response.headers().contains_key("connection"));
        assert!(response.extensions().get::<Fields>().is_none());
    }
}
