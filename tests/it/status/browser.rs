//! The status page in a real browser (Debian's headless `chromium`) against
//! a running sluice under load: it loads without a console error, shows
//! every route and upstream by name, its figures move while load runs
//! (read from the DOM), and a Pause clicked with the mouse stops releases:
//! the backend sees no request while the route is paused. Saves a
//! screenshot to `target/tmp/status-page.png`.

use std::time::Duration;

use serde_json::{Value, json};

use super::cdp::Browser;
use super::{route, status_config, status_json};
use crate::common::*;

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"JSON.stringify({
  conn: document.getElementById("conn").textContent,
  uptime: document.getElementById("uptime").textContent,
  connections: document.getElementById("connections").textContent,
  routes: [...document.querySelectorAll("[data-route]")].map((e) => ({
    name: e.dataset.route,
    shown: e.querySelector('[data-f="name"]').textContent,
    offered: e.querySelector('[data-f="offered"]').textContent,
    released: e.querySelector('[data-f="released"]').textContent,
    depth: e.querySelector('[data-f="depth"]').textContent,
    paused: !!e.querySelector(".badge.paused"),
    button: e.querySelector('button[data-action="pause"],button[data-action="resume"]').textContent,
    lines: e.querySelectorAll("svg polyline").length,
  })),
  upstreams: [...document.querySelectorAll("[data-upstream]")].map((e) => ({
    name: e.dataset.upstream,
    shown: e.querySelector('[data-f="name"]').textContent,
    requests: e.querySelector('[data-f="requests"]').textContent,
    p50: e.querySelector('[data-f="p50"]').textContent,
    targets: [...e.querySelectorAll("tbody tr")].map((r) => r.cells[0].textContent),
  })),
  width: document.documentElement.scrollWidth,
})"#;

async fn read_page(browser: &mut Browser) -> Value {
    // Before the page has loaded (or while it draws its first cards) the
    // elements are not all there yet: that reads as nothing.
    let expression =
        format!("(() => {{ try {{ return {READ_PAGE}; }} catch (e) {{ return 'null'; }} }})()");
    let text = browser.eval(&expression).await;
    serde_json::from_str(text.as_str().unwrap()).unwrap()
}

/// Reads the page (every 100 ms, at most `within`) until `done` holds.
async fn until_page(
    browser: &mut Browser,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let page = read_page(browser).await;
        if !page.is_null() && done(&page) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never got there within {within:?}: {page:#}\nerrors: {:?}",
            browser.errors()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn shown<'a>(page: &'a Value, kind: &str, name: &str) -> &'a Value {
    page[kind]
        .as_array()
        .and_then(|all| all.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no {kind} {name} on the page: {page:#}"))
}

fn number(text: &Value) -> f64 {
    text.as_str().and_then(|t| t.parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_sluice_live_and_pauses_a_route_in_a_real_browser() {
    let _serial = serial().await;
    let shop = Backend::start(Duration::from_millis(2)).await;
    let catalog = Backend::start(Duration::ZERO).await;
    let config = status_config(shop.addr, catalog.addr, None);
    let sluice = TestSluice::start(&config).await;
    let admin = sluice.admin_addr();
    let client = client();

    let mut browser = Browser::launch().await;
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        browser.call(domain, json!({})).await;
    }
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
    browser
        .call(
            "Page.navigate",
            json!({ "url": format!("http://{admin}/") }),
        )
        .await;

    // Load for at most 15 s: checkout twice its rate, search well under its own.
    let load = |prefix: &'static str, per_second: f64, count: usize| {
        let client = client.clone();
        let url = format!("http://{}{prefix}/item", sluice.proxy_addr());
        tokio::spawn(
            async move { paced(&client, || get_request(&url, &[]), per_second, count).await },
        )
    };
    let checkout = load("/checkout", 40.0, 600);
    let search = load("/search", 30.0, 450);

    // Every route and upstream by name, figures that move.
    let first = until_page(&mut browser, Duration::from_secs(10), |page| {
        page["conn"] == "live"
            && page["routes"].as_array().is_some_and(|r| r.len() == 2)
            && number(&shown(page, "routes", "checkout")["released"]) > 0.0
    })
    .await;
    for name in ["checkout", "search"] {
        assert_eq!(shown(&first, "routes", name)["shown"], name);
    }
    for (name, target) in [("shop", shop.addr), ("catalog", catalog.addr)] {
        let upstream = shown(&first, "upstreams", name);
        assert_eq!(upstream["shown"], name);
        assert_eq!(upstream["targets"], json!([target.to_string()]));
    }
    let later = until_page(&mut browser, Duration::from_secs(10), |page| {
        let checkout = shown(page, "routes", "checkout");
        page["uptime"] != first["uptime"]
            && number(&checkout["offered"]) > number(&checkout["released"])
            && checkout["lines"].as_u64() >= Some(3)
            && number(&shown(page, "upstreams", "catalog")["requests"]) > 0.0
            && shown(page, "upstreams", "shop")["p50"] != "–"
    })
    .await;
    assert_ne!(later["connections"], "–");

    // Pause `search` with a real click on its button.
    assert_eq!(shown(&later, "routes", "search")["button"], "Pause");
    browser
        .click(r#"[data-route="search"] button[data-action="pause"]"#)
        .await;
    until_page(&mut browser, Duration::from_secs(5), |page| {
        let search = shown(page, "routes", "search");
        search["paused"] == true && search["button"] == "Resume"
    })
    .await;
    let (_, doc) = status_json(&client, admin, None).await;
    assert_eq!(route(&doc, "search")["paused"], true);
    // Once requests are piling up in its queue, the backend sees none.
    super::until_status(&client, admin, None, Duration::from_secs(5), |doc| {
        route(doc, "search")["queue_depth"].as_u64() >= Some(5)
    })
    .await;
    let seen_at_pause = catalog.count();
    until_page(&mut browser, Duration::from_secs(10), |page| {
        let search = shown(page, "routes", "search");
        number(&search["depth"]) >= 30.0 && number(&search["released"]) == 0.0
    })
    .await;
    assert_eq!(catalog.count(), seen_at_pause, "released while paused");

    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&artifact, &png).unwrap();
    eprintln!("status page screenshot: {}", artifact.display());
    assert_eq!(catalog.count(), seen_at_pause, "released while paused");

    // Resume from the page: releases start again.
    browser
        .click(r#"[data-route="search"] button[data-action="resume"]"#)
        .await;
    until_page(&mut browser, Duration::from_secs(5), |page| {
        shown(page, "routes", "search")["paused"] == false
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while catalog.count() == seen_at_pause {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no release after resume"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Readable on a phone: one column, nothing wider than the screen.
    browser
        .call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
        )
        .await;
    until_page(&mut browser, Duration::from_secs(5), |page| {
        page["width"].as_u64().is_some_and(|w| w <= 390)
    })
    .await;

    assert!(browser.errors().is_empty(), "{:#?}", browser.errors());
    drop(browser);
    checkout.await.unwrap();
    search.await.unwrap();
}
