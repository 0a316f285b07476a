//! Numbers at the edges: any rate and burst that [`check_rate`] and
//! [`check_burst`] accept — the one check of the config file and of the
//! admin API's rate override — builds the route and per-key limiters, also
//! at the "local" fallback of a shared rate (rate and burst divided by up to
//! `expected_instances`), and deciding at any instant up to a day apart
//! never panics; a refused value is refused with its bounds in the message.
//! Durations: any text within `MAX_DURATION` added to now never overflows.

#![no_main]

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::config::{MAX_DURATION, check_burst, check_rate};
use sluice::shaper::{KeyedLimiter, Limiter};
use tokio::time::Instant;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Raw values, or (`within`) values spread over the accepted ranges, so
    /// the limiters are reached without the fuzzer first finding them.
    within: bool,
    rate: f64,
    burst: i64,
    instances: u16,
    keys: u8,
    /// Nanoseconds after now at which to decide, each taken modulo a day.
    at: Vec<u64>,
    key: u64,
}

fuzz_target!(|input: Input| {
    let (rate, burst) = if input.within {
        // Log-uniform over 0.001..=1e6, and 1..=1e6.
        let fraction = (input.rate.to_bits() as f64) / (u64::MAX as f64);
        let rate = 10f64.powf(-3.0 + 9.0 * fraction).clamp(0.001, 1_000_000.0);
        (rate, 1 + input.burst.rem_euclid(1_000_000))
    } else {
        (input.rate, input.burst)
    };
    let rate = check_rate(rate);
    let burst = check_burst(burst);
    if let Err(why) = &rate {
        assert!(why.contains("from 0.001 to 1000000"), "{why}");
    }
    if let Err(why) = &burst {
        assert!(why.contains("from 1 to 1000000"), "{why}");
    }
    let (Ok(rate), Ok(burst)) = (rate, burst) else {
        return;
    };
    // The fallback of a shared rate runs at rate / expected_instances
    // (1..=10000), burst likewise and at least 1.
    let instances = u32::from(input.instances % 10_000) + 1;
    let fallback = (
        rate / f64::from(instances),
        NonZeroU32::new(burst.get() / instances).unwrap_or(NonZeroU32::MIN),
    );
    let now = Instant::now();
    let day = u64::try_from(MAX_DURATION.as_nanos()).unwrap();
    for (rate, burst) in [(rate, burst), fallback] {
        let route = Limiter::new(rate, burst);
        let keyed = KeyedLimiter::new(
            rate,
            burst,
            NonZeroUsize::new(usize::from(input.keys) + 1).unwrap(),
        );
        for &at in input.at.iter().take(64) {
            let when = now + Duration::from_nanos(at % (day + 1));
            if let Err(wait) = route.check(when) {
                // A wait is a deadline too: now + wait must not overflow.
                let _ = when.checked_add(wait).expect("wait fits an Instant");
            }
            let _ = keyed.check(input.key ^ at, when);
        }
    }
});
