//! Secrets: the Redis password from `[redis] password_file` reaches Redis,
//! the admin token from `admin.token_file` opens the admin API, and the
//! bearer scheme is matched case-insensitively, the token exactly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::redis::RedisServer;
use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice::Config;

const PASSWORD: &str = "redis-pass-31337";

fn dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("secrets");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config file with one route whose rate lives in Redis, denying while
/// Redis cannot be used: so a request is forwarded only when sluice is in
/// (authenticated) with Redis.
fn write_config(name: &str, backend: std::net::SocketAddr, redis: &str) -> PathBuf {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
workers = 1
[admin]
listen = "127.0.0.1:0"
token_file = "admin-token"
[log]
level = "off"
[redis]
{redis}
key_prefix = "{prefix}"
timeout = "500ms"
[upstreams.api]
targets = ["{backend}"]
[[routes]]
name = "global"
upstream = "api"
[routes.limit]
rate = 100
burst = 10
backend = "redis"
on_redis_error = "deny"
"#,
        prefix = crate::common::redis::unique_prefix(name),
    );
    let path = dir().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

async fn require_password(server: &RedisServer) {
    let client = ::redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(PASSWORD)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_password_from_a_file_reaches_redis() {
    let mut server = RedisServer::start();
    require_password(&server).await;
    let backend = Backend::start(Duration::ZERO).await;
    std::fs::write(dir().join("admin-token"), "admin-t0ken\n").unwrap();
    std::fs::write(dir().join("redis-password"), format!("{PASSWORD}\n")).unwrap();
    let client = client();

    // Without the password Redis refuses sluice: "deny" answers 503.
    let path = write_config(
        "no-password",
        backend.addr,
        &format!("url = \"{}\"", server.url()),
    );
    let sluice = TestSluice::start(&Config::load(&path).unwrap()).await;
    let seen = get(&client, &format!("http://{}/x", sluice.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    drop(sluice);

    // With it (relative to the config's directory, newline trimmed): served.
    let path = write_config(
        "password-file",
        backend.addr,
        &format!(
            "url = \"{}\"\npassword_file = \"redis-password\"",
            server.url()
        ),
    );
    let config = Config::load(&path).unwrap();
    assert_eq!(
        config
            .redis
            .as_ref()
            .unwrap()
            .password
            .as_ref()
            .unwrap()
            .expose(),
        PASSWORD
    );
    let sluice = TestSluice::start(&config).await;
    let seen = get(&client, &format!("http://{}/x", sluice.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::OK, "{:?}", seen.body);

    // The admin token came from its file too.
    let routes = |token: &'static str| {
        let client = client.clone();
        let url = format!("http://{}/admin/routes/global", sluice.admin_addr());
        async move {
            let req = Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(&client, req).await
        }
    };
    let seen = routes("admin-t0ken").await;
    assert_eq!(seen.status, StatusCode::OK);
    let route: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(route["global_limit"]["on_fallback"], false, "{route}");
    assert_eq!(routes("admin-t0ke").await.status, StatusCode::UNAUTHORIZED);

    // A changed file is read again on reload: a wrong password now.
    std::fs::write(dir().join("redis-password"), "wrong\n").unwrap();
    sluice.reload_file(&path).unwrap();
    let mut denied = false;
    for _ in 0..100 {
        let seen = get(&client, &format!("http://{}/x", sluice.proxy_addr())).await;
        if seen.status == StatusCode::SERVICE_UNAVAILABLE {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(denied, "the new password was not used after the reload");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive_and_the_token_exact() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.admin.token = Some("Exact-T0ken".into());
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let status = |authorization: Option<&'static str>| {
        let client = client.clone();
        let url = format!("http://{}/admin/routes", sluice.admin_addr());
        async move {
            let mut req = Request::get(url);
            if let Some(value) = authorization {
                req = req.header("authorization", value);
            }
            send(&client, req.body(Full::new(Bytes::new())).unwrap())
                .await
                .status
        }
    };
    // RFC 9110 11.1: the scheme is case-insensitive; the token is not.
    for ok in [
        "Bearer Exact-T0ken",
        "bearer Exact-T0ken",
        "BEARER Exact-T0ken",
    ] {
        assert_eq!(status(Some(ok)).await, StatusCode::OK, "{ok}");
    }
    for wrong in [
        None,
        Some("Bearer exact-t0ken"),
        Some("Bearer Exact-T0ke"),
        Some("Bearer Exact-T0kenn"),
        Some("Basic Exact-T0ken"),
        Some("BearerExact-T0ken"),
        Some("Exact-T0ken"),
    ] {
        assert_eq!(status(wrong).await, StatusCode::UNAUTHORIZED, "{wrong:?}");
    }
}
