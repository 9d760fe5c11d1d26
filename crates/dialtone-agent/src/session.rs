//! The agent's one WebSocket session to the directory, kept open for as long as the agent
//! runs: it *is* the device's presence.
//!
//! One task owns the socket. Front ends reach it through [`SessionHandle::request`], which
//! fails at once while the session is down (nothing waits for the directory to come back).
//! The task reconnects by itself, then re-publishes presence and re-reads the contact list.
//! The delays between attempts are drawn at random ("full jitter") below a cap that doubles
//! from 250 ms: up to [`QUICK_CAP`] for [`QUICK_PHASE`] after a loss, so a device whose
//! link came back (Wi-Fi roaming, a hand-over) is back within about two seconds, while the
//! directory still holds its presence for it (its grace period); [`SLOW_CAP`] after that, so
//! that when a directory restarts its agents come back spread out rather than all at once.
//! A directory restart with N agents therefore sees their logins spread over a few seconds.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dialtone_proto::directory::{ClientFrame, ErrorBody, Reply, Request, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Inner, dirclient::DirectoryError};

type Sink = futures_util::stream::SplitSink<crate::dirclient::SessionStream, WsMessage>;

async fn send(
    sink: &mut Sink,
    id: u64,
    request: Request,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let text = serde_json::to_string(&ClientFrame { id, request }).unwrap_or_default();
    // A directory that stops reading must not hold the session (and every request) forever:
    // give up on the write and reconnect.
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(WsMessage::Text(text.into()))).await {
        Ok(r) => r,
        Err(_) => Err(tokio_tungstenite::tungstenite::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the directory did not take a request within 10 s",
            ),
        )),
    }
}

/// How long a write to the directory may take before the session is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The agent is not connected to the directory right now.
    #[error("not connected to the directory (it may be down or unreachable); try again shortly")]
    NotConnected,
    /// The directory refused the request.
    #[error("{}", .0.message)]
    Refused(ErrorBody),
    /// The directory did not answer in time.
    #[error("the directory did not answer in time")]
    Timeout,
}

type Pending = oneshot::Sender<Result<Reply, SessionError>>;

/// The longest wait between attempts for [`QUICK_PHASE`] after the session was lost.
const QUICK_CAP: Duration = Duration::from_secs(2);
/// How long after a loss attempts stay quick.
const QUICK_PHASE: Duration = Duration::from_secs(30);
/// The longest wait between attempts after that.
const SLOW_CAP: Duration = Duration::from_secs(10);

/// Cheap handle to the session task.
#[derive(Debug, Clone)]
pub(crate) struct SessionHandle {
    tx: mpsc::Sender<(Request, Option<Pending>)>,
    /// When the session was last known to be up (Unix ms; 0: never).
    confirmed: Arc<AtomicU64>,
}

impl SessionHandle {
    pub(crate) fn new() -> (Self, mpsc::Receiver<(Request, Option<Pending>)>) {
        let (tx, rx) = mpsc::channel(256);
        let confirmed = Arc::new(AtomicU64::new(0));
        (Self { tx, confirmed }, rx)
    }

    /// When the session was last known to be up: the directory's pushes (contacts'
    /// presence) are current up to then. `None` if it never came up.
    pub(crate) fn confirmed_at(&self) -> Option<SystemTime> {
        match self.confirmed.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    fn confirm(&self) {
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self.confirmed.store(ms, Ordering::Relaxed);
    }

    /// Sends a request and waits (at most 10 s) for the directory's answer.
    pub(crate) async fn request(&self, req: Request) -> Result<Reply, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((req, Some(tx)))
            .await
            .map_err(|_| SessionError::NotConnected)?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SessionError::NotConnected),
            Err(_) => Err(SessionError::Timeout),
        }
    }

    /// Sends a request without waiting for the answer (e.g. a presence publish).
    pub(crate) fn notify(&self, req: Request) {
        let _ = self.tx.try_send((req, None));
    }
}

/// Runs the session until `cancel`, reconnecting as needed.
pub(crate) async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<(Request, Option<Pending>)>,
    cancel: CancellationToken,
) {
    let mut cap = Duration::from_millis(250);
    let mut lost_at = tokio::time::Instant::now();
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return,
            r = inner.dir.open_session(&inner.device_key) => r,
        };
        let mut limit = if lost_at.elapsed() < QUICK_PHASE {
            QUICK_CAP
        } else {
            SLOW_CAP
        };
        match attempt {
            Ok(opened) => {
                debug!(resumed = opened.resumed, "directory session opened");
                let clean = serve(&inner, opened, &mut rx, &cancel).await;
                inner.set_connected(false);
                if clean || cancel.is_cancelled() {
                    return;
                }
                cap = Duration::from_millis(250);
                lost_at = tokio::time::Instant::now();
                limit = QUICK_CAP;
            }
            Err(DirectoryError::Refused { body, .. }) => {
                warn!(error = ?body.error, "directory refused the session: {}", body.message);
                if body.error == dialtone_proto::directory::ErrorCode::UnknownDevice {
                    crate::kt::revoked(&inner, false);
                }
                // A refusal will not go away by itself within seconds.
                limit = SLOW_CAP;
            }
            Err(e) => debug!("directory session failed: {e}"),
        }
        // Full jitter: anywhere below the cap, so that agents that lost the directory at the
        // same moment (a restart) do not come back at the same moment.
        let wait = Duration::from_millis(rand::random_range(
            0..=u64::try_from(cap.min(limit).as_millis()).unwrap_or(1),
        ));
        cap = (cap * 2).min(limit);
        // Refuse requests while disconnected rather than letting them wait.
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = &mut deadline => break,
                Some((_, reply)) = rx.recv() => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(SessionError::NotConnected));
                    }
                }
            }
        }
    }
}

/// Serves one connected session. Returns true on a clean local shutdown.
async fn serve(
    inner: &Arc<Inner>,
    opened: crate::dirclient::Opened,
    rx: &mut mpsc::Receiver<(Request, Option<Pending>)>,
    cancel: &CancellationToken,
) -> bool {
    let (mut sink, mut stream) = opened.ws.split();
    let mut pending: HashMap<u64, Option<Pending>> = HashMap::new();
    let mut next_id: u64 = 1;
    // Until the directory's Welcome tells us its heartbeat, assume the default.
    let mut silence_limit = Duration::from_secs(10);
    let mut last_heard = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut addr_changes = inner.addr_changes();

    // Announce ourselves and sync contacts before anything else. The session counts as up
    // (`connected`) once the directory answered both: our presence is then published, so a
    // contact's request for us finds us online.
    let ready_id = 2;
    let mut welcomed = false;
    let mut answered = false;
    if let Some(welcome) = opened.welcome {
        match welcome_limit(inner, welcome) {
            Some(limit) => {
                silence_limit = limit;
                welcomed = true;
            }
            None => return false,
        }
    }
    for req in [inner.publish_request(), Request::Contacts] {
        pending.insert(next_id, None);
        if send(&mut sink, next_id, req).await.is_err() {
            return false;
        }
        next_id += 1;
    }

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let _ = sink.send(WsMessage::Close(None)).await;
                    let _ = sink.close().await;
                })
                .await;
                fail_all(&mut pending);
                return true;
            }
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let text = match frame {
                    Some(Ok(WsMessage::Text(t))) => t,
                    Some(Ok(WsMessage::Close(_))) | None => break,
                    Some(Ok(_)) => continue, // pings are answered by tungstenite
                    Some(Err(e)) => {
                        debug!("directory session error: {e}");
                        break;
                    }
                };
                let frame: ServerFrame = match serde_json::from_str(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!("directory sent an unreadable frame: {e}");
                        continue;
                    }
                };
                let ready = !answered
                    && matches!(&frame, ServerFrame::Reply { id, .. } | ServerFrame::Error { id, .. } if *id == ready_id);
                match frame {
                    welcome @ ServerFrame::Welcome { .. } => {
                        let Some(limit) = welcome_limit(inner, welcome) else { break };
                        silence_limit = limit;
                        welcomed = true;
                        if answered {
                            inner.set_connected(true);
                            inner.session.confirm();
                            info!("directory session up");
                        }
                    }
                    ServerFrame::Reply { id, reply } => {
                        match pending.remove(&id) {
                            Some(Some(tx)) => { let _ = tx.send(Ok(reply)); }
                            Some(None) => inner.handle_internal_reply(reply),
                            None => {}
                        }
                    }
                    ServerFrame::Error { id, error } => {
                        match pending.remove(&id) {
                            Some(Some(tx)) => { let _ = tx.send(Err(SessionError::Refused(error))); }
                            _ => warn!(error = ?error.error, "directory error: {}", error.message),
                        }
                    }
                    push => inner.handle_push(push),
                }
                if ready {
                    answered = true;
                    if welcomed {
                        inner.set_connected(true);
                        info!("directory session up");
                    }
                }
                if welcomed && answered {
                    inner.session.confirm();
                }
            }
            Some((req, reply)) = rx.recv() => {
                let id = next_id;
                next_id += 1;
                pending.insert(id, reply);
                if send(&mut sink, id, req).await.is_err() {
                    break;
                }
            }
            Ok(()) = addr_changes.changed() => {
                let id = next_id;
                next_id += 1;
                pending.insert(id, None);
                if send(&mut sink, id, inner.publish_request()).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > silence_limit {
                    warn!("directory session silent for {silence_limit:?}; reconnecting");
                    break;
                }
                // The kernel ends a dead link within seconds (TCP keepalive): until then,
                // what the directory told us is current.
                if welcomed && answered {
                    inner.session.confirm();
                }
            }
        }
    }
    fail_all(&mut pending);
    false
}

/// The silence after which the session is given up, from the directory's Welcome; `None`
/// (close the session) if it was opened for anyone but this device.
fn welcome_limit(inner: &Inner, welcome: ServerFrame) -> Option<Duration> {
    let ServerFrame::Welcome {
        identifier,
        identity_key,
        device_id,
        heartbeat_secs,
    } = welcome
    else {
        return None;
    };
    // A session opened for anyone but us (a directory that moved our device to another
    // account) must not carry our addresses or presence.
    if identifier != inner.identifier
        || identity_key != inner.identity_key
        || device_id != inner.cert.device_id
    {
        warn!(
            "the directory opened this session for {identifier} (key {}), not for this \
             device's identity: closing it; re-register this device",
            identity_key.fingerprint()
        );
        return None;
    }
    Some(Duration::from_secs(heartbeat_secs.clamp(1, 60) * 3 + 1))
}

fn fail_all(pending: &mut HashMap<u64, Option<Pending>>) {
    for (_, tx) in pending.drain() {
        if let Some(tx) = tx {
            let _ = tx.send(Err(SessionError::NotConnected));
        }
    }
}
