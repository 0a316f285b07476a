//! Facts the runtime knows of a request's connection, handed to the gateway
//! beside the request, so neither imports the other for them.

use std::net::SocketAddr;

use tokio::time::Instant;

/// The connection a request came on, as the runtime that read it knows it.
/// Passed beside the request, not in its extensions: the first insert into
/// a request's extensions allocates a map (~1,100 instructions with its
/// free, per request over TLS).
#[derive(Debug, Clone, Copy)]
pub struct ClientConn {
    /// The client's address: the connection's TCP peer.
    pub peer: SocketAddr,
    /// The connection is TLS (the backend is told `https`).
    pub secure: bool,
    /// Set on a connection's first request: when its client began waiting
    /// (the connection's accept), so the route's queue timeout runs from
    /// there and not from the moment sluice got round to reading the head.
    pub waiting_since: Option<Instant>,
}

impl ClientConn {
    /// A plain-HTTP connection's request that has waited only since now.
    pub fn plain(peer: SocketAddr) -> ClientConn {
        ClientConn {
            peer,
            secure: false,
            waiting_since: None,
        }
    }
}
