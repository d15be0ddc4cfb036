//! The response throttle: a token bucket in bytes that fills at the configured
//! rate and holds at most one second's worth. Like Envoy's stream rate limiter it
//! starts with 50 ms worth of tokens and releases data in 50 ms slices, so the
//! client sees a steady stream. Time is an input, so the arithmetic is testable.

use std::time::Duration;

use tokio::time::Instant;

/// Envoy's fill interval: data leaves in slices of this much time.
const SLICE: Duration = Duration::from_millis(50);

pub(crate) struct Pacer {
    /// Bytes per second.
    rate: f64,
    /// Tokens (bytes) available; negative while a slice waits for its tokens.
    tokens: f64,
    last: Instant,
}

impl Pacer {
    pub(crate) fn new(kbps: u64, now: Instant) -> Pacer {
        let rate = kbps as f64 * 1024.0;
        Pacer {
            rate,
            tokens: rate * SLICE.as_secs_f64(),
            last: now,
        }
    }

    /// The most bytes released at once.
    pub(crate) fn slice(&self) -> usize {
        ((self.rate * SLICE.as_secs_f64()) as usize).max(1)
    }

    /// Takes `n` bytes' worth of tokens; returns how long to wait before they
    /// may go.
    pub(crate) fn take(&mut self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paces_to_the_rate_after_a_small_head_start() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1, t0); // 1024 B/s, 51 B slices
        assert_eq!(p.slice(), 51);
        // The first slice goes at once (50 ms worth of tokens).
        assert_eq!(p.take(51, t0), Duration::ZERO);
        // Sending 1 KiB more takes a second, whatever the slicing.
        let mut t = t0;
        let mut sent = 0;
        while sent < 1024 {
            let w = p.take(64, t);
            t += w;
            sent += 64;
        }
        let took = t.duration_since(t0).as_secs_f64();
        assert!((0.95..1.05).contains(&took), "took {took}");
    }

    #[test]
    fn an_idle_bucket_holds_at_most_a_second() {
        let t0 = Instant::now();
        let mut p = Pacer::new(2, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(p.take(2048, later), Duration::ZERO);
        let w = p.take(1024, later);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
    }
}
