//! DNS discovery (issue 20): a DNS server of the test's own serves a name
//! whose address set the test changes; backends on 127.0.0.2, .3 and .4
//! (one port) stand for the instances. Targets join and leave within one
//! `resolve_interval`, requests in flight to a removed address complete,
//! an unchanged address keeps its health, an outage keeps the set, and a
//! name that never resolved stops the start.
//!
//! The rates of `rate_per_target` routes are in `rate`.

mod dns_server;
mod rate;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::common::*;
use dns_server::DnsServer;

pub const NAME: &str = "api.sluice.test";

/// 127.0.0.`n`.
pub fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, n)
}

/// A port free on each of 127.0.0.`hosts`, and a backend on each (answering
/// after `delay`) for the hosts in `started`.
pub async fn backends(hosts: &[u8], started: &[u8], delay: Duration) -> (u16, Vec<Backend>) {
    for _ in 0..50 {
        let first = std::net::TcpListener::bind((ip(hosts[0]), 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        let free = hosts[1..]
            .iter()
            .all(|&h| std::net::TcpListener::bind((ip(h), port)).is_ok());
        drop(first);
        if !free {
            continue;
        }
        let mut out = Vec::new();
        for &h in started {
            out.push(Backend::start_on(SocketAddr::from((ip(h), port)), delay).await);
        }
        return (port, out);
    }
    panic!("no port free on every loopback address");
}

/// One upstream `api` whose only target is the discovered [`NAME`], with
/// `extra` keys (TOML) after its own; the routes are the caller's.
pub fn discovery_config(dns: SocketAddr, port: u16, interval: &str, extra: &str) -> String {
    named_config(NAME, dns, port, interval, extra)
}

/// [`discovery_config`] for another name.
pub fn named_config(name: &str, dns: SocketAddr, port: u16, interval: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"
access_log = false

[dns]
nameservers = ["{dns}"]
timeout = "300ms"

[upstreams.api]
targets = ["{name}:{port}"]
discovery = "dns"
resolve_interval = "{interval}"
max_inflight = 1000
pool_max_idle_per_target = 1024
{extra}
"#
    )
}

/// The targets `text` shows for the discovered name.
fn dns_targets(text: &str) -> f64 {
    named_targets(text, NAME)
}

fn named_targets(text: &str, name: &str) -> f64 {
    sum_of(
        text,
        "sluice_upstream_targets",
        &["origin=\"dns\"", &format!("name=\"{name}\"")],
    )
}

/// Whether /metrics lists a target series for `addr`.
fn lists_target(text: &str, addr: SocketAddr) -> bool {
    samples(text, "sluice_target_healthy")
        .keys()
        .any(|labels| labels.contains(&format!("target=\"{addr}\"")))
}

fn healthy(text: &str, addr: SocketAddr) -> Option<f64> {
    samples(text, "sluice_target_healthy")
        .into_iter()
        .find(|(labels, _)| labels.contains(&format!("target=\"{addr}\"")))
        .map(|(_, v)| v)
}

const MAIN_ROUTE: &str = r#"
[[routes]]
name = "main"
upstream = "api"
queue = { capacity = 1000, timeout = "10s" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_follow_the_name_and_a_removed_one_drains() {
    let (port, backends) = backends(&[2, 3, 4], &[2, 3, 4], Duration::from_millis(800)).await;
    let addr = |h: u8| SocketAddr::from((ip(h), port));
    let dns = DnsServer::start(NAME, &[ip(2), ip(3)]).await;
    let config = parse_config(&format!(
        "{}{MAIN_ROUTE}",
        discovery_config(dns.addr, port, "200ms", "")
    ));
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(dns_targets(&text), 2.0, "{text}");
    assert!(lists_target(&text, addr(2)) && lists_target(&text, addr(3)));
    assert!(!lists_target(&text, addr(4)));

    // Four slow requests: round robin puts two on each address.
    let url = format!("http://{}/slow", sluice.proxy_addr());
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends[1].count() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backends[1].count(), 2, "two requests in flight at .3");

    // .3 leaves, .4 joins: within one interval (200 ms), plus a scrape.
    dns.zone.set(NAME, &[ip(2), ip(4)]);
    let changed = Instant::now();
    let text = until_metrics(&client, sluice.admin_addr(), |t| {
        lists_target(t, addr(4)) && !lists_target(t, addr(3))
    })
    .await;
    let took = changed.elapsed();
    eprintln!("set changed {took:?} after the zone did (interval 200 ms)");
    assert!(lists_target(&text, addr(4)) && !lists_target(&text, addr(3)));
    assert!(
        took < Duration::from_millis(700),
        "set changed after {took:?}"
    );
    assert_eq!(dns_targets(&text), 2.0);

    // The two in flight at .3 complete.
    for task in slow {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(backends[1].completed_for("/slow"), 2);
    // New requests go to .2 and .4 only.
    let seen = burst(&client, &format!("http://{}/after", sluice.proxy_addr()), 6).await;
    assert_eq!(by_status(&seen), [(200, 6)].into());
    assert_eq!(backends[0].completed_for("/after"), 3);
    assert_eq!(backends[1].completed_for("/after"), 0);
    assert_eq!(backends[2].completed_for("/after"), 3);

    // The status page lists the targets of the set (it samples each second).
    let want = vec![addr(2).to_string(), addr(4).to_string()];
    let mut listed = Vec::new();
    for _ in 0..50 {
        listed = status_targets(&client, sluice.admin_addr()).await;
        if listed == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed, want);
}

/// The target names `/status.json` shows for upstream `api`, sorted.
async fn status_targets(client: &TestClient, admin: SocketAddr) -> Vec<String> {
    let seen = get(client, &format!("http://{admin}/status.json")).await;
    let json: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    let mut names: Vec<String> = json["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == "api")
        .flat_map(|u| u["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_address_keeps_its_health_and_an_outage_keeps_the_set() {
    // Nothing listens on .3: it fails and is ejected (for a minute).
    let (port, backends) = backends(&[2, 3, 4], &[2, 4], Duration::ZERO).await;
    let addr = |h: u8| SocketAddr::from((ip(h), port));
    // A name of its own: the test counts its log lines.
    const OUTAGE: &str = "outage.sluice.test";
    let logs = log_capture();
    let dns = DnsServer::start(OUTAGE, &[ip(2), ip(3)]).await;
    let health =
        "[upstreams.api.passive_health]\nconsecutive_failures = 1\nbase_ejection = \"60s\"\n";
    let config = parse_config(&format!(
        "{}{MAIN_ROUTE}",
        named_config(OUTAGE, dns.addr, port, "200ms", health)
    ));
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    // GETs that meet .3 are retried on .2 and answered.
    let seen = burst(&client, &url, 4).await;
    assert_eq!(by_status(&seen), [(200, 4)].into());
    let text = until_metrics(&client, sluice.admin_addr(), |t| {
        healthy(t, addr(3)) == Some(0.0)
    })
    .await;
    assert_eq!(healthy(&text, addr(3)), Some(0.0), "{text}");

    // .4 joins; .3 stays, and stays ejected.
    dns.zone.set(OUTAGE, &[ip(2), ip(3), ip(4)]);
    let text = until_metrics(&client, sluice.admin_addr(), |t| lists_target(t, addr(4))).await;
    assert_eq!(named_targets(&text, OUTAGE), 3.0);
    assert_eq!(healthy(&text, addr(3)), Some(0.0), "health lost: {text}");
    assert_eq!(
        sum_of(
            &text,
            "sluice_upstream_healthy_targets",
            &["upstream=\"api\""]
        ),
        2.0
    );
    let seen = burst(&client, &format!("http://{}/later", sluice.proxy_addr()), 6).await;
    assert_eq!(by_status(&seen), [(200, 6)].into());
    assert_eq!(
        backends[0].completed_for("/later") + backends[1].completed_for("/later"),
        6
    );

    // The DNS server goes silent: resolutions fail, the set stays.
    let errors = |t: &str| {
        sum_of(
            t,
            "sluice_dns_resolutions_total",
            &["upstream=\"api\"", "result=\"error\""],
        )
    };
    let before = errors(&scrape(&client, sluice.admin_addr()).await);
    dns.zone.set_down(true);
    let text = until_metrics(&client, sluice.admin_addr(), |t| errors(t) >= before + 3.0).await;
    assert!(errors(&text) >= before + 3.0, "{text}");
    assert_eq!(named_targets(&text, OUTAGE), 3.0);
    assert!(lists_target(&text, addr(2)) && lists_target(&text, addr(4)));
    let seen = burst(
        &client,
        &format!("http://{}/outage", sluice.proxy_addr()),
        4,
    )
    .await;
    assert_eq!(by_status(&seen), [(200, 4)].into());
    assert!(
        sum_of(
            &text,
            "sluice_dns_resolutions_total",
            &["upstream=\"api\"", "result=\"ok\""]
        ) >= 2.0
    );
    // The name loses its records (NOERROR, no data): counted as empty, the
    // set stays.
    let empty = |t: &str| {
        sum_of(
            t,
            "sluice_dns_resolutions_total",
            &["upstream=\"api\"", "result=\"empty\""],
        )
    };
    dns.zone.set(OUTAGE, &[]);
    dns.zone.set_down(false);
    let text = until_metrics(&client, sluice.admin_addr(), |t| empty(t) >= 2.0).await;
    assert!(empty(&text) >= 2.0, "{text}");
    assert_eq!(named_targets(&text, OUTAGE), 3.0);
    // Three failures and more, one warning: at most one a minute (the
    // empty answers continue the same run of failures).
    let warned = logs
        .containing("keeping the last known addresses")
        .into_iter()
        .filter(|line| line.contains(OUTAGE))
        .count();
    assert_eq!(warned, 1, "{:?}", logs.containing(OUTAGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_brings_the_next_resolution_forward() {
    let (port, _backends) = backends(&[2, 3], &[2, 3], Duration::ZERO).await;
    let addr = |h: u8| SocketAddr::from((ip(h), port));
    let dns = DnsServer::start(NAME, &[ip(2)]).await;
    dns.zone.set_ttl(1);
    // An interval of an hour: only the 1 s TTL can bring .3 in.
    let config = parse_config(&format!(
        "{}{MAIN_ROUTE}",
        discovery_config(dns.addr, port, "1h", "")
    ));
    let sluice = TestSluice::start(&config).await;
    let client = client();
    dns.zone.set(NAME, &[ip(2), ip(3)]);
    let text = until_metrics(&client, sluice.admin_addr(), |t| lists_target(t, addr(3))).await;
    assert!(lists_target(&text, addr(3)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_stops_the_start() {
    let dns = DnsServer::start("other.sluice.test", &[ip(2)]).await;
    let config = parse_config(&format!(
        "{}{MAIN_ROUTE}",
        discovery_config(dns.addr, 9, "1s", "")
    ));
    let runtime = OwnRuntime::new(1);
    let started = runtime
        .handle
        .spawn(async move { sluice::start(&config).await.map(|_| ()) })
        .await
        .unwrap();
    let err = started.expect_err("no address for the name");
    let message = err.to_string();
    assert!(message.contains(&format!("{NAME}:9")), "{message}");
    assert!(dns.zone.queries() > 0);
}
