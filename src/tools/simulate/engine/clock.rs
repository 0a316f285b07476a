//! The paused tokio clock, moved by the replay's main task to each event's
//! exact nanosecond (see the engine's doc for how ticks and jumps mix).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// Nanoseconds in a millisecond: tokio's timer tick.
pub(super) const MS: u64 = 1_000_000;

/// The paused tokio clock, as the main task moves it.
pub(super) struct VirtualClock {
    pub(super) origin: Instant,
    /// Nanoseconds after `origin`; the clock reads exactly this.
    pub(super) now: u64,
    /// The first jump was checked against the runtime's clock.
    pub(super) checked: bool,
}

impl VirtualClock {
    pub(super) fn instant(&self) -> Instant {
        self.origin + Duration::from_nanos(self.now)
    }

    /// Moves to `to`: timers up to its millisecond tick fire on their ticks
    /// (other tasks run there), then the clock steps to the exact instant.
    pub(super) async fn goto(&mut self, to: u64) {
        if to <= self.now {
            return;
        }
        let tick = to / MS * MS;
        if tick > self.now {
            self.align();
            // The runtime advances tick by tick through the timers in between.
            tokio::time::sleep_until(self.origin + Duration::from_nanos(tick)).await;
            self.now = tick;
            debug_assert_eq!(Instant::now(), self.instant(), "virtual clock off its tick");
        }
        if to > self.now {
            self.jump(to);
        }
    }

    /// Onto the next millisecond tick if between ticks: the runtime's own
    /// advances (to the next timer) then land on ticks, as timers do.
    pub(super) fn align(&mut self) {
        if !self.now.is_multiple_of(MS) {
            self.jump((self.now / MS + 1) * MS);
        }
    }

    /// Moves the paused clock forward to `to` without yielding. Only called
    /// between ticks, where no timer is due (timers fire on ticks), or onto
    /// a tick that the next `sleep_until` then processes.
    ///
    /// `tokio::time::advance` moves the clock on its first poll and then
    /// yields once; its first poll is all that is wanted here, so it is
    /// polled once and dropped (the yield's wake-up goes to a no-op waker).
    pub(super) fn jump(&mut self, to: u64) {
        let step = Duration::from_nanos(to - self.now);
        let mut advance = pin!(tokio::time::advance(step));
        let _pending = advance
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        self.now = to;
        if !self.checked {
            // Should tokio ever stop advancing on the first poll, fail loudly.
            assert_eq!(
                Instant::now(),
                self.instant(),
                "the paused clock did not move"
            );
            self.checked = true;
        }
        debug_assert_eq!(Instant::now(), self.instant(), "virtual clock jump");
    }
}
