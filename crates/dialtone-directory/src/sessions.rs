//! WebSocket sessions: the live presence of devices, kept only in memory.
//!
//! A device is online exactly while its session is open. Every change (publish, close,
//! timeout) is pushed at once to the online devices of the person's accepted contacts. A push
//! to a device that is not connected is dropped; a device whose queue is full is disconnected
//! rather than buffered for.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use axum::{
    Extension,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    devices::DeviceList,
    directory::{
        ClientFrame, ContactEntry, DeviceEndpoint, EndpointInfo, ErrorBody, ErrorCode,
        LinkOfferInfo, LinkToken, MAX_ADDRS, MAX_STATUS_MESSAGE_LEN, MAX_WS_FRAME_LEN,
        PresenceState, PresenceView, Relation, Reply, Request, ServerFrame, check_pin,
        is_link_offer,
    },
    keys::{Signature, session_transcript},
    rules::{TokenBucket, aggregate_presence},
};
use futures_util::task::AtomicWaker;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};
use tungstenite::Utf8Bytes;

use crate::{
    AppState,
    http::{ApiError, ClientAddr, now_secs},
    store::{Account, LockChange, StoreError, q},
    ws::{self, Incoming, WsConn, WsError},
};

/// The directory's secret for session challenges, random per process (a restart voids the
/// challenges outstanding, which live a minute).
struct ChallengeKey([u8; 32]);

impl Default for ChallengeKey {
    fn default() -> Self {
        let mut k = [0u8; 32];
        rand::fill(&mut k[..]);
        Self(k)
    }
}

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(…)")
    }
}

impl ChallengeKey {
    fn challenge(&self, device: &DeviceId, expiry: u64) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        // Fixed-length fields after the secret: no two inputs collide, nothing is extended.
        let mac = Sha256::new()
            .chain_update(b"dialtone-session-challenge/v1")
            .chain_update(self.0)
            .chain_update(device.as_bytes())
            .chain_update(expiry.to_be_bytes())
            .finalize();
        let mut c = [0u8; 32];
        c[..8].copy_from_slice(&expiry.to_be_bytes());
        c[8..].copy_from_slice(&mac[..24]);
        c
    }
}

/// Milliseconds on this process's monotonic clock (from 1). Challenges carry expiries on it:
/// they are valid only in the process that issued them (its key is made at start), and a
/// wall clock set back must not make used challenges valid again nor lock devices out.
fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

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

/// Device-link offers open at once, at most (one per session; beyond it, refused).
const MAX_LINK_OFFERS: usize = 10_000;
/// How long a device-link offer stays open.
const LINK_OFFER_TTL: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct DeviceSession {
    id: u64,
    cert: DeviceCertificate,
    /// `None` until the device publishes: an unpublished device is not shown.
    state: Option<PresenceState>,
    message: Option<String>,
    endpoint: EndpointInfo,
    /// Its pushes, and the flag that ends it.
    queue: Arc<PushQueue>,
}

/// Pushes waiting to be written to one device: JSON serialized once per fan-out and shared by
/// every recipient. Allocates nothing while empty, so an idle session costs no queue memory
/// (a tokio channel allocates a block of slots up front). It also carries the order to end
/// the session (a replaced or stuck device, shutdown), with the same wake-up.
#[derive(Debug, Default)]
struct PushQueue {
    frames: Mutex<VecDeque<Utf8Bytes>>,
    /// The session's task, woken by a push or a kill.
    waker: AtomicWaker,
    killed: AtomicBool,
}

impl PushQueue {
    fn frames(&self) -> MutexGuard<'_, VecDeque<Utf8Bytes>> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame; false if [`PUSH_QUEUE`] are waiting already (the device is stuck).
    fn offer(&self, frame: Utf8Bytes) -> bool {
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
    fn take(&self) -> Option<Utf8Bytes> {
        let mut q = self.frames();
        let f = q.pop_front();
        if q.is_empty() {
            // Most sessions get a push now and then: keep nothing between them.
            *q = VecDeque::new();
        }
        f
    }

    /// Ends the session: it closes at its next turn.
    fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// A frame as the JSON text every recipient gets.
fn encode(frame: &ServerFrame) -> Option<Utf8Bytes> {
    serde_json::to_string(frame).ok().map(Utf8Bytes::from)
}

/// Devices revoked lately, numbered. A session checks its device against them as it joins
/// the registry: see [`Sessions::register`]. Changed only while the registry is locked.
#[derive(Debug, Default)]
struct Revocations {
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

/// A device-link rendezvous the directory holds.
#[derive(Debug)]
struct LinkEntry {
    info: LinkOfferInfo,
    /// Who may take it ([`LinkToken::matches`]).
    token: LinkToken,
    /// The offering session: the offer ends with it.
    session: u64,
    expires: Instant,
}

/// Answered challenges: per device, the expiry of the latest one answered. A challenge is
/// fixed by its device and its expiry, and expiries grow with the time of issue, so an answer
/// must carry a later expiry than the device's last one: a replay (or an older challenge
/// answered after a newer one) is refused. One number per device, whatever it does.
#[derive(Debug, Default)]
struct UsedChallenges {
    last: HashMap<DeviceId, u64>,
    /// Sweep out devices whose last challenge expired once this many are recorded.
    sweep_at: usize,
}

/// The presence registry and the outstanding session challenges.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    online: Mutex<HashMap<Identifier, Vec<DeviceSession>>>,
    /// Revoked devices, for sessions that were opening meanwhile. Changed and checked only
    /// while `online` is locked (so the check and the join, or the record and the kill, are
    /// one step); always locked after `online`, never before.
    revocations: Mutex<Revocations>,
    /// Device-link rendezvous by offer id.
    links: Mutex<HashMap<String, LinkEntry>>,
    /// Signs session challenges: a challenge carries its expiry and a MAC over the device and
    /// the expiry, so issuing one keeps no state (a flood of requests costs no memory).
    challenge_key: ChallengeKey,
    /// Challenges already answered with a valid signature, until they expire (single use).
    challenges: Mutex<UsedChallenges>,
    next_id: AtomicU64,
    /// Ended by shutdown: closes every session.
    pub(crate) shutdown: CancellationToken,
    /// The session tasks, so shutdown can wait for them to close.
    pub(crate) tasks: TaskTracker,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Identifier, Vec<DeviceSession>>> {
        self.online
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a device-link offer for someone who shows its token (each is given out once),
    /// if its session is still open. An unknown offer and a wrong token are alike `None`, and
    /// a wrong token leaves the offer in place: guessing offer ids uses up nobody's.
    pub(crate) fn take_link_offer(&self, offer: &str, token: &LinkToken) -> Option<LinkOfferInfo> {
        let entry = {
            let mut links = self
                .links
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !links.get(offer)?.token.matches(token) {
                return None;
            }
            links.remove(offer)?
        };
        let live = self
            .lock()
            .get(&entry.info.identifier)
            .is_some_and(|l| l.iter().any(|d| d.id == entry.session));
        (live && Instant::now() < entry.expires).then_some(entry.info)
    }

    fn offer_link(
        &self,
        offer: String,
        token: LinkToken,
        info: LinkOfferInfo,
        session: u64,
    ) -> Result<(), ApiError> {
        let mut links = self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        links.retain(|_, e| e.expires > now && e.session != session);
        if links.len() >= MAX_LINK_OFFERS || links.contains_key(&offer) {
            return Err(err(
                ErrorCode::Conflict,
                "this link offer cannot be taken now; try again with another code",
            ));
        }
        links.insert(
            offer,
            LinkEntry {
                info,
                token,
                session,
                expires: now + LINK_OFFER_TTL,
            },
        );
        Ok(())
    }

    /// A new one-time challenge for `device`, valid for `ttl`: 8 bytes of expiry (milliseconds
    /// on this process's monotonic clock) and 24 bytes of MAC. Nothing is stored until it is
    /// answered.
    pub(crate) fn new_challenge(&self, device: DeviceId, ttl: Duration) -> Option<[u8; 32]> {
        let expiry = clock_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        Some(self.challenge_key.challenge(&device, expiry))
    }

    /// Whether `c` is a challenge this directory issued for `device` and it has not expired.
    fn check_challenge(&self, c: &[u8; 32], device: &DeviceId) -> bool {
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&c[..8]);
        let expiry = u64::from_be_bytes(exp);
        let want = self.challenge_key.challenge(device, expiry);
        let same = want.iter().zip(c).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        same && expiry > clock_ms()
    }

    /// Uses up a checked challenge of `device` once its signature verified; `false` (refused)
    /// if the device answered this one, or a newer one, before: a replay. Only the device's key holder gets
    /// here, and it keeps one number for itself however often it logs in: no device can take
    /// room another one needs, and none is ever locked out (it asks for a new challenge).
    fn consume_challenge(&self, c: &[u8; 32], device: &DeviceId) -> bool {
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&c[..8]);
        let expiry = u64::from_be_bytes(exp);
        let now = clock_ms();
        let mut used = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if used.last.len() >= used.sweep_at {
            // A device whose last answered challenge expired needs no record: every challenge
            // at or before it has expired too.
            used.last.retain(|_, e| *e > now);
            used.sweep_at = (used.last.len() * 2).max(1024);
        }
        let last = used.last.entry(*device).or_default();
        if expiry <= *last {
            return false;
        }
        *last = expiry;
        true
    }

    /// The revocation count now: taken before a new session's device is looked up, and
    /// handed to [`Sessions::register`].
    fn revocation_mark(&self) -> u64 {
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
    fn register(&self, identifier: &Identifier, mut session: DeviceSession, mark: u64) -> bool {
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
    fn revoke(&self, subject: &Identifier, removed: &[DeviceId]) {
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

    /// Number of open sessions.
    pub(crate) fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// `subject` as seen by someone whose relation to them is `relation`.
    fn entry(&self, subject: &Account, relation: Relation) -> ContactEntry {
        let map = self.lock();
        let devices = map.get(&subject.identifier).map_or(&[][..], Vec::as_slice);
        contact_entry(subject, relation, devices)
    }

    /// Pushes a frame to every session of `to`; drops it if none. Stuck sessions are ended.
    fn push(&self, to: &Identifier, frame: &ServerFrame) {
        if let Some(text) = encode(frame) {
            self.push_encoded(std::slice::from_ref(to), &text);
        }
    }

    /// Pushes one encoded frame to every session of each of `to`.
    fn push_encoded(&self, to: &[Identifier], text: &Utf8Bytes) {
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
    /// [`Live`], the only other holder of the push queue, was dropped), and returns who lost
    /// a device. Without this such a device would show online until the directory restarts;
    /// it costs no memory per session, only a walk over the registry.
    fn sweep_orphans(&self) -> Vec<Identifier> {
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
    async fn fan_out(&self, st: &AppState, subject: &Identifier) {
        // The binding as stored now (it may have changed since the session began), with the
        // watchers, in one store call.
        let s2 = subject.clone();
        let Ok(Some((account, watchers))) = st
            .store
            .run(move |c| Ok(q::account(c, &s2)?.map(|a| (a, q::accepted_of(c, &s2)))))
            .await
        else {
            return;
        };
        let Ok(watchers) = watchers else { return };
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
        let s2 = subject.clone();
        let Ok(Some((account, watchers))) = st
            .store
            .run(move |c| Ok(q::account(c, &s2)?.map(|a| (a, q::accepted_of(c, &s2)))))
            .await
        else {
            return;
        };
        let Ok(watchers) = watchers else { return };
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

/// Ends what [`Sessions::sweep_orphans`] finds as [`close`] would have: the account was seen
/// now, and its contacts are told.
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

/// Until `cancel`: runs [`refresh_seen`] every [`SEEN_REFRESH`], and [`sweep`] every
/// heartbeat.
pub(crate) async fn housekeeping(st: Arc<AppState>, cancel: CancellationToken) {
    let now = tokio::time::Instant::now();
    let mut seen = tokio::time::interval_at(now + SEEN_REFRESH, SEEN_REFRESH);
    seen.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A config built in code skips `Config::from_toml`'s check; a zero period would panic.
    let heartbeat = st.config.session.heartbeat.max(Duration::from_secs(1));
    let mut orphans = tokio::time::interval_at(now + heartbeat, heartbeat);
    orphans.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = seen.tick() => refresh_seen(&st).await,
            _ = orphans.tick() => sweep(&st).await,
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
    #[allow(unused_mut)]
    let mut entry = ContactEntry {
        identifier: subject.identifier.clone(),
        identity_key: subject.identity_key,
        relation,
        presence,
    };
    #[cfg(feature = "malicious")]
    crate::malicious::forge_entry(&mut entry);
    entry
}

#[derive(Deserialize)]
pub(crate) struct SessionParams {
    device_id: Option<String>,
    challenge: Option<String>,
    signature: Option<String>,
}

fn bad(code: ErrorCode, status: StatusCode, msg: &str) -> ApiError {
    ApiError::new(status, code, msg)
}

/// `GET /v1/session`: checks the signed challenge, then upgrades.
pub(crate) async fn upgrade(
    State(st): State<Arc<AppState>>,
    Extension(_addr): Extension<ClientAddr>,
    params: Result<Query<SessionParams>, axum::extract::rejection::QueryRejection>,
    ws: Result<ws::Upgrade, ws::NotUpgrade>,
) -> Result<Response, ApiError> {
    let Ok(Query(p)) = params else {
        return Err(bad(
            ErrorCode::BadRequest,
            StatusCode::BAD_REQUEST,
            "expected ?device_id=&challenge=&signature=",
        ));
    };
    let (Some(device), Some(challenge), Some(signature)) = (p.device_id, p.challenge, p.signature)
    else {
        return Err(bad(
            ErrorCode::BadRequest,
            StatusCode::BAD_REQUEST,
            "expected ?device_id=&challenge=&signature=",
        ));
    };
    let mut ch = [0u8; 32];
    hex::decode_to_slice(&challenge, &mut ch).map_err(|_| {
        bad(
            ErrorCode::ChallengeInvalid,
            StatusCode::UNAUTHORIZED,
            "malformed challenge; request a new one",
        )
    })?;
    let device = DeviceId::from_hex(&device).map_err(|_| {
        bad(
            ErrorCode::BadRequest,
            StatusCode::BAD_REQUEST,
            "device_id is not a key",
        )
    })?;
    if !st.sessions.check_challenge(&ch, &device) {
        return Err(bad(
            ErrorCode::ChallengeInvalid,
            StatusCode::UNAUTHORIZED,
            "challenge unknown, expired or already used; request a new one",
        ));
    }
    let signature = Signature::from_hex(&signature).map_err(|_| {
        bad(
            ErrorCode::BadSignature,
            StatusCode::UNAUTHORIZED,
            "malformed signature",
        )
    })?;
    if device
        .verify(&session_transcript(&ch, &device), &signature)
        .is_err()
    {
        return Err(bad(
            ErrorCode::BadSignature,
            StatusCode::UNAUTHORIZED,
            "the signature does not verify",
        ));
    }
    // Only the device's key holder uses a challenge up, and only its own room in the record
    // of used ones; a replayed answer is refused here.
    if !st.sessions.consume_challenge(&ch, &device) {
        return Err(bad(
            ErrorCode::ChallengeInvalid,
            StatusCode::UNAUTHORIZED,
            "challenge unknown, expired or already used; request a new one",
        ));
    }
    // Before the device is looked up: see `Sessions::register`.
    let mark = st.sessions.revocation_mark();
    let found = st
        .store
        .run(move |c| {
            let found = q::device(c, &device)?;
            if let Some((account, _)) = &found {
                // The registration lock lapses only after a long time without a session.
                q::seen(c, &account.identifier, now_secs())?;
            }
            Ok(found)
        })
        .await?;
    let Some((account, cert)) = found else {
        return Err(bad(
            ErrorCode::UnknownDevice,
            StatusCode::NOT_FOUND,
            "this device is not registered",
        ));
    };
    let ws = ws.map_err(|_| {
        bad(
            ErrorCode::BadRequest,
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade",
        )
    })?;
    let start = Box::new(Start {
        account,
        cert,
        mark,
    });
    let (response, on_upgrade) = ws.accept();
    // The session is a task of its own, whose future is the session's state itself (see
    // `Session`): nothing of the request or the upgrade stays behind.
    st.sessions.tasks.spawn(Session::Upgrading {
        on_upgrade,
        st: st.clone(),
        start,
    });
    Ok(response)
}

/// Who a new session belongs to (boxed: it travels through the upgrade).
struct Start {
    account: Account,
    cert: DeviceCertificate,
    /// [`Sessions::revocation_mark`] before the device was found registered.
    mark: u64,
}

/// The WebSocket of a session, over the connection the upgrade handed over.
type Conn = WsConn<TokioIo<hyper::upgrade::Upgraded>>;

struct Ctx {
    account: Account,
    session: u64,
    limiter: TokenBucket,
}

/// What a live session holds. Kept small: every online device has one.
struct Live {
    st: Arc<AppState>,
    conn: Conn,
    ctx: Ctx,
    queue: Arc<PushQueue>,
    /// The next heartbeat ping.
    ping: Pin<Box<tokio::time::Sleep>>,
    /// When the device was last heard from.
    last_heard: Instant,
}

/// One device's session, from the upgrade to the close, as the future its task runs.
///
/// Every online device has one of these, so it is written by hand rather than as an async
/// fn: while it waits (almost always) the task holds only [`Live`], and polls the WebSocket,
/// the push queue and the heartbeat timer itself. Each thing it does (answer a request, write
/// pushes, ping, close) is one boxed [`step`] that owns the state until it hands it back; the
/// step's space is needed only while it runs. One task reads and writes the WebSocket: there
/// is no split, and no buffer is kept while the session waits (see [`crate::ws`]).
// `Idle` is the large variant on purpose: it is where a session spends its life, and boxing it
// would cost every session one more allocation.
#[allow(clippy::large_enum_variant)]
enum Session {
    /// The 101 answer is on its way; the connection is handed over after it.
    Upgrading {
        on_upgrade: hyper::upgrade::OnUpgrade,
        st: Arc<AppState>,
        start: Box<Start>,
    },
    /// Waiting for the device, a push or the timer.
    Idle(Live),
    /// Running a step.
    Busy(Pin<Box<dyn Future<Output = Option<Live>> + Send>>),
    /// Closed.
    Done,
}

/// What woke an idle session.
enum Event {
    /// The device sent this (or the connection failed).
    Message(Result<Incoming, WsError>),
    /// Pushes are waiting.
    Pushes,
    /// Time for a heartbeat ping.
    Ping,
    /// The session must end: replaced, stuck, timed out or shut down.
    End,
}

impl Future for Session {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                Session::Upgrading { on_upgrade, .. } => {
                    let upgraded = ready!(Pin::new(on_upgrade).poll(cx));
                    let Session::Upgrading { st, start, .. } =
                        std::mem::replace(this, Session::Done)
                    else {
                        unreachable!()
                    };
                    let Ok(upgraded) = upgraded else {
                        return Poll::Ready(());
                    };
                    let conn = WsConn::new(TokioIo::new(upgraded), &[], MAX_WS_FRAME_LEN);
                    let (live, welcome) = open_session(st, conn, *start);
                    *this = Session::Busy(Box::pin(welcome_step(live, welcome)));
                }
                Session::Idle(live) => {
                    let ev = ready!(live.poll_idle(cx));
                    let Session::Idle(live) = std::mem::replace(this, Session::Done) else {
                        unreachable!()
                    };
                    *this = Session::Busy(Box::pin(step(live, ev)));
                }
                Session::Busy(f) => match ready!(f.as_mut().poll(cx)) {
                    Some(live) => *this = Session::Idle(live),
                    None => *this = Session::Done,
                },
                Session::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Live {
    /// Waits for the next thing to do. In the order the session minds them: an order to end,
    /// the device, the heartbeat, pushes.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        // Checked on every turn, so a steady stream of pushes cannot starve the check.
        if self.last_heard.elapsed() > self.st.config.session.timeout {
            debug!(session = self.ctx.session, "session timed out");
            return Poll::Ready(Event::End);
        }
        if self.queue.is_killed() {
            return Poll::Ready(Event::End);
        }
        if let Poll::Ready(msg) = self.conn.poll_next(cx) {
            self.last_heard = Instant::now();
            return Poll::Ready(Event::Message(msg));
        }
        self.queue.waker.register(cx.waker());
        if self.queue.is_killed() {
            return Poll::Ready(Event::End);
        }
        // The ping before the pushes: a queue that never empties must not starve it (the
        // device's pongs are what keeps its session from timing out).
        if self.ping.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + self.st.config.session.heartbeat;
            self.ping.as_mut().reset(next);
            return Poll::Ready(Event::Ping);
        }
        if !self.queue.frames().is_empty() {
            return Poll::Ready(Event::Pushes);
        }
        Poll::Pending
    }
}

/// Registers a new session (replacing an older one of the same device) and prepares it,
/// with its Welcome frame; a session whose device was revoked meanwhile gets no Welcome and
/// closes at its first turn.
fn open_session(st: Arc<AppState>, conn: Conn, start: Start) -> (Live, Option<Utf8Bytes>) {
    let Start {
        account,
        cert,
        mark,
    } = start;
    let queue = Arc::new(PushQueue::default());
    let id = st.sessions.next_id.fetch_add(1, Ordering::Relaxed);
    let device = cert.device_id;
    let session = DeviceSession {
        id,
        cert,
        state: None,
        message: None,
        endpoint: EndpointInfo::default(),
        queue: queue.clone(),
    };
    let joined = st.sessions.register(&account.identifier, session, mark);
    // Shutdown kills the sessions it finds registered; one that registered after that sees
    // the cancellation here.
    if !joined || st.sessions.shutdown.is_cancelled() {
        queue.kill();
    }
    let welcome = if joined {
        debug!(session = id, "session opened");
        encode(&ServerFrame::Welcome {
            identifier: account.identifier.clone(),
            identity_key: account.identity_key,
            device_id: device,
            heartbeat_secs: st.config.session.heartbeat.as_secs().max(1),
        })
    } else {
        debug!(
            session = id,
            "session refused: its device was revoked as it opened"
        );
        None
    };
    let ctx = Ctx {
        account,
        session: id,
        limiter: TokenBucket::new(st.config.limits.session_requests.rule()),
    };
    // The first ping at once, then one per heartbeat.
    let ping = Box::pin(tokio::time::sleep(Duration::ZERO));
    let live = Live {
        st,
        conn,
        ctx,
        queue,
        ping,
        last_heard: Instant::now(),
    };
    (live, welcome)
}

/// The session's first step: the Welcome frame.
async fn welcome_step(mut live: Live, welcome: Option<Utf8Bytes>) -> Option<Live> {
    let ok = match welcome {
        Some(w) => send(&mut live, Out::Text(w.as_str())).await,
        None => true,
    };
    if ok {
        Some(live)
    } else {
        close(live, None).await
    }
}

/// What the session does about `ev`; `None` once it is closed.
async fn step(mut live: Live, ev: Event) -> Option<Live> {
    let ok = match ev {
        Event::Message(Ok(Incoming::Text(t))) => {
            // Boxed: the request handling is the bulk of a step, and most steps do not need
            // its space.
            let reply = Box::pin(handle_text(&live.st, &mut live.ctx, &t)).await;
            drop(t);
            match encode(&reply) {
                Some(text) => send(&mut live, Out::Text(text.as_str())).await,
                None => true,
            }
        }
        Event::Message(Ok(Incoming::Binary)) => {
            let e = ErrorBody::new(ErrorCode::BadJson, "send JSON text frames");
            match encode(&ServerFrame::Error { id: 0, error: e }) {
                Some(text) => send(&mut live, Out::Text(text.as_str())).await,
                None => true,
            }
        }
        Event::Message(Ok(Incoming::Ping(p))) => send(&mut live, Out::Pong(&p)).await,
        Event::Message(Ok(Incoming::Pong)) => true,
        Event::Message(Ok(Incoming::Close(code))) => {
            // Answer with the code it closed with (RFC 6455 §5.5.1).
            let code = code.filter(|c| (1000..5000).contains(c) && *c != 1005);
            return close(live, code).await;
        }
        Event::Message(Err(WsError::Protocol(code, why))) => {
            debug!(session = live.ctx.session, "bad WebSocket frame: {why}");
            return close(live, Some(code)).await;
        }
        Event::Message(Err(WsError::Io(e))) => {
            debug!(session = live.ctx.session, "connection ended: {e}");
            false
        }
        Event::Pushes => {
            // A bounded batch per step, so requests and the timeout check are not starved
            // by a steady stream of pushes; the rest waits for the next turn.
            let mut ok = true;
            for _ in 0..32 {
                let Some(text) = live.queue.take() else { break };
                ok = send(&mut live, Out::Text(text.as_str())).await;
                if !ok {
                    break;
                }
            }
            ok
        }
        Event::Ping => send(&mut live, Out::Ping).await,
        Event::End => false,
    };
    if ok {
        Some(live)
    } else {
        close(live, None).await
    }
}

/// Ends the session: it leaves the registry, the client gets a close frame (with `code`, if
/// it broke the protocol), the contacts are told, and the socket closes once the client has
/// closed its side too (a second at most). Always `None`.
async fn close(live: Live, code: Option<u16>) -> Option<Live> {
    let Live {
        st, ctx, mut conn, ..
    } = live;
    let id = ctx.session;
    // The registration lock lapses only after `lock_lapse` without a device online: the
    // account was online until now. Written before the session leaves the registry, so at
    // every moment the account is either online or seen just now. (At shutdown, `Server`
    // writes every online account at once.)
    if !st.sessions.shutdown.is_cancelled() {
        let account = ctx.account.identifier.clone();
        let _ = st
            .store
            .run(move |c| q::seen(c, &account, now_secs()))
            .await;
    }
    // Out of the registry first: once the client sees the close frame, the session is gone.
    let removed = {
        let mut map = st.sessions.lock();
        let mut removed = false;
        if let Some(list) = map.get_mut(&ctx.account.identifier) {
            let before = list.len();
            list.retain(|d| d.id != id);
            removed = list.len() != before;
            if list.is_empty() {
                map.remove(&ctx.account.identifier);
            }
        }
        removed
    };
    debug!(session = id, "session closed");
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send_close(code)).await;
    if removed {
        Box::pin(st.sessions.fan_out(&st, &ctx.account.identifier)).await;
    }
    // Then wait (briefly) for the other end to close, so that the close frame is not lost to
    // a reset; not when the directory stops. Boxed: rare, and its read buffer should not weigh
    // on every step.
    if !st.sessions.shutdown.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(1), Box::pin(conn.finish())).await;
    }
    None
}

/// A frame the session sends.
enum Out<'a> {
    Text(&'a str),
    Ping,
    Pong(&'a [u8]),
}

/// Sends one frame; false if the session must end. A peer that stops reading must not hold
/// the session (and its presence) open through a blocked write: a send that takes longer
/// than the session timeout ends the session.
async fn send(live: &mut Live, out: Out<'_>) -> bool {
    let limit = live.st.config.session.timeout;
    let conn = &mut live.conn;
    let sent = async {
        match out {
            Out::Text(t) => conn.send_text(t).await,
            Out::Ping => conn.send_ping().await,
            Out::Pong(p) => conn.send_pong(p).await,
        }
    };
    matches!(tokio::time::timeout(limit, sent).await, Ok(Ok(())))
}

async fn handle_text(st: &AppState, ctx: &mut Ctx, text: &str) -> ServerFrame {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            // Echo the id if there is one, so the client can match the error.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            return ServerFrame::Error {
                id,
                error: ErrorBody::new(ErrorCode::BadJson, format!("bad request frame: {e}")),
            };
        }
    };
    match handle_request(st, ctx, frame.request).await {
        Ok(reply) => ServerFrame::Reply {
            id: frame.id,
            reply,
        },
        Err(e) => ServerFrame::Error {
            id: frame.id,
            error: e.body().clone(),
        },
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

async fn account_of(st: &AppState, id: &Identifier) -> Result<Account, ApiError> {
    let id2 = id.clone();
    st.store
        .run(move |c| q::account(c, &id2))
        .await?
        .ok_or_else(|| err(ErrorCode::NotFound, format!("no one is registered as {id}")))
}

async fn relation(
    st: &AppState,
    owner: &Identifier,
    peer: &Identifier,
) -> Result<Relation, ApiError> {
    let (o, p) = (owner.clone(), peer.clone());
    Ok(st.store.run(move |c| q::relation(c, &o, &p)).await?)
}

async fn set_relations(
    st: &AppState,
    pairs: Vec<(Identifier, Identifier, Relation)>,
) -> Result<(), ApiError> {
    let now = now_secs();
    st.store
        .run(move |c| {
            let tx = c.transaction()?;
            for (o, p, r) in &pairs {
                q::set_relation(&tx, o, p, *r, now)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(())
}

fn is_reachable(st: &AppState, who: &Identifier) -> bool {
    st.sessions.lock().get(who).is_some_and(|devs| {
        devs.iter()
            .any(|d| matches!(d.state, Some(s) if s != PresenceState::Invisible))
    })
}

async fn handle_request(st: &AppState, ctx: &mut Ctx, req: Request) -> Result<Reply, ApiError> {
    let me = ctx.account.identifier.clone();
    match req {
        Request::Ping => Ok(Reply::Pong),
        Request::Publish {
            state,
            message,
            endpoint,
        } => {
            limit(ctx)?;
            if state == PresenceState::Offline {
                return Err(err(
                    ErrorCode::BadRequest,
                    "'offline' cannot be published; close the session instead",
                ));
            }
            if message
                .as_ref()
                .is_some_and(|m| m.len() > MAX_STATUS_MESSAGE_LEN)
            {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("status message over {MAX_STATUS_MESSAGE_LEN} bytes"),
                ));
            }
            if endpoint.addrs.len() > MAX_ADDRS {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("more than {MAX_ADDRS} addresses"),
                ));
            }
            let changed = {
                let mut map = st.sessions.lock();
                match map
                    .get_mut(&me)
                    .and_then(|l| l.iter_mut().find(|d| d.id == ctx.session))
                {
                    // A refresh that changes nothing tells the contacts nothing.
                    Some(d)
                        if d.state == Some(state)
                            && d.message == message
                            && d.endpoint == endpoint =>
                    {
                        false
                    }
                    Some(d) => {
                        d.state = Some(state);
                        d.message = message;
                        d.endpoint = endpoint;
                        true
                    }
                    None => false,
                }
            };
            if changed {
                st.sessions.fan_out(st, &ctx.account.identifier).await;
            }
            Ok(Reply::Done)
        }
        Request::LinkOffer {
            offer,
            token,
            endpoint,
        } => {
            limit(ctx)?;
            if !is_link_offer(&offer) || endpoint.addrs.len() > MAX_ADDRS {
                return Err(err(
                    ErrorCode::BadRequest,
                    "a link offer is 4 characters of 0-9A-Z and an endpoint",
                ));
            }
            let device = session_device(st, &me, ctx.session)?;
            let info = LinkOfferInfo {
                identifier: me,
                device_id: device,
                endpoint,
            };
            st.sessions.offer_link(offer, token, info, ctx.session)?;
            Ok(Reply::Done)
        }
        Request::PublishDevices { list, certs, pin } => {
            limit(ctx)?;
            publish_devices(st, ctx, *list, certs, pin).await
        }
        Request::Contacts => {
            limit(ctx)?;
            let m = me.clone();
            let rows = st.store.run(move |c| q::relations(c, &m)).await?;
            Ok(Reply::Contacts {
                contacts: rows.iter().map(|(a, r)| st.sessions.entry(a, *r)).collect(),
            })
        }
        Request::Lookup { identifier } => {
            limit(ctx)?;
            let who = identifier.clone();
            let found = st
                .store
                .run(move |c| {
                    Ok(match q::account(c, &who)? {
                        Some(a) => Some((a, q::relation(c, &me, &who)?)),
                        None => None,
                    })
                })
                .await?;
            let (account, rel) = found.ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no one is registered as {identifier}"),
                )
            })?;
            Ok(Reply::Lookup {
                contact: st.sessions.entry(&account, rel),
            })
        }
        Request::KtCheckpoint => Ok(Reply::KtCheckpoint {
            checkpoint: st.kt.checkpoint(Some(&me)).await?,
        }),
        Request::KtLookup { identifier } => {
            limit(ctx)?;
            Ok(Reply::KtLookup {
                lookup: st.kt.lookup(&identifier, Some(&me)).await?,
            })
        }
        Request::KtHistory { identifier } => {
            limit(ctx)?;
            Ok(Reply::KtHistory {
                history: st.kt.history(&identifier, Some(&me)).await?,
            })
        }
        Request::KtAudit { from, to } => {
            limit(ctx)?;
            Ok(Reply::KtAudit {
                audit: st.kt.audit(from, to, Some(&me)).await?,
            })
        }
        Request::ContactRequest { to } => {
            limit(ctx)?;
            if to == me {
                return Err(err(ErrorCode::BadRequest, "you cannot add yourself"));
            }
            let them = account_of(st, &to).await?;
            match relation(st, &me, &to).await? {
                // After a key change they wait for us to confirm their new key: this does.
                Relation::Accepted => {
                    if relation(st, &to, &me).await? == Relation::Outgoing {
                        return accept(st, &ctx.account, &them).await;
                    }
                    return Ok(Reply::Done);
                }
                Relation::Blocked => {
                    return Err(err(
                        ErrorCode::Blocked,
                        format!("you have blocked {to}; unblock them first"),
                    ));
                }
                Relation::Incoming => return accept(st, &ctx.account, &them).await,
                _ => {}
            }
            if relation(st, &to, &me).await? == Relation::Blocked || !is_reachable(st, &to) {
                return Err(err(
                    ErrorCode::Offline,
                    format!(
                        "{to} is offline; contact requests are delivered only while they are online — \
                         nothing was kept, ask again later"
                    ),
                ));
            }
            set_relations(
                st,
                vec![
                    (me.clone(), to.clone(), Relation::Outgoing),
                    (to.clone(), me.clone(), Relation::Incoming),
                ],
            )
            .await?;
            st.sessions.push(
                &to,
                &ServerFrame::ContactRequest {
                    from: me,
                    identity_key: ctx.account.identity_key,
                },
            );
            Ok(Reply::Done)
        }
        Request::ContactRespond { from, accept: yes } => {
            limit(ctx)?;
            if relation(st, &me, &from).await? != Relation::Incoming {
                return Err(err(
                    ErrorCode::Conflict,
                    format!("there is no contact request from {from}"),
                ));
            }
            let them = account_of(st, &from).await?;
            if yes {
                accept(st, &ctx.account, &them).await
            } else {
                set_relations(
                    st,
                    vec![
                        (me.clone(), from.clone(), Relation::None),
                        (from.clone(), me.clone(), Relation::None),
                    ],
                )
                .await?;
                st.sessions.push(
                    &from,
                    &ServerFrame::ContactChanged {
                        contact: st.sessions.entry(&ctx.account, Relation::None),
                    },
                );
                Ok(Reply::Done)
            }
        }
        Request::ContactRemove { identifier } => {
            limit(ctx)?;
            let them = account_of(st, &identifier).await?;
            let mine = relation(st, &me, &identifier).await?;
            let theirs = relation(st, &identifier, &me).await?;
            let mut pairs = Vec::new();
            if mine != Relation::Blocked {
                pairs.push((me.clone(), identifier.clone(), Relation::None));
            }
            if theirs != Relation::Blocked {
                pairs.push((identifier.clone(), me.clone(), Relation::None));
            }
            set_relations(st, pairs).await?;
            if theirs != Relation::Blocked {
                st.sessions.push(
                    &them.identifier,
                    &ServerFrame::ContactChanged {
                        contact: st.sessions.entry(&ctx.account, Relation::None),
                    },
                );
            }
            Ok(Reply::Done)
        }
        Request::Block { identifier } => {
            limit(ctx)?;
            let them = account_of(st, &identifier).await?;
            let theirs = relation(st, &identifier, &me).await?;
            let mut pairs = vec![(me.clone(), identifier.clone(), Relation::Blocked)];
            if theirs != Relation::Blocked {
                pairs.push((identifier.clone(), me.clone(), Relation::None));
            }
            set_relations(st, pairs).await?;
            if theirs != Relation::Blocked {
                st.sessions.push(
                    &them.identifier,
                    &ServerFrame::ContactChanged {
                        contact: st.sessions.entry(&ctx.account, Relation::None),
                    },
                );
            }
            Ok(Reply::Done)
        }
        Request::Unblock { identifier } => {
            limit(ctx)?;
            account_of(st, &identifier).await?;
            if relation(st, &me, &identifier).await? == Relation::Blocked {
                set_relations(st, vec![(me, identifier, Relation::None)]).await?;
            }
            Ok(Reply::Done)
        }
        _ => Err(err(ErrorCode::BadRequest, "unsupported request")),
    }
}

/// The device of session `session` of `me` (its own session is closing if it is gone).
fn session_device(st: &AppState, me: &Identifier, session: u64) -> Result<DeviceId, ApiError> {
    st.sessions
        .lock()
        .get(me)
        .and_then(|l| l.iter().find(|d| d.id == session))
        .map(|d| d.cert.device_id)
        .ok_or_else(|| err(ErrorCode::Conflict, "this session is closing"))
}

/// [`Request::PublishDevices`]: checks the list against the account and makes it the
/// published one; ends the sessions of devices that left it.
async fn publish_devices(
    st: &AppState,
    ctx: &Ctx,
    list: DeviceList,
    certs: Vec<DeviceCertificate>,
    pin: Option<String>,
) -> Result<Reply, ApiError> {
    let me = ctx.account.identifier.clone();
    let bad = |m: String| err(ErrorCode::BadDeviceList, m);
    list.verify()
        .map_err(|e| bad(format!("the device list is invalid: {e}")))?;
    let requester = session_device(st, &me, ctx.session)?;
    if list.identifier != me {
        return Err(bad(format!(
            "the device list is for {}, not {me}",
            list.identifier
        )));
    }
    if !list.contains(&requester) {
        return Err(bad(
            "a device cannot remove itself from the list: revoke it from another device".into(),
        ));
    }
    if certs.len() > dialtone_proto::devices::MAX_DEVICES {
        return Err(bad("too many certificates".into()));
    }
    for c in &certs {
        c.verify().map_err(|e| {
            err(
                ErrorCode::InvalidCertificate,
                format!("a device certificate is invalid: {e}"),
            )
        })?;
        match list.devices.iter().find(|d| d.device_id == c.device_id) {
            Some(d) if d.name == c.name && c.identity_key == list.identity_key => {}
            _ => {
                return Err(err(
                    ErrorCode::InvalidCertificate,
                    format!("the certificate of {:?} does not match the list", c.name),
                ));
            }
        }
    }
    let lock = match (&pin, list.registration_lock) {
        (Some(_), false) => {
            return Err(bad("a PIN was given but the list turns the lock off".into()));
        }
        (Some(p), true) => {
            check_pin(p).map_err(bad)?;
            let p = p.clone();
            LockChange::Set(
                tokio::task::spawn_blocking(move || crate::reglock::hash_pin(&p))
                    .await
                    .map_err(|_| ApiError::from(StoreError::Join))?,
            )
        }
        (None, true) => LockChange::Keep,
        (None, false) => LockChange::Clear,
    };
    let now = now_secs();
    let m2 = me.clone();
    let removed = st
        .store
        .run(move |c| {
            let tx = c.transaction()?;
            let account = q::account(&tx, &m2)?
                .ok_or_else(|| StoreError::Invalid("the account is gone".into()))?;
            if account.identity_key != list.identity_key {
                return Err(StoreError::Invalid(
                    "the device list is not signed by this account's identity key".into(),
                ));
            }
            let current = q::device_list(&tx, &m2)?;
            // How the key was bound is carried over from list to list; with no list yet
            // (a key bound by an older client), no PIN was given for it.
            if current.is_none() && list.unlocked_with_pin {
                return Err(StoreError::Invalid(
                    "this key was not bound with a registration-lock PIN (unlocked_with_pin)".into(),
                ));
            }
            if let Some(cur) = &current {
                if cur.version >= list.version {
                    return Err(StoreError::Invalid(format!(
                        "the device list's version {} is not newer than the published {}: fetch the current list and try again",
                        list.version, cur.version
                    )));
                }
                if cur.unlocked_with_pin != list.unlocked_with_pin {
                    return Err(StoreError::Invalid(
                        "the list must keep how its key was bound (unlocked_with_pin)".into(),
                    ));
                }
            }
            if matches!(lock, LockChange::Keep)
                && q::lock(&tx, &m2)?.and_then(|l| l.hash).is_none()
            {
                return Err(StoreError::Invalid(
                    "turning on the registration lock needs a PIN".into(),
                ));
            }
            let registered = q::devices(&tx, &m2)?;
            let mut new_certs = Vec::new();
            for d in &list.devices {
                if registered.iter().any(|r| r.device_id == d.device_id) {
                    continue;
                }
                let Some(cert) = certs.iter().find(|c| c.device_id == d.device_id) else {
                    return Err(StoreError::Invalid(format!(
                        "{:?} is new on the list but has no certificate",
                        d.name
                    )));
                };
                if q::device(&tx, &d.device_id)?.is_some() {
                    return Err(StoreError::Invalid(format!(
                        "{:?} is registered to another account",
                        d.name
                    )));
                }
                new_certs.push(cert.clone());
            }
            let removed = q::set_device_list(&tx, &m2, &list, &new_certs, lock, now)?;
            tx.commit()?;
            Ok(removed)
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => bad(m),
            e => e.into(),
        })?;
    debug!(removed = removed.len(), "device list published");
    st.kt.notify();
    if !removed.is_empty() {
        st.sessions.key_replaced(st, &me, &removed).await;
    }
    Ok(Reply::Done)
}

fn limit(ctx: &mut Ctx) -> Result<(), ApiError> {
    ctx.limiter.check(Instant::now()).map_err(|w| {
        err(
            ErrorCode::RateLimited,
            format!("too many requests; try again in {} s", w.as_secs().max(1)),
        )
    })
}

/// Both sides accept: tell both, with each other's presence, so each sees the other at once.
async fn accept(st: &AppState, me: &Account, them: &Account) -> Result<Reply, ApiError> {
    set_relations(
        st,
        vec![
            (
                me.identifier.clone(),
                them.identifier.clone(),
                Relation::Accepted,
            ),
            (
                them.identifier.clone(),
                me.identifier.clone(),
                Relation::Accepted,
            ),
        ],
    )
    .await?;
    st.sessions.push(
        &them.identifier,
        &ServerFrame::ContactChanged {
            contact: st.sessions.entry(me, Relation::Accepted),
        },
    );
    st.sessions.push(
        &me.identifier,
        &ServerFrame::ContactChanged {
            contact: st.sessions.entry(them, Relation::Accepted),
        },
    );
    // And each side's current presence, as any later change would arrive.
    st.sessions.push(
        &them.identifier,
        &ServerFrame::Presence {
            contact: st.sessions.entry(me, Relation::Accepted),
        },
    );
    st.sessions.push(
        &me.identifier,
        &ServerFrame::Presence {
            contact: st.sessions.entry(them, Relation::Accepted),
        },
    );
    Ok(Reply::Done)
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

    #[test]
    fn challenges_are_single_use_and_bound_to_their_device() {
        let s = Sessions::default();
        let d1 = DeviceId::from_signing_key(&SigningKey::from_bytes(&[1; 32]));
        let d2 = DeviceId::from_signing_key(&SigningKey::from_bytes(&[2; 32]));
        let c = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        assert!(s.check_challenge(&c, &d1));
        assert!(!s.check_challenge(&c, &d2), "bound to its device");
        let mut forged = c;
        forged[0] ^= 1; // a later expiry
        assert!(!s.check_challenge(&forged, &d1));
        assert!(s.consume_challenge(&c, &d1));
        assert!(!s.consume_challenge(&c, &d1), "single use");
        let c = s.new_challenge(d1, Duration::ZERO).unwrap();
        assert!(!s.check_challenge(&c, &d1), "expired");
        // Issuing keeps nothing.
        for _ in 0..1000 {
            s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        }
        assert_eq!(s.challenges.lock().unwrap().last.len(), 1);
        // An older challenge answered after a newer one is refused too.
        let older = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let newer = s.new_challenge(d1, Duration::from_secs(60)).unwrap();
        assert!(s.consume_challenge(&newer, &d1));
        assert!(!s.consume_challenge(&older, &d1));
    }

    /// Issue 3: the record of used challenges was one global set with a global bound, so one
    /// registered device answering challenges as fast as it could filled it and locked every
    /// other device out until they expired. (A bound per device then locked out a device
    /// that reconnected often.) Each device now keeps one number: however many it answers,
    /// the record does not grow and no device is refused a fresh challenge. Expiries are made
    /// up here (a challenge is its device and expiry): `consume_challenge` runs after the MAC
    /// and signature checks, which this test does not need.
    #[test]
    fn issue3_no_device_fills_the_used_challenges_or_is_locked_out() {
        let s = Sessions::default();
        let busy = DeviceId::from_signing_key(&SigningKey::from_bytes(&[1; 32]));
        let other = DeviceId::from_signing_key(&SigningKey::from_bytes(&[2; 32]));
        let far = clock_ms() + 3_600_000;
        let challenge = |expiry: u64| {
            let mut c = [0u8; 32];
            c[..8].copy_from_slice(&expiry.to_be_bytes());
            c
        };
        for i in 0..10_000 {
            assert!(s.consume_challenge(&challenge(far + i), &busy));
        }
        assert!(s.consume_challenge(&challenge(far), &other));
        assert_eq!(s.challenges.lock().unwrap().last.len(), 2);
        // Replays are refused, for either.
        assert!(!s.consume_challenge(&challenge(far + 9_999), &busy));
        assert!(!s.consume_challenge(&challenge(far), &other));
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

    /// A session whose task failed (a panic drops its [`Live`] without closing it) stayed in
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
