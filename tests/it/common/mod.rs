//! Shared test helpers: a recording backend, a sluice started in-process on
//! ephemeral ports, a real HTTP client, and a /metrics reader.

pub mod pki;
pub mod redis;
pub mod scripted;
pub mod sockets;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::config::{Config, RouteConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One process-wide origin, so client and backend timestamps compare.
pub static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Header the client sets to its send time (µs since [`EPOCH`]).
pub const SENT_AT: &str = "x-test-sent-at";

pub fn micros_now() -> u64 {
    EPOCH.elapsed().as_micros() as u64
}

/// The wall clock, shared by every test in this process (`tests/it`): a
/// test that measures time holds it alone ([`serial`]); every other test
/// holds a share of it while one of its sluices runs ([`TestSluice`]), so
/// no other test's sluice loads the machine under a measurement.
static WALL_CLOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

thread_local! {
    /// Whether the test on this thread holds [`serial`] (libtest runs each
    /// test on a thread of its own, and the test's body on that thread).
    static SERIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The share of the test on this thread, while a sluice of it runs:
    /// its next sluice reuses it rather than queue behind a waiting
    /// [`serial`] (which waits for this very share).
    static SHARE: std::cell::RefCell<std::sync::Weak<Share>> =
        const { std::cell::RefCell::new(std::sync::Weak::new()) };
}

type Share = tokio::sync::RwLockReadGuard<'static, ()>;

/// Timing-sensitive tests take this first thing: no other such test, and
/// no other test's sluice, runs until it is dropped.
pub async fn serial() -> Serial {
    let guard = WALL_CLOCK.write().await;
    SERIAL.set(true);
    Serial { _guard: guard }
}

/// Held by a timing-sensitive test (see [`serial`]).
pub struct Serial {
    _guard: tokio::sync::RwLockWriteGuard<'static, ()>,
}

impl Drop for Serial {
    fn drop(&mut self) {
        SERIAL.set(false);
    }
}

/// A share of the wall clock for a sluice of this thread's test: none if
/// the test holds [`serial`], else the test's current share or a new one.
async fn share() -> Option<std::sync::Arc<Share>> {
    if SERIAL.get() {
        return None;
    }
    if let Some(share) = SHARE.with_borrow(std::sync::Weak::upgrade) {
        return Some(share);
    }
    let share = std::sync::Arc::new(WALL_CLOCK.read().await);
    SHARE.set(std::sync::Arc::downgrade(&share));
    Some(share)
}

/// A request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// µs since [`EPOCH`].
    pub at: u64,
    pub path: String,
    pub headers: HeaderMap,
    /// How long before arriving here the client sent it.
    pub age: Option<Duration>,
}

/// Asserts that every request in `arrivals` carried the field `name` with
/// exactly `value`.
pub fn assert_every_arrival_carries(arrivals: &[Arrival], name: &str, value: &str) {
    for arrival in arrivals {
        assert_eq!(
            arrival.headers.get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{}: {:?}",
            arrival.path,
            arrival.headers
        );
    }
}

/// A test backend on 127.0.0.1 that records arrivals and concurrency.
#[derive(Clone)]
pub struct Backend {
    pub addr: SocketAddr,
    state: Arc<BackendState>,
    _runtime: Arc<OwnRuntime>,
}

/// A tokio runtime on its own thread, stopped when dropped.
pub struct OwnRuntime {
    pub handle: tokio::runtime::Handle,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl OwnRuntime {
    pub fn new(workers: usize) -> OwnRuntime {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(runtime.handle().clone()).unwrap();
            runtime.block_on(async {
                let _ = stopped.await;
            });
            runtime.shutdown_background();
        });
        OwnRuntime {
            handle: handle_rx.recv().unwrap(),
            stop: Mutex::new(Some(stop)),
        }
    }

    /// Stops the runtime: every task on it (listeners, connections) is dropped.
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// sluice started on its own runtime (as in production), on ephemeral ports.
pub struct TestSluice {
    proxy: SocketAddr,
    admin: SocketAddr,
    running: Option<sluice::Running>,
    runtime: OwnRuntime,
    /// Declared last: released after the sluice has stopped.
    _share: Option<std::sync::Arc<Share>>,
}

impl TestSluice {
    pub async fn start(config: &Config) -> TestSluice {
        let share = share().await;
        let runtime = OwnRuntime::new(2);
        let config = config.clone();
        let running = runtime
            .handle
            .spawn(async move { sluice::start(&config).await })
            .await
            .unwrap()
            .expect("sluice starts");
        TestSluice {
            proxy: running.proxy_addr(),
            admin: running.admin_addr(),
            running: Some(running),
            runtime,
            _share: share,
        }
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(&mut self) {
        self.begin_shutdown();
        self.wait_stopped().await;
    }

    /// Starts a graceful shutdown and returns at once.
    pub fn begin_shutdown(&self) {
        let _runtime = self.runtime.handle.enter();
        self.running.as_ref().expect("running").shutdown();
    }

    /// Waits for a shutdown begun earlier to finish.
    pub async fn wait_stopped(&mut self) {
        let running = self.running.take().expect("running");
        self.runtime.handle.spawn(running.wait()).await.unwrap();
    }

    /// Swaps in a new config, as a reload does.
    pub fn reload(&self, config: &Config) {
        self.try_reload(config).expect("reload succeeds");
    }

    /// Swaps in a new config; a refused reload keeps the running one.
    pub fn try_reload(&self, config: &Config) -> Result<(), sluice::runtime::ReloadError> {
        let _runtime = self.runtime.handle.enter();
        self.running.as_ref().expect("running").reload(config)
    }

    /// Reloads from a file, as SIGHUP does.
    pub fn reload_file(&self, path: &std::path::Path) -> Result<(), sluice::runtime::ReloadError> {
        let _runtime = self.runtime.handle.enter();
        self.running.as_ref().expect("running").reload_file(path)
    }
}

struct BackendState {
    arrivals: Mutex<Vec<Arrival>>,
    inflight: AtomicUsize,
    max_inflight: AtomicUsize,
    completed_paths: Mutex<Vec<String>>,
    delay: Duration,
}

impl Backend {
    /// Answers 200 "ok" after `delay`.
    pub async fn start(delay: Duration) -> Backend {
        Backend::start_on("127.0.0.1:0".parse().unwrap(), delay).await
    }

    /// Kills the backend: its listener and every connection close at once;
    /// requests it was serving never complete.
    pub fn kill(&self) {
        self._runtime.stop();
    }

    /// Answered requests for `path`.
    pub fn completed_for(&self, path: &str) -> usize {
        self.state
            .completed_paths
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    /// A backend on a given address (e.g. to bring a killed one back).
    pub async fn start_on(addr: SocketAddr, delay: Duration) -> Backend {
        // Its own runtime and thread, so the client's load in the test's
        // runtime does not delay the arrival timestamps.
        let runtime = Arc::new(OwnRuntime::new(1));
        let state = Arc::new(BackendState {
            arrivals: Mutex::new(Vec::new()),
            inflight: AtomicUsize::new(0),
            max_inflight: AtomicUsize::new(0),
            completed_paths: Mutex::new(Vec::new()),
            delay,
        });
        let addr = runtime
            .handle
            .spawn(Backend::serve(state.clone(), addr))
            .await
            .unwrap();
        Backend {
            addr,
            state,
            _runtime: runtime,
        }
    }

    /// Binds and spawns the accept loop; returns the address.
    async fn serve(state: Arc<BackendState>, addr: SocketAddr) -> SocketAddr {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        serve_http1(listener, move |req| {
            let state = state.clone();
            async move { state.serve(req).await }
        });
        addr
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.arrivals.lock().unwrap().len()
    }

    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }
}

impl BackendState {
    async fn serve(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let at = micros_now();
        let path = req.uri().path().to_string();
        let age = req
            .headers()
            .get(SENT_AT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|sent| Duration::from_micros(at.saturating_sub(sent)));
        self.arrivals.lock().unwrap().push(Arrival {
            at,
            path: req.uri().path().to_string(),
            headers: req.headers().clone(),
            age,
        });
        let now = self.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_inflight.fetch_max(now, Ordering::SeqCst);
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        tokio::time::sleep(self.delay).await;
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        self.completed_paths.lock().unwrap().push(path);
        let text = match body {
            Ok(b) if !b.is_empty() => b,
            _ => Bytes::from_static(b"ok"),
        };
        Response::new(Full::new(text))
    }
}

/// Sends raw bytes and returns the status line sluice answers with.
pub async fn raw_status(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends raw bytes and reads everything sluice answers until it closes the
/// connection (or 5 s pass).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An HTTP/2 (h2c, prior knowledge) backend on an ephemeral port of
/// 127.0.0.1, every request answered by `answer`.
pub async fn h2c_backend<F, Fut, B>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let answered = answer(req);
                    async move { Ok::<_, Infallible>(answered.await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A free port on 127.0.0.1 with nothing listening on it.
pub async fn dead_addr() -> SocketAddr {
    // Bound but not listening: a connection to it is refused, and no other
    // test can take the port while the suite runs (a port that was merely
    // free a moment ago can be handed to another test's server, which
    // then answers instead of refusing). Held for the process's life.
    static HELD: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    HELD.lock().unwrap().push(socket);
    addr
}

/// A config with one upstream `api` at `targets` and one route `main` on "/"
/// (100 r/s, burst 10, a queue of 1000 waiting up to 10 s). Besides the
/// route, what differs from the defaults: both listeners on a free loopback
/// port, a short drain, a quiet log, and room for many connections to the
/// test backend. No targets is allowed (a test fills them in).
pub fn config(targets: &[SocketAddr]) -> Config {
    // The loader wants at least one target: a placeholder, taken out below.
    let listed: Vec<String> = match targets {
        [] => vec!["\"127.0.0.1:1\"".into()],
        _ => targets.iter().map(|a| format!("\"{a}\"")).collect(),
    };
    let mut config = parse_config(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
idle_timeout = "75s"
drain_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"
access_log = false

[upstreams.api]
targets = [{}]
retries = 1
max_inflight = 1000
pool_max_idle_per_target = 1024

[[routes]]
name = "main"
upstream = "api"
limit = {{ rate = 100, burst = 10 }}
queue = {{ capacity = 1000, timeout = "10s" }}
"#,
        listed.join(", ")
    ));
    if targets.is_empty()
        && let Some(api) = config.upstreams.get_mut("api")
    {
        api.targets.clear();
    }
    config
}

/// A route on `upstream = "api"`: `rate` is (requests per second, burst),
/// none for no limit; the queue holds `capacity` waiting up to `timeout`.
pub fn route(
    name: &str,
    prefix: &str,
    rate: Option<(f64, u32)>,
    capacity: usize,
    timeout: Duration,
) -> RouteConfig {
    let limit = rate.map_or(String::new(), |(rate, burst)| {
        format!("limit = {{ rate = {rate}, burst = {burst} }}\n")
    });
    let timeout = humantime::format_duration(timeout);
    let mut config = parse_config(&format!(
        r#"
[upstreams.api]
targets = ["127.0.0.1:1"]

[[routes]]
name = {name:?}
path_prefix = {prefix:?}
upstream = "api"
{limit}queue = {{ capacity = {capacity}, timeout = "{timeout}" }}
"#
    ));
    config.routes.remove(0)
}

/// A test config from TOML text, through the real loader.
pub fn parse_config(src: &str) -> Config {
    Config::parse(src, std::path::Path::new("test.toml"))
        .unwrap_or_else(|e| panic!("test config does not load: {e}\n{src}"))
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 keep-alive client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build_http()
}

/// What a client saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    /// From sending to the end of the response body.
    pub latency: Duration,
    pub body: Bytes,
}

/// GETs `url`, stamping the send time.
pub async fn get(client: &TestClient, url: &str) -> Seen {
    send(client, get_request(url, &[])).await
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Seen {
    let started = Instant::now();
    let response = client.request(req).await.expect("sluice answers");
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Seen {
        status,
        retry_after,
        latency: started.elapsed(),
        body,
    }
}

/// Sends `count` requests made by `make`, `per_second` of them, open loop
/// (each on its own task, whatever the answers' pace); returns what each saw.
pub async fn paced(
    client: &TestClient,
    make: impl Fn() -> Request<Full<Bytes>>,
    per_second: f64,
    count: usize,
) -> Vec<Seen> {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second));
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        tick.tick().await;
        let (client, req) = (client.clone(), make());
        tasks.push(tokio::spawn(async move { send(&client, req).await }));
    }
    let mut seen = Vec::with_capacity(count);
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

/// A GET of `url` with `headers`, stamped with its send time.
pub fn get_request(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::get(url).header(SENT_AT, micros_now().to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

/// Sends `n` GETs at once and returns what each client saw, in send order.
pub async fn burst(client: &TestClient, url: &str, n: usize) -> Vec<Seen> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let url = url.to_string();
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let mut seen = Vec::with_capacity(n);
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

/// The value of every sample of `name` in the exposition text, keyed by its label string.
pub fn samples(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes /metrics.
pub async fn scrape(client: &TestClient, admin: SocketAddr) -> String {
    let seen = get(client, &format!("http://{admin}/metrics")).await;
    assert_eq!(seen.status, StatusCode::OK);
    String::from_utf8(seen.body.to_vec()).unwrap()
}

/// `sluice_requests_total` for one route, by outcome.
pub async fn outcomes(
    client: &TestClient,
    admin: SocketAddr,
    route: &str,
) -> BTreeMap<String, u64> {
    let text = scrape(client, admin).await;
    samples(&text, "sluice_requests_total")
        .into_iter()
        .filter_map(|(labels, v)| {
            let route_label = format!("route=\"{route}\"");
            if !labels.split(',').any(|l| l == route_label) {
                return None;
            }
            let outcome = labels
                .split(',')
                .find_map(|l| l.strip_prefix("outcome=\""))?
                .trim_end_matches('"')
                .to_string();
            Some((outcome, v as u64))
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Counts statuses.
pub fn by_status(seen: &[Seen]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for s in seen {
        *counts.entry(s.status.as_u16()).or_default() += 1;
    }
    counts
}

/// Reads a raw HTTP/1.1 response head from `socket` and returns its status
/// (`None` if the connection closed first, or nothing came within 10 s).
pub async fn read_status(socket: &mut tokio::net::TcpStream) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()?;
    let line = std::str::from_utf8(&head).ok()?.lines().next()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Sends raw bytes to sluice on a new connection and returns the status of
/// the answer (`None` if the connection closed without one).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    read_status(&mut socket).await
}

/// The sum of the samples of `name` whose labels contain every one of `labels`
/// (e.g. `upstream="api"`).
pub fn sum_of(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|want| l.split(',').any(|have| have == *want))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits (at most 10 s, polling every 20 ms) until `done` holds for a fresh
/// scrape of /metrics; returns the last scrape.
pub async fn until_metrics(
    client: &TestClient,
    admin: SocketAddr,
    done: impl Fn(&str) -> bool,
) -> String {
    let mut text = scrape(client, admin).await;
    for _ in 0..500 {
        if done(&text) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(client, admin).await;
    }
    text
}

/// The log lines written in this test process, as JSON: the access log
/// (`sluice::access` at info) and every warning, captured by one global
/// subscriber installed on first use (a process has only one). Tests share
/// it: pick your lines by a path or a message no other test produces.
pub fn log_capture() -> &'static LogCapture {
    static LOG: LazyLock<LogCapture> = LazyLock::new(|| {
        let log = LogCapture(Arc::new(Mutex::new(Vec::new())));
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,sluice::access=info",
            ))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        log
    });
    &LOG
}

/// Captured JSON log lines.
#[derive(Clone)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// Every captured line (the whole JSON record) containing `needle`.
    pub fn containing(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The `fields` of every access log line for `path`, in order.
    pub fn for_path(&self, path: &str) -> Vec<serde_json::Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["target"] == "sluice::access")
            .map(|line| line["fields"].clone())
            .filter(|fields| fields["path"] == path)
            .collect()
    }

    /// Waits (at most 10 s) until `path` has `n` lines; returns them.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..500 {
            if self.for_path(path).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.for_path(path)
    }
}

/// Serves HTTP/1.1 on `listener` with `handle`, a task per connection, until
/// the runtime ends.
pub fn serve_http1<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let reply = handle(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A `sluice run` process (JSON logs on stderr) that has said it serves.
pub struct Serving {
    pub child: std::process::Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The log lines before the one saying it serves (start-up work such as
    /// replaying a journal is logged there).
    pub before: Vec<String>,
    /// The rest of its stderr.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
}

/// Spawns `command`, which ends up running `sluice run` with JSON logs, and
/// reads its stderr until the line that gives its proxy and admin
/// addresses. Kills it and fails if it ends before that line.
pub fn spawn_serving(mut command: std::process::Command) -> Serving {
    use std::io::BufRead;
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut before = Vec::new();
    loop {
        let line = lines.next().and_then(Result::ok);
        let record = line
            .as_deref()
            .map(serde_json::from_str::<serde_json::Value>);
        let Some(Ok(record)) = record else {
            // Its own PID only.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "sluice ended, or wrote a line that is not JSON, before serving: {line:?} after {before:?}"
            );
        };
        let line = line.unwrap_or_default();
        let fields = &record["fields"];
        if let (Some(p), Some(a)) = (fields["proxy_addr"].as_str(), fields["admin_addr"].as_str()) {
            return Serving {
                child,
                proxy: p.parse().unwrap(),
                admin: a.parse().unwrap(),
                before,
                lines,
            };
        }
        before.push(line);
    }
}
