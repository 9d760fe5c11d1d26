//! **A directory that lies**, for the malicious-directory tests only (`publish = false`; never
//! deploy it). It is the real directory (`dialtone-directory`) with a [`View`] plugged into
//! its seam ([`dialtone_directory::ServerBuilder::view`]) that tells lies, and one more route
//! to change the lie while it runs: nothing of it is in the directory's own code.
//!
//! Modes (`--lie MODE`, or `POST /v1/malicious/lie {"mode": …, "target": …}` at run time):
//!
//! - `forged-key:TARGET` — every contact entry for TARGET carries a forged identity key, and
//!   its lookup proofs carry the forged value (so they cannot verify);
//! - `rollback` — every checkpoint it serves is the one of the epoch before the latest;
//! - `split-view:VICTIM:TARGET` — the session of VICTIM is shown a second log, signed with the
//!   real key, in which TARGET is bound to a forged key; everyone else sees the real log (only
//!   from the directory's first start, so that the two logs have the same epochs);
//! - `replace-key:TARGET` — binds a fresh key to TARGET without any verification and publishes
//!   it in the log, without ending TARGET's sessions or telling anyone;
//! - `replay-list:TARGET` — publishes TARGET's previous log value again (an older device
//!   list the key holder signed, for instance one that still names a revoked device), and
//!   shows it in TARGET's lookups;
//! - `honest` — stops lying (a replaced key stays replaced).
//!
//! What a real operator could do, it does the way an operator could: it writes to the
//! directory's SQLite file over its own connection and signs with the directory's key file.
#![deny(missing_docs)]

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use akd::{
    AkdLabel, AkdValue,
    storage::{StorageManager, memory::AsyncInMemoryDatabase},
};
use dialtone_directory::{
    kt::{FileVrf, KtConfiguration, KtError, Transparency, load_or_create_secret},
    view::{View, Viewer},
};
use dialtone_proto::{
    Identifier, IdentityKey,
    directory::ContactEntry,
    transparency::{Checkpoint, Hash32, KtAudit, KtHistory, KtLookup, kt_value},
};
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use tracing::warn;

/// A lie.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Lie {
    /// Tell the truth.
    Honest,
    /// Forge `target`'s key in contact entries and lookup proofs.
    ForgedKey {
        /// Whose key.
        target: Identifier,
    },
    /// Serve the checkpoint of the epoch before the latest.
    Rollback,
    /// Show `victim` a second log where `target` has a forged key.
    SplitView {
        /// Who sees the second log.
        victim: Identifier,
        /// Whose key differs in it.
        target: Identifier,
    },
    /// Bind a fresh key to `target` without verification (applied once).
    ReplaceKey {
        /// Whose key.
        target: Identifier,
    },
    /// Publish `target`'s previous value again (applied once).
    ReplayList {
        /// Whose list.
        target: Identifier,
    },
}

impl std::str::FromStr for Lie {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let id = |i: usize| -> Result<Identifier, String> {
            let raw = parts
                .get(i)
                .ok_or_else(|| format!("{s}: missing identifier"))?;
            Identifier::parse(raw).map_err(|e| format!("{raw}: {e}"))
        };
        match parts[0] {
            "honest" => Ok(Self::Honest),
            "rollback" => Ok(Self::Rollback),
            "forged-key" => Ok(Self::ForgedKey { target: id(1)? }),
            "replace-key" => Ok(Self::ReplaceKey { target: id(1)? }),
            "replay-list" => Ok(Self::ReplayList { target: id(1)? }),
            "split-view" => Ok(Self::SplitView {
                victim: id(1)?,
                target: id(2)?,
            }),
            other => Err(format!(
                "unknown lie {other}: forged-key:ID, rollback, split-view:VICTIM:TARGET, replace-key:ID, replay-list:ID, honest"
            )),
        }
    }
}

/// The forged key: fixed, so that every answer tells the same lie.
fn forged_key() -> IdentityKey {
    IdentityKey::from_signing_key(&SigningKey::from_bytes(&[0x66; 32]))
}

type ShadowAkd = akd::Directory<KtConfiguration, AsyncInMemoryDatabase, FileVrf>;

/// The second log of a split view.
struct Shadow {
    akd: ShadowAkd,
    signer: SigningKey,
    checkpoints: Vec<Checkpoint>,
    target: Identifier,
    victim: Identifier,
}

/// The lying [`View`]: what it tells, and the second log of a split view.
pub struct Lying {
    data_dir: PathBuf,
    mode: Mutex<Lie>,
    /// Made when the log opens, for a split view started with `--lie`.
    shadow: tokio::sync::Mutex<Option<Shadow>>,
    /// The real log, once open (weak: the log holds this view).
    log: Mutex<Weak<Transparency>>,
}

impl std::fmt::Debug for Lying {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lying")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, KtError> {
    serde_json::to_value(v).map_err(|e| KtError::Akd(e.to_string()))
}

fn sql(e: rusqlite::Error) -> KtError {
    KtError::Akd(format!("the lie's own SQLite connection: {e}"))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Lying {
    /// A directory serving `data_dir` that tells `lie`.
    pub fn new(data_dir: &Path, lie: Lie) -> Arc<Self> {
        warn!(lie = ?lie, "THIS DIRECTORY LIES (malicious test build)");
        Arc::new(Self {
            data_dir: data_dir.to_owned(),
            mode: Mutex::new(lie),
            shadow: tokio::sync::Mutex::new(None),
            log: Mutex::new(Weak::new()),
        })
    }

    fn mode(&self) -> Lie {
        self.mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn log(&self) -> Result<Arc<Transparency>, KtError> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .upgrade()
            .ok_or_else(|| KtError::Akd("the log is not open".into()))
    }

    /// Runs `f` on a connection of our own to the directory's database.
    async fn with_db(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<()> + Send + 'static,
    ) -> Result<(), KtError> {
        let path = self.data_dir.join("directory.sqlite3");
        tokio::task::spawn_blocking(move || {
            let c = rusqlite::Connection::open(path)?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            f(&c)
        })
        .await
        .map_err(|e| KtError::Akd(e.to_string()))?
        .map_err(sql)
    }

    /// Changes the lie at run time (the admin route).
    pub async fn apply(&self, lie: Lie) -> Result<(), KtError> {
        warn!(lie = ?lie, "directory now lies");
        let log = self.log()?;
        if let Lie::ReplaceKey { target } = &lie {
            let key = IdentityKey::from_signing_key(&SigningKey::from_bytes(&[0x77; 32]));
            let id = target.clone();
            self.with_db(move |c| {
                let now = now_secs();
                c.execute(
                    "UPDATE accounts SET identity_key = ?1, updated_at = ?2 WHERE identifier = ?3",
                    rusqlite::params![&key.to_bytes()[..], now, id.as_str()],
                )?;
                queue_kt(c, &id, &kt_value(&key), now)
            })
            .await?;
            log.notify();
        }
        if let Lie::ReplayList { target } = &lie {
            let history = log.history(target).await?;
            let proof: akd::HistoryProof =
                serde_json::from_value(history.proof).map_err(|e| KtError::Akd(e.to_string()))?;
            // Newest first: the first value that differs from the current one.
            let mut values = proof.update_proofs.iter().map(|u| u.value.0.clone());
            let current = values.next();
            let Some(old) = values.find(|v| Some(v) != current.as_ref()) else {
                return Err(KtError::Akd(format!(
                    "{target} has no older value to replay"
                )));
            };
            let id = target.clone();
            self.with_db(move |c| {
                // The account's answers (`/v1/lookup`) show the old list too.
                if let Some((2, json)) = old.split_first().map(|(v, j)| (*v, j)) {
                    c.execute(
                        "UPDATE accounts SET device_list = ?2 WHERE identifier = ?1",
                        rusqlite::params![id.as_str(), String::from_utf8_lossy(json)],
                    )?;
                }
                queue_kt(c, &id, &old, now_secs())
            })
            .await?;
            log.notify();
        }
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = lie;
        Ok(())
    }

    async fn rolled_back(&self, log: &Transparency) -> Result<Option<Checkpoint>, KtError> {
        let latest = log.checkpoint().await?;
        if latest.epoch == 0 {
            return Ok(None);
        }
        Ok(Some(log.checkpoint_at(latest.epoch - 1).await?))
    }
}

/// Queues a log value for the publisher, as the directory does for a confirmed binding.
fn queue_kt(
    c: &rusqlite::Connection,
    id: &Identifier,
    value: &[u8],
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO kt_pending (identifier, value, queued_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(identifier) DO UPDATE SET value = excluded.value, queued_at = excluded.queued_at",
        rusqlite::params![id.as_str(), value, now],
    )?;
    Ok(())
}

fn shadow_for<'a>(s: &'a mut Option<Shadow>, viewer: Viewer<'_>) -> Option<&'a mut Shadow> {
    s.as_mut().filter(|s| viewer == Some(&s.victim))
}

fn shadow_checkpoint(s: &Shadow, epoch: u64) -> Result<Checkpoint, KtError> {
    s.checkpoints
        .iter()
        .find(|c| c.epoch == epoch)
        .copied()
        .ok_or_else(|| KtError::Akd("shadow checkpoint missing".into()))
}

#[async_trait::async_trait]
impl View for Lying {
    async fn opened(&self, log: &Arc<Transparency>, latest: &Checkpoint) -> Result<(), KtError> {
        *self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::downgrade(log);
        let Lie::SplitView { victim, target } = self.mode() else {
            return Ok(());
        };
        if latest.epoch != 0 {
            warn!("split-view needs a fresh directory; the two logs will not line up");
        }
        // The directory's own keys, read from its data directory as its operator could.
        let vrf = FileVrf::load_or_create(&self.data_dir.join("kt-vrf.key"))?;
        let secret = load_or_create_secret(&self.data_dir.join("kt-signing.key"))?;
        let signer = SigningKey::from_bytes(&secret);
        let akd = ShadowAkd::new(
            StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
            vrf,
            Default::default(),
        )
        .await?;
        *self.shadow.lock().await = Some(Shadow {
            akd,
            signer,
            checkpoints: vec![*latest],
            target,
            victim,
        });
        Ok(())
    }

    /// Mirrors a published batch into the shadow log, with the target's value forged.
    async fn published(
        &self,
        _log: &Transparency,
        updates: &[(AkdLabel, AkdValue)],
        _checkpoint: &Checkpoint,
    ) -> Result<(), KtError> {
        let mut guard = self.shadow.lock().await;
        let Some(s) = guard.as_mut() else {
            return Ok(());
        };
        let mut updates = updates.to_vec();
        for (label, value) in &mut updates {
            if label.0 == s.target.as_str().as_bytes() {
                *value = AkdValue(kt_value(&forged_key()));
            }
        }
        let eh = s.akd.publish(updates).await?;
        let previous = s
            .checkpoints
            .last()
            .map(Checkpoint::hash)
            .unwrap_or_default();
        let cp = Checkpoint::sign(&s.signer, eh.0, Hash32(eh.1), previous);
        s.checkpoints.push(cp);
        Ok(())
    }

    async fn checkpoint(
        &self,
        log: &Transparency,
        viewer: Viewer<'_>,
    ) -> Result<Checkpoint, KtError> {
        if let Some(s) = shadow_for(&mut *self.shadow.lock().await, viewer)
            && let Some(cp) = s.checkpoints.last()
        {
            return Ok(*cp);
        }
        if self.mode() == Lie::Rollback
            && let Some(cp) = self.rolled_back(log).await?
        {
            return Ok(cp);
        }
        log.checkpoint().await
    }

    async fn lookup(
        &self,
        log: &Transparency,
        id: &Identifier,
        viewer: Viewer<'_>,
    ) -> Result<KtLookup, KtError> {
        if let Some(s) = shadow_for(&mut *self.shadow.lock().await, viewer) {
            let (proof, eh) = s.akd.lookup(AkdLabel::from(id.as_str())).await?;
            return Ok(KtLookup {
                identifier: id.clone(),
                checkpoint: shadow_checkpoint(s, eh.0)?,
                proof: to_json(&proof)?,
            });
        }
        match self.mode() {
            Lie::Rollback => {
                let mut l = log.lookup(id).await?;
                if let Some(old) = self.rolled_back(log).await? {
                    l.checkpoint = old;
                }
                Ok(l)
            }
            Lie::ForgedKey { target } if target == *id => {
                let mut l = log.lookup(id).await?;
                l.proof["value"] = serde_json::Value::String(hex::encode(kt_value(&forged_key())));
                Ok(l)
            }
            _ => log.lookup(id).await,
        }
    }

    async fn history(
        &self,
        log: &Transparency,
        id: &Identifier,
        viewer: Viewer<'_>,
    ) -> Result<KtHistory, KtError> {
        if let Some(s) = shadow_for(&mut *self.shadow.lock().await, viewer) {
            let (proof, eh) = s
                .akd
                .key_history(&AkdLabel::from(id.as_str()), akd::HistoryParams::Complete)
                .await?;
            return Ok(KtHistory {
                identifier: id.clone(),
                checkpoint: shadow_checkpoint(s, eh.0)?,
                proof: to_json(&proof)?,
            });
        }
        let mut h = log.history(id).await?;
        if self.mode() == Lie::Rollback
            && let Some(old) = self.rolled_back(log).await?
        {
            h.checkpoint = old;
        }
        Ok(h)
    }

    async fn audit(
        &self,
        log: &Transparency,
        from: u64,
        to: u64,
        viewer: Viewer<'_>,
    ) -> Result<KtAudit, KtError> {
        let mut guard = self.shadow.lock().await;
        let Some(s) = shadow_for(&mut guard, viewer) else {
            drop(guard);
            return log.audit(from, to).await;
        };
        let latest = s.checkpoints.last().map_or(0, |c| c.epoch);
        if from > to || to > latest {
            return Err(KtError::BadRange(format!(
                "bad epoch range {from}..{to}: the latest epoch is {latest}"
            )));
        }
        let checkpoints = s
            .checkpoints
            .iter()
            .filter(|c| c.epoch >= from && c.epoch <= to)
            .copied()
            .collect();
        let proof = if from == to {
            serde_json::Value::Null
        } else {
            to_json(&s.akd.audit(from, to).await?)?
        };
        Ok(KtAudit { checkpoints, proof })
    }

    fn contact_entry(&self, mut entry: ContactEntry) -> ContactEntry {
        if let Lie::ForgedKey { target } = self.mode()
            && entry.identifier == target
        {
            entry.identity_key = forged_key();
        }
        entry
    }
}

/// The route that changes the lie: `POST /v1/malicious/lie` with a [`Lie`] as JSON.
pub fn admin_routes(lying: Arc<Lying>) -> axum::Router {
    use axum::{Json, http::StatusCode, routing::post};
    axum::Router::new().route(
        "/v1/malicious/lie",
        post(move |Json(lie): Json<Lie>| {
            let lying = lying.clone();
            async move {
                match lying.apply(lie).await {
                    Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "lying"}))),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Json(serde_json::json!({"error": e.to_string()})),
                    ),
                }
            }
        }),
    )
}
