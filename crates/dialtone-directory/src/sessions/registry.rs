//! The presence registry: the open sessions per person, their push queues, revocations, the
//! fan-out to accepted contacts, and the housekeeping that keeps `last_seen` fresh.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    directory::{
        ContactEntry, DeviceEndpoint, EndpointInfo, PresenceState, PresenceView, Relation,
        ServerFrame,
    },
    rules::aggregate_presence,
};
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use tungstenite::Utf8Bytes;

use crate::{
    AppState,
    http::now_secs,
    store::{Account, q},
};

use super::Sessions;

/// Frames queued for one device before it counts as stuck and is disconnected.
const PUSH_QUEUE: usize = 256;
/// Revoked devices remembered for sessions that were opening when the revocation happened
/// (40 bytes each). A session that opened across more revocations than this is refused,
/// to be safe (its device reconnects).
const REVOCATIONS_KEPT: usize = 4096;
/// How often the accounts with a device online get `last_seen` written, so that the
/// registration lock cannot lapse behind a session that has been open for longer than the
/// lapse, even if the directory stops without closing it.
pub(crate) const SEEN_REFRESH: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub(super) struct DeviceSession {
    pub(super) id: u64,
    pub(super) cert: DeviceCertificate,
    /// `None` until the device publishes: an unpublished device is not shown.
    pub(super) state: Option<PresenceState>,
    pub(super) message: Option<String>,
    pub(super) endpoint: EndpointInfo,
    /// Its pushes, and the flag that ends it.
    pub(super) queue: Arc<PushQueue>,
}

/// Pushes waiting to be written to one device: JSON serialized once per fan-out and shared by
/// every recipient. Allocates nothing while empty, so an idle session costs no queue memory
/// (a tokio channel allocates a block of slots up front). It also carries the order to end
/// the session (a replaced or stuck device, shutdown), with the same wake-up.
#[derive(Debug, Default)]
pub(super) struct PushQueue {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    /// The session's task, woken by a push or a kill.
    pub(super) waker: AtomicWaker,
    killed: AtomicBool,
}

impl PushQueue {
    pub(super) fn frames(&self) -> MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame; false if [`PUSH_QUEUE`] are waiting already (the device is stuck).
    pub(super) fn offer(&self, frame: Utf8Bytes) -> bool {
        // An ended session (one in its grace period too) takes nothing: pushes for a device
        // that is not connected are dropped.
        if self.is_killed() {
            return false;
        }
        {
            let mut q = self.frames();
            if q.len() >= PUSH_QUEUE {
                return false;
            }
            q.push_back(frame);
        }
        self.waker.wake();
        true
    }

    /// The next frame, if any; gives memory back once drained after a burst.
    pub(super) fn take(&self) -> Option<Utf8Bytes> {
        let mut q = self.frames();
        let f = q.pop_front();
        if q.is_empty() {
            // Most sessions get a push now and then: keep nothing between them.
            *q = VecDeque::new();
        }
        f
    }

    /// Ends the session: it closes at its next turn.
    pub(super) fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(super) fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// A frame as the JSON text every recipient gets.
pub(super) fn encode(frame: &ServerFrame) -> Option<Utf8Bytes> {
    serde_json::to_string(frame).ok().map(Utf8Bytes::from)
}

/// Devices revoked lately, numbered. A session checks its device against them as it joins
/// the registry: see [`Sessions::register`]. Changed only while the registry is locked.
#[derive(Debug, Default)]
pub(super) struct Revocations {
    /// Devices revoked since the start.
    count: u64,
    /// The last [`REVOCATIONS_KEPT`] of them, with their number (1 for the first).
    recent: VecDeque<(u64, DeviceId)>,
}

impl Revocations {
    fn record(&mut self, device: DeviceId) {
        self.count += 1;
        if self.recent.len() >= REVOCATIONS_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back((self.count, device));
    }

    /// Whether `device` was (or, with too many revocations since to tell, may have been)
    /// revoked after [`Revocations::count`] was `mark`.
    fn since(&self, mark: u64, device: &DeviceId) -> bool {
        if self.count == mark {
            return false;
        }
        let oldest = self.recent.front().map_or(u64::MAX, |(n, _)| *n);
        oldest > mark + 1 || self.recent.iter().any(|(n, d)| *n > mark && d == device)
    }
}

impl Sessions {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Identifier, Vec<DeviceSession>>> {
        self.online
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The revocation count now: taken before a new session's device is looked up, and
    /// handed to [`Sessions::register`].
    pub(super) fn revocation_mark(&self) -> u64 {
        self.revocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .count
    }

    /// Puts a new session into the registry (replacing an older one of the same device, whose
    /// published state it keeps), unless its device was revoked since `mark`
    /// ([`Sessions::revocation_mark`], taken before the device was found registered): then
    /// `false`, and the session must end.
    ///
    /// Why no revoked session survives: a revocation commits to the store, then (in
    /// [`Sessions::revoke`]) records the devices and kills their sessions in one hold of the
    /// registry lock. This check and the insertion are one hold of the same lock. A session
    /// whose device was found registered looked before the commit, so its mark is lower than
    /// the revocation's number. If it joins before the revocation's step, that step kills it;
    /// if after, this check sees the revocation and refuses it.
    pub(super) fn register(
        &self,
        identifier: &Identifier,
        mut session: DeviceSession,
        mark: u64,
    ) -> bool {
        let mut map = self.lock();
        let device = session.cert.device_id;
        if self
            .revocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .since(mark, &device)
        {
            return false;
        }
        // Almost every person has one device online: room for exactly one.
        let list = map
            .entry(identifier.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        // A new session for the same device replaces the old one, and keeps what it
        // published until the device publishes again: contacts see no flicker.
        if let Some(i) = list.iter().position(|d| d.cert.device_id == device) {
            let old = list.swap_remove(i);
            old.queue.kill();
            session.state = old.state;
            session.message = old.message;
            session.endpoint = old.endpoint;
        }
        list.push(session);
        true
    }

    /// After `removed` devices of `subject` lost their registration (committed to the store):
    /// records them for the sessions opening now, and ends their sessions, in one step.
    pub(super) fn revoke(&self, subject: &Identifier, removed: &[DeviceId]) {
        let map = self.lock();
        let mut revocations = self
            .revocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for d in removed {
            revocations.record(*d);
        }
        for d in map.get(subject).into_iter().flatten() {
            if removed.contains(&d.cert.device_id) {
                d.queue.kill();
            }
        }
    }

    /// Ends every session (shutdown, after [`Sessions::shutdown`] is cancelled: a session
    /// that registers later sees that and ends itself).
    pub(crate) fn kill_all(&self) {
        for d in self.lock().values().flatten() {
            d.queue.kill();
        }
    }

    /// Whether any device of `id` has a session open.
    pub(crate) fn is_online(&self, id: &Identifier) -> bool {
        self.lock().get(id).is_some_and(|l| !l.is_empty())
    }

    /// Takes session `id` of `who` out of the registry; whether it was there (a session that
    /// was replaced by a newer one of its device is not).
    pub(super) fn remove_session(&self, who: &Identifier, id: u64) -> bool {
        let mut map = self.lock();
        let Some(list) = map.get_mut(who) else {
            return false;
        };
        let before = list.len();
        list.retain(|d| d.id != id);
        let removed = list.len() != before;
        if list.is_empty() {
            map.remove(who);
        }
        removed
    }

    /// Has `last_seen` of `who` written at the next housekeeping round (within a heartbeat)
    /// rather than by the login itself: a store write per login was most of a login's cost.
    pub(super) fn seen_soon(&self, who: &Identifier) {
        self.seen_pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(who.clone());
    }

    fn take_seen_pending(&self) -> Vec<Identifier> {
        std::mem::take(
            &mut *self
                .seen_pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Number of open sessions.
    pub(crate) fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// `subject` as seen by someone whose relation to them is `relation`.
    pub(super) fn entry(&self, subject: &Account, relation: Relation) -> ContactEntry {
        let map = self.lock();
        let devices = map.get(&subject.identifier).map_or(&[][..], Vec::as_slice);
        self.view
            .contact_entry(contact_entry(subject, relation, devices))
    }

    /// Pushes a frame to every session of `to`; drops it if none. Stuck sessions are ended.
    pub(super) fn push(&self, to: &Identifier, frame: &ServerFrame) {
        if let Some(text) = encode(frame) {
            self.push_encoded(std::slice::from_ref(to), &text);
        }
    }

    /// Pushes one encoded frame to every session of each of `to`.
    pub(super) fn push_encoded(&self, to: &[Identifier], text: &Utf8Bytes) {
        let map = self.lock();
        for who in to {
            for d in map.get(who).into_iter().flatten() {
                if !d.queue.offer(text.clone()) {
                    d.queue.kill();
                }
            }
        }
    }

    /// Removes the sessions whose task ended without closing them (a bug made it panic: its
    /// `Live` (in `session`), the only other holder of the push queue, was dropped), and returns who lost
    /// a device. Without this such a device would show online until the directory restarts;
    /// it costs no memory per session, only a walk over the registry.
    pub(super) fn sweep_orphans(&self) -> Vec<Identifier> {
        let mut map = self.lock();
        let mut gone = Vec::new();
        map.retain(|who, list| {
            let before = list.len();
            list.retain(|d| Arc::strong_count(&d.queue) > 1);
            if list.len() != before {
                gone.push(who.clone());
            }
            !list.is_empty()
        });
        gone
    }

    /// Tells the accepted contacts of `subject` its presence now.
    pub(super) async fn fan_out(&self, st: &AppState, subject: &Identifier) {
        // The binding as stored now (it may have changed since the session began), with the
        // watchers, in one store call.
        let Some((account, watchers)) = account_and_watchers(st, subject).await else {
            return;
        };
        if watchers.is_empty() {
            return;
        }
        let frame = ServerFrame::Presence {
            contact: self.entry(&account, Relation::Accepted),
        };
        if let Some(text) = encode(&frame) {
            self.push_encoded(&watchers, &text);
        }
    }

    /// After a key replacement or a new device list (committed to the store): end the
    /// removed devices' sessions, and those opening now, and tell the contacts.
    pub(crate) async fn key_replaced(
        &self,
        st: &AppState,
        subject: &Identifier,
        removed: &[DeviceId],
    ) {
        self.revoke(subject, removed);
        let Some((account, watchers)) = account_and_watchers(st, subject).await else {
            return;
        };
        let frame = ServerFrame::ContactChanged {
            contact: self.entry(&account, Relation::Accepted),
        };
        if let Some(text) = encode(&frame) {
            self.push_encoded(&watchers, &text);
        }
    }
}

/// Writes `last_seen` now for every account with a device online, a thousand accounts per
/// transaction so that the store is never held for long.
pub(crate) async fn refresh_seen(st: &AppState) {
    let online: Vec<Identifier> = st.sessions.lock().keys().cloned().collect();
    write_seen(st, &online).await;
}

/// Writes `last_seen` now for `accounts`, a thousand per transaction.
async fn write_seen(st: &AppState, accounts: &[Identifier]) {
    let now = now_secs();
    for chunk in accounts.chunks(1000) {
        let chunk = chunk.to_vec();
        let written = st
            .store
            .run(move |c| {
                let tx = c.transaction()?;
                for id in &chunk {
                    q::seen(&tx, id, now)?;
                }
                tx.commit()?;
                Ok(())
            })
            .await;
        if let Err(e) = written {
            debug!("cannot write last_seen: {e}");
            return;
        }
    }
}

/// Ends what [`Sessions::sweep_orphans`] finds as the session's `close` would have: the
/// account was seen now, and its contacts are told.
async fn sweep(st: &AppState) {
    let gone = st.sessions.sweep_orphans();
    if gone.is_empty() {
        return;
    }
    warn!(
        accounts = gone.len(),
        "removed sessions whose task ended without closing them"
    );
    // Written just after they left the registry (`close` writes before): the hourly refresh
    // keeps last_seen within an hour meanwhile, far inside the lock's lapse.
    write_seen(st, &gone).await;
    for who in &gone {
        st.sessions.fan_out(st, who).await;
    }
}

/// How often the logins' `last_seen` ([`Sessions::seen_soon`]) are written, in one
/// transaction per thousand accounts. A directory that crashes loses at most this much of
/// them: the registration lock's lapse is counted in days.
const SEEN_PENDING_EVERY: Duration = Duration::from_secs(5);

/// Until `cancel`: runs [`refresh_seen`] every [`SEEN_REFRESH`], [`sweep`] every heartbeat,
/// and writes the logins' `last_seen` every [`SEEN_PENDING_EVERY`].
pub(crate) async fn housekeeping(st: Arc<AppState>, cancel: CancellationToken) {
    let now = tokio::time::Instant::now();
    let mut seen = tokio::time::interval_at(now + SEEN_REFRESH, SEEN_REFRESH);
    seen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A config built in code skips `Config::from_toml`'s check; a zero period would panic.
    let heartbeat = st.config.session.heartbeat.max(Duration::from_secs(1));
    let mut orphans = tokio::time::interval_at(now + heartbeat, heartbeat);
    orphans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = tokio::time::interval_at(now + SEEN_PENDING_EVERY, SEEN_PENDING_EVERY);
    pending.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                write_seen(&st, &st.sessions.take_seen_pending()).await;
                return;
            }
            _ = seen.tick() => refresh_seen(&st).await,
            _ = orphans.tick() => sweep(&st).await,
            _ = pending.tick() => {
                let mut who = st.sessions.take_seen_pending();
                who.sort_unstable();
                who.dedup();
                write_seen(&st, &who).await;
            }
        }
    }
}

/// The presence of a person with these sessions, as an accepted contact sees it: invisible
/// and unpublished devices are left out, the most available state wins.
fn presence_view(devs: &[DeviceSession]) -> PresenceView {
    let visible: Vec<&DeviceSession> = devs
        .iter()
        .filter(|d| matches!(d.state, Some(s) if s != PresenceState::Invisible))
        .collect();
    let state = aggregate_presence(visible.iter().filter_map(|d| d.state));
    let message = visible
        .iter()
        .filter(|d| d.state == Some(state))
        .find_map(|d| d.message.clone());
    PresenceView {
        state,
        message,
        devices: visible
            .iter()
            .map(|d| DeviceEndpoint {
                cert: d.cert.clone(),
                endpoint: d.endpoint.clone(),
                state: d.state.unwrap_or(PresenceState::Online),
            })
            .collect(),
    }
}

/// `subject` (whose sessions are `devs`) as seen by someone whose relation to them is
/// `relation`: presence and addresses only for an accepted contact, offline otherwise.
fn contact_entry(subject: &Account, relation: Relation, devs: &[DeviceSession]) -> ContactEntry {
    let presence = if relation == Relation::Accepted {
        presence_view(devs)
    } else {
        PresenceView::offline()
    };
    ContactEntry {
        identifier: subject.identifier.clone(),
        identity_key: subject.identity_key,
        relation,
        presence,
    }
}

/// `subject`'s account as stored now, with its accepted contacts, in one store call; `None`
/// if either cannot be read.
async fn account_and_watchers(
    st: &AppState,
    subject: &Identifier,
) -> Option<(Account, Vec<Identifier>)> {
    let s2 = subject.clone();
    let (account, watchers) = st
        .store
        .run(move |c| Ok(q::account(c, &s2)?.map(|a| (a, q::accepted_of(c, &s2)))))
        .await
        .ok()??;
    Some((account, watchers.ok()?))
}

#[cfg(test)]
mod tests {
    use dialtone_proto::IdentityKey;
    use ed25519_dalek::SigningKey;

    use super::*;

    fn account(seed: u8) -> (Account, SigningKey) {
        let sk = SigningKey::from_bytes(&[seed; 32]);
        let id = Identifier::parse(&format!("p{seed}@example.com")).unwrap();
        (
            Account {
                identifier: id,
                identity_key: IdentityKey::from_signing_key(&sk),
            },
            sk,
        )
    }

    fn device(identity: &SigningKey, seed: u8, state: Option<PresenceState>) -> DeviceSession {
        let dk = SigningKey::from_bytes(&[seed; 32]);
        let cert =
            DeviceCertificate::issue(identity, DeviceId::from_signing_key(&dk), "d", 1).unwrap();
        DeviceSession {
            id: u64::from(seed),
            cert,
            state,
            message: Some(format!("msg {seed}")),
            endpoint: EndpointInfo {
                addrs: vec![format!("192.0.2.{seed}:1000").parse().unwrap()],
                relay_url: None,
            },
            queue: Arc::default(),
        }
    }

    #[test]
    fn accepted_contacts_see_visible_devices_and_the_best_state() {
        let (a, sk) = account(1);
        let devs = [
            device(&sk, 10, Some(PresenceState::Busy)),
            device(&sk, 11, Some(PresenceState::Away)),
            device(&sk, 12, Some(PresenceState::Invisible)),
            device(&sk, 13, None),
        ];
        let e = contact_entry(&a, Relation::Accepted, &devs);
        assert_eq!(e.relation, Relation::Accepted);
        assert_eq!(e.presence.state, PresenceState::Away);
        assert_eq!(e.presence.message.as_deref(), Some("msg 11"));
        let states: Vec<PresenceState> = e.presence.devices.iter().map(|d| d.state).collect();
        assert_eq!(
            states,
            [PresenceState::Busy, PresenceState::Away],
            "invisible and unpublished devices are hidden"
        );
        assert_eq!(e.presence.devices[0].endpoint.addrs.len(), 1);
    }

    #[test]
    fn invisible_only_is_offline_without_devices() {
        let (a, sk) = account(2);
        let devs = [device(&sk, 20, Some(PresenceState::Invisible))];
        let e = contact_entry(&a, Relation::Accepted, &devs);
        assert_eq!(e.presence, PresenceView::offline());
        assert_eq!(
            contact_entry(&a, Relation::Accepted, &[]).presence,
            PresenceView::offline()
        );
    }

    #[test]
    fn others_see_no_presence_and_no_addresses() {
        let (a, sk) = account(3);
        let devs = [device(&sk, 30, Some(PresenceState::Online))];
        for rel in [
            Relation::None,
            Relation::Incoming,
            Relation::Outgoing,
            Relation::Blocked,
        ] {
            let e = contact_entry(&a, rel, &devs);
            assert_eq!(e.relation, rel);
            assert_eq!(e.identity_key, a.identity_key);
            assert_eq!(e.presence, PresenceView::offline(), "{rel:?}");
        }
    }

    /// Issue 3: a session opened in the instant of a revocation survived it: the directory
    /// found the device registered, the revocation removed it and ended the sessions it found,
    /// then the new session joined the registry. The registry now checks the revocations
    /// made since the session's device was looked up (its mark) as it joins, under the lock
    /// the revocation ends sessions under. Each interleaving is played here in order, as the
    /// lock makes them: no timing is involved.
    #[test]
    fn issue3_a_session_opening_during_its_revocation_never_joins() {
        let s = Sessions::default();
        let (a, sk) = account(4);
        let opening = device(&sk, 40, None);
        let dev = opening.cert.device_id;
        let other = device(&sk, 41, None).cert.device_id;

        // Looked up before the revocation committed, joins after it ended the sessions.
        let mark = s.revocation_mark();
        s.revoke(&a.identifier, &[dev]);
        assert!(!s.register(&a.identifier, opening, mark));
        assert_eq!(s.count(), 0);

        // Joins first: the revocation's step finds it and ends it.
        let mark = s.revocation_mark();
        let joined = device(&sk, 40, None);
        let queue = joined.queue.clone();
        assert!(s.register(&a.identifier, joined, mark));
        s.revoke(&a.identifier, &[dev]);
        assert!(queue.is_killed());

        // Another device's revocation does not stop it.
        let mark = s.revocation_mark();
        s.revoke(&a.identifier, &[other]);
        assert!(s.register(&a.identifier, device(&sk, 40, None), mark));

        // Too many revocations since its mark to tell: refused, to be safe.
        let mark = s.revocation_mark();
        for _ in 0..=REVOCATIONS_KEPT {
            s.revoke(&a.identifier, &[other]);
        }
        assert!(!s.register(&a.identifier, device(&sk, 40, None), mark));
        // Looked up after all of them: joins.
        let mark = s.revocation_mark();
        assert!(s.register(&a.identifier, device(&sk, 40, None), mark));
    }

    /// A session whose task failed (a panic drops its `Live` without closing it) stayed in
    /// the registry, and its person showed online until the directory restarted. The sweep
    /// removes exactly the sessions nobody serves any more, and says whose they were.
    #[test]
    fn sessions_whose_task_is_gone_are_swept() {
        let s = Sessions::default();
        let (a, sk) = account(5);
        let (b, skb) = account(6);
        let served = device(&sk, 50, Some(PresenceState::Online));
        let orphan = device(&sk, 51, Some(PresenceState::Online));
        let alone = device(&skb, 60, Some(PresenceState::Online));
        // What the sessions' tasks hold; the orphans' tasks have dropped theirs.
        let live = served.queue.clone();
        for (who, d) in [(&a, served), (&a, orphan), (&b, alone)] {
            let mark = s.revocation_mark();
            assert!(s.register(&who.identifier, d, mark));
        }
        assert_eq!(s.count(), 3);

        let mut gone = s.sweep_orphans();
        gone.sort();
        let mut want = vec![a.identifier.clone(), b.identifier.clone()];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(s.count(), 1);
        assert!(s.is_online(&a.identifier));
        assert!(!s.is_online(&b.identifier));
        // Nothing more to sweep while the task lives; once it is gone, so is the session.
        assert!(s.sweep_orphans().is_empty());
        drop(live);
        assert_eq!(s.sweep_orphans(), vec![a.identifier.clone()]);
        assert_eq!(s.count(), 0);
    }
}
