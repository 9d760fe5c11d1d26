//! The peer protocol, spoken between two agents over an iroh connection (ALPN `dialtone/1`).
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of CBOR (RFC 8949)
//! encoding one [`Frame`]; the CDDL schema is in `docs/protocol.md`. Flow:
//!
//! - The dialer opens the first bidirectional stream and sends [`Frame::Hello`] with its
//!   identifier and device certificate. The listener checks the certificate against the
//!   connection's authenticated device key, the identity against the key it pinned for that
//!   identifier, and the contact authorization, then answers [`Frame::Hello`] with its own
//!   (which the dialer checks the same way) or [`Frame::Close`] with a [`CloseCode`].
//! - Each message then travels on a bidirectional stream of its own: [`Frame::Text`] from the
//!   sender, [`Frame::Ack`] or [`Frame::Refuse`] back, then both sides finish the stream.
//! - An idle connection is closed by either side; the next message reconnects.
//!
//! Decoding rejects trailing bytes and frames over [`MAX_FRAME_LEN`]; it never panics.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ids::Identifier, keys::DeviceCertificate, refusal::Refusal, transparency::Hash32};

/// The ALPN of the Dialtone peer protocol, version 1.
pub const ALPN: &[u8] = b"dialtone/1";
/// Protocol version carried in [`Hello`].
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame, in bytes (without the 4-byte length prefix).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Longest text message body, in bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 32 * 1024;

/// A message's id: 16 random bytes chosen by the sender, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MessageId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("16 bytes or 32 hex digits")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<MessageId, E> {
                <[u8; 16]>::try_from(v)
                    .map(MessageId)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MessageId, E> {
                let mut out = [0u8; 16];
                hex::decode_to_slice(v, &mut out).map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(MessageId(out))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// The first frame each side sends: who it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The sender's identifier.
    pub identifier: Identifier,
    /// The sender's device certificate; its `device_id` must be the connection's peer key.
    pub device_cert: DeviceCertificate,
    /// The latest transparency-log checkpoint the sender accepted, for split-view detection.
    /// Optional: absent from older agents and from agents that have none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::transparency::Checkpoint>,
}

/// Why a connection was closed during or after the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum CloseCode {
    /// The certificate does not verify or is for another device.
    BadCertificate,
    /// The peer is not an accepted contact (or is blocked).
    NotAContact,
    /// The peer's identity key is not the one pinned for its identifier.
    KeyChanged,
    /// The peer broke the protocol (bad frame, wrong order).
    Protocol,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// Closed because nothing happened for a while.
    Idle,
    /// The agent is shutting down.
    Shutdown,
    /// The two sides hold checkpoints of the directory's log that cannot both be true: the
    /// directory showed them different logs (split view).
    SplitView,
    /// The peer's identity key could not be proven in the directory's transparency log.
    Unproven,
    /// The peer's device is not on its owner's device list in the transparency log (revoked,
    /// or never linked).
    DeviceRevoked,
    /// This side runs `--direct-only` and no direct path came up: it exchanges nothing over
    /// the relay.
    NoDirectPath,
}

impl CloseCode {
    /// The QUIC application close code for this reason.
    pub fn code(self) -> u32 {
        match self {
            Self::Idle => 0,
            Self::Shutdown => 1,
            Self::BadCertificate => 10,
            Self::NotAContact => 11,
            Self::KeyChanged => 12,
            Self::Protocol => 13,
            Self::UnsupportedVersion => 14,
            Self::SplitView => 15,
            Self::Unproven => 16,
            Self::DeviceRevoked => 17,
            Self::NoDirectPath => 18,
        }
    }

    /// The reason for a QUIC application close code.
    pub fn from_code(code: u64) -> Option<Self> {
        [
            Self::Idle,
            Self::Shutdown,
            Self::BadCertificate,
            Self::NotAContact,
            Self::KeyChanged,
            Self::Protocol,
            Self::UnsupportedVersion,
            Self::SplitView,
            Self::Unproven,
            Self::DeviceRevoked,
            Self::NoDirectPath,
        ]
        .into_iter()
        .find(|c| u64::from(c.code()) == code)
    }
}

/// A frame of the peer protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
// Values are built, sent and dropped one at a time, never kept in bulk: boxing the large
// variant would cost an allocation per frame for no memory saved.
#[allow(clippy::large_enum_variant)]
pub enum Frame {
    /// Identification; first frame of a connection, each way.
    Hello(Hello),
    /// The sender closes the connection for this reason.
    Close {
        /// Why.
        code: CloseCode,
    },
    /// A text message.
    Text {
        /// Chosen by the sender.
        id: MessageId,
        /// Sender's clock, milliseconds since the Unix epoch.
        sent_at_ms: u64,
        /// The text, at most [`MAX_TEXT_LEN`] bytes.
        body: String,
    },
    /// The message was handed to the receiver's front ends.
    Ack {
        /// The message.
        id: MessageId,
        /// How many front ends (watchers, chats, bots) it was handed to.
        shown_to: u32,
    },
    /// The receiver refused the message.
    Refuse {
        /// The message.
        id: MessageId,
        /// Why.
        refusal: Refusal,
    },
    /// Device link, first frame from the new device (instead of a hello): the offer of the
    /// code it was given, the name it wants, and its proof of the code
    /// ([`crate::devices::LinkCode::proof`], role `"new"`).
    LinkRequest {
        /// The offer id (first part of the code).
        offer: String,
        /// The new device's name.
        name: String,
        /// Proof of the code.
        proof: Hash32,
    },
    /// Device link: the existing device accepts and proves the code too (role `"existing"`).
    LinkAccepted {
        /// Proof of the code.
        proof: Hash32,
    },
    /// Device link: contacts' pinned keys for the new device, in chunks of at most
    /// [`MAX_LINK_PINS`].
    LinkPins {
        /// Pins.
        pins: Vec<crate::devices::LinkedPin>,
    },
    /// Device link: the new device's certificate, the published list and the log state.
    LinkBundle(Box<crate::devices::LinkBundle>),
    /// Device link: the new device stored what it was given.
    LinkDone,
    /// Device link: one side gives up, and says why.
    LinkRefused {
        /// For a person, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
}

/// Most pins in one [`Frame::LinkPins`].
pub const MAX_LINK_PINS: usize = 100;
/// Longest [`Frame::LinkRefused`] reason.
pub const MAX_REASON_LEN: usize = 300;

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Declared or actual length over [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_LEN}")]
    TooLong(usize),
    /// Not valid CBOR for a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes left after the frame.
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// A field is out of range (e.g. a text over [`MAX_TEXT_LEN`]).
    #[error("invalid frame: {0}")]
    Invalid(&'static str),
}

impl Frame {
    /// Encodes the frame's CBOR body (without the length prefix).
    pub fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        // Writing into a Vec cannot fail, and every field type serializes.
        if ciborium::into_writer(self, &mut out).is_err() {
            out.clear();
        }
        out
    }

    /// Encodes the frame with its 4-byte length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let body = self.encode_body();
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a frame's CBOR body (the bytes after the length prefix).
    pub fn decode_body(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_FRAME_LEN {
            return Err(DecodeError::TooLong(bytes.len()));
        }
        let mut cursor = std::io::Cursor::new(bytes);
        let frame: Self = ciborium::from_reader(&mut cursor)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        if used != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len().saturating_sub(used)));
        }
        frame.check()?;
        Ok(frame)
    }

    /// Reads the length prefix; the caller then reads that many bytes.
    pub fn decode_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
        let len = u32::from_be_bytes(prefix) as usize;
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::TooLong(len));
        }
        Ok(len)
    }

    fn check(&self) -> Result<(), DecodeError> {
        match self {
            Self::Text { body, .. } if body.len() > MAX_TEXT_LEN => {
                Err(DecodeError::Invalid("text body over MAX_TEXT_LEN"))
            }
            Self::LinkRequest { offer, name, .. }
                if !crate::directory::is_link_offer(offer)
                    || crate::keys::check_device_name(name).is_err() =>
            {
                Err(DecodeError::Invalid("bad link offer or device name"))
            }
            Self::LinkPins { pins } if pins.len() > MAX_LINK_PINS => {
                Err(DecodeError::Invalid("too many pins in one frame"))
            }
            Self::LinkRefused { reason } if reason.len() > MAX_REASON_LEN => {
                Err(DecodeError::Invalid("reason over MAX_REASON_LEN"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceId;

    #[test]
    fn hello_checkpoint_is_optional_both_ways() {
        let Frame::Hello(mut h) = hello() else {
            unreachable!()
        };
        let old = {
            let mut b = Vec::new();
            ciborium::into_writer(&Frame::Hello(h.clone()), &mut b).unwrap();
            b
        };
        // An older agent's hello (no checkpoint) decodes, as None.
        let back: Frame = ciborium::from_reader(&old[..]).unwrap();
        assert_eq!(back, Frame::Hello(h.clone()));
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        h.checkpoint = Some(crate::transparency::Checkpoint::sign(
            &key,
            3,
            Hash32([4; 32]),
            Hash32([5; 32]),
        ));
        let mut b = Vec::new();
        ciborium::into_writer(&Frame::Hello(h.clone()), &mut b).unwrap();
        let back: Frame = ciborium::from_reader(&b[..]).unwrap();
        assert_eq!(back, Frame::Hello(h));
    }

    fn hello() -> Frame {
        let id = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let dev = DeviceId::from_signing_key(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            identifier: Identifier::parse("alice@example.com").unwrap(),
            device_cert: DeviceCertificate::issue(&id, dev, "laptop", 1).unwrap(),
            checkpoint: None,
        })
    }

    #[test]
    fn roundtrip_every_frame() {
        let id = MessageId([7; 16]);
        for f in [
            hello(),
            Frame::Close {
                code: CloseCode::KeyChanged,
            },
            Frame::Text {
                id,
                sent_at_ms: 1,
                body: "hello 👋".into(),
            },
            Frame::Ack { id, shown_to: 2 },
            Frame::Refuse {
                id,
                refusal: Refusal::DoNotDisturb,
            },
        ] {
            let enc = f.encode();
            let len = Frame::decode_len(enc[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, enc.len() - 4);
            assert_eq!(Frame::decode_body(&enc[4..]).unwrap(), f);
        }
    }

    #[test]
    fn golden_ack() {
        let f = Frame::Ack {
            id: MessageId([0xab; 16]),
            shown_to: 1,
        };
        assert_eq!(
            hex::encode(f.encode_body()),
            "a361746361636b626964 50abababababababababababababababab 6873686f776e5f746f01"
                .replace(' ', "")
        );
    }

    #[test]
    fn rejects_garbage_trailing_and_oversize() {
        let mut enc = Frame::Ack {
            id: MessageId([1; 16]),
            shown_to: 0,
        }
        .encode_body();
        enc.push(0);
        assert_eq!(Frame::decode_body(&enc), Err(DecodeError::TrailingBytes(1)));
        assert!(Frame::decode_len([0xff; 4]).is_err());
        assert!(Frame::decode_body(b"\xff\x00garbage").is_err());
        let big = Frame::Text {
            id: MessageId([1; 16]),
            sent_at_ms: 0,
            body: "x".repeat(MAX_TEXT_LEN + 1),
        };
        assert!(matches!(
            Frame::decode_body(&big.encode_body()),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn decode_never_panics_on_mutations() {
        let base = hello().encode_body();
        // Deterministic mutation sweep: flip, truncate and extend every position.
        for i in 0..base.len() {
            for x in [0x01u8, 0x80, 0xff] {
                let mut m = base.clone();
                m[i] ^= x;
                let _ = Frame::decode_body(&m);
            }
            let _ = Frame::decode_body(&base[..i]);
        }
    }
}
