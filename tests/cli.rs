//! The `sluice` binary as a user runs it: `check` and `run`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml")
}

/// Writes `text` to a fresh file under the target dir and returns its path.
fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_prints_the_effective_config_which_parses_back() {
    let output = sluice()
        .args(["check", "--config"])
        .arg(example())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    // Defaults are filled in.
    assert!(printed.contains("drain_timeout"), "{printed}");
    let reparsed = sluice::Config::parse(&printed, Path::new("printed.toml")).unwrap();
    let original = sluice::Config::load(&example()).unwrap();
    assert_eq!(reparsed.routes, original.routes);
    assert_eq!(reparsed.upstreams, original.upstreams);
}

#[test]
fn check_names_file_line_and_key_and_exits_non_zero() {
    let text = std::fs::read_to_string(example())
        .unwrap()
        .replacen("rate = 200", "rate = 0", 1);
    let line = text
        .lines()
        .position(|l| l.trim_start().starts_with("rate = 0"))
        .unwrap()
        + 1;
    let path = write_config("zero-rate.toml", &text);
    let output = sluice()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("zero-rate.toml:{line}:")),
        "{stderr}"
    );
    assert!(stderr.contains("routes[0].limit.rate"), "{stderr}");
}

#[test]
fn check_reports_a_missing_file() {
    let output = sluice()
        .args(["check", "--config", "/nonexistent/sluice.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/sluice.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_sigterm_then_exits_cleanly() {
    let backend = Backend::start(Duration::ZERO).await;
    let path = write_config(
        "run.toml",
        &format!(
            r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
[upstreams.api]
targets = ["{}"]
[[routes]]
name = "main"
upstream = "api"
[routes.limit]
rate = 100
burst = 10
"#,
            backend.addr
        ),
    );
    let (mut child, mut lines, proxy, admin) = spawn_run(&path);
    let _reap = KillOnDrop(child.id());
    let (proxy, admin) = (proxy.to_string(), admin.to_string());
    let client = client();
    assert_eq!(
        get(&client, &format!("http://{proxy}/a/..//x"))
            .await
            .status,
        StatusCode::OK
    );
    let access = lines.next().unwrap().unwrap();
    let access: serde_json::Value = serde_json::from_str(&access).unwrap();
    assert_eq!(access["target"], "sluice::access");
    assert_eq!(access["fields"]["outcome"], "forwarded");
    assert_eq!(access["fields"]["route"], "main");
    assert_eq!(access["fields"]["status"], 200);
    // The path as routed and forwarded: normalised.
    assert_eq!(access["fields"]["path"], "/x");
    assert_eq!(
        access["fields"]["request_id"].as_str().map(str::len),
        Some(32)
    );
    let metrics = scrape(&client, admin.parse().unwrap()).await;
    assert!(metrics.contains("sluice_requests_total{outcome=\"forwarded\",route=\"main\"} 1"));

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

fn run_config(backend: std::net::SocketAddr, rate: u32) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
access_log = false
[upstreams.api]
targets = ["{backend}"]
[[routes]]
name = "main"
upstream = "api"
[routes.limit]
rate = {rate}
"#
    )
}

/// Polls /metrics until `check` holds (at most 10 s).
async fn until_metrics(
    client: &TestClient,
    admin: std::net::SocketAddr,
    check: impl Fn(&str) -> bool,
) -> String {
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(client, admin).await;
        if check(&text) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relevant: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("sluice_config_reloads_total") || l.starts_with("sluice_route_rate_limit")
        })
        .collect();
    panic!("metrics never reached the expected state: {relevant:?}");
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    samples(text, name).get(labels).copied().unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reloads_when_the_file_changes_and_on_sighup() {
    let backend = Backend::start(Duration::ZERO).await;
    let path = write_config("reload.toml", &run_config(backend.addr, 100));
    let (mut child, lines, _proxy, admin) = spawn_run(&path);
    let _reap = KillOnDrop(child.id());
    // Keep draining the log so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let client = client();
    let rate = |t: &str| metric(t, "sluice_route_rate_limit", "route=\"main\"");
    let reloads = |t: &str, result: &str| {
        metric(
            t,
            "sluice_config_reloads_total",
            &format!("result=\"{result}\""),
        )
    };

    // Edit the file: the new rate is in force without a signal.
    std::fs::write(&path, run_config(backend.addr, 50)).unwrap();
    until_metrics(&client, admin, |t| {
        rate(t) == 50.0 && reloads(t, "success") >= 1.0
    })
    .await;

    // A broken file is refused; the running config stays.
    std::fs::write(&path, "[[routes]\nname = ").unwrap();
    let text = until_metrics(&client, admin, |t| reloads(t, "failure") >= 1.0).await;
    assert_eq!(rate(&text), 50.0);

    // Fixed again, then SIGHUP re-reads the same file once more.
    std::fs::write(&path, run_config(backend.addr, 75)).unwrap();
    let text = until_metrics(&client, admin, |t| rate(t) == 75.0).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // let file events settle
    let before = reloads(&scrape(&client, admin).await, "success");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    until_metrics(&client, admin, |t| reloads(t, "success") == before + 1.0).await;
    assert!(rate(&text) == 75.0);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Starts `sluice run` with JSON logs on stderr and reads, from its first
/// log lines, where it listens.
fn spawn_run(
    path: &Path,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let mut command = sluice();
    command.args(["run", "--config"]).arg(path);
    spawn_command(command)
}

/// As [`spawn_run`], for any command that ends up running `sluice run`.
fn spawn_command(
    mut command: Command,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    // Killed if no serving line comes; the caller guards it afterwards.
    let guard = KillOnDrop(child.id());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (proxy, admin) = loop {
        let line = lines.next().expect("a log line").unwrap();
        let record: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = &record["fields"];
        if let (Some(p), Some(a)) = (fields["proxy_addr"].as_str(), fields["admin_addr"].as_str()) {
            break (p.parse().unwrap(), a.parse().unwrap());
        }
    };
    std::mem::forget(guard);
    (child, lines, proxy, admin)
}

/// Kills the process if the test fails before it exits (a no-op after).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_it_backs_off_and_keeps_serving() {
    let backend = Backend::start(Duration::ZERO).await;
    let path = write_config("nofile.toml", &run_config(backend.addr, 10_000));
    // Few descriptors: a few dozen clients exhaust them.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -n 48 && exec \"$0\" run --config \"$1\"")
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(&path);
    let (mut child, lines, proxy, _admin) = spawn_command(command);
    let _reap = KillOnDrop(child.id());
    let (saw_failure, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("accept failed") {
                let _ = saw_failure.send(line);
            }
        }
    });

    let request = b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut sockets = Vec::new();
    for _ in 0..60 {
        // The kernel completes the handshake (backlog) even when sluice cannot accept.
        let mut socket = tokio::net::TcpStream::connect(proxy).await.unwrap();
        socket.write_all(request).await.unwrap();
        sockets.push(socket);
    }
    // All read at once: a served connection must not sit idle past the
    // keep-alive timeout while others are waited for.
    let answers = futures_util::future::join_all(sockets.iter_mut().map(|socket| async move {
        let mut buf = vec![0; 1024];
        match tokio::time::timeout(Duration::from_secs(3), socket.read(&mut buf)).await {
            // 200, or 502 if no descriptor was left for an upstream connection.
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 "),
            _ => false,
        }
    }))
    .await;
    let answered: Vec<usize> = (0..answers.len()).filter(|&i| answers[i]).collect();
    assert!(
        !answered.is_empty() && answered.len() < 60,
        "answered {}",
        answered.len()
    );
    let line = seen
        .recv_timeout(Duration::from_secs(5))
        .expect("the failure is logged");
    assert!(line.contains("backing off"), "{line}");

    // The connections it has are still served.
    let first = &mut sockets[answered[0]];
    first.write_all(request).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    // (A 502 if its request needed a new upstream connection while no
    // descriptor was free; answered either way, not left hanging.)
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 502"),
        "{answer}"
    );

    // Once clients leave, waiting connections are accepted and served.
    let last = sockets.pop().unwrap();
    drop(sockets);
    let mut last = last;
    let n = tokio::time::timeout(Duration::from_secs(10), last.read(&mut buf))
        .await
        .expect("served after descriptors are freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
