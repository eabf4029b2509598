//! Reconnect delays: jittered exponential backoff (SPEC §5.4).
//!
//! Each failure doubles the base delay from `min_backoff` up to `max_backoff`; the delay used is
//! the base scaled by a random factor in [½, 1) so that thousands of tailers cut at once (an API
//! server restart) do not come back in lockstep. A stream that stayed healthy for
//! [`HEALTHY_AFTER`] resets the backoff: its next failure waits `min_backoff` again.

use std::time::Duration;

/// A stream open this long is healthy: its end resets the backoff.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// The backoff state of one tailer.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Base delay of the next failure.
    next: Duration,
}

impl Backoff {
    /// A backoff from `min` to `max` (`max` is raised to `min` if smaller).
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt, with a random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// The delay before the next attempt with `jitter` in [0, 1): `base × (½ + jitter/2)`.
    pub fn next_delay_with(&mut self, jitter: f64) -> Duration {
        jittered_with(self.next_base(), jitter)
    }

    /// The base delay of the next attempt, before jitter (the pure state machine returns it; its
    /// shell applies [`jittered`]).
    pub fn next_base(&mut self) -> Duration {
        let base = self.next;
        // Saturating: a doubling past `Duration::MAX` must stop at `max`, not panic.
        self.next = base.saturating_mul(2).min(self.max);
        base
    }

    /// A stream ended after being open for `open_for`: a healthy one resets the backoff.
    pub fn stream_ended(&mut self, open_for: Duration) {
        if open_for >= HEALTHY_AFTER {
            self.reset();
        }
    }

    /// Starts over from `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// `base` scaled by a random factor in [½, 1).
pub fn jittered(base: Duration) -> Duration {
    jittered_with(base, rand::random::<f64>())
}

fn jittered_with(base: Duration, jitter: f64) -> Duration {
    base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_up_to_max() {
        let mut b = Backoff::new(S, 10 * S);
        let got: Vec<Duration> = (0..6).map(|_| b.next_delay_with(0.999_999)).collect();
        let want = [1, 2, 4, 8, 10, 10];
        for (g, w) in got.iter().zip(want) {
            assert!(g.abs_diff(w * S) < Duration::from_millis(1), "{got:?}");
        }
    }

    #[test]
    fn jitter_spans_half_to_full() {
        let mut b = Backoff::new(4 * S, 4 * S);
        assert_eq!(b.next_delay_with(0.0), 2 * S);
        assert_eq!(b.next_delay_with(0.5), 3 * S);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(d >= 2 * S && d < 4 * S, "{d:?}");
        }
    }

    #[test]
    fn healthy_stream_resets() {
        let mut b = Backoff::new(S, 60 * S);
        b.next_delay_with(0.0);
        b.next_delay_with(0.0);
        b.stream_ended(59 * S);
        assert_eq!(b.next_delay_with(0.0), 2 * S);
        b.stream_ended(HEALTHY_AFTER);
        assert_eq!(b.next_delay_with(0.0), S / 2);
    }

    #[test]
    fn huge_bounds_saturate_instead_of_overflowing() {
        let mut b = Backoff::new(Duration::MAX / 3, Duration::MAX);
        for _ in 0..10 {
            assert!(b.next_delay_with(0.999) <= Duration::MAX);
        }
        assert_eq!(b.next, Duration::MAX);
    }

    #[test]
    fn max_below_min_is_raised() {
        let mut b = Backoff::new(5 * S, S);
        assert_eq!(b.next_delay_with(0.0), 5 * S / 2);
        assert_eq!(b.next_delay_with(0.0), 5 * S / 2);
    }
}
