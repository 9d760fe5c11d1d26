//! The directory's side of a WebSocket (RFC 6455), written for many idle sessions.
//!
//! A session spends almost all its life waiting, so this connection keeps no buffer while
//! it waits: bytes are read into the stack and copied out only when a frame arrives in
//! pieces, and a frame is written straight from the shared, already-encoded text (header and
//! payload in one vectored write) instead of through a write buffer that would keep the
//! capacity of the largest frame ever sent. There is no split and no lock between a reading
//! and a writing half: one task owns the connection and does both.
//!
//! Only what the directory needs is here: the server role, no extensions, text messages
//! (fragmented ones reassembled), binary messages recognized and refused by the caller,
//! pings answered by the caller, and the closing handshake. Anything a client must not send
//! (an unmasked frame, reserved bits, an unknown opcode, a fragmented or long control frame,
//! a frame or message over the limit, text that is not UTF-8) ends the connection with the
//! close code RFC 6455 gives for it, never a panic.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Bytes read from the socket at once, into the stack (a frame of the directory protocol is
/// a few hundred bytes; a larger one takes several reads).
const READ_CHUNK: usize = 4096;

/// What is read and dropped at most after a close frame, waiting for the other end to close.
const DRAIN_LIMIT: usize = 256 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) mod close {
    /// The other end broke the protocol.
    pub(crate) const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub(crate) const INVALID_DATA: u16 = 1007;
    /// A frame or message over the size limit.
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// What the other end sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A complete text message.
    Text(String),
    /// A complete binary message (its bytes are not kept).
    Binary,
    /// A ping, to be answered with a pong carrying the same bytes.
    Ping(Vec<u8>),
    /// A pong.
    Pong,
    /// The other end closes, with this status code if it gave one.
    Close(Option<u16>),
}

/// Why the connection cannot go on.
#[derive(Debug)]
pub(crate) enum WsError {
    /// The socket failed or was closed without a closing handshake.
    Io(io::Error),
    /// The other end broke the protocol: close with this code.
    Protocol(u16, &'static str),
}

impl From<io::Error> for WsError {
    fn from(e: io::Error) -> Self {
        WsError::Io(e)
    }
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// The server's end of one WebSocket connection over `S`.
pub(crate) struct WsConn<S> {
    io: S,
    /// Bytes read but not yet taken as a frame: empty, without capacity, while idle.
    buf: Vec<u8>,
    /// A fragmented message in progress (boxed: rare, and a session should not carry its
    /// space).
    frag: Option<Box<Fragments>>,
    /// The largest frame, and the largest message, accepted.
    max_len: u32,
}

impl<S> std::fmt::Debug for WsConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("buffered", &self.buf.len())
            .field("fragmented", &self.frag.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// A connection whose handshake is done; `read` holds bytes that arrived after the
    /// handshake (usually none). Frames and messages over `max_len` bytes are refused.
    pub(crate) fn new(io: S, read: &[u8], max_len: usize) -> Self {
        Self {
            io,
            buf: read.to_vec(),
            frag: None,
            max_len: u32::try_from(max_len).unwrap_or(u32::MAX),
        }
    }

    /// The next message. Cancel-safe: what was read so far stays in the connection.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, WsError>> {
        loop {
            if !self.buf.is_empty() {
                let (consumed, msg) = self.parse()?;
                if consumed > 0 {
                    if consumed == self.buf.len() {
                        // Keep nothing while idle.
                        self.buf = Vec::new();
                    } else {
                        self.buf.drain(..consumed);
                    }
                }
                if let Some(msg) = msg {
                    return Poll::Ready(Ok(msg));
                }
                if consumed > 0 {
                    continue;
                }
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(WsError::Io(io::ErrorKind::UnexpectedEof.into())));
            }
            self.buf.extend_from_slice(rb.filled());
        }
    }

    /// Takes one frame off the front of the buffer if it is complete: the bytes it took and
    /// the message it completed, if any.
    fn parse(&mut self) -> Result<(usize, Option<Incoming>), WsError> {
        let Some(h) = Header::parse(&self.buf, self.max_len)? else {
            return Ok((0, None));
        };
        let end = h.offset + h.len;
        if self.buf.len() < end {
            return Ok((0, None));
        }
        let mut payload = self.buf[h.offset..end].to_vec();
        unmask(&mut payload, h.mask);
        let msg = match h.opcode {
            OP_PING => Some(Incoming::Ping(payload)),
            OP_PONG => Some(Incoming::Pong),
            OP_CLOSE => Some(Incoming::Close(close_code(&payload)?)),
            OP_TEXT | OP_BINARY if h.fin => {
                if self.frag.is_some() {
                    return Err(protocol("a new message inside a fragmented one"));
                }
                Some(message(h.opcode == OP_TEXT, payload)?)
            }
            OP_TEXT | OP_BINARY => {
                if self.frag.is_some() {
                    return Err(protocol("a new message inside a fragmented one"));
                }
                self.frag = Some(Box::new(Fragments {
                    text: h.opcode == OP_TEXT,
                    data: payload,
                }));
                None
            }
            OP_CONTINUATION => {
                let Some(f) = self.frag.as_mut() else {
                    return Err(protocol("a continuation with nothing to continue"));
                };
                if f.data.len() + payload.len() > self.max_len as usize {
                    return Err(WsError::Protocol(close::TOO_BIG, "message too large"));
                }
                f.data.extend_from_slice(&payload);
                if h.fin {
                    let f = self.frag.take().map(|b| *b);
                    f.map(|f| message(f.text, f.data)).transpose()?
                } else {
                    None
                }
            }
            _ => unreachable!("Header::parse refuses other opcodes"),
        };
        Ok((end, msg))
    }

    /// Sends a text message.
    pub(crate) async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// Sends a ping with no payload.
    pub(crate) async fn send_ping(&mut self) -> io::Result<()> {
        self.send(OP_PING, &[]).await
    }

    /// Answers a ping.
    pub(crate) async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_PONG, payload).await
    }

    /// Sends a close frame with `code`, if any.
    pub(crate) async fn send_close(&mut self, code: Option<u16>) -> io::Result<()> {
        match code {
            Some(c) => self.send(OP_CLOSE, &c.to_be_bytes()).await,
            None => self.send(OP_CLOSE, &[]).await,
        }
    }

    /// Ends the connection after [`WsConn::send_close`]: the write side is shut and whatever
    /// the other end still sends is read and dropped (at most [`DRAIN_LIMIT`] bytes) until it
    /// closes too. Closing with unread bytes would make the kernel answer with a reset, and
    /// the close frame could be lost with it.
    pub(crate) async fn finish(&mut self) -> io::Result<()> {
        self.buf = Vec::new();
        self.frag = None;
        self.io.shutdown().await?;
        let mut chunk = [0u8; 1024];
        let mut left = DRAIN_LIMIT;
        while left > 0 {
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        Ok(())
    }

    /// One unfragmented, unmasked frame: header and payload in one write, no buffer kept.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut head = [0u8; 10];
        let n = write_header(&mut head, opcode, payload.len());
        let mut frame = Buf::chain(&head[..n], payload);
        self.io.write_all_buf(&mut frame).await?;
        self.io.flush().await
    }
}

fn protocol(why: &'static str) -> WsError {
    WsError::Protocol(close::PROTOCOL, why)
}

/// A complete message from its (unmasked) payload.
fn message(text: bool, payload: Vec<u8>) -> Result<Incoming, WsError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload)
        .map(Incoming::Text)
        .map_err(|_| WsError::Protocol(close::INVALID_DATA, "text that is not UTF-8"))
}

/// The status code of a close frame's payload (RFC 6455 §5.5.1).
fn close_code(payload: &[u8]) -> Result<Option<u16>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(protocol("a close frame of one byte")),
        [a, b, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(WsError::Protocol(
                    close::INVALID_DATA,
                    "a close reason that is not UTF-8",
                ));
            }
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A parsed frame header.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Where the payload starts.
    offset: usize,
    /// Payload length.
    len: usize,
}

impl Header {
    /// The header at the start of `b`, `None` if incomplete; refuses what a server must not
    /// accept from a client, and frames over `max_len` bytes (before their payload arrives).
    fn parse(b: &[u8], max_len: u32) -> Result<Option<Header>, WsError> {
        let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        let control = match opcode {
            OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
            OP_CLOSE | OP_PING | OP_PONG => true,
            _ => return Err(protocol("unknown opcode")),
        };
        if b1 & 0x80 == 0 {
            return Err(protocol("an unmasked frame from a client"));
        }
        let (len, mut offset) = match b1 & 0x7F {
            126 => {
                let Some(x) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([x[0], x[1]])), 4)
            }
            127 => {
                let Some(x) = b.get(2..10) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                (u64::from_be_bytes(a), 10)
            }
            n => (u64::from(n), 2),
        };
        if control && (!fin || len > 125) {
            return Err(protocol("a fragmented or long control frame"));
        }
        if len > u64::from(max_len) {
            return Err(WsError::Protocol(close::TOO_BIG, "frame too large"));
        }
        let Some(m) = b.get(offset..offset + 4) else {
            return Ok(None);
        };
        let mask = [m[0], m[1], m[2], m[3]];
        offset += 4;
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            offset,
            // At most `max_len`, a u32.
            len: usize::try_from(len).unwrap_or(usize::MAX),
        }))
    }
}

/// Writes a final, unmasked frame header for `len` payload bytes; its length.
fn write_header(out: &mut [u8; 10], opcode: u8, len: usize) -> usize {
    out[0] = 0x80 | opcode;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(l) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&l.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// A WebSocket opening handshake (HTTP/1.1 `Upgrade: websocket`), as an extractor: what is
/// needed to answer it and to take the connection over once the answer is sent.
pub(crate) struct Upgrade {
    accept: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// The request is not a WebSocket opening handshake this server can take.
#[derive(Debug)]
pub(crate) struct NotUpgrade;

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade").into_response()
    }
}

/// Whether the comma-separated header `name` has the token `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<St: Send + Sync> FromRequestParts<St> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        if parts.method != axum::http::Method::GET
            || !has_token(h, header::CONNECTION, "upgrade")
            || !has_token(h, header::UPGRADE, "websocket")
            || h.get(header::SEC_WEBSOCKET_VERSION)
                .map(HeaderValue::as_bytes)
                != Some(b"13")
        {
            return Err(NotUpgrade);
        }
        let key = h.get(header::SEC_WEBSOCKET_KEY).ok_or(NotUpgrade)?;
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let accept = HeaderValue::from_str(&accept).map_err(|_| NotUpgrade)?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(NotUpgrade)?;
        Ok(Upgrade { accept, on_upgrade })
    }
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, and the connection once it is sent.
    pub(crate) fn accept(self) -> (Response, hyper::upgrade::OnUpgrade) {
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept)
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        (response, self.on_upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a client must.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// The messages `bytes` make, fed `step` bytes at a time, and how it ended.
    async fn read_all(bytes: Vec<u8>, step: usize) -> (Vec<Incoming>, Option<u16>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut ws = WsConn::new(server, &[], 1000);
        let feed = tokio::spawn(async move {
            for c in bytes.chunks(step) {
                client.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut got = Vec::new();
        let end = loop {
            match std::future::poll_fn(|cx| ws.poll_next(cx)).await {
                Ok(m) => got.push(m),
                Err(WsError::Io(_)) => break None,
                Err(WsError::Protocol(code, _)) => break Some(code),
            }
            if matches!(got.last(), Some(Incoming::Close(_))) {
                break None;
            }
        };
        drop(feed.await.unwrap());
        (got, end)
    }

    #[tokio::test]
    async fn reads_messages_whole_and_in_pieces() {
        let mut bytes = client_frame(0x81, b"hello");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x01, b"frag"));
        bytes.extend(client_frame(0x8A, b""));
        bytes.extend(client_frame(0x80, "mented é".as_bytes()));
        bytes.extend(client_frame(0x82, &[0xFF; 300]));
        bytes.extend(client_frame(0x81, &[b'x'; 1000]));
        bytes.extend(client_frame(0x88, &[0x03, 0xE8]));
        for step in [1, 3, 7, 100, 1 << 20] {
            let (got, end) = read_all(bytes.clone(), step).await;
            assert_eq!(end, None);
            assert_eq!(
                got,
                [
                    Incoming::Text("hello".into()),
                    Incoming::Ping(b"p".to_vec()),
                    Incoming::Pong,
                    Incoming::Text("fragmented é".into()),
                    Incoming::Binary,
                    Incoming::Text("x".repeat(1000)),
                    Incoming::Close(Some(1000)),
                ],
                "{step} bytes at a time"
            );
        }
    }

    #[tokio::test]
    async fn refuses_what_a_client_must_not_send() {
        let unmasked = vec![0x81, 0x02, b'h', b'i'];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, close::PROTOCOL),
            (client_frame(0xC1, b"rsv"), close::PROTOCOL),
            (client_frame(0x83, b"op"), close::PROTOCOL),
            (client_frame(0x09, b"frag ping"), close::PROTOCOL),
            (client_frame(0x89, &[0; 126]), close::PROTOCOL),
            (client_frame(0x80, b"orphan"), close::PROTOCOL),
            (
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                close::PROTOCOL,
            ),
            (client_frame(0x81, &[b'x'; 1001]), close::TOO_BIG),
            (
                [
                    client_frame(0x01, &[b'x'; 600]),
                    client_frame(0x80, &[b'x'; 600]),
                ]
                .concat(),
                close::TOO_BIG,
            ),
            (client_frame(0x81, &[0xC3, 0x28]), close::INVALID_DATA),
            (client_frame(0x88, &[0x03]), close::PROTOCOL),
            (client_frame(0x88, &[0x03, 0xE8, 0xFF]), close::INVALID_DATA),
        ];
        for (bytes, code) in cases {
            let (_, end) = read_all(bytes.clone(), 1 << 20).await;
            assert_eq!(end, Some(code), "{bytes:02x?}");
        }
        // A frame that claims more than the limit is refused from its header alone.
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(read_all(huge, 1 << 20).await.1, Some(close::TOO_BIG));
    }

    #[tokio::test]
    async fn keeps_no_buffer_while_idle_and_writes_frames() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut ws = WsConn::new(server, &client_frame(0x81, b"early"), 1 << 16);
        let m = std::future::poll_fn(|cx| ws.poll_next(cx)).await.unwrap();
        assert_eq!(m, Incoming::Text("early".into()));
        assert_eq!(ws.buf.capacity(), 0);
        client
            .write_all(&client_frame(0x81, b"later"))
            .await
            .unwrap();
        let m = std::future::poll_fn(|cx| ws.poll_next(cx)).await.unwrap();
        assert_eq!(m, Incoming::Text("later".into()));
        assert_eq!(ws.buf.capacity(), 0);

        let long = "y".repeat(70_000);
        ws.send_text("hi").await.unwrap();
        ws.send_text(&"z".repeat(200)).await.unwrap();
        ws.send_text(&long).await.unwrap();
        ws.send_ping().await.unwrap();
        ws.send_close(Some(1000)).await.unwrap();
        drop(ws);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let mut want = vec![0x81, 2, b'h', b'i', 0x81, 126, 0, 200];
        want.extend_from_slice(&[b'z'; 200]);
        want.extend_from_slice(&[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        want.extend_from_slice(long.as_bytes());
        want.extend_from_slice(&[0x89, 0, 0x88, 2, 0x03, 0xE8]);
        assert_eq!(out, want);
    }
}
