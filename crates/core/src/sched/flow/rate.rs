//! Token-bucket rate limits, one bucket per key (a task type, or a key taken
//! from a task field such as a tenant), with bounded memory.

use super::{Reason, Refusal};
use crate::{Error, Millis};
use std::collections::HashMap;

/// `rate` tokens per second refill a bucket holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub rate: f64,
    /// Most tokens held, so the largest burst.
    pub burst: u32,
}

impl RateLimit {
    /// Refuses a rate that is not a positive number and a zero burst.
    pub fn validate(&self) -> Result<(), Error> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(Error::invalid(
                "rate limit rate must be a positive number of tasks per second",
            )
            .with_field("rate"));
        }
        if self.burst == 0 {
            return Err(Error::invalid("rate limit burst must be at least 1").with_field("burst"));
        }
        Ok(())
    }
}

/// One bucket. Starts full.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last_ms: Millis,
}

impl TokenBucket {
    /// A full bucket with `limit`.
    pub fn new(limit: RateLimit, now: Millis) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            last_ms: now,
        }
    }

    fn refill(&mut self, now: Millis) {
        if now > self.last_ms {
            let added = (now - self.last_ms) as f64 * self.limit.rate / 1000.0;
            self.tokens = (self.tokens + added).min(f64::from(self.limit.burst));
            self.last_ms = now;
        }
    }

    /// Tokens available at `now`.
    pub fn tokens(&mut self, now: Millis) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token, or says in how many milliseconds one will be there.
    pub fn try_take(&mut self, now: Millis) -> Result<(), u64> {
        self.refill(now);
        // A hair of tolerance so that float rounding never refuses a token
        // that the exact arithmetic would grant.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err((missing * 1000.0 / self.limit.rate).ceil().max(1.0) as u64)
    }

    /// True when a bucket is full at `now`: forgetting it changes nothing,
    /// since a new bucket starts full.
    pub fn is_full(&mut self, now: Millis) -> bool {
        self.tokens(now) >= f64::from(self.limit.burst)
    }
}

/// Buckets per key, all with one limit (per-key overrides allowed). At most
/// `max_keys` buckets are kept: when a new key would exceed that, full buckets
/// (which a fresh bucket reproduces exactly) are dropped first, then the least
/// recently used ones until a tenth of the room is free. Dropping a bucket
/// that is not full forgives its debt, so the bound is a memory guarantee that
/// can, under more than `max_keys` active keys, let a key burst again.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    default: RateLimit,
    overrides: HashMap<String, RateLimit>,
    max_keys: usize,
    buckets: HashMap<String, TokenBucket>,
}

/// Buckets kept unless configured otherwise.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// Every key limited to `default`, at most `max_keys` buckets in memory.
    pub fn new(default: RateLimit, max_keys: usize) -> Result<Self, Error> {
        default.validate()?;
        if max_keys == 0 {
            return Err(Error::invalid("max_keys must be at least 1").with_field("max_keys"));
        }
        Ok(Self {
            default,
            overrides: HashMap::new(),
            max_keys,
            buckets: HashMap::new(),
        })
    }

    /// A different limit for one key; its current bucket is reset.
    pub fn set_override(&mut self, key: impl Into<String>, limit: RateLimit) -> Result<(), Error> {
        limit.validate()?;
        let key = key.into();
        self.buckets.remove(&key);
        self.overrides.insert(key, limit);
        Ok(())
    }

    /// Buckets in memory.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if no bucket is in memory.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Tokens left for `key` at `now` (the burst for an unknown key).
    pub fn tokens(&mut self, key: &str, now: Millis) -> f64 {
        match self.buckets.get_mut(key) {
            Some(b) => b.tokens(now),
            None => f64::from(self.limit_for(key).burst),
        }
    }

    fn limit_for(&self, key: &str) -> RateLimit {
        self.overrides.get(key).copied().unwrap_or(self.default)
    }

    /// Takes a token from `key`'s bucket, or refuses with a retry hint.
    pub fn try_take(&mut self, key: &str, now: Millis) -> Result<(), Refusal> {
        if !self.buckets.contains_key(key) {
            if self.buckets.len() >= self.max_keys {
                self.evict(now);
            }
            let limit = self.limit_for(key);
            self.buckets
                .insert(key.to_string(), TokenBucket::new(limit, now));
        }
        let bucket = self.buckets.get_mut(key).expect("inserted above");
        bucket.try_take(now).map_err(|ms| Refusal {
            reason: Reason::RateLimited,
            message: format!("rate limit of {key:?} reached"),
            retry_after_ms: Some(ms),
        })
    }

    fn evict(&mut self, now: Millis) {
        self.buckets.retain(|_, b| !b.is_full(now));
        let target = self.max_keys - self.max_keys / 10 - 1;
        if self.buckets.len() > target {
            let mut by_age: Vec<(Millis, String)> = self
                .buckets
                .iter()
                .map(|(k, b)| (b.last_ms, k.clone()))
                .collect();
            by_age.sort_unstable();
            let excess = self.buckets.len() - target;
            for (_, key) in by_age.into_iter().take(excess) {
                self.buckets.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEN_PER_S: RateLimit = RateLimit {
        rate: 10.0,
        burst: 5,
    };

    #[test]
    fn burst_then_rate_with_retry_hints() {
        let mut b = TokenBucket::new(TEN_PER_S, 0);
        for _ in 0..5 {
            assert_eq!(b.try_take(0), Ok(()));
        }
        assert_eq!(b.try_take(0), Err(100));
        assert_eq!(b.try_take(40), Err(60));
        assert_eq!(b.try_take(100), Ok(()));
        assert_eq!(b.try_take(100), Err(100));
        // A long idle refills only up to the burst.
        assert_eq!(b.tokens(1_000_000), 5.0);
        assert!(b.is_full(1_000_000));
        let slow = RateLimit {
            rate: 0.5,
            burst: 1,
        };
        let mut s = TokenBucket::new(slow, 0);
        assert_eq!(s.try_take(0), Ok(()));
        assert_eq!(s.try_take(0), Err(2_000));
    }

    #[test]
    fn limits_are_validated() {
        for bad in [
            RateLimit {
                rate: 0.0,
                burst: 1,
            },
            RateLimit {
                rate: -1.0,
                burst: 1,
            },
            RateLimit {
                rate: f64::NAN,
                burst: 1,
            },
            RateLimit {
                rate: 1.0,
                burst: 0,
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(RateLimiter::new(bad, 10).is_err());
        }
        assert!(RateLimiter::new(TEN_PER_S, 0).is_err());
    }

    #[test]
    fn keys_are_independent_and_overridable() {
        let mut l = RateLimiter::new(TEN_PER_S, 100).unwrap();
        l.set_override(
            "vip",
            RateLimit {
                rate: 100.0,
                burst: 50,
            },
        )
        .unwrap();
        for _ in 0..5 {
            l.try_take("tenant-a", 0).unwrap();
        }
        let r = l.try_take("tenant-a", 0).unwrap_err();
        assert_eq!(r.reason, Reason::RateLimited);
        assert_eq!(r.retry_after_ms, Some(100));
        assert_eq!(r.to_error().code, crate::ErrorCode::ResourceExhausted);
        assert!(l.try_take("tenant-b", 0).is_ok());
        for _ in 0..50 {
            l.try_take("vip", 0).unwrap();
        }
        assert!(l.try_take("vip", 0).is_err());
        assert_eq!(l.tokens("unknown", 0), 5.0);
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_go_first() {
        let mut l = RateLimiter::new(TEN_PER_S, 10).unwrap();
        // An exhausted key that must not be forgiven while idle keys can go.
        for _ in 0..5 {
            l.try_take("hot", 1_000).unwrap();
        }
        for k in 0..9 {
            l.try_take(&format!("k{k}"), 0).unwrap();
        }
        assert_eq!(l.len(), 10);
        // At 1_000 every k bucket (4 tokens at 0) is full again; hot is empty.
        l.try_take("new", 1_000).unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.try_take("hot", 1_000).is_err(), "hot kept its debt");
        for k in 0..1_000 {
            let _ = l.try_take(&format!("flood{k}"), 1_000);
            assert!(l.len() <= 10);
        }
    }

    proptest! {
        /// Under any request pattern a key never gets more than
        /// burst + rate × elapsed tokens.
        #[test]
        fn never_more_than_burst_plus_rate(
            gaps in proptest::collection::vec(0u64..300, 1..300),
            rate in 0.5f64..50.0, burst in 1u32..20,
        ) {
            let mut b = TokenBucket::new(RateLimit { rate, burst }, 0);
            let mut now = 0;
            let mut granted = 0u64;
            for gap in gaps {
                now += gap;
                if b.try_take(now).is_ok() {
                    granted += 1;
                }
                let allowed = f64::from(burst) + rate * now as f64 / 1000.0;
                prop_assert!(granted as f64 <= allowed + 1e-6, "{} > {}", granted, allowed);
            }
        }

        /// The retry hint is honest: waiting exactly that long gets a token.
        #[test]
        fn retry_after_is_enough(rate in 0.1f64..100.0, burst in 1u32..5, t in 0u64..10_000) {
            let mut b = TokenBucket::new(RateLimit { rate, burst }, 0);
            for _ in 0..burst {
                b.try_take(t).unwrap();
            }
            let wait = b.try_take(t).unwrap_err();
            prop_assert!(b.try_take(t + wait).is_ok());
        }
    }
}
