//! The client side of the local API.

use std::{collections::VecDeque, io, path::Path};

use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::UnixStream};

use super::{CLIENT_KEPT, CLIENT_MAX_LINE, Line, LineReader, RpcError, line_bytes};

/// A client of the local API, used by the CLI and tests.
///
/// Cancel-safe: [`Client::call`] and [`Client::next_message`] may be dropped half-way (in a
/// `select!`) without losing or corrupting anything: bytes read stay in the client's own
/// buffer, a request half-written is finished before the next one, and the answer to a call
/// given up is skipped. Notifications that arrive while a call waits are kept (at most
/// [`CLIENT_KEPT`]; beyond, a `lagged` event says how many were dropped) and returned by
/// [`Client::next_message`].
#[derive(Debug)]
pub struct Client {
    read: tokio::net::unix::OwnedReadHalf,
    write: tokio::net::unix::OwnedWriteHalf,
    lines: LineReader,
    /// Bytes of requests not yet written.
    out: Vec<u8>,
    /// Notifications that arrived during a call.
    kept: VecDeque<Value>,
    /// Notifications dropped because `kept` was full.
    missed: u64,
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
        Ok(Self::from_stream(stream))
    }

    fn from_stream(stream: UnixStream) -> Self {
        let (read, write) = stream.into_split();
        Self {
            read,
            write,
            lines: LineReader::new(CLIENT_MAX_LINE),
            out: Vec::new(),
            kept: VecDeque::new(),
            missed: 0,
            next_id: 1,
        }
    }

    /// Calls a method and waits for its answer. Notifications that arrive meanwhile are kept
    /// for [`Client::next_message`].
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.out.extend_from_slice(&line_bytes(&req));
        self.flush().await?;
        loop {
            let msg = self.read_message().await?;
            match msg.get("id") {
                Some(v) if v.as_u64() == Some(id) => {
                    if let Some(err) = msg.get("error") {
                        let err: RpcError = serde_json::from_value(err.clone())
                            .map_err(|_| ClientError::Protocol)?;
                        return Err(ClientError::Rpc(err));
                    }
                    return msg.get("result").cloned().ok_or(ClientError::Protocol);
                }
                // The answer to a call given up earlier.
                Some(v) if !v.is_null() => {}
                _ => self.keep(msg),
            }
        }
    }

    /// The next notification (or a line that answers no call of ours): first those kept
    /// during calls, then from the connection.
    pub async fn next_message(&mut self) -> Result<Value, ClientError> {
        if let Some(msg) = self.kept.pop_front() {
            return Ok(msg);
        }
        if self.missed > 0 {
            let missed = std::mem::take(&mut self.missed);
            return Ok(json!({"jsonrpc": "2.0", "method": "event",
                "params": {"event": "lagged", "missed": missed}}));
        }
        self.read_message().await
    }

    fn keep(&mut self, msg: Value) {
        if self.kept.len() < CLIENT_KEPT && self.missed == 0 {
            self.kept.push_back(msg);
        } else {
            self.missed += 1;
        }
    }

    /// Writes what is left of the requests; cancel-safe (what was written is gone from `out`).
    async fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            let n = self.write.write(&self.out).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.drain(..n);
        }
        Ok(())
    }

    async fn read_message(&mut self) -> Result<Value, ClientError> {
        match self.lines.next(&mut self.read).await? {
            Some(Line::Complete(line)) => {
                serde_json::from_slice(&line).map_err(|_| ClientError::Protocol)
            }
            Some(Line::TooLong) => Err(ClientError::Protocol),
            None => Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "agent closed the connection",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::{MAX_LINE, ok_response};

    /// Writes `bytes` to the client in small pieces, pausing between them.
    async fn dribble(w: &mut UnixStream, bytes: &[u8]) {
        for piece in bytes.chunks(7) {
            w.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `next_message` raced against a timer that keeps winning loses nothing half-read, and a
    /// notification that arrives during `call` is kept for `next_message`.
    #[tokio::test]
    async fn the_client_is_cancel_safe_and_keeps_notifications() {
        let (ours, mut agent) = UnixStream::pair().unwrap();
        let mut client = Client::from_stream(ours);
        let note = line_bytes(
            &json!({"jsonrpc":"2.0","method":"event","params":{"event":"x","body":"a".repeat(2000)}}),
        );
        let feeder = tokio::spawn(async move {
            dribble(&mut agent, &note).await;
            agent
        });
        let msg = loop {
            tokio::select! {
                m = client.next_message() => break m.unwrap(),
                () = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        };
        assert_eq!(msg["params"]["body"].as_str().unwrap().len(), 2000);
        let mut agent = feeder.await.unwrap();

        // A call: a notification comes first, then the answer.
        let answer = tokio::spawn(async move {
            let mut req = Vec::new();
            let mut lines = LineReader::new(MAX_LINE);
            if let Some(Line::Complete(l)) = lines.next(&mut agent).await.unwrap() {
                req = l;
            }
            let req: Value = serde_json::from_slice(&req).unwrap();
            let id = req["id"].clone();
            dribble(
                &mut agent,
                &line_bytes(&json!({"jsonrpc":"2.0","method":"event","params":{"event":"during"}})),
            )
            .await;
            dribble(
                &mut agent,
                &line_bytes(&ok_response(id, json!({"ok": true}))),
            )
            .await;
            agent
        });
        let r = client.call("agent.status", json!({})).await.unwrap();
        assert_eq!(r["ok"], true);
        let kept = client.next_message().await.unwrap();
        assert_eq!(kept["params"]["event"], "during");
        drop(answer.await.unwrap());
    }
}
