//! The registration lock: an Argon2id hash of the person's PIN, checked before a re-verified
//! identifier may be bound to another key.
//!
//! Stored as `argon2id:M:T:P:SALT:HASH` (memory KiB, passes, lanes, hex salt and hash). The
//! directory never keeps the PIN itself. Wrong PINs are counted per account (see
//! `[verification] max_pin_attempts`); the lock lapses after `lock_lapse` without any of the
//! owner's devices online, so a person who lost every device and the PIN can recover.

use argon2::{Algorithm, Argon2, Params, Version};

const M_KIB: u32 = 19 * 1024;
const T: u32 = 2;
const P: u32 = 1;

fn derive(pin: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Option<[u8; 32]> {
    let params = Params::new(m, t, p, Some(32)).ok()?;
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pin.as_bytes(), salt, &mut out)
        .ok()?;
    Some(out)
}

/// Hashes a PIN with a fresh salt (about 50 ms: call it on a blocking thread).
pub(crate) fn hash_pin(pin: &str) -> String {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    // Constant valid parameters and a 16-byte salt: derivation cannot fail.
    let hash = derive(pin, &salt, M_KIB, T, P).unwrap_or_default();
    format!(
        "argon2id:{M_KIB}:{T}:{P}:{}:{}",
        hex::encode(salt),
        hex::encode(hash)
    )
}

/// Whether `pin` matches `stored` (a damaged hash matches nothing).
pub(crate) fn verify_pin(stored: &str, pin: &str) -> bool {
    let parts: Vec<&str> = stored.split(':').collect();
    let [kind, m, t, p, salt, hash] = parts[..] else {
        return false;
    };
    let (Ok(m), Ok(t), Ok(p), Ok(salt), Ok(hash)) = (
        m.parse::<u32>(),
        t.parse::<u32>(),
        p.parse::<u32>(),
        hex::decode(salt),
        hex::decode(hash),
    ) else {
        return false;
    };
    // Refuse parameters that would let a damaged row cost unbounded memory or time.
    if kind != "argon2id" || m > 256 * 1024 || t > 10 || p > 4 {
        return false;
    }
    let Some(got) = derive(pin, &salt, m, t, p) else {
        return false;
    };
    hash.len() == 32 && got.iter().zip(&hash).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_verify_and_damage_matches_nothing() {
        let h = hash_pin("2468");
        assert!(verify_pin(&h, "2468"));
        assert!(!verify_pin(&h, "2469"));
        assert_ne!(h, hash_pin("2468"), "salted");
        assert!(!verify_pin("argon2id:1:1", "2468"));
        assert!(!verify_pin(&h.replace("argon2id", "md5"), "2468"));
        assert!(!verify_pin("argon2id:99999999:2:1:00:00", "2468"));
    }
}
