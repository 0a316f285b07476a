//! `rate_per_target`: the route's rate is the figure times the healthy
//! targets of its upstream, measured at the backends (wall clock, so the
//! tests take `serial()`): 50 per target in front of two backends releases
//! 100/s; a third, found by DNS or added by a reload, lifts it to 150/s;
//! one ejected brings it back to 100/s. Each phase queues a burst and
//! measures its drain, as `shaping` does.

use std::net::SocketAddr;
use std::time::Duration;

use super::dns_server::DnsServer;
use super::{NAME, backends, discovery_config, ip};
use crate::common::*;

/// The route's burst, left out of each drain measured. A burst of ten (as
/// `shaping` has) lets the limiter make up for a release a loaded machine
/// ran late, so the drain rate is the configured one, not the scheduler's.
const BURST: usize = 10;

const ROUTES: &str = r#"
[[routes]]
name = "main"
upstream = "api"
limit = { rate_per_target = 50, burst = 10 }
queue = { capacity = 1000, timeout = "30s" }

# Unshaped: opens pooled connections first, so set-up does not skew the
# arrival times measured.
[[routes]]
name = "warm"
path_prefix = "/warm"
upstream = "api"
"#;

/// Sends `n` requests to `path` at once, waits for every answer (all 200),
/// and returns the rate at which they reached `backends` once the first
/// [`BURST`] had gone.
async fn drain_rate(
    client: &TestClient,
    proxy: SocketAddr,
    backends: &[Backend],
    path: &str,
    n: usize,
) -> f64 {
    let seen = burst(client, &format!("http://{proxy}{path}"), n).await;
    assert_eq!(by_status(&seen), [(200, n)].into(), "{path}");
    arrival_rate(backends, path, n)
}

/// The rate at which `n` requests to `path` reached `backends` once the
/// first [`BURST`] had gone.
fn arrival_rate(backends: &[Backend], path: &str, n: usize) -> f64 {
    let mut at: Vec<u64> = backends
        .iter()
        .flat_map(|b| b.arrivals())
        .filter(|a| a.path == path)
        .map(|a| a.at)
        .collect();
    at.sort_unstable();
    assert_eq!(at.len(), n);
    let drain = &at[BURST..];
    let span = (drain[drain.len() - 1] - drain[0]) as f64 / 1e6;
    let rate = (drain.len() - 1) as f64 / span;
    eprintln!("{path}: {n} requests, drain {rate:.2}/s over {span:.2} s");
    rate
}

/// `sluice_route_rate_limit` of route main.
fn rate_limit(text: &str) -> f64 {
    sum_of(text, "sluice_route_rate_limit", &["route=\"main\""])
}

fn assert_near(rate: f64, want: f64, what: &str) {
    assert!(
        (rate - want).abs() <= want * 0.05,
        "{what}: {rate:.1}/s, expected {want}/s ± 5%"
    );
}

async fn admin_route(client: &TestClient, admin: SocketAddr) -> serde_json::Value {
    let seen = get(client, &format!("http://{admin}/admin/routes")).await;
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    json["routes"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_follows_targets_found_by_dns_and_ejected() {
    let _serial = serial().await;
    let (port, backends) = backends(&[2, 3, 4], &[2, 3, 4], Duration::ZERO).await;
    let dns = DnsServer::start(NAME, &[ip(2), ip(3)]).await;
    let health =
        "[upstreams.api.passive_health]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\n";
    let config = parse_config(&format!(
        "{}{ROUTES}",
        discovery_config(dns.addr, port, "200ms", health)
    ));
    let sluice = TestSluice::start(&config).await;
    let (proxy, admin) = (sluice.proxy_addr(), sluice.admin_addr());
    let client = client();
    burst(&client, &format!("http://{proxy}/warm"), 20).await;

    // Two targets: 100/s, shown as such.
    let route = admin_route(&client, admin).await;
    assert_eq!(route["rate_per_target"], 50.0);
    assert_eq!(route["healthy_targets"], 2);
    assert_eq!(route["effective_rate"], 100.0);
    assert_eq!(rate_limit(&scrape(&client, admin).await), 100.0);
    let rate = drain_rate(&client, proxy, &backends, "/two", 300).await;
    assert_near(rate, 100.0, "two targets");

    // A third found by DNS: 150/s.
    dns.zone.set(NAME, &[ip(2), ip(3), ip(4)]);
    let text = until_metrics(&client, admin, |t| rate_limit(t) == 150.0).await;
    assert_eq!(rate_limit(&text), 150.0);
    burst(&client, &format!("http://{proxy}/warm"), 20).await;
    let rate = drain_rate(&client, proxy, &backends, "/three", 450).await;
    assert_near(rate, 150.0, "three targets");

    // .4 dies and is ejected at its first failure (the GET is retried on
    // another target): 100/s again.
    backends[2].kill();
    burst(&client, &format!("http://{proxy}/warm"), 6).await;
    let text = until_metrics(&client, admin, |t| rate_limit(t) == 100.0).await;
    assert_eq!(rate_limit(&text), 100.0, "{text}");
    let rate = drain_rate(&client, proxy, &backends[..2], "/ejected", 300).await;
    assert_near(rate, 100.0, "one ejected");
    assert_eq!(admin_route(&client, admin).await["healthy_targets"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_follows_a_target_added_by_a_reload() {
    let _serial = serial().await;
    let backends = [
        Backend::start(Duration::ZERO).await,
        Backend::start(Duration::ZERO).await,
        Backend::start(Duration::ZERO).await,
    ];
    let mut config = config(&[backends[0].addr, backends[1].addr]);
    let routes = parse_config(&format!(
        "[upstreams.api]\ntargets = [\"127.0.0.1:1\"]\n{ROUTES}"
    ))
    .routes;
    config.routes = routes;
    let sluice = TestSluice::start(&config).await;
    let (proxy, admin) = (sluice.proxy_addr(), sluice.admin_addr());
    let client = client();
    burst(&client, &format!("http://{proxy}/warm"), 20).await;
    assert_eq!(rate_limit(&scrape(&client, admin).await), 100.0);
    let rate = drain_rate(&client, proxy, &backends, "/two", 300).await;
    assert_near(rate, 100.0, "two targets");

    let mut three = config.clone();
    three
        .upstreams
        .get_mut("api")
        .unwrap()
        .targets
        .push(sluice::config::TargetConfig::new(
            backends[2].addr.to_string().parse().unwrap(),
        ));
    sluice.reload(&three);
    let text = until_metrics(&client, admin, |t| rate_limit(t) == 150.0).await;
    assert_eq!(rate_limit(&text), 150.0);
    burst(&client, &format!("http://{proxy}/warm"), 20).await;
    let rate = drain_rate(&client, proxy, &backends, "/three", 450).await;
    assert_near(rate, 150.0, "three targets");
    assert_eq!(admin_route(&client, admin).await["effective_rate"], 150.0);
}

/// Sends `n` requests to `path` on each instance at once, waits for every
/// answer (all 200) and returns the fleet's drain rate at `backends`.
async fn fleet_drain_rate(
    client: &TestClient,
    fleet: &[TestSluice],
    backends: &[Backend],
    path: &str,
    n: usize,
) -> f64 {
    let bursts: Vec<_> = fleet
        .iter()
        .map(|s| {
            let (client, url) = (client.clone(), format!("http://{}{path}", s.proxy_addr()));
            tokio::spawn(async move { burst(&client, &url, n).await })
        })
        .collect();
    for b in bursts {
        let seen = b.await.unwrap();
        assert_eq!(by_status(&seen), [(200, n)].into(), "{path}");
    }
    arrival_rate(backends, path, n * fleet.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_redis_kept_limit_the_fleet_rate_follows_the_targets() {
    let _serial = serial().await;
    let backends = [
        Backend::start(Duration::ZERO).await,
        Backend::start(Duration::ZERO).await,
        Backend::start(Duration::ZERO).await,
    ];
    let prefix = crate::common::redis::unique_prefix("per-target");
    let url = crate::common::redis::shared_url();
    let with = |targets: &[&Backend]| {
        let mut config = config(&targets.iter().map(|b| b.addr).collect::<Vec<_>>());
        let shared = parse_config(&format!(
            "[redis]\nurl = {url:?}\nkey_prefix = {prefix:?}\n\
             [upstreams.api]\ntargets = [\"127.0.0.1:1\"]\n{}",
            ROUTES.replace(
                "burst = 10 }",
                "burst = 10, backend = \"redis\", expected_instances = 2 }"
            )
        ));
        config.routes = shared.routes;
        config.redis = shared.redis;
        config
    };
    let two = with(&[&backends[0], &backends[1]]);
    let fleet = [TestSluice::start(&two).await, TestSluice::start(&two).await];
    let client = client();
    for sluice in &fleet {
        burst(&client, &format!("http://{}/warm", sluice.proxy_addr()), 20).await;
    }
    // Two instances, two targets: 100/s for the fleet, not per instance.
    let rate = fleet_drain_rate(&client, &fleet, &backends, "/two", 150).await;
    assert_near(rate, 100.0, "fleet, two targets");

    // Both learn of a third target: 150/s for the fleet.
    let three = with(&[&backends[0], &backends[1], &backends[2]]);
    for sluice in &fleet {
        sluice.reload(&three);
        let text = until_metrics(&client, sluice.admin_addr(), |t| rate_limit(t) == 150.0).await;
        assert_eq!(rate_limit(&text), 150.0);
        burst(&client, &format!("http://{}/warm", sluice.proxy_addr()), 20).await;
    }
    let rate = fleet_drain_rate(&client, &fleet, &backends, "/three", 225).await;
    assert_near(rate, 150.0, "fleet, three targets");
}
