//! Keys, signatures and device certificates.
//!
//! - The **identity key** (Ed25519) belongs to a person. It signs registrations and device
//!   certificates; it never leaves the person's devices and is encrypted at rest.
//! - The **device key** (Ed25519) belongs to one device and *is* that device's iroh endpoint
//!   id, so a QUIC connection to a [`DeviceId`] is authenticated to that key by TLS 1.3.
//! - A [`DeviceCertificate`] is the identity key's signature over a device key: it proves that
//!   a device speaks for a person.
//!
//! Every signature covers a [`Transcript`]: a domain-separation label followed by
//! length-prefixed fields, so a signature made for one purpose can never be replayed for
//! another.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ids::Identifier;

/// Why a key, signature or certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not valid hex of the right length.
    #[error("expected {expected} bytes of hex")]
    Encoding {
        /// Number of bytes expected.
        expected: usize,
    },
    /// The bytes are not a valid Ed25519 public key.
    #[error("not a valid Ed25519 public key")]
    InvalidKey,
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A certificate's field is out of range.
    #[error("device name must be 1 to {MAX_DEVICE_NAME_LEN} bytes of printable text")]
    BadDeviceName,
}

/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 64;

fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s.trim(), &mut out).map_err(|_| KeyError::Encoding { expected: N })?;
    Ok(out)
}

macro_rules! hex_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s)
            }
        }
    };
}

/// A person's public identity key (Ed25519), shown and sent as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey(VerifyingKey);

impl IdentityKey {
    /// Parses 32 bytes; fails if they are not a valid Ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::InvalidKey)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        Self::from_bytes(&decode_hex::<32>(s)?)
    }

    /// The public half of a signing key.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self(key.verifying_key())
    }

    /// The raw 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies `signature` over `transcript` (strict Ed25519 verification).
    pub fn verify(&self, transcript: &Transcript, signature: &Signature) -> Result<(), KeyError> {
        verify(&self.0, transcript, signature)
    }

    /// A short, human-comparable fingerprint: 128 bits of SHA-256 in 8 groups of 4 hex digits.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(b"dialtone/fingerprint/v1\0");
        h.update(self.0.as_bytes());
        let digest = h.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Fingerprint(out)
    }
}

impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", &hex::encode(self.0.as_bytes())[..10])
    }
}
hex_serde!(IdentityKey);

/// A key's fingerprint, printed as `abcd 0123 …` (8 groups of 4 hex digits).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Fingerprint([u8; 16]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = hex::encode(self.0);
        for (i, chunk) in hex.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            // Invariant: hex::encode produces ASCII only.
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// A device's public key, which is also its iroh endpoint id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// Parses 32 bytes; fails if they are not a valid Ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::InvalidKey)?;
        Ok(Self(*bytes))
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        Self::from_bytes(&decode_hex::<32>(s)?)
    }

    /// The public half of a device signing key.
    pub fn from_signing_key(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// First 10 hex digits, for logs and short displays.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..5])
    }

    /// Verifies `signature` over `transcript` made with this device's key.
    pub fn verify(&self, transcript: &Transcript, signature: &Signature) -> Result<(), KeyError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::InvalidKey)?;
        verify(&key, transcript, signature)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}
hex_serde!(DeviceId);

/// An Ed25519 signature, sent as 128 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Wraps 64 raw bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Self(bytes)
    }

    /// Parses 128 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        Ok(Self(decode_hex::<64>(s)?))
    }

    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", &hex::encode(&self.0[..4]))
    }
}
hex_serde!(Signature);

/// Signs a transcript with a secret key.
pub fn sign(key: &SigningKey, transcript: &Transcript) -> Signature {
    Signature(key.sign(transcript.as_bytes()).to_bytes())
}

fn verify(key: &VerifyingKey, transcript: &Transcript, sig: &Signature) -> Result<(), KeyError> {
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    key.verify_strict(transcript.as_bytes(), &sig)
        .map_err(|_| KeyError::BadSignature)?;
    // `verify_strict` is the `Verifier` impl's stricter sibling; keep the trait in scope so a
    // future change to the plain form is a visible diff.
    let _ = <VerifyingKey as Verifier<ed25519_dalek::Signature>>::verify;
    Ok(())
}

/// The exact bytes a signature covers: a purpose label, then length-prefixed fields.
///
/// Layout: `"dialtone/" label "\0"`, then for each field a 4-byte big-endian length and the
/// field's bytes (integers as 8-byte big-endian). Defined in `docs/protocol.md`.
#[derive(Debug, Clone)]
pub struct Transcript(Vec<u8>);

impl Transcript {
    /// Starts a transcript for one purpose, e.g. `"register-start/v1"`.
    pub fn new(label: &str) -> Self {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(b"dialtone/");
        v.extend_from_slice(label.as_bytes());
        v.push(0);
        Self(v)
    }

    /// Appends a length-prefixed byte field.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        // Fields are bounded by the protocol's size limits, far below 4 GiB.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }

    /// Appends a length-prefixed UTF-8 field.
    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    /// Appends an 8-byte big-endian integer field.
    pub fn u64(self, n: u64) -> Self {
        self.bytes(&n.to_be_bytes())
    }

    /// The bytes to sign.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// An identity key's statement that a device key speaks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertificate {
    /// The person's identity key.
    pub identity_key: IdentityKey,
    /// The device's key (its iroh endpoint id).
    pub device_id: DeviceId,
    /// A name the person chose for the device ("laptop").
    pub name: String,
    /// When the certificate was made, in seconds since the Unix epoch.
    pub created_at: u64,
    /// The identity key's signature over [`DeviceCertificate::transcript`].
    pub signature: Signature,
}

impl DeviceCertificate {
    /// Certifies `device_id` with the identity signing key.
    pub fn issue(
        identity: &SigningKey,
        device_id: DeviceId,
        name: &str,
        created_at: u64,
    ) -> Result<Self, KeyError> {
        check_device_name(name)?;
        let identity_key = IdentityKey::from_signing_key(identity);
        let transcript = Self::transcript_for(&identity_key, &device_id, name, created_at);
        Ok(Self {
            identity_key,
            device_id,
            name: name.to_owned(),
            created_at,
            signature: sign(identity, &transcript),
        })
    }

    fn transcript_for(ik: &IdentityKey, dev: &DeviceId, name: &str, created_at: u64) -> Transcript {
        Transcript::new("device-cert/v1")
            .bytes(&ik.to_bytes())
            .bytes(dev.as_bytes())
            .str(name)
            .u64(created_at)
    }

    /// The transcript the signature covers.
    pub fn transcript(&self) -> Transcript {
        Self::transcript_for(
            &self.identity_key,
            &self.device_id,
            &self.name,
            self.created_at,
        )
    }

    /// Checks the name and the identity key's signature.
    pub fn verify(&self) -> Result<(), KeyError> {
        check_device_name(&self.name)?;
        self.identity_key
            .verify(&self.transcript(), &self.signature)
    }
}

pub(crate) fn check_device_name(name: &str) -> Result<(), KeyError> {
    if name.is_empty() || name.len() > MAX_DEVICE_NAME_LEN || name.chars().any(char::is_control) {
        return Err(KeyError::BadDeviceName);
    }
    Ok(())
}

/// What a registration start is signed over: the identifier, the identity key, the device
/// certificate's signature (binding the device) and a timestamp.
pub fn register_start_transcript(
    identifier: &Identifier,
    identity_key: &IdentityKey,
    device_cert: &DeviceCertificate,
    timestamp: u64,
) -> Transcript {
    Transcript::new("register-start/v1")
        .str(identifier.as_str())
        .bytes(&identity_key.to_bytes())
        .bytes(&device_cert.signature.to_bytes())
        .u64(timestamp)
}

/// What a registration confirmation is signed over: identifier, code and the new key, so a
/// code seen by someone else cannot be used to bind another key.
pub fn register_confirm_transcript(
    identifier: &Identifier,
    code: &str,
    identity_key: &IdentityKey,
) -> Transcript {
    Transcript::new("register-confirm/v1")
        .str(identifier.as_str())
        .str(code)
        .bytes(&identity_key.to_bytes())
}

/// What a device signs to open a directory session: the server's one-time random challenge
/// and the device's own id. The directory issues each challenge once and forgets it when it is
/// used or expires, so a recorded answer cannot be replayed.
pub fn session_transcript(challenge: &[u8; 32], device_id: &DeviceId) -> Transcript {
    Transcript::new("session/v1")
        .bytes(challenge)
        .bytes(device_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn certificate_verifies_and_detects_tampering() {
        let id = key(1);
        let dev = DeviceId::from_signing_key(&key(2));
        let cert = DeviceCertificate::issue(&id, dev, "laptop", 1_700_000_000).unwrap();
        cert.verify().unwrap();

        let mut renamed = cert.clone();
        renamed.name = "phone".into();
        assert_eq!(renamed.verify(), Err(KeyError::BadSignature));

        let mut other_device = cert.clone();
        other_device.device_id = DeviceId::from_signing_key(&key(3));
        assert_eq!(other_device.verify(), Err(KeyError::BadSignature));

        assert_eq!(
            DeviceCertificate::issue(&id, dev, "", 0).unwrap_err(),
            KeyError::BadDeviceName
        );
    }

    #[test]
    fn transcripts_are_domain_separated() {
        let a = Transcript::new("a/v1").str("xy").str("z");
        let b = Transcript::new("a/v1").str("x").str("yz");
        assert_ne!(a.as_bytes(), b.as_bytes());
        let c = Transcript::new("b/v1").str("xy").str("z");
        assert_ne!(a.as_bytes(), c.as_bytes());
    }

    #[test]
    fn hex_roundtrip_and_errors() {
        let ik = IdentityKey::from_signing_key(&key(7));
        let s = serde_json::to_string(&ik).unwrap();
        assert_eq!(serde_json::from_str::<IdentityKey>(&s).unwrap(), ik);
        assert!(IdentityKey::from_hex("zz").is_err());
        assert!(Signature::from_hex(&"00".repeat(63)).is_err());
        assert_eq!(ik.fingerprint().to_string().len(), 8 * 4 + 7);
    }
}
