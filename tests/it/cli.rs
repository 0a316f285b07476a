//! The `sluice` binary as a user runs it: `check` and `run`.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
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
    let serving = spawn_serving(command);
    (serving.child, serving.lines, serving.proxy, serving.admin)
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
    let Serving {
        mut child,
        lines,
        proxy,
        ..
    } = spawn_serving(command);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_task_is_logged_and_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let backend = Backend::start(Duration::ZERO).await;
    let path = write_config("panic.toml", &run_config(backend.addr, 100));
    let mut command = sluice();
    // Compiled into debug builds only (see `debug_panic_trigger` in main.rs).
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("SLUICE_DEBUG_PANIC_IN_TASK", "1");
    let Serving {
        mut child, lines, ..
    } = spawn_serving(command);
    let _reap = KillOnDrop(child.id());
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    // A panicked task would otherwise leave the process up, half alive.
    let mut status = None;
    for _ in 0..200 {
        if let Some(exited) = child.try_wait().unwrap() {
            status = Some(exited);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.expect("sluice is still running 10 s after a task panicked");
    assert_eq!(status.signal(), Some(6), "not SIGABRT: {status:?}");
    let logged = rest.join().unwrap();
    let record = logged
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|r| r["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no error record in {logged:#?}"));
    let fields = &record["fields"];
    assert!(
        fields["message"].as_str().unwrap().contains("aborting"),
        "{record}"
    );
    assert!(
        fields["panic"]
            .as_str()
            .unwrap()
            .contains("SLUICE_DEBUG_PANIC_IN_TASK is set"),
        "{record}"
    );
}

const SECRET_TOKEN: &str = "tok-SECRET-4711";
const SECRET_PASSWORD: &str = "pw-SECRET-0815";

fn secret_config(admin: &str, redis: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin}
[redis]
{redis}
[upstreams.api]
targets = ["127.0.0.1:9000"]
[[routes]]
name = "main"
upstream = "api"
[routes.limit]
rate = 10
backend = "redis"
"#
    )
}

#[test]
fn check_never_prints_the_admin_token_or_the_redis_password() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{SECRET_TOKEN}\n")).unwrap();
    let password_file = dir.join("redis-password");
    std::fs::write(&password_file, SECRET_PASSWORD).unwrap();
    let inline = secret_config(
        &format!("token = \"{SECRET_TOKEN}\""),
        &format!("url = \"redis://sluice:{SECRET_PASSWORD}@127.0.0.1:6379/0\""),
    );
    let from_files = secret_config(
        &format!("token_file = \"{}\"", token_file.display()),
        &format!(
            "url = \"redis://127.0.0.1:6379\"\npassword_file = \"{}\"",
            password_file.display()
        ),
    );
    // A config that fails (a token with a space; the other half of it must
    // not be shown either).
    let broken = secret_config(
        &format!("token = \"x {SECRET_TOKEN}\""),
        "url = \"redis://127.0.0.1:6379\"",
    );
    for (name, text, ok) in [
        ("secrets-inline.toml", &inline, true),
        ("secrets-files.toml", &from_files, true),
        ("secrets-broken.toml", &broken, false),
    ] {
        let path = write_config(name, text);
        let output = sluice()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), ok, "{name}: {stdout}{stderr}");
        for secret in [SECRET_TOKEN, SECRET_PASSWORD, "SECRET"] {
            assert!(!stdout.contains(secret), "{name}: {stdout}");
            assert!(!stderr.contains(secret), "{name}: {stderr}");
        }
        if name == "secrets-inline.toml" {
            assert!(stdout.contains("token = \"<redacted>\""), "{stdout}");
            assert!(
                stdout.contains("url = \"redis://sluice:%3Credacted%3E@127.0.0.1:6379/0\""),
                "{stdout}"
            );
            // Fed back, the placeholder is refused at its key.
            let again = write_config("secrets-again.toml", &stdout);
            let output = sluice()
                .args(["check", "--config"])
                .arg(&again)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success());
            assert!(
                stderr.contains("key `admin.token`: is the placeholder"),
                "{stderr}"
            );
        }
        if name == "secrets-files.toml" {
            assert!(
                stdout.contains(&format!("token_file = \"{}\"", token_file.display())),
                "{stdout}"
            );
            assert!(
                stdout.contains(&format!("password_file = \"{}\"", password_file.display())),
                "{stdout}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_read_from_its_file_again_on_reload() {
    let backend = Backend::start(Duration::ZERO).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("reload-admin-token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let text = run_config(backend.addr, 100).replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    assert!(text.contains("token_file"));
    let path = write_config("token-file.toml", &text);
    let (mut child, lines, _proxy, admin) = spawn_run(&path);
    let _reap = KillOnDrop(child.id());
    std::thread::spawn(move || for _ in lines {});
    let client = client();
    let call = |authorization: &'static str| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{admin}/admin/routes"))
                .header("authorization", authorization)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send(&client, req).await.status
        }
    };
    assert_eq!(call("Bearer first-token").await, StatusCode::OK);
    // The scheme is case-insensitive (RFC 9110).
    assert_eq!(call("bearer first-token").await, StatusCode::OK);
    assert_eq!(call("BEARER  first-token").await, StatusCode::OK);
    assert_eq!(call("Bearer first-toke").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call("Bearer first-token\n".trim_end()).await,
        StatusCode::OK
    );

    // A new token in the file is taken on SIGHUP.
    std::fs::write(&token_file, "second-token\n").unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let mut switched = false;
    for _ in 0..200 {
        if call("Bearer second-token").await == StatusCode::OK {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(switched, "the new token was never accepted");
    assert_eq!(call("Bearer first-token").await, StatusCode::UNAUTHORIZED);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_an_out_of_range_rate_keeps_the_running_config() {
    let backend = Backend::start(Duration::ZERO).await;
    let path = write_config("tiny-rate.toml", &run_config(backend.addr, 100));
    let (mut child, lines, proxy, admin) = spawn_run(&path);
    let _reap = KillOnDrop(child.id());
    std::thread::spawn(move || for _ in lines {});
    let client = client();
    // Once a panic on reload killed the process here.
    std::fs::write(
        &path,
        run_config(backend.addr, 100).replace("rate = 100", "rate = 1e-14"),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    until_metrics(&client, admin, |t| {
        metric(t, "sluice_config_reloads_total", "result=\"failure\"") >= 1.0
    })
    .await;
    assert!(child.try_wait().unwrap().is_none(), "sluice exited");
    let text = scrape(&client, admin).await;
    assert_eq!(
        metric(&text, "sluice_route_rate_limit", "route=\"main\""),
        100.0
    );
    assert_eq!(
        get(&client, &format!("http://{proxy}/x")).await.status,
        StatusCode::OK
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn secrets_may_come_from_environment_variables() {
    let text = secret_config(
        "token_env = \"SLUICE_TEST_ADMIN_TOKEN\"",
        "url = \"redis://127.0.0.1:6379\"\npassword_env = \"SLUICE_TEST_REDIS_PASSWORD\"",
    );
    let path = write_config("secrets-env.toml", &text);
    let output = sluice()
        .args(["check", "--config"])
        .arg(&path)
        .env("SLUICE_TEST_ADMIN_TOKEN", SECRET_TOKEN)
        .env("SLUICE_TEST_REDIS_PASSWORD", SECRET_PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("token_env = \"SLUICE_TEST_ADMIN_TOKEN\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("password_env = \"SLUICE_TEST_REDIS_PASSWORD\""),
        "{stdout}"
    );
    assert!(!stdout.contains("SECRET-"), "{stdout}");
    // Unset: the error names the file, line, key and variable.
    let output = sluice()
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("SLUICE_TEST_ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(
            "secrets-env.toml:4:13: key `admin.token_env`: $SLUICE_TEST_ADMIN_TOKEN is not set"
        ),
        "{stderr}"
    );
}
