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
        rustls::crypto::aws_lc_rs::default_provider(),
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

    let arrivals = backend.arrivals();
    let paths: Vec<&str> = arrivals.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["/a", "/b", "/c0", "/c1", "/c2"]);
    // Every request over TLS, the first on its connection or not, HTTP/1.1
    // or HTTP/2, tells the backend the client's scheme.
    assert_every_arrival_carries(&arrivals, "x-forwarded-proto", "https");
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
    let mut broken = tls_config(backend.addr, ServerTls::new(b.cert.clone(), missing_key));
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
        ServerTls::new(pki.key.clone(), pki.key.clone()),
    );
    let err = match sluice::start(&config).await {
        Ok(_) => panic!("started with a key as its certificate"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains(&pki.key.display().to_string()), "{err}");
    assert!(err.contains("no certificate"), "{err}");
}

/// A rustls client config trusting `ca`, for the given protocol versions.
fn client_tls(
    ca: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA cert")).expect("CA accepted");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects with `tls`, sends one HTTP/1.1 request, reads the whole answer
/// (which also takes in the session tickets a TLS 1.3 server sends after
/// the handshake); the status line and whether the session was resumed.
async fn one_request(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) -> (String, bool) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    stream
        .write_all(b"GET /r HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    // A peer that closes without close_notify is fine here.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, resumed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_clients_resume_with_tls13_and_tls12_even_after_a_reload() {
    let pki = Pki::generate("resume");
    let backend = Backend::start(Duration::ZERO).await;
    let config = tls_config(backend.addr, pki.server_tls());
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();

    for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
        let tls = client_tls(&pki.ca, versions);
        let (status, resumed) = one_request(addr, &tls).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(!resumed, "the first connection cannot resume");
        let (status, resumed) = one_request(addr, &tls).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(resumed, "the second connection did not resume");
        // A reload with the same settings keeps the ticket keys and the
        // session cache.
        sluice.reload(&config);
        let (_, resumed) = one_request(addr, &tls).await;
        assert!(resumed, "resumption did not survive a reload");
    }

    let text = scrape(&client(), sluice.admin_addr()).await;
    let sessions = samples(&text, "sluice_tls_sessions_total");
    let get = |version: &str, resumed: &str| {
        sessions
            .get(&format!(
                "alpn=\"http/1.1\",resumed=\"{resumed}\",version=\"{version}\""
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(get("TLSv1.3", "false"), 1.0, "{sessions:?}");
    assert_eq!(get("TLSv1.3", "true"), 2.0, "{sessions:?}");
    assert_eq!(get("TLSv1.2", "false"), 1.0, "{sessions:?}");
    assert_eq!(get("TLSv1.2", "true"), 2.0, "{sessions:?}");
    assert_eq!(
        sum_of(&text, "sluice_tls_handshakes_total", &["result=\"ok\""]),
        6.0
    );
    assert_eq!(
        sum_of(&text, "sluice_tls_handshake_seconds_count", &[]),
        6.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tickets_tls13_still_resumes_from_the_session_cache_and_with_neither_it_does_not() {
    let pki = Pki::generate("resume-off");
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = tls_config(backend.addr, pki.server_tls());
    if let Some(tls) = config.server.tls.as_mut() {
        tls.session_tickets = false;
    }
    let sluice = TestSluice::start(&config).await;
    let tls = client_tls(&pki.ca, &[&rustls::version::TLS13]);
    let _first = one_request(sluice.proxy_addr(), &tls).await;
    assert!(one_request(sluice.proxy_addr(), &tls).await.1);

    if let Some(tls) = config.server.tls.as_mut() {
        tls.session_cache = 0;
    }
    sluice.reload(&config);
    let tls = client_tls(&pki.ca, &[&rustls::version::TLS13]);
    let _first = one_request(sluice.proxy_addr(), &tls).await;
    assert!(!one_request(sluice.proxy_addr(), &tls).await.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_holds_its_connection_slot_until_the_handshake_timeout() {
    let pki = Pki::generate("handshake-timeout");
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = tls_config(backend.addr, pki.server_tls());
    // The request-head timeout is far away: only the handshake timeout can
    // close the stalled connection within the test's wait.
    config.server.header_timeout = Duration::from_secs(600);
    config.server.max_connections = 1;
    if let Some(tls) = config.server.tls.as_mut() {
        tls.handshake_timeout = Duration::from_millis(200);
    }
    let sluice = TestSluice::start(&config).await;
    let admin = sluice.admin_addr();

    // Opens TCP and sends nothing.
    let mut stalled = TcpStream::connect(sluice.proxy_addr())
        .await
        .expect("connect");
    let client = client();
    until_metrics(&client, admin, |text| {
        sum_of(text, "sluice_connections_open", &[]) == 1.0
    })
    .await;
    // The stalled handshake holds the one place: the next connection is refused.
    let mut refused = TcpStream::connect(sluice.proxy_addr())
        .await
        .expect("connect");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), refused.read_to_end(&mut answer));
    assert!(
        read.await.is_ok(),
        "a connection beyond the cap was kept open"
    );
    assert!(answer.is_empty(), "a refused TLS connection gets no bytes");

    let read = tokio::time::timeout(Duration::from_secs(30), stalled.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "a stalled handshake was kept open");
    let text = until_metrics(&client, admin, |text| {
        sum_of(text, "sluice_connections_open", &[]) == 0.0
    })
    .await;
    assert_eq!(
        sum_of(
            &text,
            "sluice_tls_handshakes_total",
            &["result=\"timed_out\""]
        ),
        1.0
    );
    assert_eq!(
        sum_of(
            &text,
            "sluice_connections_refused_total",
            &["listener=\"proxy\""]
        ),
        1.0
    );
    // The place is free again.
    let tls = client_tls(&pki.ca, &[&rustls::version::TLS13]);
    let (status, _) = one_request(sluice.proxy_addr(), &tls).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(backend.count(), 1);
}

/// Opens a connection and sends a real TLS 1.3 ClientHello whose SNI is an
/// IP address, as `wrk` and many health checkers send it (rustls's own
/// client never does: the name it hands over is rewritten in the bytes, so
/// the handshake then fails at its Finished check, after the server has
/// read the hello).
async fn hello_with_ip_sni(addr: SocketAddr, tls: &Arc<rustls::ClientConfig>) {
    // "localhost" and "127.0.0.1" have the same length, so the record's
    // lengths stay right.
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn = rustls::ClientConnection::new(tls.clone(), name).expect("client");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("hello");
    }
    let at = hello
        .windows(9)
        .position(|w| w == b"localhost")
        .expect("SNI in the hello");
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(&hello).await.expect("write");
    // The server answers its flight; the client gives up there.
    let mut answer = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_handshakes_with_an_ip_address_as_sni_write_at_most_one_log_line() {
    let pki = Pki::generate("sni-flood");
    let backend = Backend::start(Duration::ZERO).await;
    let dir = pki.cert.parent().expect("pki dir").to_path_buf();
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
[server.tls]
cert = "{cert}"
key = "{key}"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
level = "info"
access_log = false
[upstreams.api]
targets = ["{backend}"]
[[routes]]
name = "main"
upstream = "api"
"#,
            cert = pki.cert.display(),
            key = pki.key.display(),
            backend = backend.addr,
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let pid = child.id();
    let stop = move || {
        // The process is ours; `kill` by its pid.
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    };
    let stderr = child.stderr.take().expect("stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let (proxy, admin) = loop {
        let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(30)) else {
            stop();
            panic!("sluice did not say where it listens: {lines:?}");
        };
        let record: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let fields = &record["fields"];
        if let (Some(p), Some(a)) = (fields["proxy_addr"].as_str(), fields["admin_addr"].as_str()) {
            break (
                p.parse::<SocketAddr>().expect("proxy"),
                a.parse::<SocketAddr>().expect("admin"),
            );
        }
        lines.push(line);
    };

    let tls = client_tls(&pki.ca, &[&rustls::version::TLS13]);
    for _ in 0..100 {
        hello_with_ip_sni(proxy, &tls).await;
    }
    let text = until_metrics(&client(), admin, |text| {
        sum_of(text, "sluice_tls_handshakes_total", &["result=\"failed\""]) >= 100.0
    })
    .await;
    stop();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(10)) {
        lines.push(line);
    }
    assert!(status.success(), "{status:?}");
    let warned = sum_of(
        &text,
        "sluice_client_warnings_total",
        &["library=\"rustls\""],
    );
    assert!(
        warned >= 100.0,
        "the warnings were not counted: {warned}; {lines:#?}"
    );
    let sni: Vec<&String> = lines.iter().filter(|l| l.contains("SNI")).collect();
    assert!(sni.len() <= 1, "{} SNI lines: {sni:#?}", sni.len());
    // Nothing else was written per connection either.
    assert!(lines.len() < 20, "{} log lines: {lines:#?}", lines.len());
}
