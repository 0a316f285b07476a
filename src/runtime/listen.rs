//! The listening sockets: bound with the configured backlog (not tokio's
//! fixed 128), accepted from in batches, and probed at scrape time for their
//! accept queue and for the kernel's listen overflow count.
//!
//! The invariant the front door keeps: the kernel's accept queue is only a
//! hand-off. Sluice takes connections off it until it is empty, so its depth
//! stays near zero and the overflow count does not move; the metrics here
//! show it when it does not hold (a stalled accept loop, a backlog capped
//! by `net.core.somaxconn`).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

/// The network namespace's TCP counters (`TcpExt:` lines).
const NETSTAT_PATH: &str = "/proc/net/netstat";

/// A bound, listening, non-blocking socket registered with the runtime that
/// accepts from it.
pub(crate) type Listener = AsyncFd<Socket>;

/// Binds `addr` and listens with `backlog`, setting SO_REUSEADDR as tokio and
/// std do (a restart binds while old connections linger in TIME_WAIT).
pub(crate) fn bind(addr: SocketAddr, backlog: u32) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // SAFETY: the `Socket` owns its descriptor, which stays open and the
    // same until the `AsyncFd` (which owns the `Socket`) is dropped.
    unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
}

/// The address a listener is bound to.
pub(crate) fn local_addr(listener: &Listener) -> Option<SocketAddr> {
    listener.get_ref().local_addr().ok()?.as_socket()
}

/// Takes one connection off the accept queue: non-blocking, close-on-exec
/// and with Nagle off, in as few system calls as the kernel allows.
/// `WouldBlock` means the queue is empty.
pub(crate) fn accept_one(listener: &Listener) -> io::Result<(TcpStream, SocketAddr)> {
    let (socket, peer) = listener
        .get_ref()
        .accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    // A failure leaves Nagle on: slower small writes, nothing wrong.
    if let Err(err) = socket.set_tcp_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY");
    }
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an IP peer"))?;
    Ok((socket.into(), peer))
}

/// Whether an accept error is about one connection (which is gone; take the
/// next at once) rather than about the process (out of descriptors or
/// memory: back off and let open connections finish).
pub(crate) fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    ) || matches!(
        err.raw_os_error(),
        Some(libc::EPROTO | libc::ENETDOWN | libc::EHOSTUNREACH | libc::ENETUNREACH)
    )
}

/// A listener's accept queue, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptQueue {
    /// Connections established and waiting to be accepted.
    pub depth: u32,
    /// The most it holds (the backlog in force).
    pub limit: u32,
}

/// Linux's `TCP_LISTEN` state number.
const TCP_LISTEN: u8 = 10;

/// The accept queue of a listening socket: on Linux, TCP_INFO on a socket in
/// the LISTEN state reports the queue's length in `tcpi_unacked` and the
/// backlog in `tcpi_sacked`. `None` when the kernel does not say.
pub fn accept_queue(socket: &impl AsRawFd) -> Option<AcceptQueue> {
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is valid;
    // getsockopt writes at most `len` bytes into it and reports how many.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).ok()?;
    // SAFETY: the pointer and length describe `info`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 || info.tcpi_state != TCP_LISTEN {
        return None;
    }
    Some(AcceptQueue {
        depth: info.tcpi_unacked,
        limit: info.tcpi_sacked,
    })
}

/// SYNs and connections the kernel dropped at one listening socket (its
/// `sk_drops`, which Linux raises wherever it counts a listen drop: a full
/// accept or SYN queue among them), read with SO_MEMINFO. Unlike
/// [`ListenDrops`] this is the socket's own count.
pub fn socket_drops(socket: &impl AsRawFd) -> Option<u32> {
    let mut meminfo = [0u32; SK_MEMINFO_VARS];
    let mut len = libc::socklen_t::try_from(std::mem::size_of_val(&meminfo)).ok()?;
    // SAFETY: the pointer and length describe `meminfo`, which outlives the
    // call; the kernel writes at most `len` bytes and reports how many.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast::<libc::c_void>(),
            &mut len,
        )
    };
    let drops = usize::try_from(libc::SK_MEMINFO_DROPS).ok()?;
    let written = usize::try_from(len).ok()? / std::mem::size_of::<u32>();
    (rc == 0 && drops < written).then(|| meminfo[drops])
}

/// The entries of SO_MEMINFO (`SK_MEMINFO_VARS`, stable since Linux 4.x).
const SK_MEMINFO_VARS: usize = 9;

/// The kernel's listen drop counter of this network namespace (all of its
/// listeners, not only sluice's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenDrops {
    /// `TcpExtListenOverflows`: connections dropped because an accept queue
    /// was full.
    pub overflows: u64,
    /// `TcpExtListenDrops`: every SYN or connection a listener dropped,
    /// overflows included.
    pub drops: u64,
}

impl ListenDrops {
    /// Reads them from /proc/net/netstat; `None` off Linux or without /proc.
    pub fn read() -> Option<ListenDrops> {
        parse_netstat(&std::fs::read_to_string(NETSTAT_PATH).ok()?)
    }
}

/// The `TcpExt:` header and value lines of /proc/net/netstat.
fn parse_netstat(text: &str) -> Option<ListenDrops> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let mut found = ListenDrops::default();
    let mut seen = 0;
    for (name, value) in names
        .split_whitespace()
        .zip(values.split_whitespace())
        .skip(1)
    {
        let slot = match name {
            "ListenOverflows" => &mut found.overflows,
            "ListenDrops" => &mut found.drops,
            _ => continue,
        };
        *slot = value.parse().ok()?;
        seen += 1;
    }
    (seen == 2).then_some(found)
}

/// The listeners' metrics, sampled when /metrics is scraped: each
/// listener's accept queue (depth and limit) and drops, and the namespace's
/// overflow counters. Holds the listeners weakly: a closed one is no longer
/// sampled.
pub(crate) struct ListenerProbe {
    listeners: Vec<(&'static str, Weak<Listener>)>,
    depth: IntGaugeVec,
    limit: IntGaugeVec,
    dropped: IntCounterVec,
    /// Per listener, its drop count when last sampled.
    dropped_last: Vec<AtomicU64>,
    overflows: IntCounter,
    drops: IntCounter,
    last: [AtomicU64; 2],
}

impl ListenerProbe {
    /// The probe for `listeners` (label value, socket).
    pub(crate) fn new(
        listeners: Vec<(&'static str, Weak<Listener>)>,
    ) -> Result<ListenerProbe, prometheus::Error> {
        let dropped_last = listeners.iter().map(|_| AtomicU64::new(0)).collect();
        Ok(ListenerProbe {
            listeners,
            dropped_last,
            dropped: IntCounterVec::new(
                Opts::new(
                    "sluice_listen_dropped_total",
                    "SYNs and connections the kernel dropped at this listener (its own count: \
                     a full accept queue among the causes); should stay 0.",
                ),
                &["listener"],
            )?,
            depth: IntGaugeVec::new(
                Opts::new(
                    "sluice_listen_queue_depth",
                    "Connections in the listener's kernel accept queue, not yet accepted (sampled at scrape).",
                ),
                &["listener"],
            )?,
            limit: IntGaugeVec::new(
                Opts::new(
                    "sluice_listen_queue_limit",
                    "The listener's accept queue limit: server.backlog, capped by net.core.somaxconn.",
                ),
                &["listener"],
            )?,
            overflows: IntCounter::with_opts(Opts::new(
                "sluice_netns_listen_overflows_total",
                "Connections the kernel dropped because an accept queue was full (TcpExtListenOverflows), \
                 for every listener of sluice's network namespace, not only sluice's.",
            ))?,
            drops: IntCounter::with_opts(Opts::new(
                "sluice_netns_listen_drops_total",
                "SYNs and connections the kernel's listeners dropped, overflows included (TcpExtListenDrops), \
                 for every listener of sluice's network namespace.",
            ))?,
            last: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn sample(&self) {
        for ((name, listener), last) in self.listeners.iter().zip(&self.dropped_last) {
            let Some(listener) = listener.upgrade() else {
                continue;
            };
            let queue = accept_queue(listener.get_ref());
            let (depth, limit) = queue.map_or((0, 0), |q| (q.depth, q.limit));
            self.depth.with_label_values(&[name]).set(i64::from(depth));
            self.limit.with_label_values(&[name]).set(i64::from(limit));
            let dropped = self.dropped.with_label_values(&[name]);
            if let Some(now) = socket_drops(listener.get_ref()) {
                let before = last.swap(u64::from(now), Ordering::Relaxed);
                dropped.inc_by(u64::from(now).saturating_sub(before));
            }
        }
        if let Some(now) = ListenDrops::read() {
            // The kernel's counters only grow: follow them by their increase.
            for (counter, last, value) in [
                (&self.overflows, &self.last[0], now.overflows),
                (&self.drops, &self.last[1], now.drops),
            ] {
                let before = last.swap(value, Ordering::Relaxed);
                counter.inc_by(value.saturating_sub(before));
            }
        }
    }
}

impl Collector for ListenerProbe {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs = self.depth.desc();
        descs.extend(self.limit.desc());
        descs.extend(self.dropped.desc());
        descs.extend(self.overflows.desc());
        descs.extend(self.drops.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.sample();
        let mut families = self.depth.collect();
        families.extend(self.limit.collect());
        families.extend(self.dropped.collect());
        families.extend(self.overflows.collect());
        families.extend(self.drops.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_counters_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 1266 1300 9\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat(text),
            Some(ListenDrops {
                overflows: 1266,
                drops: 1300
            })
        );
        assert_eq!(parse_netstat("IpExt: A\nIpExt: 1\n"), None);
    }

    #[tokio::test]
    async fn a_listening_socket_reports_its_accept_queue() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 7).expect("bind");
        let addr = local_addr(&listener).expect("addr");
        let clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let queue = accept_queue(listener.get_ref()).expect("TCP_INFO on a listener");
        assert_eq!(queue, AcceptQueue { depth: 3, limit: 7 });
        assert_eq!(socket_drops(listener.get_ref()), Some(0));
        drop(clients);
    }

    #[tokio::test]
    async fn a_full_accept_queue_counts_as_drops_of_that_listener() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let addr: socket2::SockAddr = local_addr(&listener).expect("addr").into();
        // Non-blocking connects: those beyond the queue are dropped (SYN or
        // final ACK) and would otherwise block here.
        let clients: Vec<_> = (0..6)
            .map(|_| {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
                socket.set_nonblocking(true).expect("non-blocking");
                let _in_progress = socket.connect(&addr);
                socket
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let dropped = socket_drops(listener.get_ref()).expect("SO_MEMINFO");
        assert!(dropped > 0, "a full queue drops at the listener");
        drop(clients);
    }
}
