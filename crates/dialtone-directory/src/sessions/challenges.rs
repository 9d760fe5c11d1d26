//! Session challenges: stateless to issue (a MAC over the device and the expiry), single use
//! once answered (one number per device).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use dialtone_proto::DeviceId;

use super::Sessions;

/// The directory's secret for session challenges, random per process (a restart voids the
/// challenges outstanding, which live a minute).
pub(super) struct ChallengeKey([u8; 32]);

impl Default for ChallengeKey {
    fn default() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k[..]);
        Self(k)
    }
}

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(…)")
    }
}

impl ChallengeKey {
    fn challenge(&self, device: &DeviceId, expiry: u64) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        // Fixed-length fields after the secret: no two inputs collide, nothing is extended.
        let mac = Sha256::new()
            .chain_update(b"dialtone-session-challenge/v1")
            .chain_update(self.0)
            .chain_update(device.as_bytes())
            .chain_update(expiry.to_be_bytes())
            .finalize();
        let mut c = [0u8; 32];
        c[..8].copy_from_slice(&expiry.to_be_bytes());
        c[8..].copy_from_slice(&mac[..24]);
        c
    }
}

/// Milliseconds on this process's monotonic clock (from 1). Challenges carry expiries on it:
/// they are valid only in the process that issued them (its key is made at start), and a
/// wall clock set back must not make used challenges valid again nor lock devices out.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// Answered challenges: per device, the expiry of the latest one answered. A challenge is
/// fixed by its device and its expiry, and expiries grow with the time of issue, so an answer
/// must carry a later expiry than the device's last one: a replay (or an older challenge
/// answered after a newer one) is refused. One number per device, whatever it does.
#[derive(Debug, Default)]
pub(super) struct UsedChallenges {
    last: HashMap<DeviceId, u64>,
    /// Sweep out devices whose last challenge expired once this many are recorded.
    sweep_at: usize,
}

impl Sessions {
    /// A new one-time challenge for `device`, valid for `ttl`: 8 bytes of expiry (milliseconds
    /// on this process's monotonic clock) and 24 bytes of MAC. Nothing is stored until it is
    /// answered.
    pub(crate) fn new_challenge(&self, device: DeviceId, ttl: Duration) -> Option<[u8; 32]> {
        let expiry = clock_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        Some(self.challenge_key.challenge(&device, expiry))
    }

    /// Whether `c` is a challenge this directory issued for `device` and it has not expired.
    pub(super) fn check_challenge(&self, c: &[u8; 32], device: &DeviceId) -> bool {
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&c[..8]);
        let expiry = u64::from_be_bytes(exp);
        let want = self.challenge_key.challenge(device, expiry);
        let same = want.iter().zip(c).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        same && expiry > clock_ms()
    }

    /// Uses up a checked challenge of `device` once its signature verified; `false` (refused)
    /// if the device answered this one, or a newer one, before: a replay. Only the device's key holder gets
    /// here, and it keeps one number for itself however often it logs in: no device can take
    /// room another one needs, and none is ever locked out (it asks for a new challenge).
    pub(super) fn consume_challenge(&self, c: &[u8; 32], device: &DeviceId) -> bool {
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&c[..8]);
        let expiry = u64::from_be_bytes(exp);
        let now = clock_ms();
        let mut used = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.last.len() >= used.sweep_at {
            // A device whose last answered challenge expired needs no record: every challenge
            // at or before it has expired too.
            used.last.retain(|_, e| *e > now);
            used.sweep_at = (used.last.len() * 2).max(1024);
        }
        let last = used.last.entry(*device).or_default();
        if expiry <= *last {
            return false;
        }
        *last = expiry;
        true
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;

    #[test]
    fn challenges_are_single_use_and_bound_to_their_device() {
        let s = Sessions::default();
        let d1 = DeviceId::from_signing_key(&SigningKey::from_bytes(&[1; 32]));
        let d2 = DeviceId::from_signing_key(&SigningKey::from_bytes(&[2; 32]));
        let c = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        assert!(s.check_challenge(&c, &d1));
        assert!(!s.check_challenge(&c, &d2), "bound to its device");
        let mut forged = c;
        forged[0] ^= 1; // a later expiry
        assert!(!s.check_challenge(&forged, &d1));
        assert!(s.consume_challenge(&c, &d1));
        assert!(!s.consume_challenge(&c, &d1), "single use");
        let c = s.new_challenge(d1, Duration::ZERO).unwrap();
        assert!(!s.check_challenge(&c, &d1), "expired");
        // Issuing keeps nothing.
        for _ in 0..1000 {
            s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        }
        assert_eq!(s.challenges.lock().unwrap().last.len(), 1);
        // An older challenge answered after a newer one is refused too.
        let older = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let newer = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        assert!(s.consume_challenge(&newer, &d1));
        assert!(!s.consume_challenge(&older, &d1));
    }

    /// Issue 3: the record of used challenges was one global set with a global bound, so one
    /// registered device answering challenges as fast as it could filled it and locked every
    /// other device out until they expired. (A bound per device then locked out a device
    /// that reconnected often.) Each device now keeps one number: however many it answers,
    /// the record does not grow and no device is refused a fresh challenge. Expiries are made
    /// up here (a challenge is its device and expiry): `consume_challenge` runs after the MAC
    /// and signature checks, which this test does not need.
    #[test]
    fn issue3_no_device_fills_the_used_challenges_or_is_locked_out() {
        let s = Sessions::default();
        let busy = DeviceId::from_signing_key(&SigningKey::from_bytes(&[1; 32]));
        let other = DeviceId::from_signing_key(&SigningKey::from_bytes(&[2; 32]));
        let far = clock_ms() + 3_600_000;
        let challenge = |expiry: u64| {
            let mut c = [0u8; 32];
            c[..8].copy_from_slice(&expiry.to_be_bytes());
            c
        };
        for i in 0..10_000 {
            assert!(s.consume_challenge(&challenge(far + i), &busy));
        }
        assert!(s.consume_challenge(&challenge(far), &other));
        assert_eq!(s.challenges.lock().unwrap().last.len(), 2);
        // Replays are refused, for either.
        assert!(!s.consume_challenge(&challenge(far + 9_999), &busy));
        assert!(!s.consume_challenge(&challenge(far), &other));
    }
}
