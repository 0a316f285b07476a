//! HTTP/1.1 Upgrade (WebSocket by default): which protocols a request may
//! switch to, whether a backend's 101 is acceptable, and the tunnel that
//! copies bytes both ways afterwards.
//!
//! Invariant: a tunnel opens only to a protocol the route allows and the
//! client offered; h2c never (HTTP/2 inside a tunnel would carry requests
//! past the shaper).

use http::header::{self, HeaderValue};
use http::{Request, Version};
use hyper_util::rt::TokioIo;

use crate::http::upgrade::ClientUpgrade;

/// The protocols an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with an `Upgrade` header) that the route allows, as the
/// `Upgrade` value to send on; None when there are none (the request then
/// goes on as a plain one: the Upgrade header is hop-by-hop and dropped).
pub(super) fn requested_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || allowed.is_empty() {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    let mut lines = req.headers().get_all(header::UPGRADE).iter();
    let first = lines.next()?;
    let offered = || {
        req.headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    };
    // The common case (one line, every protocol allowed) reuses the value.
    if lines.next().is_none() && offered().all(|p| protocol_allowed(p, allowed)) {
        return Some(first.clone());
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
/// side closes. Tunnels hold no in-flight slot: they were admitted through
/// the shaper as a request and may then live for as long as they like.
pub(super) async fn tunnel(
    client: ClientUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: String,
) {
    let (client, upstream) = tokio::join!(client.upgraded(), upstream);
    let (mut client, upstream) = match (client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(err), _) => {
            tracing::debug!(%route, %err, "upgrade did not complete");
            return;
        }
        (_, Err(err)) => {
            tracing::debug!(%route, %err, "upgrade did not complete");
            return;
        }
    };
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%route, sent, received, "tunnel closed"),
        Err(err) => tracing::debug!(%route, %err, "tunnel ended with an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_UPGRADE;

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
            requested_upgrade(&upgrade_request(connection, upgrades), allowed)
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
