//! The local API: JSON-RPC 2.0, one JSON object per line, on the Unix socket `agent.sock` in
//! the agent's home (mode 0600: only its owner can use it). `docs/local-api.md` lists every
//! method with examples. A connection may call `events.subscribe`; from then on the agent also
//! writes event notifications (`{"jsonrpc":"2.0","method":"event","params":{…}}`) to it.

use std::{io, os::unix::fs::PermissionsExt, path::Path, time::Duration};

use dialtone_proto::{Identifier, Refusal, directory::PresenceState};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};
use tracing::debug;

use crate::{AgentHandle, SendError, SessionError};

mod request;

use request::{Line, RawRequest};

/// Longest request line, in bytes.
pub const MAX_LINE: usize = 256 * 1024;

/// JSON-RPC error codes of the local API besides the standard ones and the refusals
/// ([`Refusal::rpc_code`], `-32010` … `-32017`).
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
    loop {
        let stream = tokio::select! {
            _ = agent.inner.cancel.cancelled() => return,
            s = listener.accept() => match s {
                Ok((s, _)) => s,
                Err(e) => {
                    debug!("local api accept failed: {e}");
                    continue;
                }
            },
        };
        tokio::spawn(serve_conn(agent.clone(), stream));
    }
}

async fn serve_conn(agent: AgentHandle, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut events: Option<tokio::sync::broadcast::Receiver<crate::Event>> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line = tokio::select! {
            _ = agent.inner.cancel.cancelled() => return,
            r = read_line(&mut lines, &mut buf) => r,
            ev = next_event(&mut events) => {
                let note = json!({"jsonrpc": "2.0", "method": "event", "params": ev});
                if write_line(&mut write, &note).await.is_err() { return; }
                continue;
            }
        };
        let response = match line {
            Ok(0) => return,
            Ok(_) => handle_line(&agent, &buf, &mut events).await,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Some(json!({
                "jsonrpc": "2.0", "id": null,
                "error": RpcError::new(codes::INVALID_REQUEST, format!("request line longer than {MAX_LINE} bytes")),
            })),
            Err(_) => return,
        };
        if let Some(resp) = response
            && write_line(&mut write, &resp).await.is_err()
        {
            return;
        }
    }
}

async fn next_event(events: &mut Option<tokio::sync::broadcast::Receiver<crate::Event>>) -> Value {
    let Some(rx) = events else {
        return std::future::pending().await;
    };
    match rx.recv().await {
        Ok(ev) => serde_json::to_value(ev).unwrap_or(Value::Null),
        Err(RecvError::Lagged(n)) => json!({"event": "lagged", "missed": n}),
        Err(RecvError::Closed) => std::future::pending().await,
    }
}

async fn read_line(
    r: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..=pos]);
            r.consume(pos + 1);
            return Ok(buf.len());
        }
        let n = available.len();
        buf.extend_from_slice(available);
        r.consume(n);
        if buf.len() > MAX_LINE {
            // Skip the rest of the oversize line.
            let mut sink = Vec::new();
            let _ = r.read_until(b'\n', &mut sink).await;
            buf.clear();
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
    }
}

async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, v: &Value) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    w.write_all(&bytes).await
}

async fn handle_line(
    agent: &AgentHandle,
    line: &[u8],
    events: &mut Option<tokio::sync::broadcast::Receiver<crate::Event>>,
) -> Option<Value> {
    let req: RawRequest = match request::parse_line(line) {
        Line::Blank => return None,
        Line::Request(r) => r,
        Line::NotJson(why) => return Some(bad_line(codes::PARSE_ERROR, why)),
        Line::NotRequest(why) => return Some(bad_line(codes::INVALID_REQUEST, why)),
    };
    let method = req.method().map(str::to_owned);
    let wants_answer = req.wants_answer();
    let RawRequest { id, params, .. } = req;
    let result = match method {
        Some(method) => dispatch(agent, &method, params, events).await,
        None => Err(RpcError::new(
            codes::INVALID_REQUEST,
            "expected {\"jsonrpc\":\"2.0\",\"method\":…}",
        )),
    };
    // Requests without an id are notifications: no answer.
    if !wants_answer {
        return None;
    }
    Some(match result {
        Ok(v) => json!({"jsonrpc": "2.0", "id": id, "result": v}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
    })
}

fn bad_line(code: i64, why: String) -> Value {
    json!({"jsonrpc": "2.0", "id": null, "error": RpcError::new(code, why)})
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
    events: &mut Option<tokio::sync::broadcast::Receiver<crate::Event>>,
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
            let d = agent.send(to, body).await?;
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
        "events.subscribe" => {
            *events = Some(agent.subscribe());
            Ok(json!({"subscribed": true}))
        }
        other => Err(RpcError::new(
            codes::METHOD_NOT_FOUND,
            format!("no method '{other}'"),
        )),
    }
}

/// A client of the local API, used by the CLI and tests.
#[derive(Debug)]
pub struct Client {
    read: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No agent listens on the socket.
    #[error("the agent is not running for {0} (start it with `dialtone up`)")]
    NotRunning(String),
    /// The connection broke.
    #[error("lost the connection to the agent: {0}")]
    Io(#[from] io::Error),
    /// The agent answered with an error.
    #[error("{0}")]
    Rpc(RpcError),
    /// The agent answered something that is not JSON-RPC.
    #[error("unexpected answer from the agent")]
    Protocol,
}

impl Client {
    /// Connects to the agent's socket.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(|_| {
            ClientError::NotRunning(path.parent().unwrap_or(path).display().to_string())
        })?;
        let (read, write) = stream.into_split();
        Ok(Self {
            read: BufReader::new(read),
            write,
            next_id: 1,
        })
    }

    /// Calls a method and waits for its answer (notifications that arrive meanwhile are
    /// skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        write_line(&mut self.write, &req).await?;
        loop {
            let msg = self.next_message().await?;
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = msg.get("error") {
                let err: RpcError =
                    serde_json::from_value(err.clone()).map_err(|_| ClientError::Protocol)?;
                return Err(ClientError::Rpc(err));
            }
            return msg.get("result").cloned().ok_or(ClientError::Protocol);
        }
    }

    /// Reads the next line from the agent (a response or an event notification).
    pub async fn next_message(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        let n = tokio::time::timeout(
            Duration::from_secs(3600 * 24 * 365),
            self.read.read_line(&mut line),
        )
        .await
        .map_err(|_| ClientError::Protocol)??;
        if n == 0 {
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "agent closed the connection",
            )));
        }
        serde_json::from_str(&line).map_err(|_| ClientError::Protocol)
    }
}
