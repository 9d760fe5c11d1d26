//! Safety numbers: what two people compare (in person, on a call, or by scanning a QR code) to
//! be sure each has the other's real identity key, whatever the directory says.
//!
//! Each side contributes 30 digits computed from its identifier and identity key only, so the
//! number is the same on every device of both people and changes when either key changes:
//! `SHA-512` iterated 5200 times over `version ‖ key ‖ identifier` (with the key mixed in again
//! each round, as Signal does), then six 5-byte chunks, each read as a big-endian integer modulo
//! 100 000. The two halves are sorted, so both people see the same 60 digits.

use std::fmt;

use sha2::{Digest, Sha512};

use crate::{Identifier, IdentityKey};

/// Hash iterations per half (Signal's choice: slow enough to hinder brute-forcing a collision
/// of the displayed digits, fast enough to show instantly).
pub const ITERATIONS: usize = 5200;
const VERSION: [u8; 2] = [0, 1];

/// A 60-digit safety number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

fn half(identifier: &Identifier, key: &IdentityKey) -> String {
    let key = key.to_bytes();
    let mut h = Sha512::new();
    h.update(VERSION);
    h.update(key);
    h.update(identifier.as_str().as_bytes());
    let mut digest = h.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(key);
        digest = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in digest[..30].chunks(5) {
        let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)) % 100_000;
        out.push_str(&format!("{n:05}"));
    }
    out
}

impl SafetyNumber {
    /// The safety number of two people.
    pub fn new(a: (&Identifier, &IdentityKey), b: (&Identifier, &IdentityKey)) -> Self {
        let (x, y) = (half(a.0, a.1), half(b.0, b.1));
        let (first, second) = if x <= y { (x, y) } else { (y, x) };
        Self(first + &second)
    }

    /// The 60 digits without spaces.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The text a QR code carries: `dialtone-safety:1:` and the 60 digits.
    pub fn qr_payload(&self) -> String {
        format!("dialtone-safety:1:{}", self.0)
    }
}

impl fmt::Display for SafetyNumber {
    /// 12 groups of 5 digits, separated by spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, chunk) in self.0.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> IdentityKey {
        IdentityKey::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    const GOLDEN: &str = "716355256900157970158165278208771638132848116575487404072040";

    #[test]
    fn same_on_both_sides_and_changes_with_keys() {
        let (a, b) = (
            Identifier::parse("alice@example.com").unwrap(),
            Identifier::parse("+14155550100").unwrap(),
        );
        let ab = SafetyNumber::new((&a, &key(1)), (&b, &key(2)));
        let ba = SafetyNumber::new((&b, &key(2)), (&a, &key(1)));
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.to_string().len(), 60 + 11);
        assert_ne!(ab, SafetyNumber::new((&a, &key(1)), (&b, &key(3))));
        assert_ne!(ab, SafetyNumber::new((&a, &key(4)), (&b, &key(2))));
        // Golden value: the algorithm must never change silently (that would break every
        // verification people have done).
        assert_eq!(ab.digits(), GOLDEN, "the safety number algorithm changed");
    }
}
