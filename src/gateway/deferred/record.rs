//! What an async route writes to its journal, byte by byte: the accepted
//! request (a journal entry), notes on it (a failed attempt, parked as a
//! dead letter, re-driven) and how it ended (a `Done` record).
//!
//! Little-endian integers, lengths before bytes, a version byte first, so
//! a record written by this version reads back after an upgrade or is
//! refused (logged and skipped) rather than misread.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

const VERSION: u8 = 1;

/// A ticket: 128 bits from the OS's random source, shown as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId(pub u128);

impl TicketId {
    /// A fresh, unguessable ticket; `None` if the OS has no randomness to give.
    pub fn new() -> Option<TicketId> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        Some(TicketId(u128::from_le_bytes(bytes)))
    }

    /// Parses the 32 lower-case hex digits of [`TicketId::to_string`].
    pub fn parse(text: &str) -> Option<TicketId> {
        if text.len() != 32 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        u128::from_str_radix(text, 16).ok().map(TicketId)
    }
}

impl std::fmt::Display for TicketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The client's connection as the forwarding headers tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub ip: std::net::IpAddr,
    pub https: bool,
    /// The peer is in `server.trusted_proxies`.
    pub trusted: bool,
}

/// An accepted request, as kept until it is delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub ticket: TicketId,
    /// Unix time in milliseconds (it must mean the same after a restart).
    pub accepted_at_ms: u64,
    pub method: Method,
    /// Path (normalised) and query, as the backend is sent them.
    pub target: String,
    /// The host routed on.
    pub host: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub origin: Origin,
    pub idempotency_key: Option<Vec<u8>>,
    /// End-to-end headers (hop-by-hop ones already gone).
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The start of an entry, enough to index it without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub ticket: TicketId,
    pub accepted_at_ms: u64,
    pub idempotency_key: Option<Vec<u8>>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

impl Accepted {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.target.len() + self.body.len());
        out.push(VERSION);
        out.extend_from_slice(&self.ticket.0.to_le_bytes());
        out.extend_from_slice(&self.accepted_at_ms.to_le_bytes());
        put_bytes(
            &mut out,
            self.idempotency_key.as_deref().unwrap_or_default(),
        );
        out.push(u8::from(self.idempotency_key.is_some()));
        put_bytes(&mut out, self.method.as_str().as_bytes());
        put_bytes(&mut out, self.target.as_bytes());
        put_bytes(
            &mut out,
            self.host.as_ref().map_or(&[][..], |h| h.as_bytes()),
        );
        out.push(u8::from(self.host.is_some()));
        put_bytes(&mut out, self.request_id.as_bytes());
        match self.origin.ip {
            std::net::IpAddr::V4(v4) => {
                out.push(4);
                out.extend_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                out.push(6);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.push(u8::from(self.origin.https) | (u8::from(self.origin.trusted) << 1));
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put_bytes(&mut out, name.as_str().as_bytes());
            put_bytes(&mut out, value.as_bytes());
        }
        put_bytes(&mut out, &self.body);
        out
    }

    /// Reads an entry back; `None` if it is not one this version wrote.
    pub fn decode(bytes: &[u8]) -> Option<Accepted> {
        let mut r = Reader(bytes);
        let summary = r.summary()?;
        let method = Method::from_bytes(r.bytes()?).ok()?;
        let target = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let host = r.bytes()?;
        let host = match r.u8()? {
            0 => None,
            _ => Some(HeaderValue::from_bytes(host).ok()?),
        };
        let request_id = HeaderValue::from_bytes(r.bytes()?).ok()?;
        let ip = match r.u8()? {
            4 => std::net::IpAddr::from(<[u8; 4]>::try_from(r.take(4)?).ok()?),
            6 => std::net::IpAddr::from(<[u8; 16]>::try_from(r.take(16)?).ok()?),
            _ => return None,
        };
        let flags = r.u8()?;
        let count = r.u32()?;
        let mut headers = HeaderMap::with_capacity(count.min(256) as usize);
        for _ in 0..count {
            let name = HeaderName::from_bytes(r.bytes()?).ok()?;
            let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
            headers.append(name, value);
        }
        let body = Bytes::copy_from_slice(r.bytes()?);
        Some(Accepted {
            ticket: summary.ticket,
            accepted_at_ms: summary.accepted_at_ms,
            idempotency_key: summary.idempotency_key,
            method,
            target,
            host,
            request_id,
            origin: Origin {
                ip,
                https: flags & 1 != 0,
                trusted: flags & 2 != 0,
            },
            headers,
            body,
        })
    }
}

/// Reads an entry's ticket, time and idempotency key only.
pub fn summary(bytes: &[u8]) -> Option<Summary> {
    Reader(bytes).summary()
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn summary(&mut self) -> Option<Summary> {
        if self.u8()? != VERSION {
            return None;
        }
        let ticket = TicketId(u128::from_le_bytes(self.take(16)?.try_into().ok()?));
        let accepted_at_ms = self.u64()?;
        let key = self.bytes()?;
        let idempotency_key = (self.u8()? != 0).then(|| key.to_vec());
        Some(Summary {
            ticket,
            accepted_at_ms,
            idempotency_key,
        })
    }
}

/// A note on a live entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// An attempt failed; `attempts` made so far.
    Failed { attempts: u32 },
    /// Out of attempts: a dead letter until re-driven or discarded.
    Parked { attempts: u32 },
    /// A dead letter sent back to the queue at `at_ms` (Unix time in
    /// milliseconds), its attempts reset and `deliver_within` counted anew.
    Redriven { at_ms: u64 },
}

impl Note {
    pub fn encode(self) -> Vec<u8> {
        match self {
            Note::Failed { attempts } => [&[1u8][..], &attempts.to_le_bytes()].concat(),
            Note::Parked { attempts } => [&[2u8][..], &attempts.to_le_bytes()].concat(),
            Note::Redriven { at_ms } => [&[3u8][..], &at_ms.to_le_bytes()].concat(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Note> {
        let mut r = Reader(bytes);
        match r.u8()? {
            1 => Some(Note::Failed { attempts: r.u32()? }),
            2 => Some(Note::Parked { attempts: r.u32()? }),
            3 => Some(Note::Redriven { at_ms: r.u64()? }),
            _ => None,
        }
    }
}

/// How an entry ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The backend answered (2xx, 3xx or 4xx): its status, and the start of
    /// its body if the route keeps it.
    Delivered { status: u16, body: Bytes },
    /// Not delivered within `deliver_within`: dropped, never sent (again).
    Expired,
    /// A dead letter discarded through the admin API.
    Discarded,
}

impl Ended {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Ended::Delivered { status, body } => {
                let mut out = vec![1];
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(body);
                out
            }
            Ended::Expired => vec![2],
            Ended::Discarded => vec![3],
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Ended> {
        match bytes.first()? {
            1 => Some(Ended::Delivered {
                status: u16::from_le_bytes(bytes.get(1..3)?.try_into().ok()?),
                body: Bytes::copy_from_slice(bytes.get(3..)?),
            }),
            2 => Some(Ended::Expired),
            3 => Some(Ended::Discarded),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_request_reads_back_as_written() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let accepted = Accepted {
            ticket: TicketId::new().unwrap(),
            accepted_at_ms: 1_765_000_000_000,
            method: Method::POST,
            target: "/orders/1?x=y".into(),
            host: Some(HeaderValue::from_static("shop.example")),
            request_id: HeaderValue::from_static("abc-123"),
            origin: Origin {
                ip: "::1".parse().unwrap(),
                https: true,
                trusted: false,
            },
            idempotency_key: Some(b"order-7".to_vec()),
            headers,
            body: Bytes::from_static(b"{\"item\":1}"),
        };
        let bytes = accepted.encode();
        assert_eq!(Accepted::decode(&bytes), Some(accepted.clone()));
        let summary = summary(&bytes).unwrap();
        assert_eq!(summary.ticket, accepted.ticket);
        assert_eq!(summary.idempotency_key.as_deref(), Some(&b"order-7"[..]));
        for cut in 0..bytes.len() {
            assert_eq!(Accepted::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let text = accepted.ticket.to_string();
        assert_eq!(TicketId::parse(&text), Some(accepted.ticket));
        assert_eq!(TicketId::parse(&text.to_uppercase()), None);
        assert_ne!(TicketId::new(), TicketId::new());
        for note in [
            Note::Failed { attempts: 3 },
            Note::Parked { attempts: 5 },
            Note::Redriven { at_ms: 9 },
        ] {
            assert_eq!(Note::decode(&note.encode()), Some(note));
        }
        let ended = Ended::Delivered {
            status: 201,
            body: Bytes::from_static(b"ok"),
        };
        assert_eq!(Ended::decode(&ended.encode()), Some(ended));
    }
}
