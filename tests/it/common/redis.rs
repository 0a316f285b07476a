//! A real `redis-server` for the global-limit tests: our own process on a
//! free 127.0.0.1 port, no persistence, killed by PID when dropped (and by a
//! watchdog if this test process dies without dropping it).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Env var with the URL of a redis-server the test command (`.ci/test`)
/// started for the whole run.
pub const SHARED_URL_ENV: &str = "SLUICE_TEST_REDIS_URL";

/// How long a fresh redis-server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Attempts at a free port before giving up (another process may take the
/// port between our probe and redis-server's bind).
const PORT_ATTEMPTS: usize = 10;

/// A key prefix no other test (nor an earlier run on the same server) uses,
/// for tests that share one Redis.
pub fn unique_prefix(test: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "sluice-test:{test}:{}:{nanos}:{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// The URL of a Redis the whole test binary may share: the test command's
/// (`SLUICE_TEST_REDIS_URL`), else one started here on first use and kept
/// for the life of the process. Tests sharing it must use unique key prefixes.
pub fn shared_url() -> String {
    if let Ok(url) = std::env::var(SHARED_URL_ENV)
        && !url.is_empty()
    {
        return url;
    }
    static SHARED: OnceLock<RedisServer> = OnceLock::new();
    SHARED.get_or_init(RedisServer::start).url()
}

/// A redis-server process of our own.
pub struct RedisServer {
    port: u16,
    running: Option<Running>,
}

/// The server process and its watchdog: `sh` blocked reading a pipe whose
/// other end only this process holds; when this process exits however it
/// exits, the pipe closes and the watchdog kills the server by PID, so no
/// test run leaves a redis-server behind (a `static` is never dropped).
struct Running {
    server: Child,
    watchdog: Child,
}

impl RedisServer {
    /// Starts redis-server on a free ephemeral port and waits until it
    /// answers PING.
    pub fn start() -> RedisServer {
        let binary = redis_server_binary();
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match Running::spawn(&binary, port) {
                Ok(running) => {
                    return RedisServer {
                        port,
                        running: Some(running),
                    };
                }
                Err(why) => failures.push(format!("port {port}: {why}")),
            }
        }
        panic!(
            "redis-server did not start in {PORT_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL, by PID) and waits for it: its port refuses
    /// connections and every open connection is reset.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.kill();
        }
    }

    /// Starts the server again on the same port (with empty state).
    pub fn restart(&mut self) {
        self.stop();
        let binary = redis_server_binary();
        let mut failures = Vec::new();
        // The port was ours a moment ago; redis-server binds with
        // SO_REUSEADDR, so only a stranger taking it in between fails this.
        for _ in 0..3 {
            match Running::spawn(&binary, self.port) {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "redis-server did not restart on port {}:\n{}",
            self.port,
            failures.join("\n")
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Running {
    fn spawn(binary: &PathBuf, port: u16) -> Result<Running, String> {
        let mut server = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .args(["--loglevel", "warning", "--daemonize", "no"])
            // Nothing is written (no RDB, no AOF), but keep its cwd out of the repo.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", binary.display()))?;
        let watchdog = match Command::new("sh")
            .args([
                "-c",
                "cat >/dev/null; kill -9 \"$1\" 2>/dev/null",
                "watchdog",
            ])
            .arg(server.id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(watchdog) => watchdog,
            Err(err) => {
                let _ = server.kill();
                let _ = server.wait();
                return Err(format!("cannot start the watchdog: {err}"));
            }
        };
        Running { server, watchdog }.wait_ready(port, Instant::now() + READY_WITHIN)
    }

    /// Waits for PONG; a server that exits first (its port was taken) or
    /// stays silent is killed and the reason returned.
    fn wait_ready(mut self, port: u16, deadline: Instant) -> Result<Running, String> {
        loop {
            if ping(port) {
                return Ok(self);
            }
            match self.server.try_wait() {
                Ok(Some(status)) => {
                    self.kill();
                    return Err(format!(
                        "redis-server exited at start ({status}); port taken?"
                    ));
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => {
                    self.kill();
                    return Err(format!("no PONG within {READY_WITHIN:?}"));
                }
            }
        }
    }

    /// Kills the watchdog first (so it cannot outlive the server's PID), then
    /// the server, each by PID, and reaps both.
    fn kill(mut self) {
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Whether a Redis on `port` answers PING.
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A port nothing listens on now: bound to 127.0.0.1:0, then released.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0")
}

/// The redis-server binary: /usr/bin (Debian's package), else on PATH.
fn redis_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    ["/usr/bin".into(), "/usr/local/bin".into()]
        .into_iter()
        .chain(on_path)
        .map(|dir: PathBuf| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "redis-server not found; run .ci/test, which installs it \
                 (Debian package `redis-server`)"
            )
        })
}
