//! Key transparency on the agent's side: the directory is not trusted for keys.
//!
//! - **Pinning the log**: on first use the agent fetches the directory's checkpoint-signing
//!   key and VRF key (`GET /v1/kt/keys`) and its latest signed checkpoint, and keeps them in
//!   `kt.json` in the home (trust on first use, like contact keys).
//! - **Every key is proven**: before a contact's key is used to send, or accepted in a peer's
//!   hello, the agent asks the directory for a lookup proof and verifies it (akd's
//!   `lookup_verify`) against a signed checkpoint; the proven key must be the one the
//!   directory claims. Proven bindings are cached until the directory claims another key.
//! - **The log only grows**: a checkpoint is accepted only if it extends the one held: an
//!   older epoch is a rollback, another root at the same epoch a fork; a newer one needs the
//!   signed hash chain of every checkpoint in between and akd's append-only proof.
//! - **Owners watch their own binding**: at login and every `kt_monitor_interval`, the agent
//!   verifies its own identifier's key history and raises [`Event::Transparency`] for any
//!   version after its own key whose key is not its own (and if its key is not there at all).
//! - **Split view**: peers swap their checkpoints in the hello ([`compare_with_peer`]).
//!
//! Every failure that means the directory lied is a [`KtFailure`] other than
//! [`KtFailure::Unavailable`]; it is shown to front ends as [`Event::Transparency`] and
//! logged at `warn`, and it refuses the message or the connection.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use akd::{AkdLabel, HistoryVerificationParams, configuration::DomainLabel};
use dialtone_proto::{
    DeviceId, Identifier, IdentityKey,
    devices::DeviceList,
    directory::{Reply, Request},
    transparency::{
        AKD_DOMAIN_LABEL, Checkpoint, Hash32, KtAudit, KtKeys, MAX_AUDIT_EPOCHS, kt_value_key,
        kt_value_list,
    },
};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{Event, Inner, session::SessionError};

mod monitor;
mod peer;

pub(crate) use monitor::monitor_loop;
pub(crate) use peer::{compare_with_peer, ensure, ensure_device};

/// Dialtone's akd domain label (`dialtone-kt/v1`), as the directory uses it.
#[derive(Debug, Clone, Copy)]
pub struct DialtoneLabel;

impl DomainLabel for DialtoneLabel {
    fn domain_label() -> &'static [u8] {
        AKD_DOMAIN_LABEL
    }
}

/// The akd configuration (must equal the directory's).
pub type KtConfiguration = akd::ExperimentalConfiguration<DialtoneLabel>;

/// How long a check waits for a directory session that is reconnecting.
const RECONNECT_WAIT: Duration = Duration::from_secs(5);

/// Roots of past epochs kept to compare with peers' older checkpoints.
const KEPT_ROOTS: usize = 4096;

/// What the agent keeps about the directory's log (`kt.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KtState {
    /// The directory these keys belong to.
    pub directory: String,
    /// The log's keys, pinned on first use.
    pub keys: KtKeys,
    /// The latest checkpoint accepted.
    pub checkpoint: Checkpoint,
    /// Root hashes of recent epochs (from audits), for comparing with peers.
    #[serde(default)]
    pub roots: BTreeMap<u64, Hash32>,
}

/// Why a transparency check failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum KtFailure {
    /// The directory could not be asked (not an attack; try again).
    #[error("cannot check the transparency log: {0}")]
    Unavailable(String),
    /// A checkpoint's signature is not the directory's pinned key.
    #[error(
        "the directory's checkpoint is not signed by the key pinned for it; the directory may have been replaced"
    )]
    BadSignature,
    /// The directory offered an older epoch than one it already showed.
    #[error(
        "the directory rolled its transparency log back from epoch {held} to epoch {offered}; it may be hiding a key change"
    )]
    Rollback {
        /// The epoch held.
        held: u64,
        /// The epoch offered.
        offered: u64,
    },
    /// Two different logs at the same epoch (or a chain that does not lead to the offer).
    #[error(
        "the directory's transparency log forked at epoch {epoch}: it showed two different histories"
    )]
    Fork {
        /// Where.
        epoch: u64,
    },
    /// A proof did not verify.
    #[error("the directory's {what} proof does not verify: {reason}")]
    BadProof {
        /// Lookup, history or append-only.
        what: &'static str,
        /// akd's explanation.
        reason: String,
    },
    /// The directory claims a key its log does not prove.
    #[error(
        "the directory gave a key for {identifier} (fingerprint {claimed}) that its transparency log does not prove (the log has {proven})"
    )]
    KeyMismatch {
        /// Whose.
        identifier: Identifier,
        /// Fingerprint claimed.
        claimed: String,
        /// Fingerprint proven.
        proven: String,
    },
    /// A device that the person's proven device list does not name (revoked, or never
    /// linked). Not an attack by itself: a revoked device trying to connect looks like this.
    #[error(
        "device {device} is not on {identifier}'s device list in the transparency log (revoked or never linked)"
    )]
    DeviceNotListed {
        /// Whose.
        identifier: Identifier,
        /// Which device (short id).
        device: String,
    },
    /// The log proves an older device list for a key than one it proved before: the
    /// directory republished a list the key holder has replaced (for instance to re-admit a
    /// revoked device). `offered` 0 is a bare key shown after a list.
    #[error(
        "the directory's transparency log shows an older device list for {identifier} (version {offered}) than one it proved before (version {held}); it may be re-admitting a revoked device"
    )]
    ListRollback {
        /// Whose.
        identifier: Identifier,
        /// The highest list version proven before.
        held: u64,
        /// The version shown now.
        offered: u64,
    },
    /// A peer holds a checkpoint that contradicts ours.
    #[error(
        "split view: {peer} was shown a different transparency log (epoch {epoch}) than you were; the directory is showing different people different keys"
    )]
    SplitView {
        /// The peer.
        peer: Identifier,
        /// The epoch compared.
        epoch: u64,
    },
}

impl KtFailure {
    /// A short machine-readable name (`rollback`, `fork`, `split-view`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::BadSignature => "bad-signature",
            Self::Rollback { .. } => "rollback",
            Self::Fork { .. } => "fork",
            Self::BadProof { .. } => "bad-proof",
            Self::KeyMismatch { .. } => "forged-key",
            Self::SplitView { .. } => "split-view",
            Self::DeviceNotListed { .. } => "device-not-listed",
            Self::ListRollback { .. } => "list-rollback",
        }
    }

    /// Whether this means the directory (or a peer) lied, rather than an outage.
    pub fn is_attack(&self) -> bool {
        !matches!(self, Self::Unavailable(_) | Self::DeviceNotListed { .. })
    }
}

impl From<SessionError> for KtFailure {
    fn from(e: SessionError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// What the log proved for an identifier.
#[derive(Debug, Clone)]
pub(crate) struct Proven {
    /// The identity key.
    pub(crate) key: IdentityKey,
    /// The signed device list, if the person published one (`None`: a bare key, any device
    /// with a certificate by the key is accepted).
    pub(crate) devices: Option<DeviceList>,
    /// When it was proven.
    pub(crate) at: Instant,
}

/// A device list proven this recently is used without asking the log again.
const DEVICE_LIST_FRESH: Duration = Duration::from_secs(15);

/// The agent's transparency state.
#[derive(Debug, Default)]
pub(crate) struct KtClient {
    /// The pinned log. A plain mutex, held only between awaits (never across a network call
    /// or a disk write): a check works on a [`Held`] copy and merges what it proved back.
    state: Mutex<Option<KtState>>,
    /// Orders the writes of `kt.json` (each writes the state as it is when its turn comes).
    disk: tokio::sync::Mutex<()>,
    /// Keys (and device lists) proven for identifiers, and when.
    proven: Mutex<HashMap<Identifier, Proven>>,
    /// Alarms already raised (kind + detail), so each is shown once.
    alarmed: Mutex<HashSet<String>>,
    /// The checkpoint held, readable without waiting for a check in progress.
    current: Mutex<Option<Checkpoint>>,
}

impl KtClient {
    pub(crate) fn new(state: Option<KtState>) -> Self {
        Self {
            current: Mutex::new(state.as_ref().map(|s| s.checkpoint)),
            state: Mutex::new(state),
            ..Self::default()
        }
    }

    /// The checkpoint held now, if any (for the hello).
    pub(crate) fn current(&self) -> Option<Checkpoint> {
        *lock(&self.current)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn ask(inner: &Inner, req: Request) -> Result<Reply, KtFailure> {
    Ok(inner.session.request(req).await?)
}

/// Runs a synchronous akd verifier; a panic on malformed input counts as a failed proof.
fn guarded<T, E: std::fmt::Display>(f: impl FnOnce() -> Result<T, E>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("malformed proof".into()),
    }
}

/// Raises the alarm for an attack (once per distinct failure) and passes the failure on.
pub(crate) fn alarm(inner: &Inner, f: KtFailure) -> KtFailure {
    if f.is_attack() && lock(&inner.kt.alarmed).insert(f.to_string()) {
        warn!(kind = f.kind(), "key transparency: {f}");
        inner.emit(Event::Transparency {
            kind: f.kind(),
            message: format!("WARNING: {f}"),
        });
    }
    f
}

/// What a check needs of the pinned state: the log's keys and the checkpoint held when it
/// began.
#[derive(Debug, Clone)]
struct Held {
    keys: KtKeys,
    checkpoint: Checkpoint,
}

/// The pinned state, fetched and pinned on first use (the fetch runs with no lock held).
async fn held(inner: &Inner) -> Result<Held, KtFailure> {
    if let Some(st) = lock(&inner.kt.state).as_ref() {
        return Ok(Held {
            keys: st.keys.clone(),
            checkpoint: st.checkpoint,
        });
    }
    let keys = inner
        .dir
        .kt_keys()
        .await
        .map_err(|e| KtFailure::Unavailable(e.to_string()))?;
    let Reply::KtCheckpoint { checkpoint } = ask(inner, Request::KtCheckpoint).await? else {
        return Err(KtFailure::Unavailable("unexpected answer".into()));
    };
    checkpoint
        .verify(&keys.signing_key)
        .map_err(|_| KtFailure::BadSignature)?;
    let held = {
        let mut g = lock(&inner.kt.state);
        match g.as_ref() {
            // Another check pinned it meanwhile: that pin stands.
            Some(st) => Held {
                keys: st.keys.clone(),
                checkpoint: st.checkpoint,
            },
            None => {
                *g = Some(KtState {
                    directory: inner.dir.base().to_owned(),
                    keys: keys.clone(),
                    checkpoint,
                    roots: BTreeMap::from([(checkpoint.epoch, checkpoint.root_hash)]),
                });
                *lock(&inner.kt.current) = Some(checkpoint);
                debug!(epoch = checkpoint.epoch, "transparency log pinned");
                Held { keys, checkpoint }
            }
        }
    };
    save(inner).await?;
    Ok(held)
}

/// Writes the pinned state as it is now to `kt.json`, on the blocking pool (the write ends
/// with an fsync; the agent has one worker thread, which its hellos need).
async fn save(inner: &Inner) -> Result<(), KtFailure> {
    let _turn = inner.kt.disk.lock().await;
    let Some(st) = lock(&inner.kt.state).clone() else {
        return Ok(());
    };
    let home = inner.home.clone();
    tokio::task::spawn_blocking(move || home.save_kt(&st))
        .await
        .map_err(|e| KtFailure::Unavailable(e.to_string()))?
        .map_err(|e| KtFailure::Unavailable(e.to_string()))
}

/// Saves the pins as they are now, on the blocking pool (see [`save`]).
async fn save_pins(inner: &Inner) {
    let _turn = inner.kt.disk.lock().await;
    let pins = inner.lock().pins.clone();
    let home = inner.home.clone();
    match tokio::task::spawn_blocking(move || home.save_pins(&pins)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!("cannot save pinned keys: {e}"),
        Err(e) => warn!("cannot save pinned keys: {e}"),
    }
}

/// Runs a synchronous akd verifier on the blocking pool (proofs cost milliseconds of
/// hashing; the agent's one worker keeps serving meanwhile); a panic on malformed input
/// counts as a failed proof.
async fn verify_off_thread<T: Send + 'static, E: std::fmt::Display>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(move || guarded(f))
        .await
        .unwrap_or_else(|_| Err("malformed proof".into()))
}

/// Merges a proven chain of checkpoints (oldest first) into the pinned state: its roots must
/// agree with every root remembered, and the newest becomes the held checkpoint if it is
/// newer than the one held now (another check may have moved further meanwhile).
fn commit(inner: &Inner, chain: &[Checkpoint]) -> Result<(), KtFailure> {
    let mut g = lock(&inner.kt.state);
    let st = g
        .as_mut()
        .ok_or_else(|| KtFailure::Unavailable("no state".into()))?;
    for c in chain {
        if st.roots.get(&c.epoch).is_some_and(|r| *r != c.root_hash) {
            return Err(KtFailure::Fork { epoch: c.epoch });
        }
    }
    for c in chain {
        st.roots.insert(c.epoch, c.root_hash);
    }
    while st.roots.len() > KEPT_ROOTS {
        st.roots.pop_first();
    }
    if let Some(newest) = chain.last()
        && newest.epoch > st.checkpoint.epoch
    {
        st.checkpoint = *newest;
        *lock(&inner.kt.current) = Some(*newest);
    }
    Ok(())
}

/// Checks an audit answer from `held` and returns the roots it proves, newest last.
async fn check_audit(
    keys: &KtKeys,
    held: &Checkpoint,
    audit: KtAudit,
) -> Result<Vec<Checkpoint>, KtFailure> {
    let cps = audit.checkpoints;
    if cps.first() != Some(held) {
        return Err(KtFailure::Fork { epoch: held.epoch });
    }
    for w in cps.windows(2) {
        w[1].verify(&keys.signing_key)
            .map_err(|_| KtFailure::BadSignature)?;
        if !w[0].is_followed_by(&w[1]) {
            return Err(KtFailure::Fork { epoch: w[1].epoch });
        }
    }
    if cps.len() > 1 {
        let proof = serde_json::from_value(audit.proof).map_err(|e| KtFailure::BadProof {
            what: "append-only",
            reason: e.to_string(),
        })?;
        let hashes = cps.iter().map(|c| c.root_hash.0).collect();
        // A proof is the directory's input: a verifier panic on malformed input is a failed
        // proof, never a dead agent. Up to MAX_AUDIT_EPOCHS epochs of hashing: on the blocking
        // pool, so that the agent's one worker keeps serving its sessions meanwhile.
        let handle = tokio::runtime::Handle::current();
        let verified = tokio::task::spawn_blocking(move || {
            handle.block_on(
                AssertUnwindSafe(akd::auditor::audit_verify::<KtConfiguration>(hashes, proof))
                    .catch_unwind(),
            )
        })
        .await
        .map_err(|_| "malformed proof".to_owned())
        .and_then(|r| r.map_err(|_| "malformed proof".to_owned()))
        .and_then(|r| r.map_err(|e| e.to_string()));
        verified.map_err(|reason| KtFailure::BadProof {
            what: "append-only",
            reason,
        })?;
    }
    Ok(cps)
}

/// Fetches and checks the chain from `st.checkpoint` to epoch `to`; returns the checkpoints
/// from the held one to `to`.
async fn chain_to(inner: &Inner, st: &Held, to: u64) -> Result<Vec<Checkpoint>, KtFailure> {
    let mut held = st.checkpoint;
    let mut all = vec![held];
    while held.epoch < to {
        let next = to.min(held.epoch + MAX_AUDIT_EPOCHS);
        let reply = ask(
            inner,
            Request::KtAudit {
                from: held.epoch,
                to: next,
            },
        )
        .await;
        let audit = match reply {
            Ok(Reply::KtAudit { audit }) => audit,
            Ok(_) => return Err(KtFailure::Unavailable("unexpected answer".into())),
            // The directory refuses to show us an epoch it signed for someone: no such epoch
            // in the log it shows us.
            Err(KtFailure::Unavailable(m)) => return Err(KtFailure::Unavailable(m)),
            Err(e) => return Err(e),
        };
        let cps = check_audit(&st.keys, &held, audit).await?;
        let Some(last) = cps.last().copied() else {
            return Err(KtFailure::Fork { epoch: held.epoch });
        };
        if last.epoch != next {
            return Err(KtFailure::Fork { epoch: next });
        }
        all.extend_from_slice(&cps[1..]);
        held = last;
    }
    Ok(all)
}

/// Accepts `cp` if it extends the held checkpoint; refuses rollbacks and forks.
async fn accept(inner: &Inner, st: &mut Held, cp: Checkpoint) -> Result<(), KtFailure> {
    cp.verify(&st.keys.signing_key)
        .map_err(|_| KtFailure::BadSignature)?;
    let held = st.checkpoint;
    if cp.epoch < held.epoch {
        return Err(KtFailure::Rollback {
            held: held.epoch,
            offered: cp.epoch,
        });
    }
    if cp.epoch == held.epoch {
        return if cp == held {
            Ok(())
        } else {
            Err(KtFailure::Fork { epoch: cp.epoch })
        };
    }
    let chain = chain_to(inner, st, cp.epoch).await?;
    if chain.last() != Some(&cp) {
        return Err(KtFailure::Fork { epoch: cp.epoch });
    }
    commit(inner, &chain)?;
    st.checkpoint = cp;
    save(inner).await
}

/// Proves `id`'s current binding (key and device list) through the log.
pub(crate) async fn prove_record(inner: &Inner, id: &Identifier) -> Result<Proven, KtFailure> {
    let st = &mut held(inner).await?;
    let Reply::KtLookup { lookup } = ask(
        inner,
        Request::KtLookup {
            identifier: id.clone(),
        },
    )
    .await?
    else {
        return Err(KtFailure::Unavailable("unexpected answer".into()));
    };
    if lookup.identifier != *id {
        return Err(KtFailure::BadProof {
            what: "lookup",
            reason: format!("the proof is for {}", lookup.identifier),
        });
    }
    accept(inner, st, lookup.checkpoint).await?;
    let bad = |reason: String| KtFailure::BadProof {
        what: "lookup",
        reason,
    };
    let proof = serde_json::from_value(lookup.proof).map_err(|e| bad(e.to_string()))?;
    let (vrf, cp, label) = (
        st.keys.vrf_public_key.0,
        lookup.checkpoint,
        AkdLabel::from(id.as_str()),
    );
    let r = verify_off_thread(move || {
        akd::verify::lookup_verify::<KtConfiguration>(&vrf, cp.root_hash.0, cp.epoch, label, proof)
    })
    .await
    .map_err(bad)?;
    let key = kt_value_key(&r.value.0)
        .ok_or_else(|| bad("not an identity key or a validly signed device list".into()))?;
    let devices = kt_value_list(&r.value.0);
    if devices.as_ref().is_some_and(|l| l.identifier != *id) {
        return Err(bad("the device list is for another identifier".into()));
    }
    // Lists only move forward for a key: an older one (or a bare key after a list) is a
    // replay. What was proven before is in this run's cache and in the pin.
    let offered = list_version(devices.as_ref());
    // (One lock at a time: the state lock is taken before `proven` elsewhere.)
    let cached = lock(&inner.kt.proven)
        .get(id)
        .filter(|p| p.key == key)
        .map_or(0, |p| list_version(p.devices.as_ref()));
    let pinned = inner
        .lock()
        .pins
        .get(id)
        .filter(|p| p.identity_key == key)
        .map_or(0, |p| p.list_version);
    let held = cached.max(pinned);
    if offered < held {
        return Err(KtFailure::ListRollback {
            identifier: id.clone(),
            held,
            offered,
        });
    }
    let proven = Proven {
        key,
        devices,
        at: Instant::now(),
    };
    lock(&inner.kt.proven).insert(id.clone(), proven.clone());
    // Remember whether the pinned key has a registration lock, to judge a later key change.
    let locked = proven.devices.as_ref().is_some_and(|l| l.registration_lock);
    let devices: Vec<DeviceId> = proven
        .devices
        .as_ref()
        .map(|l| l.devices.iter().map(|d| d.device_id).collect())
        .unwrap_or_default();
    let changed = {
        let mut st = inner.lock();
        match st.pins.get_mut(id) {
            Some(pin)
                if pin.identity_key == key
                    && (pin.registration_lock != locked
                        || pin.devices != devices
                        || pin.list_version != offered) =>
            {
                pin.registration_lock = locked;
                pin.devices = devices;
                pin.list_version = offered;
                true
            }
            _ => false,
        }
    };
    if changed {
        save_pins(inner).await;
    }
    Ok(proven)
}

/// Proves `id`'s current key through the log and returns it.
pub(crate) async fn prove(inner: &Inner, id: &Identifier) -> Result<IdentityKey, KtFailure> {
    prove_record(inner, id).await.map(|p| p.key)
}

/// The version of a proven device list (0: a bare key, no list).
fn list_version(devices: Option<&DeviceList>) -> u64 {
    devices.map_or(0, |l| l.version)
}

/// Fills a pin for `id` with what the log proved in this run for the same key, if that is
/// newer than what the pin holds: its device list, the list's version and its lock.
pub(crate) fn fill_pin(inner: &Inner, id: &Identifier, pin: &mut crate::home::Pin) {
    if let Some(l) = lock(&inner.kt.proven)
        .get(id)
        .filter(|p| p.key == pin.identity_key)
        .and_then(|p| p.devices.as_ref())
        .filter(|l| l.version >= pin.list_version)
    {
        pin.registration_lock = l.registration_lock;
        pin.devices = l.devices.iter().map(|d| d.device_id).collect();
        pin.list_version = l.version;
    }
}

/// Tells the person, once, that this device was revoked: `proven` when the log's list no
/// longer names it, otherwise the directory only refused it as unknown (a revocation, or a
/// directory that lost its records: without a session the log cannot be asked which).
pub(crate) fn revoked(inner: &Inner, proven: bool) {
    let (name, id) = (&inner.cert.name, &inner.identifier);
    let message = if proven {
        format!(
            "WARNING: this device ({name}) is no longer on {id}'s device list: it was revoked and can no \
             longer connect to anyone. If that was not you, revoke the other devices from one you \
             trust and set a registration lock; to use this device again, link it with `dialtone device link`"
        )
    } else {
        format!(
            "WARNING: the directory no longer knows this device ({name}): it was revoked from {id}'s \
             device list (then it can no longer connect to anyone), or the directory lost its records. \
             Check `dialtone device list` on your device with the identity key; if that was not you, revoke \
             the other devices and set a registration lock; to use this device again, link it with \
             `dialtone device link`"
        )
    };
    if lock(&inner.kt.alarmed).insert(message.clone()) {
        warn!("this device was revoked");
        inner.emit(Event::Transparency {
            kind: "device-revoked",
            message,
        });
    }
}

impl KtClient {
    /// Forgets what was proven for `id` (its devices changed): the next check asks the log.
    pub(crate) fn forget(&self, id: &Identifier) {
        lock(&self.proven).remove(id);
    }
}

/// How a contact's key change relates to the old key's registration lock (see
/// [`crate::Event::KeyChanged`]).
pub(crate) fn reset_kind(pin: &crate::home::Pin) -> &'static str {
    if pin.registration_lock {
        "locked"
    } else {
        "no-lock"
    }
}

/// The old key of `id` had a registration lock: proves the new binding and raises the alarm
/// if it was not bound with the lock's PIN (the directory bypassed the lock).
pub(crate) fn judge_locked_change(inner: &Inner, id: Identifier, new_key: IdentityKey) {
    let Some(inner) = inner.me.upgrade() else {
        return;
    };
    tokio::spawn(async move {
        // The new binding reaches the log at the directory's next epoch: ask until the log
        // shows the new key (a log that never does is caught by the key checks).
        let mut proven = None;
        for _ in 0..20 {
            match prove_record(&inner, &id).await {
                Ok(p) if p.key == new_key => {
                    proven = Some(p);
                    break;
                }
                Ok(_) => {}
                Err(f) => debug!(peer = %id, "cannot judge the key change yet: {f}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Some(proven) = proven else { return };
        if proven.devices.as_ref().is_some_and(|l| l.unlocked_with_pin) {
            return;
        }
        let message = format!(
            "WARNING: {id} had a registration lock, but the directory bound a new key to {id} \
             (fingerprint {}) without the lock's PIN. The directory bypassed the lock: treat the \
             new key as an attacker's, and check with {id} in person",
            proven.key.fingerprint()
        );
        if lock(&inner.kt.alarmed).insert(message.clone()) {
            warn!(peer = %id, "registration lock bypassed");
            inner.emit(Event::Transparency {
                kind: "lock-bypassed",
                message,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_proto::transparency::Checkpoint;
    use ed25519_dalek::SigningKey;

    fn keys(signer: &SigningKey) -> KtKeys {
        KtKeys {
            signing_key: IdentityKey::from_signing_key(signer),
            vrf_public_key: Hash32([0; 32]),
            configuration: "akd-experimental/dialtone-kt/v1".into(),
        }
    }

    #[tokio::test]
    async fn audits_that_do_not_extend_the_held_checkpoint_are_refused() {
        let dir = SigningKey::from_bytes(&[1; 32]);
        let k = keys(&dir);
        let c0 = Checkpoint::sign(&dir, 0, Hash32([0; 32]), Hash32::default());
        let c1 = Checkpoint::sign(&dir, 1, Hash32([1; 32]), c0.hash());
        // Starts elsewhere: a fork.
        let other0 = Checkpoint::sign(&dir, 0, Hash32([9; 32]), Hash32::default());
        let a = KtAudit {
            checkpoints: vec![other0, c1],
            proof: serde_json::Value::Null,
        };
        assert!(matches!(
            check_audit(&k, &c0, a).await,
            Err(KtFailure::Fork { .. })
        ));
        // A link signed by someone else.
        let mallory = SigningKey::from_bytes(&[2; 32]);
        let forged = Checkpoint::sign(&mallory, 1, Hash32([1; 32]), c0.hash());
        let a = KtAudit {
            checkpoints: vec![c0, forged],
            proof: serde_json::Value::Null,
        };
        assert!(matches!(
            check_audit(&k, &c0, a).await,
            Err(KtFailure::BadSignature)
        ));
        // A link that does not name its predecessor.
        let unchained = Checkpoint::sign(&dir, 1, Hash32([1; 32]), Hash32([7; 32]));
        let a = KtAudit {
            checkpoints: vec![c0, unchained],
            proof: serde_json::Value::Null,
        };
        assert!(matches!(
            check_audit(&k, &c0, a).await,
            Err(KtFailure::Fork { epoch: 1 })
        ));
        // A good chain with garbage or empty proofs: a failed proof, never a panic.
        for proof in [
            serde_json::Value::Null,
            serde_json::json!({"epochs": [], "proofs": []}),
            serde_json::json!({"epochs": [0], "proofs": [{"inserted": [], "unchanged_nodes": []}]}),
            serde_json::json!("garbage"),
        ] {
            let a = KtAudit {
                checkpoints: vec![c0, c1],
                proof,
            };
            assert!(matches!(
                check_audit(&k, &c0, a).await,
                Err(KtFailure::BadProof { .. })
            ));
        }
    }

    #[test]
    fn verifier_panics_are_failed_proofs() {
        let r: Result<(), String> = guarded(|| -> Result<(), String> { panic!("bad input") });
        assert_eq!(r, Err("malformed proof".into()));
    }
}
