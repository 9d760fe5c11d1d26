//! The Dialtone agent as a library.
//!
//! One agent runs per device (`dialtone up`). It holds the device key, keeps one WebSocket
//! session to the directory (which *is* the device's presence), runs the iroh endpoint that
//! peers connect to directly, and serves the local API (JSON-RPC 2.0 over a Unix socket) that
//! every front end uses. Rust programs (bots, UIs) can embed it instead: [`Agent::start`], then
//! use the cheap [`AgentHandle`].
//!
//! It never stores a message: a message exists in memory only while it is in flight, and a
//! message for someone who is not online is refused, never queued.
//!
//! ```text
//!  front ends ──JSON-RPC──► api ──► AgentHandle ──► peer (iroh, dialtone/1) ◄──► other agents
//!                                        │
//!                                        └────► session (WebSocket) ◄──► directory
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod api;
pub mod dirclient;
pub mod doctor;
pub mod home;
pub mod kt;
pub mod lan;
pub mod link;
mod peer;
mod session;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dialtone_net::{Connection, Endpoint};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey, Refusal,
    directory::{
        ContactEntry, MAX_STATUS_MESSAGE_LEN, PresenceState, Relation, Reply, Request, ServerFrame,
    },
    wire::MessageId,
};
use ed25519_dalek::SigningKey;
use serde::Serialize;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use dirclient::{DirectoryClient, DirectoryError};
pub use home::{Home, HomeError};
pub use session::SessionError;

/// The tokio runtime an agent runs on (the `dialtone` binary builds its own with this): one
/// worker thread, plus tokio's pool for blocking work. An agent serves one person: one worker
/// keeps up with a message stream far beyond what anyone sends (about 100 000 acknowledged
/// messages a second between two agents on two cores, against about 90 000 with a worker per
/// core), and answers sooner, with no work handed between threads and no second thread to wake.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("dialtone")
        .enable_all()
        .build()
}

use crate::home::Pin;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The home directory with keys and settings.
    pub home: Home,
    /// Addresses for the peer endpoint. Default: every interface, IPv6 and IPv4.
    pub bind: Vec<SocketAddr>,
    /// Port mapping on the home router. Default: on (off in tests and loopback demos).
    pub portmapper: bool,
    /// Time to connect to a peer device and exchange hellos. Default: 8 s (a refusal as
    /// `unreachable` must come within 10 s).
    pub connect_timeout: Duration,
    /// Time for a peer to acknowledge a message once connected. Default: 5 s.
    pub ack_timeout: Duration,
    /// Peer connections unused this long are closed. Default: 60 s.
    pub idle_timeout: Duration,
    /// Serve the local API on `agent.sock` in the home. Default: on.
    pub serve_api: bool,
    /// Refuse to exchange messages over a relayed path: wait for a direct one (hole punching)
    /// and refuse as `unreachable` if none comes up in time. Default: off.
    pub direct_only: bool,
    /// Use the relay the directory names. Default: on. Off: no hole punching through it and
    /// no relayed fallback.
    pub use_relay: bool,
    /// LAN mode: announce this device with mDNS / DNS-SD and find pinned contacts on the LAN,
    /// so they can talk while the directory is down. Default: off (it sends multicast on every
    /// interface).
    pub lan: bool,
    /// How often the agent checks its own identifier's key history in the transparency log
    /// (it also checks at every login). Default: 5 minutes. Shorter finds a replaced key
    /// sooner at the cost of one history proof per interval (2–3 KB with a device list: every
    /// 30 s that alone was ~90 B/s, most of an idle agent's traffic). Contacts do not wait
    /// for it: they check a key when they use it.
    pub kt_monitor_interval: Duration,
}

impl AgentConfig {
    /// Defaults for a home directory.
    pub fn new(home: Home) -> Self {
        Self {
            home,
            bind: dialtone_net::EndpointConfig::new([0; 32]).bind,
            portmapper: true,
            connect_timeout: Duration::from_secs(8),
            ack_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            serve_api: true,
            direct_only: false,
            use_relay: true,
            lan: false,
            kt_monitor_interval: Duration::from_secs(300),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Keys or settings are missing or damaged.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Not registered with a directory yet.
    #[error(
        "not registered yet: run `dialtone register IDENTIFIER --directory URL`, then `dialtone verify CODE`"
    )]
    NotRegistered,
    /// The directory URL or CA is not usable.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The peer endpoint could not start.
    #[error("cannot start the peer endpoint: {0}")]
    Endpoint(#[from] dialtone_net::BindError),
    /// The local API socket could not be served.
    #[error("cannot serve the local API: {0}")]
    Api(String),
}

/// Something that happened, streamed to front ends (`dialtone watch`).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A message arrived (it exists only in this event: nothing is kept).
    Message {
        /// Sender.
        from: Identifier,
        /// Sender's device.
        device: DeviceId,
        /// Message id.
        id: MessageId,
        /// Sender's clock, ms since the Unix epoch.
        sent_at_ms: u64,
        /// The text.
        body: String,
    },
    /// A contact's presence changed.
    Presence {
        /// Who.
        identifier: Identifier,
        /// New state.
        state: PresenceState,
        /// Status message.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Someone asks to be your contact.
    ContactRequest {
        /// Who.
        from: Identifier,
        /// Their identity key's fingerprint.
        fingerprint: String,
    },
    /// A contact's relation changed.
    ContactChanged {
        /// Who.
        identifier: Identifier,
        /// New relation (`none` = removed).
        relation: Relation,
    },
    /// A contact's identity key differs from the one pinned: possible impersonation.
    KeyChanged {
        /// Who.
        identifier: Identifier,
        /// The fingerprint pinned on first use.
        pinned_fingerprint: String,
        /// The fingerprint now presented.
        new_fingerprint: String,
        /// Whether the pinned key had been verified (then this is a hard block).
        verified: bool,
        /// How the old key's registration lock bears on the change: `no-lock` (the old key
        /// had none: whoever re-verified the identifier could have made this change) or
        /// `locked` (it had one: a `transparency` event `lock-bypassed` follows if the new
        /// key was bound without the PIN).
        reset: &'static str,
    },
    /// A key-transparency check failed: the directory showed a key its log does not prove,
    /// rolled its log back, forked it, showed a peer a different log (split view), or bound a
    /// key that is not ours to our identifier. Shown loudly; what it concerned was refused.
    Transparency {
        /// `forged-key`, `bad-proof`, `rollback`, `fork`, `split-view`, `bad-signature` or
        /// `own-key-replaced`.
        kind: &'static str,
        /// A sentence for a person, starting with "WARNING:".
        message: String,
    },
    /// The directory session went up or down.
    Directory {
        /// Whether connected.
        connected: bool,
    },
    /// A peer connection moved to another path (relayed → direct, say).
    Path {
        /// The contact.
        identifier: Identifier,
        /// Their device.
        device: DeviceId,
        /// The new path.
        #[serde(flatten)]
        path: dialtone_net::PathInfo,
    },
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Refused, with a reason; nothing was queued.
    #[error("{message}")]
    Refused {
        /// The typed reason.
        refusal: Refusal,
        /// A sentence for a person.
        message: String,
    },
    /// The directory could not be asked.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The message is not acceptable (empty, too long).
    #[error("{0}")]
    Invalid(String),
}

impl SendError {
    fn refused(refusal: Refusal, who: &Identifier) -> Self {
        Self::Refused {
            refusal,
            message: refusal.explain(who.as_str()),
        }
    }
}

/// A delivered message.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The message's id.
    pub id: MessageId,
    /// The devices that acknowledged it.
    pub delivered_to: Vec<DeviceDelivery>,
}

/// One device's acknowledgement.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceDelivery {
    /// The device.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// How many front ends it was shown on.
    pub shown_to: u32,
}

/// A contact as front ends see it.
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    /// Who.
    pub identifier: Identifier,
    /// Relation from our side.
    pub relation: Relation,
    /// Presence.
    pub state: PresenceState,
    /// Status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Fingerprint of the key the directory has for them.
    pub fingerprint: String,
    /// `pinned` (matches the key pinned on first use), `changed` (does not!) or `unpinned`.
    pub key: &'static str,
    /// Online devices.
    pub devices: usize,
    /// Whether you verified their current key (safety number).
    pub verified: bool,
    /// Whether `state` is live: false while the agent cannot reach its directory, when it is
    /// the last state known, as of `confirmed_at`.
    pub live: bool,
    /// When the state was last confirmed by the directory (Unix seconds): now while `live`;
    /// `None` if this agent never reached the directory since it started.
    pub confirmed_at: Option<u64>,
}

/// A safety number, for people to compare.
#[derive(Debug, Clone, Serialize)]
pub struct SafetyView {
    /// Who.
    pub identifier: Identifier,
    /// 60 digits in 12 groups of 5.
    pub safety_number: String,
    /// What the QR code carries.
    pub qr_payload: String,
    /// Fingerprint of their key as the directory has it now.
    pub fingerprint: String,
    /// `pinned`, `changed` or `unpinned` (see [`ContactView::key`]).
    pub key: &'static str,
    /// Whether this key is the one you verified.
    pub verified: bool,
}

/// Our own status.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Our identifier.
    pub identifier: Identifier,
    /// Our identity key's fingerprint.
    pub fingerprint: String,
    /// This device.
    pub device: DeviceId,
    /// Our state.
    pub state: PresenceState,
    /// Our status message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether the directory session is up.
    pub directory_connected: bool,
    /// The directory.
    pub directory: String,
    /// Open peer connections.
    pub connections: usize,
    /// Where this device's peer endpoint listens (as published to the directory).
    pub endpoint: dialtone_proto::directory::EndpointInfo,
    /// The relay this agent uses (named by the directory), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// Whether relayed message paths are refused (`--direct-only`).
    pub direct_only: bool,
    /// Agent version.
    pub version: &'static str,
}

/// One open peer connection and the path its data takes.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionView {
    /// The contact.
    pub identifier: Identifier,
    /// Their device.
    pub device: DeviceId,
    /// Names this connection while the agent runs: a new connection to the same device gets
    /// another number (so a path change can be told from a reconnection).
    pub conn_id: u64,
    /// Direct or relayed, the remote address and the round-trip time.
    #[serde(flatten)]
    pub path: dialtone_net::PathInfo,
    /// Seconds since the connection was last used.
    pub idle_secs: u64,
}

#[derive(Debug)]
pub(crate) struct PeerConn {
    conn: Connection,
    identifier: Identifier,
    last_used: Instant,
}

#[derive(Debug)]
pub(crate) struct State {
    presence: PresenceState,
    message: Option<String>,
    contacts: HashMap<Identifier, ContactEntry>,
    pins: BTreeMap<Identifier, Pin>,
    warned: HashSet<(Identifier, IdentityKey)>,
    conns: HashMap<DeviceId, PeerConn>,
}

/// Shared agent state; owned by the tasks through an `Arc`.
#[derive(Debug)]
pub(crate) struct Inner {
    /// The agent itself, for tasks spawned from `&self` methods.
    me: std::sync::Weak<Inner>,
    home: Home,
    identifier: Identifier,
    identity_key: IdentityKey,
    cert: DeviceCertificate,
    device_key: SigningKey,
    dir: DirectoryClient,
    endpoint: Endpoint,
    session: session::SessionHandle,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    connected: watch::Sender<bool>,
    addr_rx: watch::Receiver<()>,
    config: AgentConfig,
    relay: Option<dialtone_net::RelaySettings>,
    lan: Option<lan::Lan>,
    cancel: CancellationToken,
    shutdown_requested: tokio::sync::Notify,
    kt: kt::KtClient,
    link: tokio::sync::Mutex<link::Slot>,
}

/// A running agent. Dropping it without [`Agent::shutdown`] aborts its tasks.
#[derive(Debug)]
pub struct Agent {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A cheap, clonable handle to a running agent: what front ends and bots call.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    inner: Arc<Inner>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Agent {
    /// Starts the agent: peer endpoint, directory session, local API.
    pub async fn start(config: AgentConfig) -> Result<Self, StartError> {
        let home = config.home.clone();
        let settings = home.settings()?;
        let cert = home.device_cert()?;
        let identity_key = home.identity_key()?;
        let (Some(identifier), Some(directory), true) = (
            settings.identifier.clone(),
            settings.directory.clone(),
            settings.registered,
        ) else {
            return Err(StartError::NotRegistered);
        };
        let dir = DirectoryClient::new(&directory, settings.directory_ca.as_deref())?;
        let seed = home.device_secret()?;
        let device_key = SigningKey::from_bytes(&seed);
        let relay = if config.use_relay {
            match dir.info(Duration::from_secs(5)).await {
                Ok(info) => info.relay_url.map(|url| dialtone_net::RelaySettings {
                    url,
                    quic_port: info.relay_quic_port,
                }),
                Err(e) => {
                    warn!(
                        "cannot ask the directory which relay to use ({e}); starting without one"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut ep_config = dialtone_net::EndpointConfig::new(*seed);
        ep_config.bind = config.bind.clone();
        ep_config.portmapper = config.portmapper;
        ep_config.relay = relay.clone();
        ep_config.extra_roots = dir.extra_roots();
        let endpoint = dialtone_net::bind(&ep_config).await?;
        // With a relay, publish once the endpoint knows its public address and home relay
        // (a fraction of a second), so contacts get a complete address from the start.
        if relay.is_some() && !dialtone_net::wait_online(&endpoint, Duration::from_secs(3)).await {
            warn!("the relay did not answer within 3 s; going online with local addresses only");
        }
        let addr_rx = dialtone_net::addr_changes(&endpoint);
        let lan = if config.lan {
            match lan::Lan::start(cert.device_id, &identity_key, &endpoint.bound_sockets()) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!("LAN mode (mDNS) could not start: {e}; running without it");
                    None
                }
            }
        } else {
            None
        };
        let (session, session_rx) = session::SessionHandle::new();
        let (events, _) = broadcast::channel(1024);
        let cancel = CancellationToken::new();
        let pins = home.pins()?;
        let kt_state = home.kt_state()?.filter(|s| s.directory == directory);
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            identifier,
            identity_key,
            cert,
            device_key,
            dir,
            endpoint,
            session,
            state: Mutex::new(State {
                presence: settings.state.unwrap_or(PresenceState::Online),
                message: settings.status_message.clone(),
                contacts: HashMap::new(),
                pins,
                warned: HashSet::new(),
                conns: HashMap::new(),
            }),
            events,
            connected: watch::channel(false).0,
            addr_rx,
            relay,
            lan,
            config: config.clone(),
            cancel: cancel.clone(),
            shutdown_requested: tokio::sync::Notify::new(),
            kt: kt::KtClient::new(kt_state),
            link: tokio::sync::Mutex::new(link::Slot::default()),
            home,
        });
        let mut tasks = Vec::new();
        if config.serve_api {
            let listener = api::bind(&inner.home.socket_path()).map_err(StartError::Api)?;
            tasks.push(tokio::spawn(api::serve(
                AgentHandle {
                    inner: inner.clone(),
                },
                listener,
            )));
        }
        tasks.push(tokio::spawn(session::run(
            inner.clone(),
            session_rx,
            cancel.clone(),
        )));
        tasks.push(tokio::spawn(peer::accept_loop(inner.clone())));
        tasks.push(tokio::spawn(peer::reap_idle(inner.clone())));
        tasks.push(tokio::spawn(kt::monitor_loop(
            inner.clone(),
            config.kt_monitor_interval,
        )));
        info!(device = %inner.cert.device_id.short(), "agent started");
        Ok(Self { inner, tasks })
    }

    /// A handle for front ends.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            inner: self.inner.clone(),
        }
    }

    /// Resolves when a front end asked the agent to stop (`dialtone down`).
    pub async fn shutdown_requested(&self) {
        self.inner.shutdown_requested.notified().await;
    }

    /// Stops cleanly: the directory session is closed (contacts see offline at once), peer
    /// connections are closed, the API socket is removed.
    pub async fn shutdown(mut self) {
        self.inner.cancel.cancel();
        for (_, pc) in self.inner.lock().conns.drain() {
            dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::Shutdown);
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        if let Some(lan) = &self.inner.lan {
            lan.shutdown();
        }
        self.inner.endpoint.close().await;
        if self.inner.config.serve_api {
            let _ = std::fs::remove_file(self.inner.home.socket_path());
        }
        info!("agent stopped");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere already; the state itself stays consistent
        // (every update is a single insert or remove), so keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn emit(&self, event: Event) -> u32 {
        u32::try_from(self.events.send(event).unwrap_or(0)).unwrap_or(u32::MAX)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        let changed = self.connected.send_replace(up) != up;
        if changed {
            self.emit(Event::Directory { connected: up });
        }
    }

    pub(crate) fn addr_changes(&self) -> watch::Receiver<()> {
        let mut rx = self.addr_rx.clone();
        rx.mark_unchanged();
        rx
    }

    pub(crate) fn publish_request(&self) -> Request {
        let st = self.lock();
        Request::Publish {
            state: st.presence,
            message: st.message.clone(),
            endpoint: self.endpoint_info(),
        }
    }

    /// Our addresses as published: every direct address iroh found (local interfaces and the
    /// public one learned through the relay, IPv6 first) and the relay, also before iroh
    /// reports it as home relay.
    pub(crate) fn endpoint_info(&self) -> dialtone_proto::directory::EndpointInfo {
        let mut info = dialtone_net::local_endpoint_info(&self.endpoint);
        if info.relay_url.is_none() {
            info.relay_url = self.relay.as_ref().map(|r| r.url.clone());
        }
        info
    }

    pub(crate) fn handle_internal_reply(&self, reply: Reply) {
        if let Reply::Contacts { contacts } = reply {
            let known: HashSet<Identifier> =
                contacts.iter().map(|c| c.identifier.clone()).collect();
            {
                // The full list: a pinned person missing from it, or not accepted in it, was
                // removed or blocked (perhaps while this agent was off). LAN mode must know.
                let mut st = self.lock();
                let mut changed = false;
                for (id, pin) in st.pins.iter_mut() {
                    let not_a_contact = !contacts
                        .iter()
                        .any(|c| c.identifier == *id && c.relation == Relation::Accepted);
                    changed |= pin.not_a_contact != not_a_contact;
                    pin.not_a_contact = not_a_contact;
                }
                if changed && let Err(e) = self.home.save_pins(&st.pins) {
                    warn!("cannot save pinned keys: {e}");
                }
            }
            let stale: Vec<Identifier> = self
                .lock()
                .contacts
                .keys()
                .filter(|k| !known.contains(*k))
                .cloned()
                .collect();
            for id in stale {
                // No longer a contact of any kind: nothing of theirs may stay open.
                let mut st = self.lock();
                st.contacts.remove(&id);
                close_connections_of(&mut st, &id);
            }
            for c in contacts {
                self.update_contact(c, false);
            }
        }
    }

    pub(crate) fn handle_push(&self, frame: ServerFrame) {
        match frame {
            ServerFrame::Presence { contact } => self.update_contact(contact, false),
            ServerFrame::ContactChanged { contact } => self.update_contact(contact, true),
            ServerFrame::ContactRequest { from, identity_key } => {
                self.emit(Event::ContactRequest {
                    from,
                    fingerprint: identity_key.fingerprint().to_string(),
                });
            }
            _ => {}
        }
    }

    /// Records what the directory says about a contact, pins its key on first acceptance,
    /// and warns on a key that differs from the pin.
    pub(crate) fn update_contact(&self, c: ContactEntry, relation_push: bool) {
        let mut events = Vec::new();
        {
            let mut st = self.lock();
            let old = st.contacts.get(&c.identifier).cloned();
            if relation_push || old.as_ref().is_some_and(|o| o.relation != c.relation) {
                events.push(Event::ContactChanged {
                    identifier: c.identifier.clone(),
                    relation: c.relation,
                });
            }
            if c.relation == Relation::Accepted {
                match st.pins.get(&c.identifier).cloned() {
                    None => {
                        st.pins.insert(
                            c.identifier.clone(),
                            Pin::new(c.identity_key, now_secs(), false, false),
                        );
                        if let Err(e) = self.home.save_pins(&st.pins) {
                            warn!("cannot save pinned keys: {e}");
                        }
                    }
                    Some(pin) if pin.identity_key != c.identity_key => {
                        if st.warned.insert((c.identifier.clone(), c.identity_key)) {
                            warn!(
                                "identity key of a contact changed; messages to them are refused until re-trusted"
                            );
                            events.push(Event::KeyChanged {
                                identifier: c.identifier.clone(),
                                pinned_fingerprint: pin.identity_key.fingerprint().to_string(),
                                new_fingerprint: c.identity_key.fingerprint().to_string(),
                                verified: pin.verified,
                                reset: kt::reset_kind(&pin),
                            });
                            if pin.registration_lock {
                                kt::judge_locked_change(self, c.identifier.clone(), c.identity_key);
                            }
                        }
                    }
                    Some(_) => {}
                }
                let presence_changed = old.as_ref().is_none_or(|o| {
                    o.presence.state != c.presence.state || o.presence.message != c.presence.message
                });
                if presence_changed {
                    events.push(Event::Presence {
                        identifier: c.identifier.clone(),
                        state: c.presence.state,
                        message: c.presence.message.clone(),
                    });
                }
            }
            if c.relation != Relation::Accepted {
                // Removed, blocked, or only asked: they may not talk to us (any more).
                close_connections_of(&mut st, &c.identifier);
            }
            let not_a_contact = c.relation != Relation::Accepted;
            if let Some(pin) = st.pins.get_mut(&c.identifier)
                && pin.not_a_contact != not_a_contact
            {
                // Remembered for LAN mode, which cannot ask the directory.
                pin.not_a_contact = not_a_contact;
                if let Err(e) = self.home.save_pins(&st.pins) {
                    warn!("cannot save pinned keys: {e}");
                }
            }
            if c.relation == Relation::None {
                st.contacts.remove(&c.identifier);
            } else {
                // Connections to devices that went offline are dead or soon will be: forget
                // them, so the next message dials afresh instead of waiting on a stale path.
                let online: HashSet<DeviceId> = c
                    .presence
                    .devices
                    .iter()
                    .map(|d| d.cert.device_id)
                    .collect();
                let gone: Vec<DeviceId> = st
                    .conns
                    .iter()
                    .filter(|(d, pc)| pc.identifier == c.identifier && !online.contains(*d))
                    .map(|(d, _)| *d)
                    .collect();
                if !gone.is_empty() {
                    // A device that left may have been revoked: check the list afresh.
                    self.kt.forget(&c.identifier);
                }
                for d in gone {
                    if let Some(pc) = st.conns.remove(&d) {
                        dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::Idle);
                    }
                }
                st.contacts.insert(c.identifier.clone(), c);
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    fn key_status(&self, st: &State, c: &ContactEntry) -> &'static str {
        match st.pins.get(&c.identifier) {
            None => "unpinned",
            Some(p) if p.identity_key == c.identity_key => "pinned",
            Some(_) => "changed",
        }
    }
}

impl AgentHandle {
    /// Streams events (messages, presence, requests, warnings) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Our identity, state and connectivity.
    pub fn status(&self) -> StatusView {
        let st = self.inner.lock();
        StatusView {
            identifier: self.inner.identifier.clone(),
            fingerprint: self.inner.identity_key.fingerprint().to_string(),
            device: self.inner.cert.device_id,
            state: st.presence,
            message: st.message.clone(),
            directory_connected: *self.inner.connected.borrow(),
            directory: self.inner.dir.base().to_owned(),
            connections: st.conns.len(),
            endpoint: self.inner.endpoint_info(),
            relay: self.inner.relay.as_ref().map(|r| r.url.clone()),
            direct_only: self.inner.config.direct_only,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// Devices seen on the LAN (LAN mode), with the pinned contact each one announces, if any.
    pub fn lan_peers(&self) -> Vec<serde_json::Value> {
        let Some(lan) = &self.inner.lan else {
            return Vec::new();
        };
        let st = self.inner.lock();
        lan.peers()
            .into_iter()
            .map(|p| {
                let contact = st
                    .pins
                    .iter()
                    .find(|(_, pin)| {
                        !pin.not_a_contact && lan::key_tag(&pin.identity_key) == p.key_tag
                    })
                    .map(|(id, _)| id.clone());
                serde_json::json!({
                    "device": p.device,
                    "addrs": p.addrs,
                    "contact": contact,
                })
            })
            .collect()
    }

    /// Open peer connections with their current path (read live from iroh: a connection that
    /// moved from the relay to a direct path shows as direct at once).
    pub fn connections(&self) -> Vec<ConnectionView> {
        let st = self.inner.lock();
        let mut v: Vec<ConnectionView> = st
            .conns
            .iter()
            .filter(|(_, pc)| pc.conn.close_reason().is_none())
            .map(|(device, pc)| ConnectionView {
                identifier: pc.identifier.clone(),
                device: *device,
                conn_id: pc.conn.stable_id() as u64,
                path: dialtone_net::selected_path(&pc.conn),
                idle_secs: pc.last_used.elapsed().as_secs(),
            })
            .collect();
        v.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        v
    }

    /// Sets our presence; contacts get it pushed by the directory. Kept for the next start.
    pub fn set_status(
        &self,
        state: PresenceState,
        message: Option<String>,
    ) -> Result<(), SendError> {
        if state == PresenceState::Offline {
            return Err(SendError::Invalid(
                "'offline' cannot be set: use 'invisible' to appear offline, or `dialtone down`"
                    .into(),
            ));
        }
        if message
            .as_ref()
            .is_some_and(|m| m.len() > MAX_STATUS_MESSAGE_LEN)
        {
            return Err(SendError::Invalid(format!(
                "status message is longer than {MAX_STATUS_MESSAGE_LEN} bytes"
            )));
        }
        {
            let mut st = self.inner.lock();
            st.presence = state;
            st.message = message.clone();
        }
        let mut settings = self
            .inner
            .home
            .settings()
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        settings.state = Some(state);
        settings.status_message = message;
        self.inner
            .home
            .save_settings(&settings)
            .map_err(|e| SendError::Invalid(e.to_string()))?;
        self.inner.session.notify(self.inner.publish_request());
        Ok(())
    }

    /// Contacts, requests and blocks, with live presence (from the directory's pushes).
    pub fn contacts(&self) -> Vec<ContactView> {
        let live = *self.inner.connected.borrow();
        let confirmed_at = if live {
            Some(SystemTime::now())
        } else {
            self.inner.session.confirmed_at()
        }
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
        let st = self.inner.lock();
        let mut v: Vec<ContactView> = st
            .contacts
            .values()
            .map(|c| ContactView {
                identifier: c.identifier.clone(),
                relation: c.relation,
                state: c.presence.state,
                message: c.presence.message.clone(),
                fingerprint: c.identity_key.fingerprint().to_string(),
                key: self.inner.key_status(&st, c),
                devices: c.presence.devices.len(),
                verified: st
                    .pins
                    .get(&c.identifier)
                    .is_some_and(|p| p.verified && p.identity_key == c.identity_key),
                live,
                confirmed_at,
            })
            .collect();
        v.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        v
    }

    /// Sends a contact request (refused if they are offline) or accepts theirs.
    pub async fn add_contact(&self, who: Identifier) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRequest { to: who })
            .await?;
        self.refresh_contacts().await
    }

    /// Accepts or rejects a contact request.
    pub async fn respond(&self, who: Identifier, accept: bool) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRespond { from: who, accept })
            .await?;
        self.refresh_contacts().await
    }

    /// Removes a contact.
    pub async fn remove_contact(&self, who: Identifier) -> Result<(), SessionError> {
        self.inner
            .session
            .request(Request::ContactRemove { identifier: who })
            .await?;
        self.refresh_contacts().await
    }

    /// Blocks or unblocks someone.
    pub async fn block(&self, who: Identifier, block: bool) -> Result<(), SessionError> {
        let req = if block {
            Request::Block { identifier: who }
        } else {
            Request::Unblock { identifier: who }
        };
        self.inner.session.request(req).await?;
        self.refresh_contacts().await
    }

    async fn refresh_contacts(&self) -> Result<(), SessionError> {
        let reply = self.inner.session.request(Request::Contacts).await?;
        self.inner.handle_internal_reply(reply);
        Ok(())
    }

    /// Checks `key` against the transparency log before it is pinned.
    async fn prove(&self, who: &Identifier, key: &IdentityKey) -> Result<(), SendError> {
        match kt::ensure(&self.inner, who, key).await {
            Ok(()) => Ok(()),
            Err(f) if f.is_attack() => Err(SendError::Refused {
                refusal: Refusal::DirectoryUntrusted,
                message: format!("WARNING: {f}. The key was not trusted."),
            }),
            Err(f) => Err(SendError::Invalid(f.to_string())),
        }
    }

    /// Accepts a contact's new identity key after a key change (re-pins it). Refused for a
    /// contact whose key was verified: they must be verified again ([`AgentHandle::verify`]).
    pub async fn trust(&self, who: Identifier) -> Result<String, SendError> {
        let contact = self.lookup(who.clone()).await?;
        self.prove(&who, &contact.identity_key).await?;
        {
            let mut st = self.inner.lock();
            if let Some(pin) = st.pins.get(&who)
                && pin.verified
                && pin.identity_key != contact.identity_key
            {
                return Err(SendError::Invalid(format!(
                    "you had verified {who}'s key, and it changed: compare the new safety number with \
                     `dialtone contacts verify {who}`, then confirm with --confirm"
                )));
            }
            self.pin_proven(&mut st, &who, contact.identity_key, false)?;
        }
        self.reconfirm(&who, &contact).await?;
        Ok(contact.identity_key.fingerprint().to_string())
    }

    /// Pins `key` for `who` as proven by the transparency log (and `verified` after a
    /// safety-number check), and saves the pins.
    fn pin_proven(
        &self,
        st: &mut State,
        who: &Identifier,
        key: IdentityKey,
        verified: bool,
    ) -> Result<(), SendError> {
        // The same key pinned already: what its proven lists taught (the newest list version,
        // its devices, its lock) stays; only `verified` and `proven` change.
        let mut pin = match st.pins.remove(who) {
            Some(old) if old.identity_key == key => Pin {
                verified,
                proven: true,
                ..old
            },
            _ => Pin::new(key, now_secs(), verified, true),
        };
        kt::fill_pin(&self.inner, who, &mut pin);
        st.pins.insert(who.clone(), pin);
        self.inner
            .home
            .save_pins(&st.pins)
            .map_err(|e| SendError::Invalid(e.to_string()))
    }

    /// After a contact's key changed, the directory shows them our presence again only once
    /// we confirm their new key: a contact request to an accepted contact does that.
    async fn reconfirm(&self, who: &Identifier, contact: &ContactEntry) -> Result<(), SendError> {
        if contact.relation == Relation::Accepted {
            self.inner
                .session
                .request(Request::ContactRequest { to: who.clone() })
                .await?;
        }
        Ok(())
    }

    /// The safety number with `who` over our identity key and the key the directory has for
    /// them now; with `confirm`, pins that key as verified.
    pub async fn verify(&self, who: Identifier, confirm: bool) -> Result<SafetyView, SendError> {
        let contact = self.lookup(who.clone()).await?;
        if confirm {
            self.prove(&who, &contact.identity_key).await?;
        }
        let number = dialtone_proto::safety::SafetyNumber::new(
            (&self.inner.identifier, &self.inner.identity_key),
            (&who, &contact.identity_key),
        );
        if confirm {
            self.pin_proven(&mut self.inner.lock(), &who, contact.identity_key, true)?;
            self.reconfirm(&who, &contact).await?;
        }
        let st = self.inner.lock();
        let verified = st
            .pins
            .get(&who)
            .is_some_and(|p| p.verified && p.identity_key == contact.identity_key);
        Ok(SafetyView {
            identifier: who,
            safety_number: number.to_string(),
            qr_payload: number.qr_payload(),
            fingerprint: contact.identity_key.fingerprint().to_string(),
            key: self.inner.key_status(&st, &contact),
            verified,
        })
    }

    /// Sends a text message to every online device of `to`; returns once at least one
    /// device acknowledged it, or a typed refusal. Nothing is queued.
    pub async fn send(&self, to: Identifier, body: String) -> Result<Delivery, SendError> {
        peer::send_text(&self.inner, to, body).await
    }

    /// Closes every peer connection (the next message dials afresh).
    pub fn drop_connections(&self) {
        for (_, pc) in self.inner.lock().conns.drain() {
            dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::Idle);
        }
    }

    /// Asks the directory about someone: keys always; presence and addresses only if they
    /// are an accepted contact.
    pub async fn lookup(&self, who: Identifier) -> Result<ContactEntry, SessionError> {
        match self
            .inner
            .session
            .request(Request::Lookup { identifier: who })
            .await?
        {
            Reply::Lookup { contact } => Ok(contact),
            _ => Err(SessionError::Timeout),
        }
    }

    /// Resolves once the directory session is up (or after `timeout`); returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// This device's key.
    pub fn device_id(&self) -> DeviceId {
        self.inner.cert.device_id
    }

    /// Asks the agent's owner to stop (what `dialtone down` does).
    pub fn request_shutdown(&self) {
        self.inner.shutdown_requested.notify_one();
    }
}

pub(crate) fn new_message_id() -> MessageId {
    let mut id = [0u8; 16];
    rand::fill(&mut id[..]);
    MessageId(id)
}

pub(crate) fn timestamp_ms() -> u64 {
    now_ms()
}

/// Closes every peer connection with `who`'s devices (they are not an accepted contact).
fn close_connections_of(st: &mut State, who: &Identifier) {
    let gone: Vec<DeviceId> = st
        .conns
        .iter()
        .filter(|(_, pc)| pc.identifier == *who)
        .map(|(d, _)| *d)
        .collect();
    for d in gone {
        if let Some(pc) = st.conns.remove(&d) {
            dialtone_net::close(&pc.conn, dialtone_proto::wire::CloseCode::NotAContact);
        }
    }
}
