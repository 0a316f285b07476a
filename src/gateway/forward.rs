//! The request on its way to the backend: its path in normal form, and the
//! rewrite for the upstream (HTTP/1.1, hop-by-hop headers gone, Host and
//! the forwarding headers set).
//!
//! Invariant: routing, the key, the access log and the backend all see the
//! same spelling of the path; the backend never sees a header that
//! describes only the client's connection.

use std::net::SocketAddr;

use http::header::{self, HeaderValue};
use http::{Request, Version};

use super::classify::canonical_ip;
use crate::http::headers::{Peer, strip_hop_by_hop, write_forwarding_headers};
use crate::http::path::PathError;

/// Rewrites the client's request for the upstream: HTTP/1.1, hop-by-hop
/// headers gone, Host set to the host routed on, and the forwarding headers
/// written (see [`write_forwarding_headers`]).
pub(super) fn prepare_upstream_request<B>(
    mut req: Request<B>,
    client: SocketAddr,
    host: Option<HeaderValue>,
    peer_trusted: bool,
) -> Request<B> {
    let proto: &'static str = if req.extensions().get::<crate::tls::Secure>().is_some() {
        "https"
    } else {
        "http"
    };
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    // First, so that nothing the client's Connection names can touch what
    // sluice adds below.
    strip_hop_by_hop(headers);
    let peer = Peer {
        ip: canonical_ip(client.ip()),
        proto,
        trusted: peer_trusted,
    };
    write_forwarding_headers(headers, &peer, host.as_ref());
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    req
}

/// The request's path in normal form (see [`crate::http::path`]), the query left
/// as sent. The URI is rebuilt only when the path changes.
pub(super) fn normalise_target<B>(req: &mut Request<B>) -> Result<(), PathError> {
    let uri = req.uri();
    let normal = match crate::http::path::normalise(uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let mut target = normal;
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(target).map_err(|_| PathError::Unrepresentable)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::Unrepresentable)?;
    Ok(())
}
