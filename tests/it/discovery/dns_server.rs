//! A small authoritative DNS server for the discovery tests, on 127.0.0.1
//! and an ephemeral UDP port: it answers A queries for the names in its
//! zone (AAAA with no data, unknown names with NXDOMAIN), and the test
//! changes the zone, or takes the server down (queries go unanswered), while
//! sluice runs.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// The zone the server answers from.
#[derive(Default)]
pub struct Zone {
    names: Mutex<HashMap<String, Vec<Ipv4Addr>>>,
    ttl: Mutex<u32>,
    down: AtomicBool,
    queries: AtomicUsize,
}

/// The running server; it stops when its runtime does (with the test).
pub struct DnsServer {
    pub addr: SocketAddr,
    pub zone: Arc<Zone>,
}

impl DnsServer {
    /// Serves `name` -> `addrs` with a TTL of 300 s.
    pub async fn start(name: &str, addrs: &[Ipv4Addr]) -> DnsServer {
        let zone = Arc::new(Zone::default());
        *zone.ttl.lock().unwrap() = 300;
        zone.set(name, addrs);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(serve(socket, zone.clone()));
        DnsServer { addr, zone }
    }
}

impl Zone {
    /// `name` now resolves to `addrs` (none: NOERROR without data).
    pub fn set(&self, name: &str, addrs: &[Ipv4Addr]) {
        self.names
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), addrs.to_vec());
    }

    pub fn set_ttl(&self, seconds: u32) {
        *self.ttl.lock().unwrap() = seconds;
    }

    /// Down: every query goes unanswered (the resolver times out).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Queries received so far (answered or not).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let (name, question_end, qtype) = question(query)?;
        let addrs = self.names.lock().unwrap().get(&name).cloned();
        let ttl = *self.ttl.lock().unwrap();
        // QR, opcode 0, AA, RD copied; RA.
        let rd = query[2] & 0x01;
        let rcode = if addrs.is_none() { 3 } else { 0 };
        let answers: Vec<Ipv4Addr> = match (qtype, addrs) {
            (1, Some(addrs)) => addrs,
            _ => Vec::new(),
        };
        let mut out = Vec::with_capacity(question_end + answers.len() * 16);
        out.extend_from_slice(&query[0..2]);
        out.push(0x84 | rd);
        out.push(0x80 | rcode);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&query[12..question_end]);
        for ip in answers {
            // The name as a pointer to the question's (offset 12).
            out.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        Some(out)
    }
}

/// The question of a query: its name (lower case, no final dot), where it
/// ends, and its type.
fn question(query: &[u8]) -> Option<(String, usize, u16)> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    let mut labels = Vec::new();
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    Some((labels.join("."), at + 4, qtype))
}

async fn serve(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        zone.queries.fetch_add(1, Ordering::SeqCst);
        if zone.down.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(answer) = zone.answer(&buf[..n]) {
            let _ = socket.send_to(&answer, from).await;
        }
    }
}
