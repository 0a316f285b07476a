//! HTTP/1.1 Upgrade (WebSocket by default): which protocols a request may
//! switch to, whether a backend's 101 is acceptable, and the tunnel that
//! copies bytes both ways afterwards.
//!
//! Invariant: a tunnel opens only to a protocol the route allows and the
//! client offered; h2c never (HTTP/2 inside a tunnel would carry requests
//! past the shaper).

use http::header::HeaderValue;
use std::fmt::Display;
use std::future::Future;

use http::{Request, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::ClientFields;
use crate::http::client_fields::{Kind, text};

/// The protocols an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with an `Upgrade` header) that the route allows, as the
/// `Upgrade` value to send on; None when there are none (the request then
/// goes on as a plain one: the Upgrade header is hop-by-hop and dropped).
pub(super) fn requested_upgrade<B>(
    req: &Request<B>,
    fields: ClientFields<'_>,
    allowed: &[String],
) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || allowed.is_empty() {
        return None;
    }
    if !fields.has(Kind::Upgrade) {
        return None;
    }
    let wants = fields
        .values(Kind::Connection)
        .filter_map(text)
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    let mut lines = fields.values(Kind::Upgrade);
    lines.next()?;
    let offered = || {
        fields
            .values(Kind::Upgrade)
            .filter_map(text)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    };
    // The common case (one line, every protocol allowed) reuses the value.
    if lines.next().is_none() && offered().all(|p| protocol_allowed(p, allowed)) {
        return fields.first(Kind::Upgrade);
    }
    let kept: Vec<&str> = offered().filter(|p| protocol_allowed(p, allowed)).collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// The name of an Upgrade protocol, without its version: "websocket/13" is
/// "websocket".
fn protocol_name(protocol: &str) -> &str {
    let protocol = protocol.trim();
    protocol.split_once('/').map_or(protocol, |(name, _)| name)
}

/// Whether `protocol` (an Upgrade token) is in the route's list. h2c never
/// is: HTTP/2 inside a tunnel would carry any number of requests past the
/// shaper.
fn protocol_allowed(protocol: &str, allowed: &[String]) -> bool {
    let name = protocol_name(protocol);
    !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether a backend's 101 switches to a protocol the route allows and the
/// client offered (`offered`, the Upgrade value sent on).
pub(super) fn switch_is_allowed(
    chosen: &HeaderValue,
    offered: &HeaderValue,
    allowed: &[String],
) -> bool {
    let (Ok(chosen), Ok(offered)) = (chosen.to_str(), offered.to_str()) else {
        return false;
    };
    let name = protocol_name(chosen);
    protocol_allowed(chosen, allowed)
        && offered
            .split(',')
            .any(|p| protocol_name(p).eq_ignore_ascii_case(name))
}

/// Copies bytes both ways between the client and the backend until either
/// side closes. Each side is a future resolving to its stream once its
/// switch is complete (hyper's upgrade on a client connection, or the
/// backend's connection). Tunnels hold no in-flight slot: they were
/// admitted through the shaper as a request and may then live for as long
/// as they like.
pub(super) async fn tunnel<C, U, CIo, UIo, CErr, UErr>(client: C, upstream: U, route: String)
where
    C: Future<Output = Result<CIo, CErr>>,
    U: Future<Output = Result<UIo, UErr>>,
    CIo: AsyncRead + AsyncWrite + Unpin + Send,
    UIo: AsyncRead + AsyncWrite + Unpin + Send,
    CErr: Display,
    UErr: Display,
{
    let client = async { client.await.map_err(|err| format!("client side: {err}")) };
    let upstream = async { upstream.await.map_err(|err| format!("backend side: {err}")) };
    let (mut client, mut upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%route, %err, "upgrade did not complete");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%route, sent, received, "tunnel closed"),
        Err(err) => tracing::debug!(%route, %err, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_UPGRADE;
    use http::header;

    fn upgrade_request(connection: &str, upgrades: &[&str]) -> Request<()> {
        let mut req = Request::get("/chat").header(header::CONNECTION, connection);
        for upgrade in upgrades {
            req = req.header(header::UPGRADE, *upgrade);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn only_the_upgrades_a_route_allows_are_offered_on() {
        let websocket = [DEFAULT_UPGRADE.to_string()];
        let offered = |connection, upgrades: &[&str], allowed: &[String]| {
            let req = upgrade_request(connection, upgrades);
            requested_upgrade(&req, ClientFields::Map(req.headers()), allowed)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            offered("Upgrade", &["WebSocket"], &websocket).as_deref(),
            Some("WebSocket")
        );
        assert_eq!(
            offered(
                "keep-alive, upgrade",
                &["foo/2, websocket", "h2c"],
                &websocket
            )
            .as_deref(),
            Some("websocket")
        );
        assert_eq!(offered("upgrade", &["h2c"], &websocket), None);
        assert_eq!(offered("upgrade", &["websocket"], &[]), None);
        assert_eq!(offered("keep-alive", &["websocket"], &websocket), None);
        // h2c is refused even if a list were to name it.
        assert_eq!(offered("upgrade", &["h2c"], &["h2c".to_string()]), None);
        let chosen = |c: &'static str, o: &'static str| {
            switch_is_allowed(
                &HeaderValue::from_static(c),
                &HeaderValue::from_static(o),
                &websocket,
            )
        };
        assert!(chosen("websocket", "WebSocket"));
        assert!(!chosen("h2c", "websocket"));
        assert!(!chosen("websocket", "foo"));
    }
}
