//! The general HTTP client of an upstream: hyper-util's keep-alive pool over
//! a rustls connector. It serves TLS and HTTP/2 upstreams and the active
//! health probes; plain HTTP/1.1 requests take the shorter `h1pool` path.
//!
//! Invariant: the scheme returned is the one every target URI is built
//! with, so a TLS upstream is never spoken to in clear text (`https_only`).

use http::uri::Scheme;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyBody;
use crate::config::{UpstreamConfig, UpstreamTls};
use crate::tls::TlsError;

pub(super) type Connector = HttpsConnector<HttpConnector>;

/// The client for `config`'s targets, and the scheme of their URIs.
pub(super) fn build(
    config: &UpstreamConfig,
) -> Result<(Client<Connector, ProxyBody>, Scheme), TlsError> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let (connector, scheme) = match &config.tls {
        Some(tls) => (tls_connector(tls, config.http2, http)?, Scheme::HTTPS),
        None => (plain_connector(http)?, Scheme::HTTP),
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_target)
        .http2_only(config.http2 && config.tls.is_none())
        .build(connector);
    Ok((client, scheme))
}

/// HTTPS only, with the configured roots, server name and protocols.
fn tls_connector(
    tls: &UpstreamTls,
    http2: bool,
    http: HttpConnector,
) -> Result<Connector, TlsError> {
    let mut tls_config = crate::tls::client_config(tls, http2)?;
    // The connector offers ALPN itself from the enabled protocols.
    tls_config.alpn_protocols.clear();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_only();
    let builder = match &tls.server_name {
        Some(name) => {
            // Validated as a DNS name or IP address by the config.
            let name = rustls_pki_types::ServerName::try_from(name.clone())
                .map_err(|err| TlsError::Setup(rustls::Error::General(err.to_string())))?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    Ok(if http2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    })
}

/// Plain HTTP (HTTP/1.1, or h2c with prior knowledge when `http2`).
fn plain_connector(http: HttpConnector) -> Result<Connector, TlsError> {
    let plain = UpstreamTls {
        ca: None,
        server_name: None,
    };
    let mut tls_config = crate::tls::client_config(&plain, false)?;
    tls_config.alpn_protocols.clear();
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}
