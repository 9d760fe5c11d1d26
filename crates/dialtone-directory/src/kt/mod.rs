//! Key transparency: every identifier → identity-key binding is published in an auditable
//! key directory (Meta's `akd`) whose epoch roots the directory signs into an append-only
//! checkpoint log.
//!
//! - **Configuration**: `akd::ExperimentalConfiguration` with the domain label
//!   `dialtone-kt/v1`. It is akd's current construction (BLAKE3, domain-separated hashes,
//!   commitments keyed by the VRF secret) and needs no extra feature; `WhatsAppV1Configuration`
//!   exists for compatibility with WhatsApp's deployed directory, which Dialtone does not need.
//! - **Storage**: [`SqliteAkd`], on the directory's own SQLite file.
//! - **Keys**: a VRF secret (`kt-vrf.key`) and an Ed25519 checkpoint-signing key
//!   (`kt-signing.key`), each 32 random bytes in hex, generated on first start in the data
//!   directory with mode 0600 and loaded afterwards.
//! - **Epochs**: confirmed registrations and key changes are queued in `kt_pending`
//!   (durably, in the same transaction as the binding) and published in batches by one task:
//!   at once when it wakes, then at most once per `epoch_interval`. Each epoch's root is signed
//!   into `kt_checkpoints` (epoch, root, hash of the previous checkpoint, signature).
//! - **Consistency**: proofs and checkpoints are read under a read lock that publishing takes
//!   for writing, so a proof is always answered with the checkpoint of its own epoch.

mod storage;
mod vrf;

use std::{path::Path, sync::Arc, time::Duration};

use akd::{
    AkdLabel, AkdValue, HistoryParams,
    configuration::DomainLabel,
    errors::{AkdError, StorageError},
    storage::StorageManager,
};
use dialtone_proto::{
    Identifier,
    transparency::{
        AKD_DOMAIN_LABEL, Checkpoint, Hash32, KtAudit, KtHistory, KtKeys, KtLookup,
        MAX_AUDIT_EPOCHS,
    },
};
use ed25519_dalek::SigningKey;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, RwLock, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use storage::SqliteAkd;
pub use vrf::{FileVrf, load_or_create_secret};

use crate::{
    config::TransparencyConfig,
    store::{Store, StoreError},
    view::View,
};

/// Dialtone's akd domain label (`dialtone-kt/v1`).
#[derive(Debug, Clone, Copy)]
pub struct DialtoneLabel;

impl DomainLabel for DialtoneLabel {
    fn domain_label() -> &'static [u8] {
        AKD_DOMAIN_LABEL
    }
}

/// The akd configuration Dialtone uses, on both sides.
pub type KtConfiguration = akd::ExperimentalConfiguration<DialtoneLabel>;

/// Name of the configuration in [`KtKeys::configuration`].
pub const CONFIGURATION_NAME: &str = "akd-experimental/dialtone-kt/v1";

type Akd = akd::Directory<KtConfiguration, SqliteAkd, FileVrf>;

/// Why a transparency request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KtError {
    /// The identifier has never been published.
    #[error("no one is registered as {0}")]
    NotFound(Identifier),
    /// The binding is still waiting for its epoch.
    #[error("{0} is not in the transparency log yet; ask again in a moment")]
    NotPublished(Identifier),
    /// A bad epoch range.
    #[error("{0}")]
    BadRange(String),
    /// akd failed.
    #[error("transparency log: {0}")]
    Akd(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key file is unusable.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl From<AkdError> for KtError {
    fn from(e: AkdError) -> Self {
        Self::Akd(e.to_string())
    }
}

/// The transparency log of a running directory: its honest answers, the same for everyone
/// (what a viewer is shown is decided by the server's [`View`]).
pub struct Transparency {
    akd: Akd,
    store: Store,
    signer: SigningKey,
    keys: KtKeys,
    /// Publishing holds it for writing; proofs for reading.
    rw: RwLock<()>,
    wake: Notify,
    epoch: watch::Sender<u64>,
    config: TransparencyConfig,
    /// Told of every published epoch.
    view: Arc<dyn View>,
}

impl std::fmt::Debug for Transparency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transparency")
            .field("epoch", &*self.epoch.borrow())
            .finish_non_exhaustive()
    }
}

/// A checkpoint row: epoch, root, previous, signature.
type CheckpointRow = (i64, Vec<u8>, Vec<u8>, Vec<u8>);

fn row_checkpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_checkpoint(row: CheckpointRow) -> Result<Checkpoint, StoreError> {
    let (epoch, root, prev, sig) = row;
    let arr32 = |v: Vec<u8>| -> Result<[u8; 32], StoreError> {
        v.try_into()
            .map_err(|_| StoreError::Corrupt("checkpoint hash".into()))
    };
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| StoreError::Corrupt("checkpoint signature".into()))?;
    Ok(Checkpoint {
        epoch: epoch as u64,
        root_hash: Hash32(arr32(root)?),
        previous: Hash32(arr32(prev)?),
        signature: dialtone_proto::Signature::from_bytes(sig),
    })
}

/// Checkpoint queries, on a connection.
pub(crate) mod q {
    use super::*;

    pub(crate) fn latest(c: &Connection) -> Result<Option<Checkpoint>, StoreError> {
        c.query_row(
            "SELECT epoch, root_hash, previous, signature FROM kt_checkpoints ORDER BY epoch DESC LIMIT 1",
            [],
            row_checkpoint,
        )
        .optional()?
        .map(to_checkpoint)
        .transpose()
    }

    pub(crate) fn at(c: &Connection, epoch: u64) -> Result<Option<Checkpoint>, StoreError> {
        c.query_row(
            "SELECT epoch, root_hash, previous, signature FROM kt_checkpoints WHERE epoch = ?1",
            [epoch as i64],
            row_checkpoint,
        )
        .optional()?
        .map(to_checkpoint)
        .transpose()
    }

    pub(crate) fn range(c: &Connection, from: u64, to: u64) -> Result<Vec<Checkpoint>, StoreError> {
        let mut st = c.prepare_cached(
            "SELECT epoch, root_hash, previous, signature FROM kt_checkpoints
             WHERE epoch >= ?1 AND epoch <= ?2 ORDER BY epoch",
        )?;
        let rows = st.query_map([from as i64, to as i64], row_checkpoint)?;
        rows.map(|r| to_checkpoint(r?)).collect()
    }

    pub(crate) fn append(c: &Connection, cp: &Checkpoint, now: u64) -> Result<(), StoreError> {
        c.execute(
            "INSERT INTO kt_checkpoints (epoch, root_hash, previous, signature, published_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                cp.epoch as i64,
                &cp.root_hash.0[..],
                &cp.previous.0[..],
                &cp.signature.to_bytes()[..],
                now as i64
            ],
        )?;
        Ok(())
    }

    pub(crate) fn pending(c: &Connection) -> Result<Vec<(String, Vec<u8>, i64)>, StoreError> {
        let mut st = c.prepare_cached(
            "SELECT identifier, value, queued_at FROM kt_pending ORDER BY queued_at",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn is_pending(c: &Connection, id: &Identifier) -> Result<bool, StoreError> {
        Ok(c.query_row(
            "SELECT 1 FROM kt_pending WHERE identifier = ?1",
            [id.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }
}

fn not_found(e: &AkdError) -> bool {
    matches!(e, AkdError::Storage(StorageError::NotFound(_)))
}

impl Transparency {
    /// Loads (or creates) the keys in `data_dir`, opens akd on the store, and makes sure the
    /// latest epoch has a signed checkpoint.
    pub(crate) async fn open(
        store: Store,
        data_dir: &Path,
        config: TransparencyConfig,
        view: Arc<dyn View>,
    ) -> Result<Arc<Self>, KtError> {
        let vrf_secret = load_or_create_secret(&data_dir.join("kt-vrf.key"))?;
        let sign_secret = load_or_create_secret(&data_dir.join("kt-signing.key"))?;
        let signer = SigningKey::from_bytes(&sign_secret);
        let vrf = FileVrf::new(vrf_secret);
        let manager = StorageManager::new(
            SqliteAkd::new(store.clone()),
            Some(Duration::from_secs(300)),
            Some(256 * 1024 * 1024),
            Some(Duration::from_secs(60)),
        );
        let akd = Akd::new(manager, vrf, Default::default()).await?;
        let vrf_public = akd.get_public_key().await?;
        let vrf_bytes: [u8; 32] = *vrf_public.as_bytes();
        let keys = KtKeys {
            signing_key: dialtone_proto::IdentityKey::from_signing_key(&signer),
            vrf_public_key: Hash32(vrf_bytes),
            configuration: CONFIGURATION_NAME.into(),
        };
        let this = Self {
            akd,
            store,
            signer,
            keys,
            rw: RwLock::new(()),
            wake: Notify::new(),
            epoch: watch::Sender::new(0),
            config,
            view,
        };
        let cp = this.ensure_checkpoint().await?;
        this.epoch.send_replace(cp.epoch);
        let this = Arc::new(this);
        this.view.clone().opened(&this, &cp).await?;
        info!(epoch = cp.epoch, "transparency log open");
        Ok(this)
    }

    /// Signs the current epoch if the log does not have it yet (first start, or a crash
    /// between publishing and signing).
    async fn ensure_checkpoint(&self) -> Result<Checkpoint, KtError> {
        let eh = self.akd.get_epoch_hash().await?;
        let latest = self.store.run(|c| q::latest(c)).await?;
        match latest {
            Some(cp) if cp.epoch == eh.0 => Ok(cp),
            Some(cp) if cp.epoch > eh.0 => Err(KtError::Akd(format!(
                "the checkpoint log is at epoch {} but the tree at {}",
                cp.epoch, eh.0
            ))),
            prev => {
                if prev.as_ref().is_some_and(|p| p.epoch + 1 != eh.0) {
                    warn!(epoch = eh.0, "checkpoints are missing before this epoch");
                }
                let previous = prev.map(|p| p.hash()).unwrap_or_default();
                let cp = Checkpoint::sign(&self.signer, eh.0, Hash32(eh.1), previous);
                let now = crate::http::now_secs();
                self.store.run(move |c| q::append(c, &cp, now)).await?;
                Ok(cp)
            }
        }
    }

    /// The public keys clients verify with.
    pub fn keys(&self) -> &KtKeys {
        &self.keys
    }

    /// Wakes the publisher: a binding was queued.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// The latest signed checkpoint.
    pub async fn checkpoint(&self) -> Result<Checkpoint, KtError> {
        let _r = self.rw.read().await;
        self.store
            .run(|c| q::latest(c))
            .await?
            .ok_or_else(|| KtError::Akd("no checkpoint".into()))
    }

    /// The signed checkpoint of `epoch`.
    pub async fn checkpoint_at(&self, epoch: u64) -> Result<Checkpoint, KtError> {
        self.store
            .run(move |c| q::at(c, epoch))
            .await?
            .ok_or_else(|| KtError::Akd(format!("no checkpoint for epoch {epoch}")))
    }

    /// Waits (up to `lookup_wait`) while `id` has a binding waiting for its epoch.
    async fn wait_published(&self, id: &Identifier) -> Result<(), KtError> {
        let deadline = tokio::time::Instant::now() + self.config.lookup_wait;
        let mut rx = self.epoch.subscribe();
        loop {
            let id2 = id.clone();
            if !self.store.run(move |c| q::is_pending(c, &id2)).await? {
                return Ok(());
            }
            self.notify();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(KtError::NotPublished(id.clone())),
            }
        }
    }

    /// A lookup proof for `id`, with the checkpoint of its epoch.
    pub async fn lookup(&self, id: &Identifier) -> Result<KtLookup, KtError> {
        self.wait_published(id).await?;
        let _r = self.rw.read().await;
        let label = AkdLabel::from(id.as_str());
        let (proof, eh) = match self.akd.lookup(label).await {
            Ok(x) => x,
            Err(e) if not_found(&e) => return Err(KtError::NotFound(id.clone())),
            Err(e) => return Err(e.into()),
        };
        let checkpoint = self.checkpoint_at(eh.0).await?;
        let proof = serde_json::to_value(&proof).map_err(|e| KtError::Akd(e.to_string()))?;
        Ok(KtLookup {
            identifier: id.clone(),
            checkpoint,
            proof,
        })
    }

    /// The complete key history of `id`, with the checkpoint of its epoch.
    pub async fn history(&self, id: &Identifier) -> Result<KtHistory, KtError> {
        self.wait_published(id).await?;
        let _r = self.rw.read().await;
        let label = AkdLabel::from(id.as_str());
        let (proof, eh) = match self.akd.key_history(&label, HistoryParams::Complete).await {
            Ok(x) => x,
            Err(e) if not_found(&e) => return Err(KtError::NotFound(id.clone())),
            Err(e) => return Err(e.into()),
        };
        let checkpoint = self.checkpoint_at(eh.0).await?;
        let proof = serde_json::to_value(&proof).map_err(|e| KtError::Akd(e.to_string()))?;
        Ok(KtHistory {
            identifier: id.clone(),
            checkpoint,
            proof,
        })
    }

    /// Checkpoints `from..=to` and the append-only proof between the two epochs.
    pub async fn audit(&self, from: u64, to: u64) -> Result<KtAudit, KtError> {
        let _r = self.rw.read().await;
        let latest = *self.epoch.borrow();
        if from > to || to > latest {
            return Err(KtError::BadRange(format!(
                "bad epoch range {from}..{to}: the latest epoch is {latest}"
            )));
        }
        if to - from > MAX_AUDIT_EPOCHS {
            return Err(KtError::BadRange(format!(
                "at most {MAX_AUDIT_EPOCHS} epochs per audit request"
            )));
        }
        let checkpoints = self.store.run(move |c| q::range(c, from, to)).await?;
        let proof = if from == to {
            serde_json::Value::Null
        } else {
            let p = self.akd.audit(from, to).await?;
            serde_json::to_value(&p).map_err(|e| KtError::Akd(e.to_string()))?
        };
        Ok(KtAudit { checkpoints, proof })
    }

    /// Publishes every queued binding as one epoch, signs its checkpoint, and returns it
    /// (`None` if nothing was queued).
    pub(crate) async fn publish_pending(&self) -> Result<Option<Checkpoint>, KtError> {
        let pending = self.store.run(|c| q::pending(c)).await?;
        if pending.is_empty() {
            return Ok(None);
        }
        let _w = self.rw.write().await;
        let updates: Vec<(AkdLabel, AkdValue)> = pending
            .iter()
            .map(|(id, v, _)| (AkdLabel::from(id.as_str()), AkdValue(v.clone())))
            .collect();
        let mirrored = updates.clone();
        let eh = self.akd.publish(updates).await?;
        let prev = self.store.run(|c| q::latest(c)).await?;
        let previous = prev.map(|p| p.hash()).unwrap_or_default();
        let cp = Checkpoint::sign(&self.signer, eh.0, Hash32(eh.1), previous);
        let now = crate::http::now_secs();
        let n = pending.len();
        self.store
            .run(move |c| {
                let tx = c.transaction()?;
                q::append(&tx, &cp, now)?;
                for (id, _, queued_at) in &pending {
                    // Only the row that was published: a newer key queued meanwhile stays.
                    tx.execute(
                        "DELETE FROM kt_pending WHERE identifier = ?1 AND queued_at = ?2",
                        params![id, queued_at],
                    )?;
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.view.published(self, &mirrored, &cp).await?;
        drop(_w);
        self.epoch.send_replace(cp.epoch);
        info!(
            epoch = cp.epoch,
            bindings = n,
            "transparency epoch published"
        );
        Ok(Some(cp))
    }

    /// The publisher: publishes queued bindings when woken (or every `epoch_interval`), at
    /// most once per `epoch_interval`, until `cancel`.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.epoch_interval) => {}
            }
            match self.publish_pending().await {
                Ok(Some(_)) => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.config.epoch_interval) => {}
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("publishing an epoch failed: {e}");
                    debug!("retrying after the epoch interval");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(self.config.epoch_interval) => {}
                    }
                }
            }
        }
    }
}
