//! One device's session: the upgrade that opens it, and the hand-written future that runs it
//! from the Welcome to the close.

use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
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
    DeviceCertificate, DeviceId,
    directory::{EndpointInfo, ErrorBody, ErrorCode, MAX_WS_FRAME_LEN, ServerFrame},
    keys::{Signature, session_transcript},
    rules::TokenBucket,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tracing::debug;
use tungstenite::Utf8Bytes;

use crate::{
    AppState,
    http::{ApiError, ClientAddr, now_secs},
    store::{Account, q},
    ws::{self, Incoming, WsConn, WsError},
};

use super::{
    ops::handle_text,
    registry::{DeviceSession, PushQueue, encode},
};

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
    Extension(addr): Extension<ClientAddr>,
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
    // No query: the one-connection login (see `super::login`), after the upgrade.
    if p.device_id.is_none() && p.challenge.is_none() && p.signature.is_none() {
        // Limited per address as the HTTP challenge is: each login costs a signature check.
        crate::http::check(
            &st.limits.requests_ip,
            crate::http::ip_of(&addr),
            "logins from your address",
        )?;
        let ws = ws.map_err(|_| {
            bad(
                ErrorCode::BadRequest,
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade",
            )
        })?;
        let (response, on_upgrade) = ws.accept();
        st.sessions.tasks.spawn(Session::Upgrading {
            on_upgrade,
            st: st.clone(),
            start: None,
        });
        return Ok(response);
    }
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
    let found = st.store.run(move |c| q::device(c, &device)).await?;
    let Some((account, cert)) = found else {
        return Err(bad(
            ErrorCode::UnknownDevice,
            StatusCode::NOT_FOUND,
            "this device is not registered",
        ));
    };
    // The registration lock lapses only after a long time without a session.
    st.sessions.seen_soon(&account.identifier);
    let ws = ws.map_err(|_| {
        bad(
            ErrorCode::BadRequest,
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade",
        )
    })?;
    let start = Some(Box::new(Start {
        account,
        cert,
        mark,
    }));
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
pub(super) struct Start {
    pub(super) account: Account,
    pub(super) cert: DeviceCertificate,
    /// [`Sessions::revocation_mark`] before the device was found registered.
    pub(super) mark: u64,
}

/// The WebSocket of a session, over the connection the upgrade handed over.
pub(super) type Conn = WsConn<TokioIo<hyper::upgrade::Upgraded>>;

pub(super) struct Ctx {
    pub(super) account: Account,
    pub(super) session: u64,
    pub(super) limiter: TokenBucket,
}

/// What a live session holds. Kept small: every online device has one.
pub(super) struct Live {
    st: Arc<AppState>,
    conn: Conn,
    ctx: Ctx,
    queue: Arc<PushQueue>,
    /// The next heartbeat ping.
    ping: Pin<Box<tokio::time::Sleep>>,
    /// When the device was last heard from.
    last_heard: Instant,
    /// The link went silent (a dead link, a timeout), rather than the device closing it: its
    /// presence is kept for the grace period (see [`close`]).
    lost: bool,
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
        /// Who it is; `None` for the one-connection login, which finds out after the upgrade.
        start: Option<Box<Start>>,
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
    /// The session must end: replaced, stuck or shut down.
    End,
    /// Nothing was heard from the device for the session timeout.
    Silent,
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
                    *this = match start {
                        Some(start) => {
                            let (live, welcome) = open_session(st, conn, *start);
                            Session::Busy(Box::pin(welcome_step(live, welcome)))
                        }
                        None => Session::Busy(Box::pin(super::login::login_step(st, conn))),
                    };
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
            return Poll::Ready(Event::Silent);
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
pub(super) fn open_session(
    st: Arc<AppState>,
    conn: Conn,
    start: Start,
) -> (Live, Option<Utf8Bytes>) {
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
        lost: false,
    };
    (live, welcome)
}

/// The session's first step: the Welcome frame.
pub(super) async fn welcome_step(mut live: Live, welcome: Option<Utf8Bytes>) -> Option<Live> {
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
            live.lost = is_lost(&e);
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
        Event::Silent => {
            live.lost = true;
            false
        }
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
///
/// A session whose link went silent ([`Live::lost`]) stays in the registry, as it was, for
/// `[session] grace`: a device back within it (a cut of a few seconds) resumes, its new
/// session taking over what this one published ([`Sessions::register`]), and its contacts
/// see no change; if it is not back by then, they are told it is offline. Its pushes are
/// dropped meanwhile (its queue is ended) and peers trying it find it unreachable.
async fn close(live: Live, code: Option<u16>) -> Option<Live> {
    let Live {
        st,
        ctx,
        mut conn,
        queue,
        lost,
        ..
    } = live;
    let id = ctx.session;
    let grace = st.config.session.grace;
    let linger = lost && !grace.is_zero() && !st.sessions.shutdown.is_cancelled();
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
    if linger {
        queue.kill();
        debug!(
            session = id,
            ?grace,
            "session lost; its presence is kept for the grace period"
        );
        let who = ctx.account.identifier;
        let st2 = st.clone();
        st.sessions.tasks.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(grace) => {}
                () = st2.sessions.shutdown.cancelled() => {}
            }
            // Held until now: the registry's orphan sweep takes only sessions nobody holds.
            drop(queue);
            if st2.sessions.remove_session(&who, id) {
                debug!(session = id, "grace period over: offline");
                Box::pin(st2.sessions.fan_out(&st2, &who)).await;
            }
        });
        return None;
    }
    drop(queue);
    // Out of the registry first: once the client sees the close frame, the session is gone.
    let removed = st.sessions.remove_session(&ctx.account.identifier, id);
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
    match tokio::time::timeout(limit, sent).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            live.lost = is_lost(&e);
            false
        }
        Err(_) => {
            live.lost = true;
            false
        }
    }
}

/// Whether a connection error means the link went silent (the kernel's keepalive or user
/// timeout, or a network gone), not that the device closed it.
fn is_lost(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{HostUnreachable, NetworkUnreachable, TimedOut};
    matches!(e.kind(), TimedOut | HostUnreachable | NetworkUnreachable)
}
