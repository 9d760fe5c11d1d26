//! WebSocket sessions: the live presence of devices, kept only in memory.
//!
//! A device is online exactly while its session is open. Every change (publish, close,
//! timeout) is pushed at once to the online devices of the person's accepted contacts. A push
//! to a device that is not connected is dropped; a device whose queue is full is disconnected
//! rather than buffered for.
//!
//! The module's parts: [`registry`] (who is online, pushes, revocations, housekeeping),
//! [`challenges`] (the stateless session challenges), [`links`] (device-link offers),
//! [`session`] (one device's session, as a hand-written future, and the grace period of one
//! lost silently), [`login`] (the one-connection login) and [`ops`] (the requests a session
//! answers).

mod challenges;
mod links;
mod login;
mod ops;
mod registry;
mod session;

use std::{
    collections::HashMap,
    sync::{Mutex, atomic::AtomicU64},
};

use dialtone_proto::Identifier;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub(crate) use registry::{housekeeping, refresh_seen};
pub(crate) use session::upgrade;

use self::{
    challenges::{ChallengeKey, UsedChallenges},
    links::LinkEntry,
    registry::{DeviceSession, Revocations},
};

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
    /// Accounts logged in since the last housekeeping round, whose `last_seen` it writes.
    seen_pending: Mutex<Vec<Identifier>>,
    /// Ended by shutdown: closes every session.
    pub(crate) shutdown: CancellationToken,
    /// The session tasks, so shutdown can wait for them to close.
    pub(crate) tasks: TaskTracker,
    /// How contact entries are shown ([`crate::view`]).
    pub(crate) view: crate::view::ViewHandle,
}

impl Sessions {
    /// An empty registry whose contact entries are shown through `view`.
    pub(crate) fn new(view: crate::view::ViewHandle) -> Self {
        Self {
            view,
            ..Self::default()
        }
    }
}
