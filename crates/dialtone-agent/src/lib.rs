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
mod contacts;
pub mod dirclient;
pub mod doctor;
mod events;
mod frontends;
pub mod home;
pub mod kt;
pub mod lan;
pub mod link;
mod peer;
mod recent;
mod send;
mod session;
mod status;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dialtone_net::{Connection, Endpoint};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey,
    directory::{ContactEntry, PresenceState, Request},
};
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use dirclient::{DirectoryClient, DirectoryError};
pub use events::Event;
pub use frontends::{
    DELIVER_WAIT, FrontEndId, MAX_FRONT_ENDS, QUEUE_LEN, STUCK_AFTER, Subscription,
};
pub use home::{Home, HomeError};
pub use send::{
    CLIENT_ID_TTL, Delivery, DeviceDelivery, MAX_CLIENT_ID_LEN, SendError, SendOptions,
};
pub use session::SessionError;
pub use status::{ConnectionView, ContactView, SafetyView, StatusView};

pub(crate) use send::{new_message_id, timestamp_ms};

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

#[derive(Debug)]
pub(crate) struct PeerConn {
    conn: Connection,
    identifier: Identifier,
    last_used: Instant,
    /// The features both sides announced in their hellos: all this side may use.
    features: dialtone_proto::wire::Features,
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
    /// The front ends events and messages are handed to.
    events: Arc<frontends::FrontEnds>,
    /// `message.send`'s `client_id`s (to, client id) → outcome: a retry is not sent again.
    sent: recent::Recent<(Identifier, String), send::Outcome>,
    /// Messages shown lately (sender's device, id) → our answer: a duplicate is answered
    /// again, not shown twice.
    seen: recent::Recent<(DeviceId, dialtone_proto::wire::MessageId), dialtone_proto::wire::Frame>,
    connected: watch::Sender<bool>,
    addr_rx: watch::Receiver<()>,
    config: AgentConfig,
    relay: Option<dialtone_net::RelaySettings>,
    lan: Option<lan::Lan>,
    cancel: CancellationToken,
    shutdown_requested: tokio::sync::Notify,
    kt: kt::KtClient,
    link: tokio::sync::Mutex<link::Slot>,
    /// Peer-side limits, the stranger-lookup bound, single-flight dials (`peer::guard`).
    peer: Arc<peer::PeerState>,
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
            events: Arc::default(),
            sent: recent::Recent::new(send::CLIENT_IDS_KEPT, CLIENT_ID_TTL),
            seen: recent::Recent::new(4096, Duration::from_secs(120)),
            connected: watch::channel(false).0,
            addr_rx,
            relay,
            lan,
            config: config.clone(),
            cancel: cancel.clone(),
            shutdown_requested: tokio::sync::Notify::new(),
            kt: kt::KtClient::new(kt_state),
            link: tokio::sync::Mutex::new(link::Slot::default()),
            peer: Arc::new(peer::PeerState::new()),
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
        self.inner.events.close_all();
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
}

impl AgentHandle {
    /// Streams events (messages, presence, requests, warnings) from now on, as a front end:
    /// a message counts as shown once this subscription returned it, and one that does not
    /// read its events promptly is cut off (see [`Subscription`]). `None` if
    /// [`MAX_FRONT_ENDS`] front ends are attached already.
    pub fn subscribe(&self) -> Option<Subscription> {
        self.inner.events.attach()
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
