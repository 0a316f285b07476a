//! Backend pools through real sockets: balancing, health (passive and
//! active), a dead target, all targets down, retries and per-target caps.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use sluice::config::{ActiveHealth, Balance, Config, PassiveHealth};

fn pool(backends: &[&Backend], balance: Balance) -> Config {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut config = config(&addrs);
    config.upstreams.get_mut("api").unwrap().balance = balance;
    config.routes = vec![route("main", "/", None, 1000, Duration::from_secs(5))];
    config
}

/// Sends `count` GETs of `url` at `per_second`, open loop.
async fn paced_gets(client: &TestClient, url: &str, per_second: f64, count: usize) -> Vec<Seen> {
    paced(client, || get_request(url, &[]), per_second, count).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_that_see_load_send_less_to_a_slow_backend() {
    let _serial = serial().await;
    let mut slow_share = BTreeMap::new();
    for balance in [
        Balance::RoundRobin,
        Balance::LeastInflight,
        Balance::P2cEwma,
    ] {
        let fast_a = Backend::start(Duration::from_millis(2)).await;
        let fast_b = Backend::start(Duration::from_millis(2)).await;
        let slow = Backend::start(Duration::from_millis(80)).await;
        let sluice = TestSluice::start(&pool(&[&fast_a, &slow, &fast_b], balance)).await;
        let client = client();
        let seen = paced_gets(
            &client,
            &format!("http://{}/", sluice.proxy_addr()),
            150.0,
            300,
        )
        .await;
        assert_eq!(
            by_status(&seen),
            BTreeMap::from([(200, 300)]),
            "{balance:?}"
        );
        let share = slow.count() as f64 / 300.0;
        slow_share.insert(format!("{balance:?}"), share);
    }
    let rr = slow_share["RoundRobin"];
    assert!(
        (0.30..=0.37).contains(&rr),
        "round robin gave the slow one {rr:.2}"
    );
    assert!(slow_share["LeastInflight"] < rr * 0.6, "{slow_share:?}");
    assert!(slow_share["P2cEwma"] < rr * 0.6, "{slow_share:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic() {
    let heavy = Backend::start(Duration::ZERO).await;
    let light = Backend::start(Duration::ZERO).await;
    let mut config = pool(&[&heavy, &light], Balance::RoundRobin);
    config.upstreams.get_mut("api").unwrap().targets[0].weight = NonZeroU32::new(3).unwrap();
    let sluice = TestSluice::start(&config).await;
    let client = client();
    for _ in 0..40 {
        assert_eq!(
            get(&client, &format!("http://{}/", sluice.proxy_addr()))
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!((heavy.count(), light.count()), (30, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_cap_holds_per_target() {
    let capped = Backend::start(Duration::from_millis(40)).await;
    let other = Backend::start(Duration::from_millis(40)).await;
    let mut config = pool(&[&capped, &other], Balance::RoundRobin);
    config.upstreams.get_mut("api").unwrap().targets[0].max_inflight =
        Some(NonZeroUsize::new(2).unwrap());
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 30).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 30)]));
    assert!(capped.max_inflight() <= 2, "{}", capped.max_inflight());
    assert!(other.count() > capped.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_detected_skipped_and_rejoins_when_back() {
    let _serial = serial().await;
    let b0 = Backend::start(Duration::from_millis(20)).await;
    let b1 = Backend::start(Duration::from_millis(20)).await;
    let b2 = Backend::start(Duration::from_millis(20)).await;
    let mut config = pool(&[&b0, &b1, &b2], Balance::RoundRobin);
    let upstream = config.upstreams.get_mut("api").unwrap();
    upstream.passive_health = PassiveHealth {
        consecutive_failures: 2,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(10),
    };
    upstream.active_health = Some(ActiveHealth {
        path: "/healthz".into(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(100),
        healthy_threshold: NonZeroU32::new(2).unwrap(),
        unhealthy_threshold: NonZeroU32::new(2).unwrap(),
    });
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/work", sluice.proxy_addr());

    let load = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { paced_gets(&client, &url, 100.0, 300).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    b1.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Long detected by now: nothing more may go to it.
    let text = scrape(&client, sluice.admin_addr()).await;
    let b1_label = format!("target=\"{}\",upstream=\"api\"", b1.addr);
    assert_eq!(samples(&text, "sluice_target_healthy")[&b1_label], 0.0);
    let sent_to_b1 = samples(&text, "sluice_target_requests_total")[&b1_label];
    let back = Backend::start_on(b1.addr, Duration::from_millis(20)).await;
    let seen = load.await.unwrap();

    // Every attempt sluice made at b1 completed (before its death or after
    // its return), failed to connect (and was retried elsewhere), or was in
    // flight when it died.
    let text = scrape(&client, sluice.admin_addr()).await;
    let attempts = samples(&text, "sluice_target_requests_total")[&b1_label] as usize;
    let retries = samples(&text, "sluice_upstream_retries_total")["upstream=\"api\""] as usize;
    let in_flight_at_death =
        attempts - b1.completed_for("/work") - back.completed_for("/work") - retries;
    let bad = seen
        .iter()
        .filter(|s| s.status == StatusCode::BAD_GATEWAY)
        .count();
    assert_eq!(
        by_status(&seen).get(&200).copied().unwrap_or(0) + bad,
        300,
        "{:?}",
        by_status(&seen)
    );
    assert!(
        bad <= in_flight_at_death,
        "{bad} clients saw 502; {in_flight_at_death} were in flight at b1"
    );
    // Between detection and its return, only health probes reached it (none
    // of the traffic): every request counted for it came before.
    let work_to_b1_late = back.arrivals().iter().filter(|a| a.path == "/work").count();
    assert!(work_to_b1_late > 0, "b1 never rejoined");
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(samples(&text, "sluice_target_healthy")[&b1_label], 1.0);
    assert!(samples(&text, "sluice_target_requests_total")[&b1_label] > sent_to_b1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_target_down_requests_wait_for_their_deadline_not_502() {
    let dead = dead_addr().await;
    let mut config = config(&[dead]);
    config.upstreams.get_mut("api").unwrap().passive_health = PassiveHealth {
        consecutive_failures: 1,
        base_ejection: Duration::from_secs(30),
        max_ejection: Duration::from_secs(30),
    };
    config.routes = vec![route("main", "/", None, 100, Duration::from_millis(300))];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // The first finds out the hard way.
    assert_eq!(get(&client, &url).await.status, StatusCode::BAD_GATEWAY);
    // Then the pool is known down: requests queue and time out with 503.
    let seen = burst(&client, &url, 3).await;
    for s in &seen {
        assert_eq!(s.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(s.latency >= Duration::from_millis(280), "{:?}", s.latency);
        assert!(s.retry_after.is_some());
    }
    let counted = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(counted["dropped_timeout"], 3);
    assert_eq!(counted["upstream_error"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_request_that_cannot_connect_is_retried_elsewhere() {
    let live = Backend::start(Duration::ZERO).await;
    let dead = dead_addr().await;
    let mut config = config(&[dead, live.addr]);
    config
        .upstreams
        .get_mut("api")
        .unwrap()
        .passive_health
        .consecutive_failures = 0;
    config.routes = vec![route("main", "/", None, 100, Duration::from_secs(1))];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    for _ in 0..6 {
        assert_eq!(get(&client, &url).await.status, StatusCode::OK);
    }
    // POST is not idempotent: never retried.
    let post = http::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    let mut statuses = vec![send(&client, post).await.status];
    let post = http::Request::post(&url)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    statuses.push(send(&client, post).await.status);
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::OK, StatusCode::BAD_GATEWAY]);
    // Round robin puts the dead target first for every GET (a retry moves
    // the turn on too): six GETs, six retries, all answered 200.
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(
        samples(&text, "sluice_upstream_retries_total")["upstream=\"api\""],
        6.0
    );
}
