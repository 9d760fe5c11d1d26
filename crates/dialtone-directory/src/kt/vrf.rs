//! The directory's secret keys for key transparency: the VRF secret that hides identifiers in
//! the tree, and the Ed25519 key that signs checkpoints.
//!
//! Each is 32 random bytes written as hex to a file in the data directory, created with mode
//! 0600 on first start (never overwritten) and loaded afterwards. A file that is readable by
//! others or malformed stops the directory rather than being replaced: replacing either key
//! would make every client's pinned state useless.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use akd::ecvrf::{VRFKeyStorage, VrfError};
use zeroize::Zeroizing;

use super::KtError;

/// akd's [`VRFKeyStorage`] over a secret loaded once from the data directory.
#[derive(Clone)]
pub struct FileVrf {
    secret: Arc<Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for FileVrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileVrf(..)")
    }
}

impl FileVrf {
    /// Wraps a 32-byte VRF secret.
    pub fn new(secret: Zeroizing<[u8; 32]>) -> Self {
        Self {
            secret: Arc::new(secret),
        }
    }

    /// Loads the secret from `path`, creating it (0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KtError> {
        Ok(Self::new(load_or_create_secret(path)?))
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for FileVrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.secret.to_vec())
    }
}

/// Reads a 32-byte hex secret from `path`, or creates one with mode 0600.
pub fn load_or_create_secret(path: &Path) -> Result<Zeroizing<[u8; 32]>, KtError> {
    let err = |reason: String| KtError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)
                .map_err(|e| err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(err(format!(
                    "readable by others (mode {:o}); run `chmod 600 {}`",
                    mode & 0o777,
                    path.display()
                )));
            }
            let text = Zeroizing::new(text);
            let mut out = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), &mut out[..])
                .map_err(|_| err("not 64 hex digits; restore it from a backup".into()))?;
            Ok(out)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = Zeroizing::new([0u8; 32]);
            rand::fill(&mut secret[..]);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(e.to_string()))?;
            let text = Zeroizing::new(hex::encode(&secret[..]));
            f.write_all(text.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
                .and_then(|()| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(secret)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_0600_then_loaded_and_refused_when_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = load_or_create_secret(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = load_or_create_secret(&p).unwrap();
        assert_eq!(*a, *b);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_or_create_secret(&p).is_err());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, "nothex").unwrap();
        assert!(load_or_create_secret(&p).is_err());
    }
}
