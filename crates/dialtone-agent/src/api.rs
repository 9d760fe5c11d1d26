//! The local API: JSON-RPC 2.0, one JSON object per line, on the Unix socket `agent.sock` in
//! the agent's home (mode 0600: only its owner can use it). `docs/local-api.md` lists every
//! method with examples. A connection may call `events.subscribe`; from then on the agent also
//! writes event notifications (`{"jsonrpc":"2.0","method":"event","params":{…}}`) to it.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use dialtone_proto::{Identifier, Refusal, directory::PresenceState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::AsyncWriteExt,
    net::{UnixListener, UnixStream},
    sync::{Semaphore, mpsc},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{AgentHandle, FrontEndId, SendError, SendOptions, SessionError, Subscription};

mod client;
mod lines;
mod request;

pub use client::{Client, ClientError};
use lines::{Line, LineReader};
use request::RawRequest;

/// Longest request line, in bytes; a longer one is skipped (nothing of it is kept) and
/// answered `-32600`.
pub const MAX_LINE: usize = 256 * 1024;
/// Requests in flight at once on one connection; one more is answered `-32004` at once.
pub const MAX_IN_FLIGHT: usize = 32;
/// Connections served at once; one more is told so (`-32004`) and closed.
pub const MAX_CONNECTIONS: usize = 128;
/// Longest line a [`Client`] accepts from the agent.
pub const CLIENT_MAX_LINE: usize = 8 * 1024 * 1024;
/// Notifications a [`Client`] keeps while it waits for an answer in [`Client::call`].
pub const CLIENT_KEPT: usize = 1024;

/// JSON-RPC error codes of the local API besides the standard ones and the refusals
/// ([`Refusal::rpc_code`], `-32010` … `-32020`).
pub mod codes {
    /// Invalid JSON.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The agent is not connected to the directory.
    pub const NOT_CONNECTED: i64 = -32001;
    /// The directory refused the request; `data` has its error body.
    pub const DIRECTORY: i64 = -32002;
    /// The agent failed.
    pub const AGENT: i64 = -32003;
    /// Too many requests in flight on this connection, connections, or front ends.
    pub const TOO_MANY: i64 = -32004;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// Code (see [`codes`] and [`Refusal::rpc_code`]).
    pub code: i64,
    /// A sentence for a person.
    pub message: String,
    /// Details: `{"refusal": "offline"}` or the directory's error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// The refusal this error carries, if it is one.
    pub fn refusal(&self) -> Option<Refusal> {
        self.data
            .as_ref()?
            .get("refusal")?
            .as_str()
            .and_then(Refusal::from_wire)
    }
}

impl From<SessionError> for RpcError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Refused(body) => Self {
                code: codes::DIRECTORY,
                message: body.message.clone(),
                data: serde_json::to_value(&body).ok(),
            },
            e => Self::new(codes::NOT_CONNECTED, e.to_string()),
        }
    }
}

impl From<crate::link::LinkError> for RpcError {
    fn from(e: crate::link::LinkError) -> Self {
        match e {
            crate::link::LinkError::Session(s) => s.into(),
            e => Self::new(codes::AGENT, e.to_string()),
        }
    }
}

impl From<SendError> for RpcError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Refused { refusal, message } => Self {
                code: refusal.rpc_code(),
                message,
                data: Some(json!({ "refusal": refusal.as_str() })),
            },
            SendError::Session(s) => s.into(),
            SendError::DirectoryUnavailable(m) => Self::new(codes::NOT_CONNECTED, m),
            SendError::Invalid(m) => Self::new(codes::INVALID_PARAMS, m),
        }
    }
}

/// Binds the socket, replacing a stale one but refusing to steal a live agent's.
pub(crate) fn bind(path: &Path) -> Result<UnixListener, String> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "an agent is already running for this home ({}); stop it with `dialtone down`",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(listener)
}

pub(crate) async fn serve(agent: AgentHandle, listener: UnixListener) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut stream = tokio::select! {
            _ = agent.inner.cancel.cancelled() => return,
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!("local api accept failed: {e}");
                    continue;
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Told why, then closed; never left waiting.
            let busy = error_response(
                Value::Null,
                RpcError::new(
                    codes::TOO_MANY,
                    format!("the agent serves {MAX_CONNECTIONS} connections at most; close one"),
                ),
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(&line_bytes(&busy)),
                )
                .await;
            });
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            serve_conn(agent, stream).await;
            drop(permit);
        });
    }
}

/// What a connection's writer writes: answers, in the order they are ready, and then, once
/// subscribed, the front end's events.
enum Out {
    Line(Value),
    Subscribed(Value, Subscription),
}

/// One connection: a reader (this task), one task per request in flight, and a writer that
/// owns the socket's write half. Requests run concurrently and are answered by id; events
/// flow while requests are in flight.
async fn serve_conn(agent: AgentHandle, stream: UnixStream) {
    let (read, write) = stream.into_split();
    let cancel = agent.inner.cancel.child_token();
    // Each request in flight holds a permit until its answer is queued, so this never holds
    // more than MAX_IN_FLIGHT answers plus the reader's own.
    let (out, out_rx) = mpsc::channel::<Out>(MAX_IN_FLIGHT + 2);
    let writer = tokio::spawn(write_loop(write, out_rx, cancel.clone()));
    tokio::select! {
        () = cancel.cancelled() => {}
        () = read_loop(&agent, read, out, &cancel) => {}
    }
    // The client closed its side: requests in flight still answer; the writer ends once they
    // have.
    let _ = writer.await;
    cancel.cancel();
}

async fn read_loop(
    agent: &AgentHandle,
    mut read: tokio::net::unix::OwnedReadHalf,
    out: mpsc::Sender<Out>,
    cancel: &CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let front_end: Arc<OnceLock<FrontEndId>> = Arc::default();
    let mut lines = LineReader::new(MAX_LINE);
    loop {
        let line = match lines.next(&mut read).await {
            Ok(Some(Line::Complete(line))) => line,
            Ok(Some(Line::TooLong)) => {
                let e = RpcError::new(
                    codes::INVALID_REQUEST,
                    format!("request line longer than {MAX_LINE} bytes (skipped)"),
                );
                if out
                    .send(Out::Line(error_response(Value::Null, e)))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(None) | Err(_) => return,
        };
        let req = match parse_request(&line) {
            Ok(Some(req)) => req,
            Ok(None) => continue,
            Err(resp) => {
                if out.send(Out::Line(resp)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let (id, method, params) = req;
        if method == "events.subscribe" {
            // Inline, so the answer goes before the first event.
            let resp = if front_end.get().is_some() {
                Out::Line(ok_response(id, json!({"subscribed": true})))
            } else {
                match agent.subscribe() {
                    Some(sub) => {
                        let _ = front_end.set(sub.id());
                        Out::Subscribed(ok_response(id, json!({"subscribed": true})), sub)
                    }
                    None => Out::Line(error_response(
                        id,
                        RpcError::new(
                            codes::TOO_MANY,
                            format!(
                                "{} front ends are subscribed already; close one",
                                crate::frontends::MAX_FRONT_ENDS
                            ),
                        ),
                    )),
                }
            };
            if out.send(resp).await.is_err() {
                return;
            }
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let e = RpcError::new(
                codes::TOO_MANY,
                format!(
                    "{MAX_IN_FLIGHT} requests are in flight on this connection; wait for an answer"
                ),
            );
            if out.send(Out::Line(error_response(id, e))).await.is_err() {
                return;
            }
            continue;
        };
        let (agent, out, cancel, front_end) = (
            agent.clone(),
            out.clone(),
            cancel.clone(),
            front_end.clone(),
        );
        tokio::spawn(async move {
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = dispatch(&agent, &method, params, front_end.get().copied()) => r,
            };
            // Requests without an id are notifications: no answer.
            if !id.is_null() {
                let resp = match result {
                    Ok(v) => ok_response(id, v),
                    Err(e) => error_response(id, e),
                };
                let _ = out.send(Out::Line(resp)).await;
            }
            drop(permit);
        });
    }
}

/// Writes answers and events; a message counts as taken once its line was written.
async fn write_loop(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut out: mpsc::Receiver<Out>,
    cancel: CancellationToken,
) {
    let mut sub: Option<Subscription> = None;
    loop {
        enum Next {
            Out(Out),
            Event(crate::frontends::Next),
        }
        let next = tokio::select! {
            biased;
            // Answers first, also when the agent stops (`agent.shutdown` is answered).
            // `None` once the client closed its side and every request in flight answered:
            // the connection ends (a subscription with it).
            o = out.recv() => match o {
                Some(o) => Next::Out(o),
                None => return,
            },
            () = cancel.cancelled() => return,
            Some(n) = next_event(&mut sub) => Next::Event(n),
        };
        let (bytes, taken) = match next {
            Next::Out(Out::Line(v)) => (line_bytes(&v), None),
            Next::Out(Out::Subscribed(v, s)) => {
                sub = Some(s);
                (line_bytes(&v), None)
            }
            Next::Event(crate::frontends::Next::Item(item)) => {
                (event_bytes(&item.event), item.taken)
            }
            Next::Event(crate::frontends::Next::Lagged(missed)) => {
                // Cut off: told so if the socket takes it at once, then closed.
                let note = event_bytes(&crate::Event::Lagged { missed });
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), write.write_all(&note)).await;
                cancel.cancel();
                return;
            }
            Next::Event(crate::frontends::Next::Closed) => {
                cancel.cancel();
                return;
            }
        };
        // A front end cut off while its socket does not take the line is closed at once.
        let written = match &sub {
            Some(s) => tokio::select! {
                r = write.write_all(&bytes) => r.is_ok(),
                () = s.ended() => false,
            },
            None => write.write_all(&bytes).await.is_ok(),
        };
        if !written {
            if sub.as_ref().is_some_and(Subscription::is_ended) {
                let note = event_bytes(&crate::Event::Lagged { missed: 1 });
                let _ =
                    tokio::time::timeout(Duration::from_millis(200), write.write_all(&note)).await;
            }
            cancel.cancel();
            return;
        }
        if let Some(taken) = taken {
            let _ = taken.send(());
        }
    }
}

async fn next_event(sub: &mut Option<Subscription>) -> Option<crate::frontends::Next> {
    match sub {
        Some(s) => s.next_item().await,
        None => std::future::pending().await,
    }
}

fn ok_response(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn error_response(id: Value, e: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e})
}

fn line_bytes(v: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn event_bytes(event: &crate::Event) -> Vec<u8> {
    #[derive(Serialize)]
    struct Note<'a> {
        jsonrpc: &'static str,
        method: &'static str,
        params: &'a crate::Event,
    }
    let mut bytes = serde_json::to_vec(&Note {
        jsonrpc: "2.0",
        method: "event",
        params: event,
    })
    .unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// A request line: `Ok(Some((id, method, params)))`, `Ok(None)` for a blank line, or the
/// error answer.
fn parse_request(line: &[u8]) -> Result<Option<(Value, String, Value)>, Value> {
    let req: RawRequest = match request::parse_line(line) {
        request::Line::Blank => return Ok(None),
        request::Line::Request(r) => r,
        request::Line::NotJson(why) => {
            return Err(error_response(
                Value::Null,
                RpcError::new(codes::PARSE_ERROR, why),
            ));
        }
        request::Line::NotRequest(why) => {
            return Err(error_response(
                Value::Null,
                RpcError::new(codes::INVALID_REQUEST, why),
            ));
        }
    };
    match req.method().map(str::to_owned) {
        Some(method) => Ok(Some((req.id, method, req.params))),
        None => Err(error_response(
            req.id,
            RpcError::new(
                codes::INVALID_REQUEST,
                "expected {\"jsonrpc\":\"2.0\",\"method\":…}",
            ),
        )),
    }
}

fn param<T: serde::de::DeserializeOwned>(params: &Value, name: &str) -> Result<T, RpcError> {
    request::param(params, name).map_err(|m| RpcError::new(codes::INVALID_PARAMS, m))
}

fn identifier(params: &Value) -> Result<Identifier, RpcError> {
    request::identifier_param(params, "identifier")
        .map_err(|m| RpcError::new(codes::INVALID_PARAMS, m))
}

async fn dispatch(
    agent: &AgentHandle,
    method: &str,
    params: Value,
    front_end: Option<FrontEndId>,
) -> Result<Value, RpcError> {
    let done = || Ok(json!({"ok": true}));
    match method {
        "agent.status" => Ok(serde_json::to_value(agent.status()).unwrap_or(Value::Null)),
        "lan.peers" => Ok(Value::Array(agent.lan_peers())),
        "connections.list" => Ok(serde_json::to_value(agent.connections()).unwrap_or(Value::Null)),
        "agent.shutdown" => {
            agent.request_shutdown();
            done()
        }
        "status.set" => {
            let state: PresenceState = param(&params, "state")?;
            let message: Option<String> = param(&params, "message")?;
            agent.set_status(state, message)?;
            done()
        }
        "contacts.list" => Ok(serde_json::to_value(agent.contacts()).unwrap_or(Value::Null)),
        "contacts.add" => {
            agent.add_contact(identifier(&params)?).await?;
            done()
        }
        "contacts.accept" => {
            agent.respond(identifier(&params)?, true).await?;
            done()
        }
        "contacts.reject" => {
            agent.respond(identifier(&params)?, false).await?;
            done()
        }
        "contacts.remove" => {
            agent.remove_contact(identifier(&params)?).await?;
            done()
        }
        "contacts.block" => {
            agent.block(identifier(&params)?, true).await?;
            done()
        }
        "contacts.unblock" => {
            agent.block(identifier(&params)?, false).await?;
            done()
        }
        "contacts.trust" => {
            let fp = agent.trust(identifier(&params)?).await?;
            Ok(json!({"fingerprint": fp}))
        }
        "contacts.verify" => {
            let confirm: Option<bool> = param(&params, "confirm")?;
            let v = agent
                .verify(identifier(&params)?, confirm.unwrap_or(false))
                .await?;
            Ok(serde_json::to_value(v).unwrap_or(Value::Null))
        }
        "message.send" => {
            let to = request::identifier_param(&params, "to")
                .map_err(|m| RpcError::new(codes::INVALID_PARAMS, m))?;
            let body: String = param(&params, "body")?;
            let client_id: Option<String> = param(&params, "client_id")?;
            let options = SendOptions {
                client_id,
                front_end,
                ..SendOptions::default()
            };
            let d = agent.send_with(to, body, options).await?;
            Ok(serde_json::to_value(d).unwrap_or(Value::Null))
        }
        "devices.list" => {
            let list = agent.device_list().await?;
            Ok(json!({"list": list, "this_device": agent.device_id()}))
        }
        "devices.publish" => {
            let list = param(&params, "list")?;
            let certs: Option<Vec<dialtone_proto::DeviceCertificate>> = param(&params, "certs")?;
            let pin: Option<String> = param(&params, "pin")?;
            agent
                .publish_devices(list, certs.unwrap_or_default(), pin)
                .await?;
            done()
        }
        "devices.link_start" => {
            Ok(serde_json::to_value(agent.link_start().await?).unwrap_or(Value::Null))
        }
        "devices.link_wait" => {
            let secs: Option<u64> = param(&params, "timeout_secs")?;
            let secs = secs.unwrap_or(crate::link::OFFER_TTL.as_secs()).min(3600);
            let j = agent.link_wait(Duration::from_secs(secs)).await?;
            Ok(serde_json::to_value(j).unwrap_or(Value::Null))
        }
        "devices.link_finish" => {
            let cert = param(&params, "cert")?;
            let list = param(&params, "list")?;
            let pin: Option<String> = param(&params, "pin")?;
            agent.link_finish(cert, list, pin).await?;
            done()
        }
        "devices.link_cancel" => {
            agent.link_cancel().await;
            done()
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("no method '{other}'"),
        )),
    }
}
