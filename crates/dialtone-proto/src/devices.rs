//! A person's signed device list: which device keys speak for an identity key now.
//!
//! The identity key signs the list; the directory publishes it as the value of the person's
//! entry in the transparency log ([`crate::transparency::kt_value_devices`]), so every
//! contact can prove which devices belong to a person before talking to one. Linking a device
//! adds an entry, revoking one removes it; each change is a new list with a higher
//! [`DeviceList::version`], and a device that is not on the latest proven list is refused by
//! everyone.
//!
//! The list also says whether the person set a **registration lock** (a PIN the directory
//! asks for before it lets a re-verified identifier bind another key), and whether this
//! list's key was bound by giving that PIN. Both are signed by the key holder and published in
//! the log, so contacts can tell a key change made with the PIN from one made without it.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::{
    directory::LinkToken,
    ids::Identifier,
    keys::{DeviceId, IdentityKey, KeyError, Signature, Transcript, check_device_name, sign},
};

/// The most devices one person may have at once.
pub const MAX_DEVICES: usize = 16;

/// One device on a [`DeviceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device key (its iroh endpoint id).
    pub device_id: DeviceId,
    /// Its name, as on its certificate ("laptop").
    pub name: String,
    /// When it was added, in seconds since the Unix epoch.
    pub added_at: u64,
}

/// The identity key's statement of which devices speak for it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// The person's identifier (a list cannot be moved to another identifier).
    pub identifier: Identifier,
    /// The person's identity key, which signs the list.
    pub identity_key: IdentityKey,
    /// Strictly increasing from one list to the next (milliseconds since the Unix epoch at
    /// signing, or one more than the previous version if the clock is behind).
    pub version: u64,
    /// The devices, at most [`MAX_DEVICES`], each once.
    pub devices: Vec<DeviceEntry>,
    /// The person set a registration lock: a re-verified identifier alone cannot bind
    /// another key; the directory asks for the PIN.
    #[serde(default)]
    pub registration_lock: bool,
    /// This key was bound to the identifier by giving the previous key holder's
    /// registration-lock PIN.
    #[serde(default)]
    pub unlocked_with_pin: bool,
    /// The identity key's signature over [`DeviceList::transcript`].
    pub signature: Signature,
}

/// Why a device list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceListError {
    /// The list names no device.
    #[error("the device list is empty")]
    Empty,
    /// More than [`MAX_DEVICES`] devices.
    #[error("a person can have at most {MAX_DEVICES} devices; revoke one first")]
    TooMany,
    /// A device is listed twice, or two devices share a name.
    #[error("a device is listed twice, or two devices have the same name: {0}")]
    Duplicate(String),
    /// A name or the signature is invalid.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// What [`DeviceList::sign`] needs besides the key.
#[derive(Debug, Clone)]
pub struct DeviceListContent {
    /// Whose list.
    pub identifier: Identifier,
    /// See [`DeviceList::version`].
    pub version: u64,
    /// See [`DeviceList::devices`].
    pub devices: Vec<DeviceEntry>,
    /// See [`DeviceList::registration_lock`].
    pub registration_lock: bool,
    /// See [`DeviceList::unlocked_with_pin`].
    pub unlocked_with_pin: bool,
}

impl DeviceList {
    /// Signs a list with the identity key, after checking it.
    pub fn sign(
        identity: &SigningKey,
        content: DeviceListContent,
    ) -> Result<Self, DeviceListError> {
        let mut list = Self {
            identifier: content.identifier,
            identity_key: IdentityKey::from_signing_key(identity),
            version: content.version,
            devices: content.devices,
            registration_lock: content.registration_lock,
            unlocked_with_pin: content.unlocked_with_pin,
            signature: Signature::from_bytes([0; 64]),
        };
        list.check_entries()?;
        list.signature = sign(identity, &list.transcript());
        Ok(list)
    }

    /// The transcript the signature covers.
    pub fn transcript(&self) -> Transcript {
        let mut t = Transcript::new("device-list/v1")
            .str(self.identifier.as_str())
            .bytes(&self.identity_key.to_bytes())
            .u64(self.version)
            .u64(self.devices.len() as u64);
        for d in &self.devices {
            t = t.bytes(d.device_id.as_bytes()).str(&d.name).u64(d.added_at);
        }
        t.u64(u64::from(self.registration_lock))
            .u64(u64::from(self.unlocked_with_pin))
    }

    fn check_entries(&self) -> Result<(), DeviceListError> {
        if self.devices.is_empty() {
            return Err(DeviceListError::Empty);
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(DeviceListError::TooMany);
        }
        for (i, d) in self.devices.iter().enumerate() {
            check_device_name(&d.name)?;
            if let Some(other) = self.devices[..i]
                .iter()
                .find(|o| o.device_id == d.device_id || o.name == d.name)
            {
                return Err(DeviceListError::Duplicate(other.name.clone()));
            }
        }
        Ok(())
    }

    /// Checks the entries and the identity key's signature.
    pub fn verify(&self) -> Result<(), DeviceListError> {
        self.check_entries()?;
        self.identity_key
            .verify(&self.transcript(), &self.signature)?;
        Ok(())
    }

    /// Whether `device` is on the list.
    pub fn contains(&self, device: &DeviceId) -> bool {
        self.devices.iter().any(|d| d.device_id == *device)
    }

    /// The entry of the device with this name.
    pub fn by_name(&self, name: &str) -> Option<&DeviceEntry> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// The version a list following this one should carry, given the clock.
    pub fn next_version(previous: Option<u64>, now_ms: u64) -> u64 {
        match previous {
            Some(p) => now_ms.max(p.saturating_add(1)),
            None => now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn entry(seed: u8, name: &str) -> DeviceEntry {
        DeviceEntry {
            device_id: DeviceId::from_signing_key(&key(seed)),
            name: name.into(),
            added_at: 1_700_000_000,
        }
    }

    fn content(devices: Vec<DeviceEntry>) -> DeviceListContent {
        DeviceListContent {
            identifier: Identifier::parse("alice@example.com").unwrap(),
            version: 5,
            devices,
            registration_lock: true,
            unlocked_with_pin: false,
        }
    }

    #[test]
    fn signed_lists_verify_and_tampering_is_detected() {
        let id = key(1);
        let list =
            DeviceList::sign(&id, content(vec![entry(2, "laptop"), entry(3, "phone")])).unwrap();
        list.verify().unwrap();
        assert!(list.contains(&DeviceId::from_signing_key(&key(3))));
        assert!(!list.contains(&DeviceId::from_signing_key(&key(4))));
        assert_eq!(
            list.by_name("phone").unwrap().device_id,
            list.devices[1].device_id
        );

        let mut added = list.clone();
        added.devices.push(entry(4, "stolen"));
        assert!(added.verify().is_err());
        let mut unlocked = list.clone();
        unlocked.registration_lock = false;
        assert!(unlocked.verify().is_err());
        let mut moved = list.clone();
        moved.identifier = Identifier::parse("mallory@example.com").unwrap();
        assert!(moved.verify().is_err());
        let mut older = list.clone();
        older.version = 4;
        assert!(older.verify().is_err());

        // JSON round trip keeps the signature valid.
        let back: DeviceList =
            serde_json::from_str(&serde_json::to_string(&list).unwrap()).unwrap();
        back.verify().unwrap();
    }

    #[test]
    fn bad_lists_are_refused_with_a_reason() {
        let id = key(1);
        assert_eq!(
            DeviceList::sign(&id, content(vec![])).unwrap_err(),
            DeviceListError::Empty
        );
        assert!(matches!(
            DeviceList::sign(&id, content(vec![entry(2, "a"), entry(2, "b")])),
            Err(DeviceListError::Duplicate(_))
        ));
        assert!(matches!(
            DeviceList::sign(&id, content(vec![entry(2, "a"), entry(3, "a")])),
            Err(DeviceListError::Duplicate(_))
        ));
        let many = (0..=MAX_DEVICES as u8)
            .map(|i| entry(10 + i, &format!("d{i}")))
            .collect();
        assert_eq!(
            DeviceList::sign(&id, content(many)).unwrap_err(),
            DeviceListError::TooMany
        );
        assert!(DeviceList::sign(&id, content(vec![entry(2, "")])).is_err());
    }

    #[test]
    fn link_codes_round_trip_and_prove() {
        let code = LinkCode::from_random([0xA5; 10]);
        let shown = code.display();
        assert_eq!(shown.len(), 19);
        assert_eq!(LinkCode::parse(&shown).unwrap(), code);
        assert_eq!(
            LinkCode::parse(&shown.to_lowercase().replace('-', " ")).unwrap(),
            code
        );
        assert!(LinkCode::parse("ABCD-EFGH").is_err());
        assert!(LinkCode::parse("ABCD-EFGH-JKMN-PQR!").is_err());
        assert_eq!(
            LinkCode::parse("O0IL-0000-0000-0000").unwrap().offer(),
            "0011"
        );
        assert!(crate::directory::is_link_offer(code.offer()));
        let (a, b) = (
            DeviceId::from_signing_key(&key(1)),
            DeviceId::from_signing_key(&key(2)),
        );
        let p = code.proof("new", &a, &b);
        assert!(code.check("new", &a, &b, &p));
        assert!(!code.check("existing", &a, &b, &p));
        assert!(!code.check("new", &b, &a, &p));
        assert!(!LinkCode::from_random([1; 10]).check("new", &a, &b, &p));
        assert!(!format!("{code:?}").contains(&shown[5..]));
        // The rendezvous token depends on the whole code, and is not the link proof.
        let token = code.rendezvous_token();
        assert_eq!(token, LinkCode::parse(&shown).unwrap().rendezvous_token());
        let wrong_secret = LinkCode::parse(&format!("{}-0000-0000-0000", code.offer())).unwrap();
        assert_ne!(token, wrong_secret.rendezvous_token());
        assert_ne!(token.0[..], p[..16]);
        // Golden (computed apart from this code): a change here breaks linking between
        // versions.
        let golden = LinkCode::parse("ABCD-EFGH-JKMN-PQRS").unwrap();
        assert_eq!(
            serde_json::to_string(&golden.rendezvous_token()).unwrap(),
            r#""c4cb82c631989a01e0502a8ace8c7c8e""#
        );
    }

    #[test]
    fn versions_always_increase() {
        assert_eq!(DeviceList::next_version(None, 100), 100);
        assert_eq!(DeviceList::next_version(Some(50), 100), 100);
        assert_eq!(DeviceList::next_version(Some(500), 100), 501);
    }
}

/// The characters of a device-link code (Crockford's base32: no I, L, O or U, so a code read
/// aloud or typed is hard to get wrong).
const CODE_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A device-link code: `OFFR-SSSS-SSSS-SSSS`. The first four characters name the offer at
/// the directory (the rendezvous: which device to connect to); the other twelve (60 bits) are
/// a secret the directory never sees, which both devices prove to each other over their
/// direct connection.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    offer: String,
    secret: String,
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkCode({}-…)", self.offer)
    }
}

impl LinkCode {
    /// A code from 10 random bytes.
    pub fn from_random(bytes: [u8; 10]) -> Self {
        let mut bits: u128 = 0;
        for b in bytes {
            bits = (bits << 8) | u128::from(b);
        }
        let chars: String = (0..16)
            .map(|i| CODE_ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
            .collect();
        Self {
            offer: chars[..4].to_owned(),
            secret: chars[4..].to_owned(),
        }
    }

    /// Parses a code as typed: case, dashes and spaces do not matter, and the look-alikes
    /// `O`, `I` and `L` read as `0`, `1` and `1`.
    pub fn parse(input: &str) -> Result<Self, String> {
        let mut chars = String::with_capacity(16);
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !CODE_ALPHABET.contains(&(c as u8)) {
                return Err(format!(
                    "{c:?} is not part of a device-link code (16 letters and digits, like ABCD-EFGH-JKMN-PQRS)"
                ));
            }
            chars.push(c);
        }
        if chars.len() != 16 {
            return Err(format!(
                "a device-link code has 16 letters and digits (like ABCD-EFGH-JKMN-PQRS); this one has {}",
                chars.len()
            ));
        }
        Ok(Self {
            offer: chars[..4].to_owned(),
            secret: chars[4..].to_owned(),
        })
    }

    /// The offer id the directory knows.
    pub fn offer(&self) -> &str {
        &self.offer
    }

    /// The code as shown: `OFFR-SSSS-SSSS-SSSS`.
    pub fn display(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.offer,
            &self.secret[..4],
            &self.secret[4..8],
            &self.secret[8..]
        )
    }

    /// The proof that a side knows the code: a hash over the secret, which side speaks
    /// (`"new"` for the device being linked, `"existing"` for the one showing the code), both
    /// device keys and the offer. Compare with [`LinkCode::check`].
    pub fn proof(&self, role: &str, existing: &DeviceId, new: &DeviceId) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        // Every field is length-prefixed (Transcript), so no two inputs collide; the secret
        // comes first and the hash is never extended, so SHA-256 serves as the MAC here.
        let t = Transcript::new("device-link/v1")
            .str(&self.secret)
            .str(role)
            .bytes(existing.as_bytes())
            .bytes(new.as_bytes())
            .str(&self.offer);
        Sha256::digest(t.as_bytes()).into()
    }

    /// The token that takes this code's rendezvous at the directory: the first 16 bytes of
    /// SHA-256 over the transcript `link-rendezvous/v1` (the secret, then the offer id). The
    /// existing device hands it over with the offer; the new device shows it to take the
    /// offer, so guessing offer ids takes nobody's rendezvous. The directory learns this hash
    /// of the secret, which tells it no more than the link proof it could get by standing in
    /// for the existing device (see [`LinkToken`]).
    pub fn rendezvous_token(&self) -> LinkToken {
        use sha2::{Digest, Sha256};
        let t = Transcript::new("link-rendezvous/v1")
            .str(&self.secret)
            .str(&self.offer);
        let digest = Sha256::digest(t.as_bytes());
        let mut token = [0u8; 16];
        token.copy_from_slice(&digest[..16]);
        LinkToken(token)
    }

    /// Whether `proof` is [`LinkCode::proof`] for these inputs (in constant time).
    pub fn check(&self, role: &str, existing: &DeviceId, new: &DeviceId, proof: &[u8]) -> bool {
        let want = self.proof(role, existing, new);
        proof.len() == 32
            && want
                .iter()
                .zip(proof)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// A contact's pinned key, handed to a newly linked device so it trusts (and keeps verified)
/// the same keys as the device that linked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedPin {
    /// The contact.
    pub identifier: Identifier,
    /// Their pinned identity key.
    pub identity_key: IdentityKey,
    /// Whether it was verified in person (safety number).
    pub verified: bool,
    /// Whether the existing device's transparency log proved this key.
    #[serde(default)]
    pub proven: bool,
    /// Whether the key's proven device list has a registration lock.
    #[serde(default)]
    pub registration_lock: bool,
    /// The contact's devices on the list last proven (empty: none known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// The highest device-list version proven for this key (0: none), so that the new
    /// device also refuses an older list replayed by the directory.
    #[serde(default)]
    pub list_version: u64,
    /// The directory last said this person is not an accepted contact.
    #[serde(default)]
    pub not_a_contact: bool,
}

/// What the existing device hands the new one at the end of a link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkBundle {
    /// The account.
    pub identifier: Identifier,
    /// The directory's URL.
    pub directory: String,
    /// The new device's certificate.
    pub cert: crate::keys::DeviceCertificate,
    /// The device list now published, naming the new device.
    pub list: DeviceList,
    /// The directory's transparency-log keys the existing device pinned, and its latest
    /// checkpoint, so the new device starts from the same log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kt: Option<(crate::transparency::KtKeys, crate::transparency::Checkpoint)>,
}
