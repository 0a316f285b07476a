//! The request on its way to the backend: its path in normal form, and the
//! rewrite for the upstream (HTTP/1.1, hop-by-hop headers gone, Host and
//! the forwarding headers set).
//!
//! Invariant: routing, the key, the access log and the backend all see the
//! same spelling of the path; the backend never sees a header that
//! describes only the client's connection.

use http::header::HeaderValue;
use http::{Request, Version};

use super::classify::canonical_ip;
use crate::http::h1::Fields;
use crate::http::headers::{self, Forwarding, Peer};
use crate::http::path::PathError;
use crate::http::{ClientConn, ClientFields};

/// The client's request as the upstream takes it: HTTP/1.1, and the
/// rewrite of its head (hop-by-hop headers gone, Host set to the host
/// routed on, the request id and the forwarding headers written, the
/// upgrade asked for) as a [`Forwarding`], applied where the head is
/// written. `request_id`: the one the access log shows, if it is on;
/// otherwise it is decided here. An HTTP/1 client's `fields` travel in the
/// [`Forwarding`], beside the request.
pub(super) fn prepare_upstream_request<B>(
    (mut req, fields): (Request<B>, Option<Fields>),
    conn: ClientConn,
    (host, request_id, upgrade): (
        Option<HeaderValue>,
        Option<HeaderValue>,
        Option<HeaderValue>,
    ),
    peer_trusted: bool,
) -> (Request<B>, Forwarding) {
    let request_id = request_id
        .unwrap_or_else(|| headers::request_id(ClientFields::new(fields.as_ref(), req.headers())));
    let proto: &'static str = if conn.secure { "https" } else { "http" };
    *req.version_mut() = Version::HTTP_11;
    let peer = Peer {
        ip: canonical_ip(conn.peer.ip()),
        proto,
        trusted: peer_trusted,
    };
    (
        req,
        Forwarding {
            peer,
            request_id,
            host,
            upgrade,
            fields,
        },
    )
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
