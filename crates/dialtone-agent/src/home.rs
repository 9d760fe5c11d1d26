//! The agent's home directory: keys, settings, pins and the local API socket.
//!
//! Layout (every file written with mode 0600, the directory with 0700):
//!
//! | file | what |
//! | --- | --- |
//! | `identity.key` | the identity secret key, encrypted with a passphrase (Argon2id + XChaCha20-Poly1305) unless created with `--no-passphrase` |
//! | `identity.pub` | the identity public key, hex |
//! | `device.key` | the device secret key (the iroh endpoint key), hex; used unattended by the agent |
//! | `device.cert` | the device certificate (JSON), signed by the identity key |
//! | `settings.toml` | directory URL, identifier, registration state, last presence |
//! | `pins.json` | identity keys pinned for contacts on first use |
//! | `kt.json` | the directory's transparency-log keys (pinned on first use) and the last checkpoint accepted |
//! | `agent.sock` | the local API (JSON-RPC over a Unix socket) while the agent runs |
//! | `agent.pid`, `agent.log` | pid and log of a detached agent |

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey, directory::PresenceState,
};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Errors reading or writing the home directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what Dialtone wrote.
    #[error("{path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No identity yet.
    #[error("no identity in {0}: create one with `dialtone id new`")]
    NoIdentity(PathBuf),
    /// An identity exists already.
    #[error(
        "an identity already exists in {0}; use another --home, or --force to replace it (the old key is lost)"
    )]
    IdentityExists(PathBuf),
    /// The identity key is encrypted and no passphrase was given.
    #[error(
        "the identity key is encrypted: give the passphrase with --passphrase-file FILE or the DIALTONE_PASSPHRASE environment variable"
    )]
    PassphraseNeeded,
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase for the identity key")]
    WrongPassphrase,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Settings kept in `settings.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    /// The directory's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// A PEM file with the CA certificate(s) to trust for the directory, if not a public CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory_ca: Option<PathBuf>,
    /// The identifier registered (or being registered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    /// Whether the identifier was verified.
    #[serde(default)]
    pub registered: bool,
    /// Presence to publish when the agent starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PresenceState>,
    /// Status message to publish when the agent starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
}

/// A key pinned for a contact on first use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pin {
    /// The pinned identity key.
    pub identity_key: IdentityKey,
    /// When it was pinned, seconds since the Unix epoch.
    pub pinned_at: u64,
    /// Whether the person compared safety numbers and confirmed this key
    /// (`dialtone contacts verify --confirm`). A key change of a verified contact is a hard
    /// block until they verify again; `trust` is not enough.
    #[serde(default)]
    pub verified: bool,
    /// Whether the directory's transparency log proved this key for the identifier (a key
    /// pinned when a contact was accepted is proven at its first use). Only a proven pin is
    /// used while the directory cannot be asked.
    #[serde(default)]
    pub proven: bool,
    /// Whether the key's proven device list says it has a registration lock: a later key
    /// change without the lock's PIN is then flagged as the directory bypassing the lock.
    #[serde(default)]
    pub registration_lock: bool,
    /// The devices on the key's device list when it was last proven (empty: no list known).
    /// LAN mode, with the directory out of reach, refuses a device that is not on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceId>,
    /// The directory last said this person is not an accepted contact (removed, blocked, or
    /// only asked): LAN mode, which trusts pins while the directory is away, neither reaches
    /// nor accepts them. Cleared when they are accepted again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_a_contact: bool,
    /// The highest device-list version the log has proven for this key (0: none yet, or a
    /// bare key). The key holder signs every list with a higher version, so a lower one
    /// shown later is an old list replayed by the directory (it would re-admit revoked
    /// devices) and is refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub list_version: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Pin {
    /// A new pin for `identity_key`, pinned now; nothing known yet of its device list.
    pub fn new(identity_key: IdentityKey, pinned_at: u64, verified: bool, proven: bool) -> Self {
        Self {
            identity_key,
            pinned_at,
            verified,
            proven,
            registration_lock: false,
            devices: Vec::new(),
            not_a_contact: false,
            list_version: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    kdf: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    m_cost_kib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p_cost: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    salt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    /// Hex of the ciphertext (encrypted) or of the 32-byte seed (`kdf = "none"`).
    data: String,
}

/// Argon2id parameters for the identity key (OWASP's 2023 minimum: 19 MiB, 2 passes).
const ARGON_M_KIB: u32 = 19 * 1024;
const ARGON_T: u32 = 2;
const ARGON_P: u32 = 1;

/// The home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// Opens (and creates, mode 0700) a home directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, HomeError> {
        let root = root.into();
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&root)
                .map_err(io_err(&root))?;
        }
        Ok(Self { root })
    }

    /// The directory's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a file in the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The local API socket.
    pub fn socket_path(&self) -> PathBuf {
        self.path("agent.sock")
    }

    /// Whether an identity was created.
    pub fn has_identity(&self) -> bool {
        self.path("identity.key").exists()
    }

    /// Creates a new identity key and device key, and certifies the device.
    pub fn create_identity(
        &self,
        passphrase: Option<&str>,
        device_name: &str,
        now: u64,
        force: bool,
    ) -> Result<(IdentityKey, DeviceCertificate), HomeError> {
        if self.has_identity() && !force {
            return Err(HomeError::IdentityExists(self.root.clone()));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut seed[..]);
        let identity = SigningKey::from_bytes(&seed);
        let mut dseed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut dseed[..]);
        let device = SigningKey::from_bytes(&dseed);
        let cert = DeviceCertificate::issue(
            &identity,
            DeviceId::from_signing_key(&device),
            device_name,
            now,
        )
        .map_err(|e| HomeError::Corrupt {
            path: self.path("device.cert"),
            reason: e.to_string(),
        })?;

        let keyfile = match passphrase {
            Some(p) => encrypt_seed(&seed, p),
            None => KeyFile {
                version: 1,
                kdf: "none".into(),
                m_cost_kib: None,
                t_cost: None,
                p_cost: None,
                salt: None,
                nonce: None,
                data: hex::encode(*seed),
            },
        };
        let ik = IdentityKey::from_signing_key(&identity);
        write_private(&self.path("identity.key"), &to_json(&keyfile))?;
        write_private(&self.path("identity.pub"), format!("{ik}\n").as_bytes())?;
        write_private(
            &self.path("device.key"),
            format!("{}\n", hex::encode(*dseed)).as_bytes(),
        )?;
        write_private(&self.path("device.cert"), &to_json(&cert))?;
        // A new identity invalidates registration and pins made with the old one.
        let mut settings = self.settings()?;
        settings.registered = false;
        self.save_settings(&settings)?;
        Ok((ik, cert))
    }

    /// The identity public key.
    pub fn identity_key(&self) -> Result<IdentityKey, HomeError> {
        let path = self.path("identity.pub");
        if !path.exists() {
            return Err(HomeError::NoIdentity(self.root.clone()));
        }
        let s = fs::read_to_string(&path).map_err(io_err(&path))?;
        IdentityKey::from_hex(s.trim()).map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Whether the identity key is encrypted.
    pub fn identity_is_encrypted(&self) -> Result<bool, HomeError> {
        Ok(self.read_keyfile()?.kdf != "none")
    }

    fn read_keyfile(&self) -> Result<KeyFile, HomeError> {
        let path = self.path("identity.key");
        if !path.exists() {
            return Err(HomeError::NoIdentity(self.root.clone()));
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Decrypts the identity secret key.
    pub fn identity_signing_key(&self, passphrase: Option<&str>) -> Result<SigningKey, HomeError> {
        let path = self.path("identity.key");
        let kf = self.read_keyfile()?;
        let corrupt = |reason: &str| HomeError::Corrupt {
            path: path.clone(),
            reason: reason.into(),
        };
        let seed: Zeroizing<[u8; 32]> = match kf.kdf.as_str() {
            "none" => Zeroizing::new(decode32(&kf.data).ok_or_else(|| corrupt("bad key"))?),
            "argon2id" => {
                let pass = passphrase.ok_or(HomeError::PassphraseNeeded)?;
                decrypt_seed(&kf, pass).ok_or(HomeError::WrongPassphrase)?
            }
            _ => return Err(corrupt("unknown key derivation")),
        };
        let key = SigningKey::from_bytes(&seed);
        if IdentityKey::from_signing_key(&key) != self.identity_key()? {
            return Err(corrupt("identity.key does not match identity.pub"));
        }
        Ok(key)
    }

    /// The device secret key seed.
    pub fn device_secret(&self) -> Result<Zeroizing<[u8; 32]>, HomeError> {
        let path = self.path("device.key");
        if !path.exists() {
            return Err(HomeError::NoIdentity(self.root.clone()));
        }
        let s = Zeroizing::new(fs::read_to_string(&path).map_err(io_err(&path))?);
        decode32(s.trim())
            .map(Zeroizing::new)
            .ok_or_else(|| HomeError::Corrupt {
                path,
                reason: "not 32 bytes of hex".into(),
            })
    }

    /// The device certificate.
    pub fn device_cert(&self) -> Result<DeviceCertificate, HomeError> {
        let path = self.path("device.cert");
        if !path.exists() {
            return Err(HomeError::NoIdentity(self.root.clone()));
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let cert: DeviceCertificate =
            serde_json::from_slice(&bytes).map_err(|e| HomeError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        cert.verify().map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })?;
        Ok(cert)
    }

    /// Reads `settings.toml` (defaults if missing).
    pub fn settings(&self) -> Result<Settings, HomeError> {
        let path = self.path("settings.toml");
        if !path.exists() {
            return Ok(Settings::default());
        }
        let s = fs::read_to_string(&path).map_err(io_err(&path))?;
        toml::from_str(&s).map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes `settings.toml`.
    pub fn save_settings(&self, settings: &Settings) -> Result<(), HomeError> {
        let s = toml::to_string(settings).map_err(|e| HomeError::Corrupt {
            path: self.path("settings.toml"),
            reason: e.to_string(),
        })?;
        write_private(&self.path("settings.toml"), s.as_bytes())
    }

    /// Reads the pinned keys.
    pub fn pins(&self) -> Result<BTreeMap<Identifier, Pin>, HomeError> {
        let path = self.path("pins.json");
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| HomeError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes the pinned keys.
    pub fn save_pins(&self, pins: &BTreeMap<Identifier, Pin>) -> Result<(), HomeError> {
        write_private(&self.path("pins.json"), &to_json(pins))
    }

    /// Whether this device was linked to an account (`dialtone device link CODE`): it has the
    /// identity's public key and a certificate, but not the identity secret key.
    pub fn is_linked(&self) -> bool {
        self.path("identity.pub").exists() && !self.has_identity()
    }

    /// The device key of a device about to be linked: made on first call (in a home without
    /// an identity), the same on later calls (a link that failed halfway can be retried).
    pub fn new_device_key(&self) -> Result<Zeroizing<[u8; 32]>, HomeError> {
        if self.path("identity.pub").exists() {
            return Err(HomeError::IdentityExists(self.root.clone()));
        }
        if self.path("device.key").exists() {
            return self.device_secret();
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut seed[..]);
        write_private(
            &self.path("device.key"),
            format!("{}\n", hex::encode(*seed)).as_bytes(),
        )?;
        Ok(seed)
    }

    /// Stores what a device received when it was linked: the identity's public key, its
    /// certificate, the contacts' pins, the log's keys, and the registration.
    pub fn store_linked(
        &self,
        bundle: &dialtone_proto::devices::LinkBundle,
        directory: &str,
        pins: &[dialtone_proto::devices::LinkedPin],
    ) -> Result<(), HomeError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let pins: BTreeMap<Identifier, Pin> = pins
            .iter()
            .map(|p| {
                (
                    p.identifier.clone(),
                    Pin {
                        registration_lock: p.registration_lock,
                        devices: p.devices.clone(),
                        list_version: p.list_version,
                        not_a_contact: p.not_a_contact,
                        ..Pin::new(p.identity_key, now, p.verified, p.proven)
                    },
                )
            })
            .collect();
        self.save_pins(&pins)?;
        if let Some((keys, checkpoint)) = &bundle.kt {
            self.save_kt(&crate::kt::KtState {
                directory: directory.to_owned(),
                keys: keys.clone(),
                checkpoint: *checkpoint,
                roots: BTreeMap::new(),
            })?;
        }
        write_private(&self.path("device.cert"), &to_json(&bundle.cert))?;
        write_private(
            &self.path("identity.pub"),
            format!("{}\n", bundle.cert.identity_key).as_bytes(),
        )?;
        self.save_settings(&Settings {
            directory: Some(directory.to_owned()),
            identifier: Some(bundle.identifier.clone()),
            registered: true,
            ..self.settings()?
        })
    }

    /// The transparency log pinned for the directory and the last checkpoint accepted
    /// (`kt.json`), if any.
    pub fn kt_state(&self) -> Result<Option<crate::kt::KtState>, HomeError> {
        read_json_if_any(&self.path("kt.json"))
    }

    /// Saves the transparency state (`kt.json`, 0600).
    pub fn save_kt(&self, st: &crate::kt::KtState) -> Result<(), HomeError> {
        write_private(&self.path("kt.json"), &to_json(st))
    }

    /// The device list this home's identity key signed last (`device-list.json`), if any.
    /// `dialtone verify` starts from it rather than from the directory's unproven answer, so
    /// a directory cannot hand back an older list (with a revoked device, or without the lock)
    /// to be signed again.
    pub fn own_list(&self) -> Result<Option<dialtone_proto::devices::DeviceList>, HomeError> {
        read_json_if_any(&self.path("device-list.json"))
    }

    /// Records a device list this home's identity key signed and the directory accepted.
    pub fn save_own_list(
        &self,
        list: &dialtone_proto::devices::DeviceList,
    ) -> Result<(), HomeError> {
        write_private(&self.path("device-list.json"), &to_json(list))
    }
}

/// A JSON file's contents, `None` if there is no such file.
fn read_json_if_any<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, HomeError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| HomeError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing our own plain data types to JSON cannot fail.
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Writes a file atomically (temporary file, then rename) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn derive_key(pass: &str, salt: &[u8], m: u32, t: u32, p: u32) -> Option<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(m, t, p, Some(32)).ok()?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(pass.as_bytes(), salt, &mut key[..])
        .ok()?;
    Some(key)
}

const KEYFILE_AAD: &[u8] = b"dialtone/identity-key/v1";

fn encrypt_seed(seed: &[u8; 32], pass: &str) -> KeyFile {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let mut nonce = [0u8; 24];
    rand::fill(&mut nonce[..]);
    // Argon2 with these constant, valid parameters and a 16-byte salt cannot fail.
    let key = derive_key(pass, &salt, ARGON_M_KIB, ARGON_T, ARGON_P).unwrap_or_default();
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let ct = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: seed,
                aad: KEYFILE_AAD,
            },
        )
        .unwrap_or_default();
    KeyFile {
        version: 1,
        kdf: "argon2id".into(),
        m_cost_kib: Some(ARGON_M_KIB),
        t_cost: Some(ARGON_T),
        p_cost: Some(ARGON_P),
        salt: Some(hex::encode(salt)),
        nonce: Some(hex::encode(nonce)),
        data: hex::encode(ct),
    }
}

fn decrypt_seed(kf: &KeyFile, pass: &str) -> Option<Zeroizing<[u8; 32]>> {
    let salt = hex::decode(kf.salt.as_ref()?).ok()?;
    let nonce = hex::decode(kf.nonce.as_ref()?).ok()?;
    if nonce.len() != 24 {
        return None;
    }
    let ct = hex::decode(&kf.data).ok()?;
    let key = derive_key(pass, &salt, kf.m_cost_kib?, kf.t_cost?, kf.p_cost?)?;
    let cipher = XChaCha20Poly1305::new((&*key).into());
    let pt = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: KEYFILE_AAD,
                },
            )
            .ok()?,
    );
    <[u8; 32]>::try_from(&pt[..]).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_identity_roundtrip_and_modes() {
        let dir = std::env::temp_dir().join(format!("dialtone-home-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let home = Home::open(&dir).unwrap();
        let (ik, cert) = home
            .create_identity(Some("correct horse"), "laptop", 1, false)
            .unwrap();
        cert.verify().unwrap();
        assert!(matches!(
            home.create_identity(None, "x", 1, false),
            Err(HomeError::IdentityExists(_))
        ));
        assert!(matches!(
            home.identity_signing_key(None),
            Err(HomeError::PassphraseNeeded)
        ));
        assert!(matches!(
            home.identity_signing_key(Some("wrong")),
            Err(HomeError::WrongPassphrase)
        ));
        let key = home.identity_signing_key(Some("correct horse")).unwrap();
        assert_eq!(IdentityKey::from_signing_key(&key), ik);
        for f in ["identity.key", "device.key", "device.cert", "identity.pub"] {
            let mode = fs::metadata(home.path(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let raw = fs::read_to_string(home.path("identity.key")).unwrap();
        assert!(!raw.contains(&hex::encode(key.to_bytes())));
        let _ = fs::remove_dir_all(&dir);
    }
}
