//! A token bucket: at most `rate` events a second on average, in bursts of
//! at most `burst`. Each socket keeps one for its publishes.

use std::time::Instant;

/// Tokens left and when they were last counted.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    /// Tokens added per second; 0 means no limit.
    rate: u32,
    /// Most tokens the bucket holds.
    burst: u32,
    tokens: f64,
    counted_at: Instant,
}

impl TokenBucket {
    /// A full bucket. A `rate` of 0 never runs out.
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst: burst.max(1),
            tokens: f64::from(burst.max(1)),
            counted_at: Instant::now(),
        }
    }

    /// Spends one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let refill = now.duration_since(self.counted_at).as_secs_f64() * f64::from(self.rate);
        self.tokens = (self.tokens + refill).min(f64::from(self.burst));
        self.counted_at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(10, 3);
        let start = bucket.counted_at;
        assert!((0..3).all(|_| bucket.try_take_at(start)));
        assert!(!bucket.try_take_at(start));
        // 10 a second: one token back after 100 ms, not before.
        assert!(!bucket.try_take_at(start + Duration::from_millis(50)));
        assert!(bucket.try_take_at(start + Duration::from_millis(100)));
        assert!(!bucket.try_take_at(start + Duration::from_millis(100)));
        // A long pause refills to the burst, no further.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take_at(later)));
        assert!(!bucket.try_take_at(later));
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let mut bucket = TokenBucket::new(0, 1);
        assert!((0..10_000).all(|_| bucket.try_take()));
    }
}
