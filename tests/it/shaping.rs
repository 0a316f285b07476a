//! Shaping through real sockets: a burst becomes a flat line at the backend,
//! the over-waited get 503 at their deadline, the queue is bounded, the
//! in-flight cap holds, and every request is counted exactly once.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use crate::common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;

/// The counters in /metrics sum to the requests sent and match what clients saw.
async fn assert_accounted(
    client: &TestClient,
    admin: std::net::SocketAddr,
    route: &str,
    seen: &[Seen],
    cancelled: u64,
) -> BTreeMap<String, u64> {
    let counted = outcomes(client, admin, route).await;
    let total: u64 = counted.values().sum();
    assert_eq!(
        total,
        seen.len() as u64 + cancelled,
        "outcomes {counted:?} vs {} sent",
        seen.len() as u64 + cancelled
    );
    let status = by_status(seen);
    let get = |k: &str| counted.get(k).copied().unwrap_or(0);
    assert_eq!(
        get("forwarded"),
        status.get(&200).copied().unwrap_or(0) as u64
    );
    assert_eq!(
        get("rejected_queue_full") + get("dropped_timeout"),
        status.get(&503).copied().unwrap_or(0) as u64
    );
    assert_eq!(get("cancelled"), cancelled);
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_is_released_as_a_flat_line_at_the_configured_rate() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![
        route(
            "main",
            "/",
            Some((100.0, 10)),
            1000,
            Duration::from_secs(10),
        ),
        // Unshaped, same upstream: used only to open pooled connections first,
        // so connection set-up does not skew the arrival times measured.
        route("warm", "/warm", None, 100, Duration::from_secs(10)),
    ];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    burst(&client, &format!("http://{}/warm", sluice.proxy_addr()), 30).await;

    let seen = burst(&client, &format!("http://{}/buy", sluice.proxy_addr()), 500).await;

    assert_eq!(by_status(&seen), BTreeMap::from([(200, 500)]));
    let arrivals: Vec<u64> = backend
        .arrivals()
        .iter()
        .filter(|a| a.path == "/buy")
        .map(|a| a.at)
        .collect();
    assert_eq!(arrivals.len(), 500);
    // After the burst of 10, the drain runs at 100/s.
    let drain = &arrivals[10..];
    let span = (drain[drain.len() - 1] - drain[0]) as f64 / 1e6;
    let rate = (drain.len() - 1) as f64 / span;
    assert!((rate - 100.0).abs() <= 5.0, "drain rate {rate:.1}/s");
    // No 100 ms window holds more than rate * 0.1 + burst + 1.
    let mut sorted = arrivals.clone();
    sorted.sort_unstable();
    let mut start = 0;
    for end in 0..sorted.len() {
        while sorted[end] - sorted[start] >= 100_000 {
            start += 1;
        }
        assert!(
            end - start < 21,
            "{} arrivals within 100 ms: {:?}",
            end - start + 1,
            sorted[start..=end]
                .iter()
                .map(|t| (t - sorted[0]) / 1000)
                .collect::<Vec<_>>()
        );
    }
    assert_accounted(&client, sluice.admin_addr(), "main", &seen, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_waited_requests_get_503_at_their_deadline_and_never_reach_the_backend() {
    let _serial = serial().await;
    // The backend serves 2 at a time in 100 ms: 20/s, whatever the rate says.
    let backend = Backend::start(Duration::from_millis(100)).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().max_inflight = NonZeroUsize::new(2).unwrap();
    let timeout = Duration::from_millis(500);
    config.routes = vec![route("main", "/", Some((1000.0, 100)), 1000, timeout)];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 60).await;

    let status = by_status(&seen);
    let ok = status.get(&200).copied().unwrap_or(0);
    assert!((8..=14).contains(&ok), "served {ok}, expected about 10");
    for s in seen
        .iter()
        .filter(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        let retry = s.retry_after.expect("503 carries Retry-After");
        assert!(retry >= 1);
        assert!(
            s.latency <= timeout + Duration::from_millis(50),
            "503 after {:?}",
            s.latency
        );
    }
    for arrival in backend.arrivals() {
        let age = arrival.age.unwrap();
        assert!(
            age <= timeout + Duration::from_millis(20),
            "backend saw a request {age:?} old"
        );
    }
    let counted = assert_accounted(&client, sluice.admin_addr(), "main", &seen, 0).await;
    assert!(
        counted.get("dropped_timeout").copied().unwrap_or(0) > 0,
        "{counted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expected_wait_beyond_the_timeout_is_rejected_at_once() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    // 20/s, burst 1, 1 s timeout: about 21 can be served in time.
    config.routes = vec![route(
        "main",
        "/",
        Some((20.0, 1)),
        1000,
        Duration::from_secs(1),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 100).await;

    let status = by_status(&seen);
    let ok = status[&200];
    assert!((18..=23).contains(&ok), "served {ok}");
    let quick = seen
        .iter()
        .filter(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
        .filter(|s| s.latency < Duration::from_millis(200))
        .count();
    assert!(quick >= 70, "only {quick} rejections came at once");
    // Retry-After reflects the queue: about the drain time of 20 queued at 20/s.
    let retry: Vec<u64> = seen.iter().filter_map(|s| s.retry_after).collect();
    assert!(retry.iter().all(|r| (1..=2).contains(r)), "{retry:?}");
    assert_accounted(&client, sluice.admin_addr(), "main", &seen, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_the_excess_quickly() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![route(
        "main",
        "/",
        Some((10.0, 1)),
        5,
        Duration::from_secs(10),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 40).await;

    let status = by_status(&seen);
    assert_eq!(status[&200], 6, "one at once, five from the queue");
    assert_eq!(status[&503], 34);
    for s in seen
        .iter()
        .filter(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        assert!(
            s.latency < Duration::from_millis(250),
            "rejection took {:?}",
            s.latency
        );
        assert!(s.retry_after.is_some());
    }
    let counted = assert_accounted(&client, sluice.admin_addr(), "main", &seen, 0).await;
    assert_eq!(counted["rejected_queue_full"], 34);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_while_queued_are_never_forwarded() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    // One token every 200 ms, burst 1.
    config.routes = vec![route(
        "main",
        "/",
        Some((5.0, 1)),
        100,
        Duration::from_secs(10),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // The first takes the only token.
    assert_eq!(get(&client, &url).await.status, StatusCode::OK);
    // Five more queue up on raw connections, then hang up.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let mut socket = tokio::net::TcpStream::connect(sluice.proxy_addr())
            .await
            .unwrap();
        socket
            .write_all(b"GET /leaving HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        sockets.push(socket);
    }
    // Wait until all five are queued.
    let depth = async {
        loop {
            let text = scrape(&client, sluice.admin_addr()).await;
            if samples(&text, "sluice_queue_depth").values().sum::<f64>() >= 5.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), depth)
        .await
        .expect("five queued");
    for socket in sockets {
        drop(socket);
    }
    // Long enough for several tokens: none may go to the departed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        backend.count(),
        1,
        "a cancelled request reached the backend"
    );
    assert!(backend.arrivals().iter().all(|a| a.path != "/leaving"));
    // And the next client is served straight away: no token was spent on them.
    let next = get(&client, &url).await;
    assert_eq!(next.status, StatusCode::OK);
    assert!(
        next.latency < Duration::from_millis(100),
        "{:?}",
        next.latency
    );
    let counted = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(counted.get("cancelled"), Some(&5), "{counted:?}");
    assert_eq!(counted.get("forwarded"), Some(&2), "{counted:?}");
    assert_eq!(counted.values().sum::<u64>(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_never_sees_more_than_max_inflight() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::from_millis(30)).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().max_inflight = NonZeroUsize::new(3).unwrap();
    config.routes = vec![route("main", "/", None, 1000, Duration::from_secs(10))];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 60).await;

    assert_eq!(by_status(&seen), BTreeMap::from([(200, 60)]));
    assert_eq!(backend.max_inflight(), 3);
    assert_accounted(&client, sluice.admin_addr(), "main", &seen, 0).await;
}
