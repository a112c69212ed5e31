//! Per-token rate limits for the admin API: one token bucket per token, refilled continuously.
//!
//! Pure: the caller passes the time, so the rule is tested without a clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Requests per second a token may make on average, and how many it may make at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// `per_second` requests a second with bursts of twice that; 0 turns limiting off.
    pub fn per_second(per_second: u32) -> Option<Rate> {
        (per_second > 0).then_some(Rate { per_second: per_second as f64, burst: 2.0 * per_second as f64 })
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets by key (a token's hash). Keys are the hub's own tokens, so the map stays small.
#[derive(Debug)]
pub struct Limiter {
    rate: Option<Rate>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rate: Option<Rate>) -> Limiter {
        Limiter { rate, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `key`'s bucket; `Err(wait)` says how long until one is there.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let Some(rate) = self.rate else { return Ok(()) };
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: rate.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate.per_second).min(rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_holds() {
        let limiter = Limiter::new(Rate::per_second(10));
        let start = Instant::now();
        for n in 0..20 {
            assert!(limiter.check("a", start).is_ok(), "request {n} of the burst");
        }
        let wait = limiter.check("a", start).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        // Another token has its own bucket.
        assert!(limiter.check("b", start).is_ok());
        // A tenth of a second later one more request fits, and only one.
        let later = start + Duration::from_millis(100);
        assert!(limiter.check("a", later).is_ok());
        assert!(limiter.check("a", later).is_err());
        // The bucket refills to its burst, not beyond.
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..20 {
            assert!(limiter.check("a", much_later).is_ok());
        }
        assert!(limiter.check("a", much_later).is_err());
    }

    #[test]
    fn zero_turns_limiting_off() {
        let limiter = Limiter::new(Rate::per_second(0));
        let now = Instant::now();
        assert!((0..100_000).all(|_| limiter.check("a", now).is_ok()));
    }
}
