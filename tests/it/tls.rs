//! TLS termination on the proxy listener: HTTP/1.1 and HTTP/2 (by ALPN) to a
//! client that trusts the test CA, refusal for one that does not and for
//! plain HTTP, certificate rotation on reload, and refused bad reloads.
//! Certificates are generated at test time with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::pki::Pki;
use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sluice::config::{Config, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config for one backend that terminates TLS with `tls`.
fn tls_config(backend: SocketAddr, tls: ServerTls) -> Config {
    let mut config = config(&[backend]);
    config.server.tls = Some(tls);
    config
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Which protocols the client offers.
#[derive(Clone, Copy)]
enum Offer {
    /// HTTP/1.1 only, no ALPN.
    Http1,
    /// ALPN `h2` and `http/1.1`: HTTP/2 when the server picks it.
    Any,
}

/// An HTTPS client that trusts only the CA in `ca`; a new pool each time, so
/// every client makes its own handshake.
fn https_client(ca: &Path, offer: Offer) -> HttpsClient {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("CA accepted");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only();
    let connector = match offer {
        Offer::Http1 => builder.enable_http1().build(),
        Offer::Any => builder.enable_all_versions().build(),
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// GETs `url`; the response's version, status and body, or the client's error.
async fn https_get(
    client: &HttpsClient,
    url: &str,
) -> Result<(Version, StatusCode, Bytes), String> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|err| format!("{err:?}"))?;
    let (version, status) = (response.version(), response.status());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| err.to_string())?
        .to_bytes();
    Ok((version, status, body))
}

/// `sluice_config_reloads_total` by result.
async fn reloads(admin: SocketAddr) -> (f64, f64) {
    let text = scrape(&client(), admin).await;
    let reloads = samples(&text, "sluice_config_reloads_total");
    let get = |result: &str| {
        reloads
            .get(&format!("result=\"{result}\""))
            .copied()
            .unwrap_or(0.0)
    };
    (get("success"), get("failure"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusting_client_gets_http1_and_http2_by_alpn() {
    let pki = Pki::generate("alpn");
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&tls_config(backend.addr, pki.server_tls())).await;
    let port = sluice.proxy_addr().port();

    let http1 = https_client(&pki.ca, Offer::Http1);
    let (version, status, body) = https_get(&http1, &format!("https://localhost:{port}/a"))
        .await
        .expect("HTTP/1.1 over TLS");
    assert_eq!((version, status), (Version::HTTP_11, StatusCode::OK));
    assert_eq!(body, Bytes::from_static(b"ok"));

    let http2 = https_client(&pki.ca, Offer::Any);
    let (version, status, _) = https_get(&http2, &format!("https://127.0.0.1:{port}/b"))
        .await
        .expect("HTTP/2 over TLS");
    assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    // Several requests share the one HTTP/2 connection.
    for i in 0..3 {
        let (version, status, _) = https_get(&http2, &format!("https://127.0.0.1:{port}/c{i}"))
            .await
            .expect("HTTP/2 again");
        assert_eq!((version, status), (Version::HTTP_2, StatusCode::OK));
    }

    let paths: Vec<String> = backend.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/a", "/b", "/c0", "/c1", "/c2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusting_and_plain_http_clients_do_not_reach_the_backend() {
    let pki = Pki::generate("refuse");
    let stranger = Pki::generate("stranger");
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&tls_config(backend.addr, pki.server_tls())).await;
    let addr = sluice.proxy_addr();

    let untrusting = https_client(&stranger.ca, Offer::Any);
    let err = https_get(&untrusting, &format!("https://localhost:{}/", addr.port()))
        .await
        .expect_err("a client not trusting the CA fails the handshake");
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );

    // Plain HTTP to the TLS port: no HTTP answer, and nothing forwarded.
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the connection was not closed");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The proxy still serves a trusting client afterwards.
    let trusting = https_client(&pki.ca, Offer::Http1);
    let (_, status, _) = https_get(&trusting, &format!("https://localhost:{}/ok", addr.port()))
        .await
        .expect("trusted");
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<String> = backend.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_after_the_header_timeout() {
    let pki = Pki::generate("stall");
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = tls_config(backend.addr, pki.server_tls());
    config.server.header_timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;

    let mut stream = TcpStream::connect(sluice.proxy_addr())
        .await
        .expect("connect");
    let mut answer = Vec::new();
    // Sends nothing: the server gives up on the handshake and closes.
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a stalled handshake was kept open");
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rotates_the_certificate_and_a_bad_one_is_refused() {
    let a = Pki::generate("reload-a");
    let b = Pki::generate("reload-b");
    let backend = Backend::start(Duration::ZERO).await;
    let config_a = tls_config(backend.addr, a.server_tls());
    let sluice = TestSluice::start(&config_a).await;
    let url = format!("https://localhost:{}/", sluice.proxy_addr().port());

    assert!(
        https_get(&https_client(&a.ca, Offer::Any), &url)
            .await
            .is_ok()
    );
    assert!(
        https_get(&https_client(&b.ca, Offer::Any), &url)
            .await
            .is_err()
    );

    sluice.reload(&tls_config(backend.addr, b.server_tls()));
    let (_, status, _) = https_get(&https_client(&b.ca, Offer::Any), &url)
        .await
        .expect("the new certificate serves after the reload");
    assert_eq!(status, StatusCode::OK);
    assert!(
        https_get(&https_client(&a.ca, Offer::Any), &url)
            .await
            .is_err(),
        "the old certificate still served new connections"
    );

    // A reload naming a missing key fails as a whole and names the file.
    let missing_key = b.key.with_file_name("no-such-key.pem");
    let mut broken = tls_config(
        backend.addr,
        ServerTls {
            cert: b.cert.clone(),
            key: missing_key,
        },
    );
    broken.routes.clear(); // would be swapped in too, if the reload went through
    let err = sluice
        .try_reload(&broken)
        .expect_err("a missing key fails the reload")
        .to_string();
    assert!(err.contains("no-such-key.pem"), "{err}");
    assert!(err.contains("server.tls"), "{err}");
    let (_, status, _) = https_get(&https_client(&b.ca, Offer::Http1), &url)
        .await
        .expect("the old certificate keeps serving");
    assert_eq!(
        status,
        StatusCode::OK,
        "the broken config's routes went live"
    );
    assert_eq!(reloads(sluice.admin_addr()).await, (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_is_a_start_error_naming_the_file() {
    let pki = Pki::generate("start");
    let backend = Backend::start(Duration::ZERO).await;
    let config = tls_config(
        backend.addr,
        ServerTls {
            cert: pki.key.clone(), // a key, not a certificate
            key: pki.key.clone(),
        },
    );
    let err = match sluice::start(&config).await {
        Ok(_) => panic!("started with a key as its certificate"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&pki.key.display().to_string()), "{err}");
    assert!(err.contains("no certificate"), "{err}");
}
