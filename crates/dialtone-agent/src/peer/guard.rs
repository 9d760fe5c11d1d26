//! What a peer may cost this agent before and after its hello: the caps on incoming
//! connections (in total and per remote), the bound on directory lookups that strangers'
//! hellos cause, one dial at a time per device, and the features this agent announces.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use dialtone_net::IncomingSource;
use dialtone_proto::{
    DeviceId,
    hello::{StrangerLookups, StrangerRules},
    wire::Features,
};

/// Connections whose hello has not passed yet, at most, in total.
pub(crate) const MAX_PENDING: usize = 64;
/// Connections whose hello has not passed yet, at most, from one remote (an IP address, or
/// a device through the relay).
pub(crate) const MAX_PENDING_PER_REMOTE: usize = 16;

/// The environment variable of the hidden test knob: `legacy` makes the agent announce and
/// speak only what agents before features spoke (today's hello, text streams without a
/// kind) and close any connection that sends it anything else, as such an agent would fail.
pub(crate) const FEATURES_ENV: &str = "DIALTONE_PEER_FEATURES";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is a single insert, remove or counter change: a panic elsewhere
    // cannot leave them half done.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The agent's peer-side bookkeeping (one per agent, in `Inner`).
#[derive(Debug)]
pub(crate) struct PeerState {
    /// The features this agent announces in its hello.
    pub(crate) features: Features,
    /// Legacy mode (test knob): today's hello, and any frame beyond it closes the connection.
    pub(crate) legacy: bool,
    strangers: Mutex<StrangerLookups>,
    pending: Mutex<Pending>,
    dials: Mutex<HashMap<DeviceId, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct Pending {
    total: usize,
    per_remote: HashMap<IncomingSource, usize>,
}

impl PeerState {
    pub(crate) fn new() -> Self {
        let legacy = std::env::var(FEATURES_ENV).is_ok_and(|v| v == "legacy");
        Self {
            features: if legacy {
                Features::LEGACY
            } else {
                Features::ALL
            },
            legacy,
            strangers: Mutex::new(StrangerLookups::new(StrangerRules::default())),
            pending: Mutex::new(Pending::default()),
            dials: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn strangers(&self) -> MutexGuard<'_, StrangerLookups> {
        lock(&self.strangers)
    }

    /// A slot for a connection from `source` until its hello passed or failed; `None` (refuse
    /// it at `Incoming`) over [`MAX_PENDING`] or [`MAX_PENDING_PER_REMOTE`].
    pub(crate) fn admit(self: &Arc<Self>, source: IncomingSource) -> Option<PendingSlot> {
        let mut p = lock(&self.pending);
        let from = p.per_remote.get(&source).copied().unwrap_or(0);
        if p.total >= MAX_PENDING || from >= MAX_PENDING_PER_REMOTE {
            return None;
        }
        p.total += 1;
        p.per_remote.insert(source, from + 1);
        Some(PendingSlot {
            state: self.clone(),
            source,
        })
    }

    /// The lock that makes concurrent sends to `device` share one dial.
    pub(crate) fn dial_lock(&self, device: DeviceId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.dials).entry(device).or_default().clone()
    }

    /// Forgets `device`'s dial lock once nobody else holds it.
    pub(crate) fn dial_done(&self, device: DeviceId, held: Arc<tokio::sync::Mutex<()>>) {
        let mut dials = lock(&self.dials);
        // Ours and the map's: nobody else waits.
        if Arc::strong_count(&held) <= 2 {
            dials.remove(&device);
        }
    }
}

/// Holds one of the pending-connection slots; given back on drop.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    state: Arc<PeerState>,
    source: IncomingSource,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = lock(&self.state.pending);
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.per_remote.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.per_remote.remove(&self.source);
            }
        }
    }
}
