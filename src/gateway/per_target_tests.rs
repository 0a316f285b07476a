//! A `rate_per_target` route in virtual time: the rate follows its
//! upstream's targets across a reload, and the new rate applies to the
//! requests already queued.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::{Gateway, Telemetry};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shaper::{Admission, Arrival};

fn config(targets: &[&str]) -> Config {
    let listed: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let src = format!(
        "[upstreams.api]\ntargets = [{}]\n\
         [[routes]]\nname = \"r\"\nupstream = \"api\"\n\
         limit = {{ rate_per_target = 5 }}\n\
         queue = {{ capacity = 100, timeout = \"60s\" }}\n",
        listed.join(", ")
    );
    Config::parse(&src, Path::new("t.toml")).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_rate_follows_a_reload_and_applies_to_the_queue() {
    let metrics = Metrics::new().unwrap();
    let telemetry = Telemetry::new(metrics.clone()).unwrap();
    let two = Gateway::new(&config(&["127.0.0.1:1", "127.0.0.1:2"]), telemetry).unwrap();
    let state = two.routes()[0].state.clone();
    assert_eq!(state.per_target(), Some((5.0, 2)));
    assert_eq!(state.shaper.limits().rate.map(|(r, _)| r), Some(10.0));
    assert!(
        metrics
            .render()
            .contains("sluice_route_rate_limit{route=\"r\"} 10\n")
    );

    // One goes at once (the burst of one), six queue, released 100 ms apart.
    let start = Instant::now();
    let Admission::Go(_first) = state.shaper.admit(Arrival::default()) else {
        panic!("the first goes at once");
    };
    let waiters: Vec<_> = (0..6)
        .map(|_| match state.shaper.admit(Arrival::default()) {
            Admission::Queued(ticket) => tokio::spawn(async move {
                ticket.wait().await.unwrap();
                start.elapsed()
            }),
            other => panic!("{other:?}"),
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(250)).await;

    // A third target by reload: 15/s, for the requests still queued too.
    let three = two
        .reload(&config(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]))
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&three.routes()[0].state, &state));
    assert_eq!(state.per_target(), Some((5.0, 3)));
    assert_eq!(state.shaper.limits().rate.map(|(r, _)| r), Some(15.0));
    assert!(
        metrics
            .render()
            .contains("sluice_route_rate_limit{route=\"r\"} 15\n")
    );
    let mut at = Vec::new();
    for w in waiters {
        at.push(w.await.unwrap().as_millis());
    }
    // Two left at 10/s before the reload (the limiter forgives a little
    // lateness, so the first comes early), 100 ms apart; from the reload a
    // fresh state lets one go at once and the rest leave at 15/s: a
    // fifteenth of a second apart once the forgiven lateness is spent.
    assert!(at[1] - at[0] == 100 && at[1] <= 200, "{at:?}");
    assert!(at[2].abs_diff(250) <= 1, "{at:?}");
    for pair in at[3..].windows(2) {
        assert!((65..=68).contains(&(pair[1] - pair[0])), "{at:?}");
    }
    assert!(at[5] - at[2] <= 200, "three at 15/s, not 10/s: {at:?}");
}
