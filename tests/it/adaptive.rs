//! Adaptive concurrency end to end: a backend whose latency climbs once more
//! than K requests are in flight, a closed loop of far more clients than K,
//! and the exported `sluice_upstream_concurrency_limit` settling near K.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sluice::config::{AdaptiveConfig, Config};
use tokio::net::TcpListener;

/// In flight at the backend up to which its latency stays at [`BASE`].
const K: usize = 20;
/// The backend's latency without load.
const BASE: Duration = Duration::from_millis(10);
/// Clients in the closed loop: five times K.
const CLIENTS: usize = 100;
/// The adaptive limit's tolerance (its default).
const TOLERANCE: f64 = 1.5;
/// How long the clients keep sending.
const LOAD_FOR: Duration = Duration::from_secs(5);
/// The window at the end of the load in which the limit is read.
const SETTLED_FOR: Duration = Duration::from_secs(2);
/// Requests per client at most (bounds the loop whatever the timing).
const MAX_PER_CLIENT: usize = 2_000;

/// A backend on 127.0.0.1 that answers after [`BASE`] while at most K
/// requests are in flight, and after `BASE * in_flight / K` beyond: it does K
/// at a time, and more only by serving each slower.
struct KneeBackend {
    addr: SocketAddr,
    state: Arc<KneeState>,
    _runtime: OwnRuntime,
}

#[derive(Default)]
struct KneeState {
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    served: AtomicUsize,
}

impl KneeBackend {
    async fn start() -> KneeBackend {
        // Its own runtime and thread, as tests/common's Backend, so the load
        // generator does not delay its answers.
        let runtime = OwnRuntime::new(1);
        let state = Arc::new(KneeState::default());
        let serving = state.clone();
        let addr = runtime
            .handle
            .spawn(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = serving.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |_req: Request<Incoming>| {
                                let state = state.clone();
                                async move { Ok::<_, Infallible>(state.serve().await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
                addr
            })
            .await
            .unwrap();
        KneeBackend {
            addr,
            state,
            _runtime: runtime,
        }
    }

    fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    fn served(&self) -> usize {
        self.state.served.load(Ordering::SeqCst)
    }
}

impl KneeState {
    async fn serve(&self) -> Response<Full<Bytes>> {
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(latency(now)).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::SeqCst);
        Response::new(Full::new(Bytes::from_static(b"ok")))
    }
}

/// The backend's latency for a request arriving with `inflight` in flight
/// (itself included).
fn latency(inflight: usize) -> Duration {
    if inflight <= K {
        BASE
    } else {
        BASE * inflight as u32 / K as u32
    }
}

/// One upstream `api` with `max_inflight = 200` and the adaptive limit at
/// the documented defaults written out (tolerance 1.5, smoothing 0.2), from
/// 20; one route without a rate limit and a generous queue.
fn adaptive_config(backend: SocketAddr) -> Config {
    let mut config = config(&[backend]);
    let upstream = config.upstreams.get_mut("api").expect("upstream api");
    upstream.max_inflight = NonZeroUsize::new(200).unwrap();
    upstream.adaptive = Some(AdaptiveConfig {
        min_limit: NonZeroUsize::new(1).unwrap(),
        max_limit: NonZeroUsize::new(200).unwrap(),
        initial_limit: NonZeroUsize::new(20).unwrap(),
        tolerance: TOLERANCE,
        smoothing: 0.2,
    });
    config.routes = vec![route("main", "/", None, 5000, Duration::from_secs(10))];
    config
}

/// What one scrape of /metrics said about upstream `api`.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Since the load started.
    at: Duration,
    /// `sluice_upstream_concurrency_limit`.
    limit: f64,
    /// `sluice_upstream_response_seconds` sum and count.
    latency_sum: f64,
    latency_count: f64,
}

async fn read(client: &TestClient, admin: SocketAddr, at: Duration) -> Reading {
    let text = scrape(client, admin).await;
    let one = |name: &str| {
        *samples(&text, name)
            .get("upstream=\"api\"")
            .unwrap_or_else(|| panic!("{name} is exported"))
    };
    Reading {
        at,
        limit: one("sluice_upstream_concurrency_limit"),
        latency_sum: one("sluice_upstream_response_seconds_sum"),
        latency_count: one("sluice_upstream_response_seconds_count"),
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Where the controller comes to rest on this backend in an ideal, noise-free
/// closed loop: with the limit L in flight beyond the knee, latency is
/// BASE * L / K, so the gradient is `tolerance * K / L`, and the update
/// `L <- L * gradient + sqrt(L)` stands still where
/// `tolerance * K / L = 1 - 1 / sqrt(L)`.
fn equilibrium(tolerance: f64) -> f64 {
    let k = K as f64;
    let (mut low, mut high) = (k, 10.0 * k);
    for _ in 0..100 {
        let mid = (low + high) / 2.0;
        if tolerance * k / mid > 1.0 - 1.0 / mid.sqrt() {
            low = mid;
        } else {
            high = mid;
        }
    }
    low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_settles_near_the_backends_knee() {
    let _serial = serial().await;
    let backend = KneeBackend::start().await;
    let sluice = TestSluice::start(&adaptive_config(backend.addr)).await;
    let client = client();
    let admin = sluice.admin_addr();
    let first = read(&client, admin, Duration::ZERO).await;
    assert_eq!(first.limit, 20.0, "starts at initial_limit");

    let url = format!("http://{}/", sluice.proxy_addr());
    let started = Instant::now();
    let deadline = started + LOAD_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while Instant::now() < deadline && statuses.len() < MAX_PER_CLIENT {
                    statuses.push(get(&client, &url).await.status);
                }
                statuses
            })
        })
        .collect();

    // The limit over time, read every 100 ms.
    let mut trace: Vec<Reading> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        trace.push(read(&client, admin, started.elapsed()).await);
    }
    let mut statuses = Vec::new();
    for task in clients {
        statuses.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();

    let settled: Vec<Reading> = trace
        .iter()
        .copied()
        .filter(|r| r.at + SETTLED_FOR >= LOAD_FOR)
        .collect();
    let limits: Vec<f64> = settled.iter().map(|r| r.limit).collect();
    let settled_median = median(&limits);
    // Mean latency sluice measured upstream over the settled window.
    let (from, to) = (settled[0], settled[settled.len() - 1]);
    let settled_latency =
        (to.latency_sum - from.latency_sum) / (to.latency_count - from.latency_count).max(1.0);
    let ideal = equilibrium(TOLERANCE);
    let peak = trace.iter().map(|r| r.limit).fold(first.limit, f64::max);
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    println!(
        "K = {K}, tolerance {TOLERANCE}: noise-free equilibrium {ideal:.1}; limit every 100 ms: {:?}",
        trace.iter().map(|r| r.limit).collect::<Vec<_>>()
    );
    println!(
        "last {SETTLED_FOR:?}: median {settled_median}, range {}..={}; mean upstream latency \
         {:.1} ms; highest limit read {peak}; backend max in flight {}; {} requests ({ok} OK) \
         in {elapsed:.2?}, {:.0}/s",
        limits.iter().copied().fold(f64::MAX, f64::min),
        limits.iter().copied().fold(f64::MIN, f64::max),
        settled_latency * 1e3,
        backend.max_inflight(),
        statuses.len(),
        statuses.len() as f64 / elapsed.as_secs_f64()
    );

    // Every request was answered, and the backend served them all.
    assert_eq!(ok, statuses.len(), "a request was refused or failed");
    assert_eq!(backend.served(), statuses.len());
    assert!(
        statuses.len() > 2_000,
        "too little load to judge: {}",
        statuses.len()
    );
    assert!(limits.len() >= 10, "too few readings: {limits:?}");

    // The limit settled near the knee: far below the 100 clients offering
    // load and max_inflight (200). The band:
    // - low: 0.7 K, the 30% below K. Below K the backend's latency
    //   does not grow, so the controller has no reason to stay there.
    // - high: 1.4x the controller's own noise-free equilibrium, 36 for
    //   K = 20 (its unit simulation gives the same). With tolerance 1.5 the
    //   controller lets latency reach 1.5x its no-load value, plus sqrt(limit)
    //   headroom, before it pushes back, so even without noise it rests at
    //   1.8 K: the "within 30% of K" cannot hold at this tolerance.
    //   In real time the no-load latency it learns carries some of the load
    //   (timers, two debug-build hyper hops and the client on 2 cores), which
    //   shifts the rest point with the machine's load: 37 to 42 alone, 45
    //   beside another test binary, 32 with two CPU hogs. 1.4x (50, 2.5 K)
    //   covers that and still fails a limit that does not find the knee.
    // The median skips the controller's probes (one window at half the
    // limit, to re-measure the no-load latency).
    let (low, high) = (0.7 * K as f64, 1.4 * ideal);
    assert!(
        (low..=high).contains(&settled_median),
        "median limit over the last {SETTLED_FOR:?} {settled_median} is outside \
         {low:.1}..={high:.1}: {limits:?}"
    );
    // Settled: all but the odd probe reading stay in the band.
    let inside = limits.iter().filter(|l| (low..=high).contains(*l)).count();
    assert!(
        inside * 10 >= limits.len() * 8,
        "only {inside} of {} readings in {low:.1}..={high:.1}: {limits:?}",
        limits.len()
    );
    // The backend never had more in flight than the limit let through (a
    // reading may miss a peak by a few steps), far below the 100 clients.
    assert!(
        backend.max_inflight() as f64 <= peak + 5.0 && backend.max_inflight() * 3 <= CLIENTS * 2,
        "backend max in flight {} (highest limit read {peak})",
        backend.max_inflight()
    );
}
