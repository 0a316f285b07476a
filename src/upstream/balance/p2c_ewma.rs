//! Power of two choices on latency-weighted load: two eligible targets at
//! random, and the one whose in-flight count per weight, times its latency
//! EWMA, is lower.
//!
//! Invariant: the two candidates are distinct whenever two are eligible, so
//! a slow target loses every comparison it is drawn into.

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use super::super::target::Target;
use super::load;

/// The random state of the draws.
pub(in crate::upstream) struct P2cEwma {
    rng: AtomicU64,
}

impl P2cEwma {
    pub(super) fn new() -> P2cEwma {
        P2cEwma {
            rng: AtomicU64::new(seed()),
        }
    }

    pub(super) fn choose(
        &self,
        targets: &[Arc<Target>],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let candidates: Vec<usize> = (0..targets.len()).filter(|&i| eligible(i)).collect();
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let r = self.random();
                let a = candidates[(r % n as u64) as usize];
                let b = candidates[((r >> 32) % (n as u64 - 1)) as usize];
                let b = if b == a { candidates[n - 1] } else { b };
                Some(if load(&targets[a], true) <= load(&targets[b], true) {
                    a
                } else {
                    b
                })
            }
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: good enough to pick two targets.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A nonzero seed from the clock (xorshift stays at zero from zero).
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
    nanos | 1
}
