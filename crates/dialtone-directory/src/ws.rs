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

mod frame;

use frame::{Decoder, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, write_header};
pub(crate) use frame::{Incoming, WsError};

/// The server's end of one WebSocket connection over `S`.
pub(crate) struct WsConn<S> {
    io: S,
    /// What was read and not yet taken as a message.
    dec: Decoder,
}

impl<S> std::fmt::Debug for WsConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("buffered", &self.dec.held())
            .field("fragmented", &self.dec.fragmented())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsConn<S> {
    /// A connection whose handshake is done; `read` holds bytes that arrived after the
    /// handshake (usually none). Frames and messages over `max_len` bytes are refused.
    pub(crate) fn new(io: S, read: &[u8], max_len: usize) -> Self {
        Self {
            io,
            dec: Decoder::new(read, max_len),
        }
    }

    /// The next message. Cancel-safe: what was read so far stays in the connection.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, WsError>> {
        loop {
            if let Some(msg) = self.dec.next_message()? {
                return Poll::Ready(Ok(msg));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut rb = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                return Poll::Ready(Err(WsError::Io(io::ErrorKind::UnexpectedEof.into())));
            }
            self.dec.push(rb.filled());
        }
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
        self.dec.clear();
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
    use super::{frame::close, *};

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
        assert_eq!(ws.dec.buf.capacity(), 0);
        client
            .write_all(&client_frame(0x81, b"later"))
            .await
            .unwrap();
        let m = std::future::poll_fn(|cx| ws.poll_next(cx)).await.unwrap();
        assert_eq!(m, Incoming::Text("later".into()));
        assert_eq!(ws.dec.buf.capacity(), 0);

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
