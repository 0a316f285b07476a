//! The GCRA script Redis runs for a route's global limit, its arguments and
//! the check of its reply.
//!
//! Invariant: arguments go as exact microseconds (nothing lost to rounding),
//! and a reply that grants more than was asked, or answers a negative time,
//! is an error, never a grant.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::shaper::{GcraParams, Taken};

/// The GCRA script; its SHA1 is what `EVALSHA` names, and the full text is
/// sent again (`EVAL`) whenever Redis answers NOSCRIPT (restart, `SCRIPT FLUSH`).
///
/// The file stays at `src/gcra.lua` while tests/redis_gcra.rs includes it
/// by that path; it moves to `src/store/` once the tests name this constant.
pub const GCRA_LUA: &str = include_str!("../gcra.lua");

/// The script's ARGV[1], ARGV[2] and ARGV[4] (ARGV[3], `want`, goes as an
/// integer).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ScriptArgs {
    pub(super) interval_us: String,
    pub(super) tolerance_us: String,
    pub(super) horizon_us: String,
}

impl ScriptArgs {
    /// Microseconds as decimal strings: `Display` of an `f64` is the shortest
    /// text that reads back to the same value, so nothing is lost on the way.
    pub(super) fn new(params: GcraParams) -> Result<ScriptArgs, String> {
        if params.interval.is_zero() {
            return Err("the route's rate has a zero interval".to_string());
        }
        Ok(ScriptArgs {
            interval_us: micros(params.interval).to_string(),
            tolerance_us: micros(params.tolerance).to_string(),
            horizon_us: micros(params.horizon).to_string(),
        })
    }
}

/// A duration in (fractional) microseconds, exact to the nanosecond for any
/// duration under 104 days.
fn micros(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1000.0
}

/// Checks the script's `{granted, next_in_us, ready, later_in_us}` against
/// what was asked.
pub(super) fn parse_reply(
    (granted, next_in_us, ready, later_in_us): (i64, i64, i64, i64),
    want: NonZeroU32,
) -> Result<Taken, String> {
    let granted = u32::try_from(granted)
        .ok()
        .filter(|g| *g <= want.get())
        .ok_or_else(|| format!("the script granted {granted} of {want} tokens"))?;
    let ready = u32::try_from(ready)
        .ok()
        .filter(|r| *r <= granted)
        .ok_or_else(|| format!("the script said {ready} of {granted} tokens are ready"))?;
    let micros = |us: i64, what: &str| {
        u64::try_from(us)
            .map(Duration::from_micros)
            .map_err(|_| format!("the script answered a negative {what} ({us} us)"))
    };
    Ok(Taken {
        granted,
        next_in: micros(next_in_us, "wait")?,
        ready,
        later_in: micros(later_in_us, "reservation time")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn script_args_are_exact_microseconds() {
        let args = ScriptArgs::new(GcraParams {
            interval: Duration::from_nanos(333_333_333),
            tolerance: Duration::from_millis(1500),
            horizon: Duration::from_secs(2),
        })
        .unwrap();
        assert_eq!(args.interval_us, "333333.333");
        assert_eq!(args.tolerance_us, "1500000");
        assert_eq!(args.horizon_us, "2000000");
        let zero = GcraParams {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            horizon: Duration::ZERO,
        };
        assert!(ScriptArgs::new(zero).is_err());
    }

    #[test]
    fn replies_are_checked_against_the_request() {
        assert_eq!(
            parse_reply((3, 250_000, 1, 50_000), want(5)),
            Ok(Taken {
                granted: 3,
                next_in: Duration::from_millis(250),
                ready: 1,
                later_in: Duration::from_millis(50),
            })
        );
        assert_eq!(parse_reply((0, 0, 0, 0), want(1)).map(|t| t.granted), Ok(0));
        assert!(parse_reply((6, 0, 0, 0), want(5)).is_err());
        assert!(parse_reply((-1, 0, 0, 0), want(5)).is_err());
        assert!(parse_reply((1, -5, 1, 0), want(5)).is_err());
        assert!(
            parse_reply((2, 0, 3, 0), want(5)).is_err(),
            "more ready than granted"
        );
        assert!(parse_reply((2, 0, 1, -1), want(5)).is_err());
    }
}
