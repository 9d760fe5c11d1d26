//! RFC 6455 framing for the server role, without IO: bytes in ([`Decoder::push`]), messages
//! out ([`Decoder::next_message`]), and the header of a frame to send ([`write_header`]).
//!
//! It needs nothing but `std`, so the fuzz target `ws_frames` (`fuzz/`) compiles this file
//! alone instead of the whole directory.

use std::io;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Longest frame header a client sends: 2 bytes, an 8-byte length and a 4-byte mask (the
/// fuzz target's bound on what [`Decoder`] holds).
#[allow(dead_code)]
pub(crate) const MAX_HEADER_LEN: usize = 14;

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

/// The reading half of the framing: what was read and not yet taken as a message.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Bytes read but not yet taken as a frame: empty, without capacity, while idle.
    pub(crate) buf: Vec<u8>,
    /// A fragmented message in progress (boxed: rare, and a session should not carry its
    /// space).
    frag: Option<Box<Fragments>>,
    /// The largest frame, and the largest message, accepted.
    max_len: u32,
}

impl Decoder {
    /// A decoder holding `read` (bytes that arrived after the handshake, usually none) that
    /// refuses frames and messages over `max_len` bytes.
    pub(crate) fn new(read: &[u8], max_len: usize) -> Self {
        Self {
            buf: read.to_vec(),
            frag: None,
            max_len: u32::try_from(max_len).unwrap_or(u32::MAX),
        }
    }

    /// Appends bytes read from the socket. Take every message with
    /// [`Decoder::next_message`] before the next push: the buffer is bounded only then (by
    /// one frame header plus `max_len`, plus the bytes pushed).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message in the bytes pushed so far; `None` until more bytes come.
    /// An error ends the connection.
    pub(crate) fn next_message(&mut self) -> Result<Option<Incoming>, WsError> {
        while !self.buf.is_empty() {
            let (consumed, msg) = self.parse()?;
            if consumed == 0 {
                break;
            }
            if consumed == self.buf.len() {
                // Keep nothing while idle.
                self.buf = Vec::new();
            } else {
                self.buf.drain(..consumed);
            }
            if msg.is_some() {
                return Ok(msg);
            }
        }
        Ok(None)
    }

    /// Bytes held: unparsed input plus a fragmented message's payload so far.
    pub(crate) fn held(&self) -> usize {
        self.buf.len() + self.frag.as_ref().map_or(0, |f| f.data.len())
    }

    /// Whether a fragmented message is in progress.
    pub(crate) fn fragmented(&self) -> bool {
        self.frag.is_some()
    }

    /// Drops everything held.
    pub(crate) fn clear(&mut self) {
        self.buf = Vec::new();
        self.frag = None;
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
pub(crate) fn write_header(out: &mut [u8; 10], opcode: u8, len: usize) -> usize {
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
