//! **A directory that lies**, for the malicious-directory tests. Compiled only with the
//! `malicious` feature, and active only in the `dialtone-directory-malicious` binary (which
//! sets [`Config::lie`](crate::Config)); the ordinary binary never enables it, even when the
//! feature is compiled in.
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

use std::sync::Mutex;

use akd::{
    AkdLabel, AkdValue, HistoryParams,
    storage::{StorageManager, memory::AsyncInMemoryDatabase},
};
use dialtone_proto::{
    Identifier, IdentityKey,
    directory::ContactEntry,
    transparency::{Checkpoint, Hash32, KtAudit, KtHistory, KtLookup, kt_value},
};
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use tracing::warn;

use crate::{
    kt::{FileVrf, KtConfiguration, KtError, Transparency},
    store::q,
};

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

static MODE: Mutex<Option<Lie>> = Mutex::new(None);

fn mode() -> Option<Lie> {
    MODE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn set_mode(l: Lie) {
    *MODE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(l);
}

type ShadowAkd = akd::Directory<KtConfiguration, AsyncInMemoryDatabase, FileVrf>;

struct Shadow {
    akd: ShadowAkd,
    checkpoints: Vec<Checkpoint>,
    target: Identifier,
    victim: Identifier,
}

/// The lying state of one directory.
pub(crate) struct LieState {
    shadow: tokio::sync::Mutex<Option<Shadow>>,
}

impl std::fmt::Debug for LieState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LieState")
    }
}

impl LieState {
    pub(crate) async fn new(lie: Option<Lie>, vrf: &FileVrf) -> Result<Self, KtError> {
        let mut shadow = None;
        if let Some(l) = lie {
            warn!(lie = ?l, "THIS DIRECTORY LIES (malicious test build)");
            if let Lie::SplitView { victim, target } = &l {
                let akd = ShadowAkd::new(
                    StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
                    vrf.clone(),
                    Default::default(),
                )
                .await?;
                shadow = Some(Shadow {
                    akd,
                    checkpoints: Vec::new(),
                    target: target.clone(),
                    victim: victim.clone(),
                });
            }
            set_mode(l);
        }
        Ok(Self {
            shadow: tokio::sync::Mutex::new(shadow),
        })
    }

    /// The shadow log starts from the real log's first checkpoint (the empty tree).
    pub(crate) async fn start(&self, cp: &Checkpoint) {
        if let Some(s) = self.shadow.lock().await.as_mut() {
            if cp.epoch != 0 {
                warn!("split-view needs a fresh directory; the two logs will not line up");
            }
            s.checkpoints.push(*cp);
        }
    }
}

/// Applies a lie at run time (the admin route).
pub(crate) async fn apply(t: &Transparency, lie: Lie) -> Result<(), KtError> {
    warn!(lie = ?lie, "directory now lies");
    if let Lie::ReplaceKey { target } = &lie {
        let key = IdentityKey::from_signing_key(&SigningKey::from_bytes(&[0x77; 32]));
        let id = target.clone();
        let now = crate::http::now_secs();
        t.store()
            .run(move |c| {
                c.execute(
                    "UPDATE accounts SET identity_key = ?1, updated_at = ?2 WHERE identifier = ?3",
                    rusqlite::params![&key.to_bytes()[..], now as i64, id.as_str()],
                )?;
                q::queue_kt(c, &id, &kt_value(&key), now as i64)
            })
            .await?;
        t.notify();
    }
    if let Lie::ReplayList { target } = &lie {
        let (proof, _) = t
            .akd()
            .key_history(&AkdLabel::from(target.as_str()), HistoryParams::Complete)
            .await?;
        // Newest first: the first value that differs from the current one.
        let mut values = proof.update_proofs.iter().map(|u| u.value.0.clone());
        let current = values.next();
        let Some(old) = values.find(|v| Some(v) != current.as_ref()) else {
            return Err(KtError::Akd(format!(
                "{target} has no older value to replay"
            )));
        };
        let id = target.clone();
        let now = crate::http::now_secs();
        t.store()
            .run(move |c| {
                // The account's answers (`/v1/lookup`) show the old list too.
                if let Some((2, json)) = old.split_first().map(|(v, j)| (*v, j)) {
                    c.execute(
                        "UPDATE accounts SET device_list = ?2 WHERE identifier = ?1",
                        rusqlite::params![id.as_str(), String::from_utf8_lossy(json)],
                    )?;
                }
                q::queue_kt(c, &id, &old, now as i64)
            })
            .await?;
        t.notify();
    }
    set_mode(lie);
    Ok(())
}

/// Forges a contact entry (forged-key mode).
pub(crate) fn forge_entry(e: &mut ContactEntry) {
    if let Some(Lie::ForgedKey { target }) = mode()
        && e.identifier == target
    {
        e.identity_key = forged_key();
    }
}

fn shadow_viewer<'a>(
    s: &'a mut Option<Shadow>,
    viewer: Option<&Identifier>,
) -> Option<&'a mut Shadow> {
    s.as_mut().filter(|s| viewer == Some(&s.victim))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, KtError> {
    serde_json::to_value(v).map_err(|e| KtError::Akd(e.to_string()))
}

/// Mirrors a published batch into the shadow log, with the target's value forged.
pub(crate) async fn after_publish(
    t: &Transparency,
    mut updates: Vec<(AkdLabel, AkdValue)>,
) -> Result<(), KtError> {
    let mut guard = t.lie.shadow.lock().await;
    let Some(s) = guard.as_mut() else {
        return Ok(());
    };
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
    s.checkpoints
        .push(Checkpoint::sign(t.signer(), eh.0, Hash32(eh.1), previous));
    Ok(())
}

async fn rolled_back(t: &Transparency) -> Result<Option<Checkpoint>, KtError> {
    let latest = t.latest_unlocked().await?;
    if latest.epoch == 0 {
        return Ok(None);
    }
    Ok(Some(t.at_unlocked(latest.epoch - 1).await?))
}

/// The checkpoint a viewer is shown, if it is a lie.
pub(crate) async fn checkpoint(
    t: &Transparency,
    viewer: Option<&Identifier>,
) -> Result<Option<Checkpoint>, KtError> {
    if let Some(s) = shadow_viewer(&mut *t.lie.shadow.lock().await, viewer) {
        return Ok(s.checkpoints.last().copied());
    }
    match mode() {
        Some(Lie::Rollback) => rolled_back(t).await,
        _ => Ok(None),
    }
}

/// A lookup a viewer is shown, if it is a lie.
pub(crate) async fn lookup(
    t: &Transparency,
    id: &Identifier,
    viewer: Option<&Identifier>,
) -> Result<Option<KtLookup>, KtError> {
    if let Some(s) = shadow_viewer(&mut *t.lie.shadow.lock().await, viewer) {
        let (proof, eh) = s.akd.lookup(AkdLabel::from(id.as_str())).await?;
        let cp = s
            .checkpoints
            .iter()
            .find(|c| c.epoch == eh.0)
            .copied()
            .ok_or_else(|| KtError::Akd("shadow checkpoint missing".into()))?;
        return Ok(Some(KtLookup {
            identifier: id.clone(),
            checkpoint: cp,
            proof: to_json(&proof)?,
        }));
    }
    match mode() {
        Some(Lie::Rollback) => {
            let Some(old) = rolled_back(t).await? else {
                return Ok(None);
            };
            let (proof, _) = t.akd().lookup(AkdLabel::from(id.as_str())).await?;
            Ok(Some(KtLookup {
                identifier: id.clone(),
                checkpoint: old,
                proof: to_json(&proof)?,
            }))
        }
        Some(Lie::ForgedKey { target }) if target == *id => {
            let (proof, eh) = t.akd().lookup(AkdLabel::from(id.as_str())).await?;
            let mut proof = to_json(&proof)?;
            proof["value"] = serde_json::Value::String(hex::encode(kt_value(&forged_key())));
            Ok(Some(KtLookup {
                identifier: id.clone(),
                checkpoint: t.at_unlocked(eh.0).await?,
                proof,
            }))
        }
        _ => Ok(None),
    }
}

/// A key history a viewer is shown, if it is a lie.
pub(crate) async fn history(
    t: &Transparency,
    id: &Identifier,
    viewer: Option<&Identifier>,
) -> Result<Option<KtHistory>, KtError> {
    if let Some(s) = shadow_viewer(&mut *t.lie.shadow.lock().await, viewer) {
        let (proof, eh) = s
            .akd
            .key_history(&AkdLabel::from(id.as_str()), HistoryParams::Complete)
            .await?;
        let cp = s
            .checkpoints
            .iter()
            .find(|c| c.epoch == eh.0)
            .copied()
            .ok_or_else(|| KtError::Akd("shadow checkpoint missing".into()))?;
        return Ok(Some(KtHistory {
            identifier: id.clone(),
            checkpoint: cp,
            proof: to_json(&proof)?,
        }));
    }
    match mode() {
        Some(Lie::Rollback) => {
            let Some(old) = rolled_back(t).await? else {
                return Ok(None);
            };
            let (proof, _) = t
                .akd()
                .key_history(&AkdLabel::from(id.as_str()), HistoryParams::Complete)
                .await?;
            Ok(Some(KtHistory {
                identifier: id.clone(),
                checkpoint: old,
                proof: to_json(&proof)?,
            }))
        }
        _ => Ok(None),
    }
}

/// An audit a viewer is shown, if it is a lie.
pub(crate) async fn audit(
    t: &Transparency,
    from: u64,
    to: u64,
    viewer: Option<&Identifier>,
) -> Result<Option<KtAudit>, KtError> {
    let _ = t;
    let mut guard = t.lie.shadow.lock().await;
    let Some(s) = shadow_viewer(&mut guard, viewer) else {
        return Ok(None);
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
    Ok(Some(KtAudit { checkpoints, proof }))
}
