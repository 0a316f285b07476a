//! TLS (and HTTP/2 by ALPN) from sluice to its upstream, proven by chaining
//! two sluices: B terminates TLS with a certificate for `localhost` signed by
//! a test CA, in front of a plain test backend; A's upstream is
//! `localhost:<B's port>` with `[upstreams.api.tls]` trusting that CA.
//! Certificates are generated at test time with rcgen.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::pki::Pki;
use crate::common::*;
use http::StatusCode;
use sluice::config::{Config, ServerTls, TargetConfig, UpstreamTls};
use tokio::net::{TcpListener, TcpStream};

/// Sluice B: terminates TLS with `pki`'s certificate in front of `backend`;
/// one route without a rate limit.
fn tls_terminating(backend: SocketAddr, pki: &Pki) -> Config {
    let mut config = config(&[backend]);
    config.server.tls = Some(ServerTls::new(pki.cert.clone(), pki.key.clone()));
    config.routes = vec![route("main", "/", None, 1000, Duration::from_secs(10))];
    config
}

/// Sluice A: plain HTTP in, TLS to `localhost:port` trusting only `ca`.
fn tls_originating(port: u16, ca: &Path, http2: bool) -> Config {
    let mut config = config(&[]);
    let upstream = config.upstreams.get_mut("api").expect("upstream api");
    upstream.targets = vec![TargetConfig::new(
        format!("localhost:{port}").parse().expect("authority"),
    )];
    upstream.tls = Some(UpstreamTls {
        ca: Some(ca.to_path_buf()),
        server_name: None,
    });
    upstream.http2 = http2;
    config.routes = vec![route("main", "/", None, 1000, Duration::from_secs(10))];
    config
}

/// A plain TCP relay on 127.0.0.1 in front of `to`, counting the connections
/// it accepts: the TLS between A and B passes through it untouched.
struct Relay {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Relay {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The captured warnings containing `needle` (from every sluice in this
/// process), so a test can read why an upstream request failed.
fn log_lines(needle: &str) -> Vec<String> {
    log_capture().containing(needle)
}

/// Bounded GET: a hung chain fails the test instead of hanging it.
async fn get_within(client: &TestClient, url: &str) -> Seen {
    tokio::time::timeout(Duration::from_secs(15), get(client, url))
        .await
        .unwrap_or_else(|_| panic!("no answer for {url} within 15s"))
}

/// The value of one sample, 0 when absent.
fn sample(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name).get(labels).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_reaches_the_backend_through_tls_between_two_sluices() {
    let pki = Pki::generate("http1");
    let backend = Backend::start(Duration::ZERO).await;
    let b = TestSluice::start(&tls_terminating(backend.addr, &pki)).await;
    let a = TestSluice::start(&tls_originating(b.proxy_addr().port(), &pki.ca, false)).await;
    let client = client();

    for path in ["/one", "/two"] {
        let seen = get_within(&client, &format!("http://{}{path}", a.proxy_addr())).await;
        assert_eq!(seen.status, StatusCode::OK, "{:?}", seen.body);
        assert_eq!(seen.body, "ok");
    }

    let arrivals = backend.arrivals();
    let paths: Vec<&str> = arrivals.iter().map(|a| a.path.as_str()).collect();
    assert_eq!(paths, ["/one", "/two"]);
    // B says "https" only for a request that reached it over TLS; A, which
    // the client reached in plain HTTP, said "http".
    assert_every_arrival_carries(&arrivals, "x-forwarded-proto", "https");
    // Both sluices counted them as forwarded.
    for sluice in [&a, &b] {
        let seen = outcomes(&client, sluice.admin_addr(), "main").await;
        assert_eq!(seen.get("forwarded"), Some(&2), "{seen:?}");
    }
}

/// A's upstream (to B, through a connection-counting relay) with `http2`:
/// one request to warm the pool, then `n` at once to a backend that holds
/// each for a while. Returns the connections the relay accepted.
async fn connections_for_concurrent_requests(http2: bool, n: usize) -> usize {
    let pki = Pki::generate(if http2 { "h2" } else { "h1-control" });
    let backend = Backend::start(Duration::from_millis(300)).await;
    let b = TestSluice::start(&tls_terminating(backend.addr, &pki)).await;
    let relay = Relay::start(b.proxy_addr()).await;
    let a = TestSluice::start(&tls_originating(relay.addr.port(), &pki.ca, http2)).await;
    let client = client();
    let url = format!("http://{}/", a.proxy_addr());

    let warm = get_within(&client, &url).await;
    assert_eq!(warm.status, StatusCode::OK, "{:?}", warm.body);
    assert_eq!(relay.accepted(), 1, "one connection for the first request");

    let seen = tokio::time::timeout(Duration::from_secs(15), burst(&client, &url, n))
        .await
        .expect("the burst is answered within 15s");
    assert_eq!(by_status(&seen), [(200, n)].into(), "http2 = {http2}");
    // They were really in flight at the backend together, so on HTTP/1.1 each
    // needed a connection of its own.
    assert_eq!(backend.max_inflight(), n, "http2 = {http2}");
    assert_eq!(backend.count(), n + 1);
    for arrival in backend.arrivals() {
        assert_eq!(
            arrival
                .headers
                .get("x-forwarded-proto")
                .map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
    }
    // B saw every request, and A's upstream counted no error.
    let b_seen = outcomes(&client, b.admin_addr(), "main").await;
    assert_eq!(b_seen.get("forwarded"), Some(&(n as u64 + 1)), "{b_seen:?}");
    let a_metrics = scrape(&client, a.admin_addr()).await;
    let errors: f64 = samples(&a_metrics, "sluice_upstream_errors_total")
        .values()
        .sum();
    assert_eq!(errors, 0.0, "http2 = {http2}");
    relay.accepted()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_is_negotiated_by_alpn_and_multiplexes_on_one_connection() {
    let _serial = serial().await;
    let n = 8;
    // B offers h2 and http/1.1 by ALPN; A with `http2 = true` offers h2 too.
    // Eight requests at once on one TCP connection to B can only be HTTP/2.
    let h2 = connections_for_concurrent_requests(true, n).await;
    assert_eq!(h2, 1, "HTTP/2 to B: every request on the first connection");
    // The control: the same chain on HTTP/1.1 opens a connection per request
    // in flight, so the count above tells the protocols apart.
    let h1 = connections_for_concurrent_requests(false, n).await;
    assert_eq!(
        h1, n,
        "HTTP/1.1 to B: one connection per concurrent request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_from_an_untrusted_ca_is_a_502_and_a_stays_up() {
    log_capture();
    let pki = Pki::generate("served");
    let stranger = Pki::generate("stranger");
    let backend = Backend::start(Duration::ZERO).await;
    let b = TestSluice::start(&tls_terminating(backend.addr, &pki)).await;
    // A trusts a different CA than the one that signed B's certificate.
    let a = TestSluice::start(&tls_originating(b.proxy_addr().port(), &stranger.ca, false)).await;
    let client = client();

    for path in ["/first", "/second"] {
        let seen = get_within(&client, &format!("http://{}{path}", a.proxy_addr())).await;
        assert_eq!(seen.status, StatusCode::BAD_GATEWAY, "{:?}", seen.body);
    }
    assert_eq!(backend.count(), 0, "nothing got past the failed handshake");
    // Because B's certificate is not trusted (logged by A with its cause;
    // the lines naming B, as other tests in this process log failures too).
    let b_target = format!("localhost:{}", b.proxy_addr().port());
    let failures: Vec<String> = log_lines("upstream request failed")
        .into_iter()
        .filter(|line| line.contains(&b_target))
        .collect();
    assert!(!failures.is_empty(), "no failure logged");
    for line in &failures {
        assert!(
            line.contains("UnknownIssuer") || line.contains("invalid peer certificate"),
            "{line}"
        );
    }

    // A stays up: its admin answers, it counted the failures as connect errors
    // and the requests as upstream errors.
    let health = get_within(&client, &format!("http://{}/healthz", a.admin_addr())).await;
    assert_eq!(health.status, StatusCode::OK);
    let text = scrape(&client, a.admin_addr()).await;
    assert!(
        sample(
            &text,
            "sluice_upstream_errors_total",
            "kind=\"connect\",upstream=\"api\""
        ) >= 2.0,
        "{:?}",
        samples(&text, "sluice_upstream_errors_total")
    );
    let seen = outcomes(&client, a.admin_addr(), "main").await;
    assert_eq!(seen.get("upstream_error"), Some(&2), "{seen:?}");
    // B served no request (the handshake failed before any).
    assert_eq!(outcomes(&client, b.admin_addr(), "main").await.len(), 0);

    // And A still proxies: the same chain with the right CA, in a reload.
    a.reload(&tls_originating(b.proxy_addr().port(), &pki.ca, false));
    let seen = get_within(&client, &format!("http://{}/after", a.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::OK, "{:?}", seen.body);
    assert_eq!(backend.count(), 1);
}
