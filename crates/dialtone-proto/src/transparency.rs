//! Key transparency: the directory's signed checkpoints and the JSON answers that carry
//! proofs.
//!
//! The directory keeps every identifier → identity-key binding in an auditable key directory
//! (Meta's `akd`, configuration `ExperimentalConfiguration` with the domain label
//! [`AKD_DOMAIN_LABEL`]). After each epoch it signs a [`Checkpoint`]: the epoch, the tree's
//! root hash and the hash of the previous checkpoint, so the checkpoints form a signed,
//! append-only hash chain. Clients verify every lookup proof against a checkpoint, keep the
//! last checkpoint they accepted, and refuse one that does not extend it.
//!
//! - The akd *label* is the normalized identifier's UTF-8 bytes.
//! - The akd *value* is either [`KT_VALUE_V1`] followed by the 32-byte identity key
//!   ([`kt_value`]), or [`KT_VALUE_V2`] followed by the JSON of the person's signed
//!   [`DeviceList`] ([`kt_value_devices`]), which names the identity key and the devices that
//!   speak for it. Clients read either with [`kt_value_key`] and [`kt_value_list`].
//!
//! The proofs themselves (akd's `LookupProof`, `HistoryProof`, `AppendOnlyProof`) travel as
//! akd's own serde JSON (hex for bytes); this crate does not interpret them.

use std::fmt;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    devices::DeviceList,
    ids::Identifier,
    keys::{IdentityKey, KeyError, Signature, Transcript, sign},
};

/// The domain-separation label of Dialtone's akd hashes.
pub const AKD_DOMAIN_LABEL: &[u8] = b"dialtone-kt/v1";

/// First byte of an akd value: version 1 is the bare 32-byte identity key.
pub const KT_VALUE_V1: u8 = 1;

/// First byte of an akd value: version 2 is a signed [`DeviceList`] as JSON.
pub const KT_VALUE_V2: u8 = 2;

/// The akd value published for an identity key.
pub fn kt_value(key: &IdentityKey) -> Vec<u8> {
    let mut v = Vec::with_capacity(33);
    v.push(KT_VALUE_V1);
    v.extend_from_slice(&key.to_bytes());
    v
}

/// The akd value published for a signed device list.
pub fn kt_value_devices(list: &DeviceList) -> Vec<u8> {
    let mut v = vec![KT_VALUE_V2];
    // A list is plain data: serializing it cannot fail.
    v.extend_from_slice(&serde_json::to_vec(list).unwrap_or_default());
    v
}

/// The identity key inside an akd value, if the value is well-formed (and, for a device
/// list, validly signed).
pub fn kt_value_key(value: &[u8]) -> Option<IdentityKey> {
    match value.split_first()? {
        (&KT_VALUE_V1, rest) => {
            let arr: [u8; 32] = rest.try_into().ok()?;
            IdentityKey::from_bytes(&arr).ok()
        }
        (&KT_VALUE_V2, _) => kt_value_list(value).map(|l| l.identity_key),
        _ => None,
    }
}

/// The signed device list inside an akd value: `None` for a bare key (version 1) or a value
/// that is malformed or not validly signed.
pub fn kt_value_list(value: &[u8]) -> Option<DeviceList> {
    let (&KT_VALUE_V2, rest) = value.split_first()? else {
        return None;
    };
    let list: DeviceList = serde_json::from_slice(rest).ok()?;
    list.verify().ok()?;
    Some(list)
}

/// A 32-byte hash (a tree root or a checkpoint hash), shown as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash32(pub [u8; 32]);

impl Hash32 {
    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, KeyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| KeyError::Encoding { expected: 32 })?;
        Ok(Self(out))
    }
}

impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash32({}…)", &hex::encode(&self.0[..6]))
    }
}

impl Serialize for Hash32 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Hash32 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The directory's checkpoint-signing key (Ed25519), published at `GET /v1/kt/keys`.
///
/// Agents pin it on first use (trust on first use) in their home.
pub type DirectoryKey = IdentityKey;

/// A signed epoch root: one link of the directory's append-only checkpoint log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The akd epoch (0 is the empty tree).
    pub epoch: u64,
    /// The akd tree's root hash at that epoch.
    pub root_hash: Hash32,
    /// [`Checkpoint::hash`] of the checkpoint of `epoch - 1` (all zeros for epoch 0).
    pub previous: Hash32,
    /// The directory key's signature over [`Checkpoint::transcript`].
    pub signature: Signature,
}

impl Checkpoint {
    /// Signs a checkpoint.
    pub fn sign(key: &SigningKey, epoch: u64, root_hash: Hash32, previous: Hash32) -> Self {
        let signature = sign(key, &Self::transcript_for(epoch, &root_hash, &previous));
        Self {
            epoch,
            root_hash,
            previous,
            signature,
        }
    }

    fn transcript_for(epoch: u64, root: &Hash32, previous: &Hash32) -> Transcript {
        Transcript::new("kt-checkpoint/v1")
            .u64(epoch)
            .bytes(&root.0)
            .bytes(&previous.0)
    }

    /// The transcript the signature covers (`kt-checkpoint/v1`: epoch, root, previous).
    pub fn transcript(&self) -> Transcript {
        Self::transcript_for(self.epoch, &self.root_hash, &self.previous)
    }

    /// Checks the directory's signature.
    pub fn verify(&self, key: &DirectoryKey) -> Result<(), KeyError> {
        key.verify(&self.transcript(), &self.signature)
    }

    /// The hash the next checkpoint names as `previous`: SHA-256 of the transcript and the
    /// signature.
    pub fn hash(&self) -> Hash32 {
        let mut h = Sha256::new();
        h.update(self.transcript().as_bytes());
        h.update(self.signature.to_bytes());
        Hash32(h.finalize().into())
    }

    /// Whether `next` is the direct successor of `self` in the chain.
    pub fn is_followed_by(&self, next: &Self) -> bool {
        next.epoch == self.epoch + 1 && next.previous == self.hash()
    }
}

/// `GET /v1/kt/keys`: the public keys a client needs to verify the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KtKeys {
    /// The checkpoint-signing key.
    pub signing_key: DirectoryKey,
    /// The VRF public key (32 bytes, hex) that akd proofs use.
    pub vrf_public_key: Hash32,
    /// The akd configuration, `"akd-experimental/dialtone-kt/v1"`.
    pub configuration: String,
}

/// `GET /v1/kt/lookup/{identifier}`: a lookup proof and the checkpoint it was made at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtLookup {
    /// The identifier looked up.
    pub identifier: Identifier,
    /// The checkpoint of the epoch the proof was made at.
    pub checkpoint: Checkpoint,
    /// akd's `LookupProof` as JSON.
    pub proof: serde_json::Value,
}

/// `GET /v1/kt/history/{identifier}`: a key-history proof and its checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtHistory {
    /// The identifier.
    pub identifier: Identifier,
    /// The checkpoint of the epoch the proof was made at.
    pub checkpoint: Checkpoint,
    /// akd's `HistoryProof` (complete history) as JSON.
    pub proof: serde_json::Value,
}

/// `GET /v1/kt/audit?from=A&to=B`: every checkpoint from A to B and the append-only proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtAudit {
    /// Checkpoints of epochs `from..=to`, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// akd's `AppendOnlyProof` from `from` to `to` as JSON (null when `from == to`).
    pub proof: serde_json::Value,
}

/// Longest epoch range one audit request may cover.
pub const MAX_AUDIT_EPOCHS: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_chain_and_signature() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let pk = IdentityKey::from_signing_key(&key);
        let c0 = Checkpoint::sign(&key, 0, Hash32([0; 32]), Hash32::default());
        let c1 = Checkpoint::sign(&key, 1, Hash32([1; 32]), c0.hash());
        assert!(c0.verify(&pk).is_ok());
        assert!(c0.is_followed_by(&c1));
        let mut forged = c1;
        forged.root_hash = Hash32([2; 32]);
        assert!(forged.verify(&pk).is_err());
        let c1b = Checkpoint::sign(&key, 1, Hash32([1; 32]), Hash32([9; 32]));
        assert!(!c0.is_followed_by(&c1b));
        let json = serde_json::to_string(&c1).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), c1);
    }

    #[test]
    fn value_roundtrip_and_garbage() {
        let key = IdentityKey::from_signing_key(&SigningKey::from_bytes(&[3; 32]));
        assert_eq!(kt_value_key(&kt_value(&key)), Some(key));
        assert_eq!(kt_value_key(&[]), None);
        assert_eq!(kt_value_key(&[2; 33]), None);
        assert_eq!(kt_value_key(&[1; 5]), None);
    }

    #[test]
    fn device_list_values() {
        use crate::devices::{DeviceEntry, DeviceListContent};
        use crate::keys::DeviceId;
        let sk = SigningKey::from_bytes(&[3; 32]);
        let list = DeviceList::sign(
            &sk,
            DeviceListContent {
                identifier: Identifier::parse("alice@example.com").unwrap(),
                version: 1,
                devices: vec![DeviceEntry {
                    device_id: DeviceId::from_signing_key(&SigningKey::from_bytes(&[4; 32])),
                    name: "laptop".into(),
                    added_at: 0,
                }],
                registration_lock: false,
                unlocked_with_pin: false,
            },
        )
        .unwrap();
        let v = kt_value_devices(&list);
        assert_eq!(kt_value_key(&v), Some(IdentityKey::from_signing_key(&sk)));
        assert_eq!(kt_value_list(&v), Some(list.clone()));
        assert_eq!(kt_value_list(&kt_value(&list.identity_key)), None);
        // A list whose signature does not verify is no key at all.
        let mut forged = list;
        forged.version = 2;
        assert_eq!(kt_value_key(&kt_value_devices(&forged)), None);
        assert_eq!(kt_value_key(&[2, b'{']), None);
    }
}
