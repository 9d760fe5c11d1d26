//! The directory's rules that need no IO: rate limits and presence aggregation.
//!
//! Time comes in as `now: Instant`; nothing here reads a clock.

use std::{collections::HashMap, hash::Hash, time::Duration, time::Instant};

use crate::directory::PresenceState;

/// A token bucket: `burst` requests at once, refilled at one token per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRule {
    /// Requests allowed in a burst.
    pub burst: u32,
    /// Time to regain one request.
    pub period: Duration,
}

impl RateRule {
    /// `burst` requests, one more every `period`.
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self { burst, period }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Tokens available at `at`, in units of 1/1000 token.
    milli_tokens: u64,
    at: Instant,
}

/// One token bucket (one session's requests): no map, no allocation.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limiter: RateLimiter<()>,
    bucket: Option<Bucket>,
}

impl TokenBucket {
    /// A full bucket applying `rule`.
    pub fn new(rule: RateRule) -> Self {
        Self {
            limiter: RateLimiter::new(rule),
            bucket: None,
        }
    }

    /// Takes one token; on refusal returns how long until one is available.
    pub fn check(&mut self, now: Instant) -> Result<(), Duration> {
        let (r, b) = self.limiter.take(self.bucket, now);
        self.bucket = Some(b);
        r
    }
}

/// Per-key token buckets, e.g. per identifier or per IP address.
///
/// Inputs: [`RateLimiter::check`] with the current time. Buckets that have refilled
/// completely are forgotten by [`RateLimiter::prune`], which callers run now and then so
/// memory stays bounded by the number of recently active keys.
#[derive(Debug, Clone)]
pub struct RateLimiter<K> {
    rule: RateRule,
    buckets: HashMap<K, Bucket>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// A limiter applying `rule` to every key.
    pub fn new(rule: RateRule) -> Self {
        Self {
            rule,
            buckets: HashMap::new(),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let max = u64::from(self.rule.burst) * 1000;
        let elapsed = now.saturating_duration_since(b.at);
        let period_ms = self.rule.period.as_millis().max(1);
        let gained = (elapsed.as_millis() * 1000 / period_ms).min(u128::from(max));
        // `gained` is bounded by `max`, which fits in u64.
        b.milli_tokens = (b.milli_tokens + u64::try_from(gained).unwrap_or(max)).min(max);
        b.at = now;
    }

    /// Takes one token for `key`; on refusal returns how long until one is available.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let (r, bucket) = self.take(self.buckets.get(key).copied(), now);
        self.buckets.insert(key.clone(), bucket);
        r
    }

    /// Takes one token from `bucket` (a full one if `None`): the answer and the bucket after.
    fn take(&self, bucket: Option<Bucket>, now: Instant) -> (Result<(), Duration>, Bucket) {
        let max = u64::from(self.rule.burst) * 1000;
        let mut bucket = bucket.unwrap_or(Bucket {
            milli_tokens: max,
            at: now,
        });
        if self.rule.burst == 0 {
            return (Err(self.rule.period), bucket);
        }
        self.refill(&mut bucket, now);
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            (Ok(()), bucket)
        } else {
            let missing = 1000 - bucket.milli_tokens;
            let wait = self.rule.period.as_secs_f64() * (missing as f64 / 1000.0);
            (
                Err(Duration::from_secs_f64(wait).max(Duration::from_secs(1))),
                bucket,
            )
        }
    }

    /// Forgets keys whose buckets are full again.
    pub fn prune(&mut self, now: Instant) {
        let full = self.rule.period * self.rule.burst;
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.at) < full);
    }

    /// Number of keys tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// A person's state over all their online devices, as their contacts see it.
///
/// The most available device wins (`online` > `away` > `busy`); invisible devices count as
/// offline; no devices is offline.
pub fn aggregate_presence(states: impl IntoIterator<Item = PresenceState>) -> PresenceState {
    states
        .into_iter()
        .map(PresenceState::as_seen_by_contacts)
        .min()
        .unwrap_or(PresenceState::Offline)
}

/// Number of digits in a verification code.
pub const CODE_DIGITS: usize = 6;

/// Whether `candidate` has the shape of a code (digits only, right length), after removing
/// spaces and dashes people type. Returns the cleaned code.
pub fn clean_code(candidate: &str) -> Option<String> {
    let cleaned: String = candidate
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .collect();
    (cleaned.len() == CODE_DIGITS && cleaned.bytes().all(|b| b.is_ascii_digit())).then_some(cleaned)
}

/// Compares two codes in time independent of where they differ.
pub fn codes_equal(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // A test needs some Instant to start from; the rules themselves never read the clock.
    #[allow(clippy::disallowed_methods)]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(RateRule::new(3, Duration::from_secs(10)));
        for _ in 0..3 {
            rl.check(&"a", t0).unwrap();
        }
        let wait = rl.check(&"a", t0).unwrap_err();
        assert!(wait >= Duration::from_secs(9), "{wait:?}");
        rl.check(&"b", t0).unwrap();
        rl.check(&"a", t0 + Duration::from_secs(10)).unwrap();
        assert!(rl.check(&"a", t0 + Duration::from_secs(10)).is_err());
        rl.prune(t0 + Duration::from_secs(100));
        assert!(rl.is_empty());
    }

    #[test]
    fn presence_most_available_wins() {
        use PresenceState::*;
        assert_eq!(aggregate_presence([Busy, Away]), Away);
        assert_eq!(aggregate_presence([Invisible]), Offline);
        assert_eq!(aggregate_presence([Invisible, Busy]), Busy);
        assert_eq!(aggregate_presence([]), Offline);
    }

    #[test]
    fn codes() {
        assert_eq!(clean_code("123-456").as_deref(), Some("123456"));
        assert_eq!(clean_code("12345"), None);
        assert_eq!(clean_code("abcdef"), None);
        assert!(codes_equal("123456", "123456"));
        assert!(!codes_equal("123456", "123457"));
    }
}
