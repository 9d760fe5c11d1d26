//! The peer protocol, spoken between two agents over an iroh connection (ALPN `dialtone/1`).
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of CBOR (RFC 8949)
//! encoding one [`Frame`]; the CDDL schema and golden bytes of every frame are in
//! `docs/protocol.md`. Flow:
//!
//! - The dialer opens the first bidirectional stream and sends [`Frame::Hello`] with its
//!   identifier, device certificate, the protocol versions it speaks and the [`Feature`]s it
//!   understands. The listener checks it ([`crate::hello`]) and answers with its own (which
//!   the dialer checks the same way) or closes the connection with a [`CloseCode`]. Each side
//!   then uses only the features *both* announced ([`Features::common`]); a hello with no
//!   feature list (an agent from before features existed) announces [`Features::LEGACY`].
//! - Each message then travels on a bidirectional stream of its own. With
//!   [`Feature::StreamKinds`] the stream starts with [`Frame::Open`] naming its
//!   [`StreamKind`]; without it (a legacy peer) the first frame is the [`Frame::Text`] itself.
//!   [`Frame::Ack`] or [`Frame::Refuse`] comes back, then both sides finish the stream.
//! - A frame or stream kind the receiver does not know is answered with
//!   [`Frame::Unsupported`] (to a peer that announced [`Feature::Unsupported`]; otherwise
//!   the stream is stopped with [`StreamCode::Unsupported`]), never with a dead connection.
//!   Unidirectional streams are stopped at once with [`StreamCode::Unsupported`].
//! - An idle connection is closed by either side; the next message reconnects.
//!
//! Decoding rejects trailing bytes and frames over [`MAX_FRAME_LEN`]; it never panics. A
//! well-formed frame of an unknown type decodes to [`DecodeError::UnknownFrame`], so that it
//! can be answered.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ids::Identifier, keys::DeviceCertificate, refusal::Refusal, transparency::Hash32};

/// The ALPN of the Dialtone peer protocol, version 1.
pub const ALPN: &[u8] = b"dialtone/1";
/// The lowest protocol version this implementation speaks, carried in [`Hello::version`]
/// (agents from before version ranges accept only a hello whose `version` is 1).
pub const PROTOCOL_VERSION: u32 = 1;
/// The highest protocol version this implementation speaks ([`Hello::max_version`]).
pub const MAX_PROTOCOL_VERSION: u32 = 1;
/// Most entries in [`Hello::features`].
pub const MAX_FEATURES: usize = 32;
/// Longest feature name, stream kind or frame name in a frame, in bytes.
pub const MAX_NAME_LEN: usize = 32;
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

/// The first frame each side sends: who it is, and what it speaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The lowest protocol version the sender speaks ([`PROTOCOL_VERSION`]).
    pub version: u32,
    /// The highest protocol version the sender speaks; absent: only `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_version: Option<u32>,
    /// The sender's identifier.
    pub identifier: Identifier,
    /// The sender's device certificate; its `device_id` must be the connection's peer key.
    pub device_cert: DeviceCertificate,
    /// The latest transparency-log checkpoint the sender accepted, for split-view detection.
    /// Optional: absent from older agents and from agents that have none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<crate::transparency::Checkpoint>,
    /// The names of the [`Feature`]s the sender understands (unknown names are ignored, so
    /// new features can be added). Absent: an agent from before features existed, which
    /// speaks [`Features::LEGACY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

impl Hello {
    /// The versions the sender speaks, lowest and highest.
    pub fn versions(&self) -> (u32, u32) {
        (self.version, self.max_version.unwrap_or(self.version))
    }

    /// The known features the sender announced ([`Features::LEGACY`] without a list).
    pub fn features(&self) -> Features {
        match &self.features {
            None => Features::LEGACY,
            Some(names) => names.iter().filter_map(|n| Feature::parse(n)).collect(),
        }
    }
}

/// The highest version both ranges contain, if any.
pub fn negotiate_version(ours: (u32, u32), theirs: (u32, u32)) -> Option<u32> {
    let low = ours.0.max(theirs.0);
    let high = ours.1.min(theirs.1);
    (low <= high).then_some(high)
}

/// Something a device may understand beyond the bare protocol. A device never sends what
/// needs a feature its peer did not announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// `text`: text messages on message streams, answered by `ack` or `refuse` (all agents).
    Text,
    /// `stream-kinds`: every bidirectional stream after the hello starts with [`Frame::Open`].
    StreamKinds,
    /// `unsupported`: an unknown frame or stream kind is answered with
    /// [`Frame::Unsupported`].
    Unsupported,
    /// `no-front-end`: the peer understands the refusal `no-front-end` (online, but no app
    /// open to show the message); a peer without it is refused `timeout` instead.
    NoFrontEnd,
}

impl Feature {
    /// Every feature this implementation knows.
    pub const ALL: [Feature; 4] = [
        Self::Text,
        Self::StreamKinds,
        Self::Unsupported,
        Self::NoFrontEnd,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::StreamKinds => "stream-kinds",
            Self::Unsupported => "unsupported",
            Self::NoFrontEnd => "no-front-end",
        }
    }

    /// The feature with this wire name, if known.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    fn bit(self) -> u32 {
        match self {
            Self::Text => 1,
            Self::StreamKinds => 2,
            Self::Unsupported => 4,
            Self::NoFrontEnd => 8,
        }
    }
}

/// A set of [`Feature`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Features(u32);

impl Features {
    /// What an agent from before features existed speaks: text messages only.
    pub const LEGACY: Self = Self(1);
    /// Everything this implementation speaks.
    pub const ALL: Self = Self(1 | 2 | 4 | 8);

    /// Whether `f` is in the set.
    pub fn contains(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    /// The set with `f` added.
    pub fn with(self, f: Feature) -> Self {
        Self(self.0 | f.bit())
    }

    /// What both sides speak: the only features a device may use on a connection.
    pub fn common(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// The features in the set, in [`Feature::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.contains(*f))
    }

    /// The wire names, for [`Hello::features`].
    pub fn names(self) -> Vec<String> {
        self.iter().map(|f| f.name().to_owned()).collect()
    }
}

impl FromIterator<Feature> for Features {
    fn from_iter<I: IntoIterator<Item = Feature>>(iter: I) -> Self {
        iter.into_iter().fold(Self(0), Self::with)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Feature::name))
            .finish()
    }
}

/// What a bidirectional stream carries, named by its [`Frame::Open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// `message`: one [`Frame::Text`], answered by [`Frame::Ack`] or [`Frame::Refuse`].
    Message,
}

impl StreamKind {
    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Message => "message",
        }
    }

    /// The kind with this wire name, if known.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Message].into_iter().find(|k| k.name() == name)
    }
}

/// Application error codes for stopping or resetting a single stream (QUIC `STOP_SENDING`
/// and `RESET_STREAM`), as opposed to closing the connection ([`CloseCode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamCode {
    /// The receiver does not take this stream: a unidirectional stream, an unknown stream
    /// kind or frame from a peer that does not speak [`Feature::Unsupported`].
    Unsupported,
    /// The receiver has too many streams in flight, or the stream broke a limit.
    Limit,
}

impl StreamCode {
    /// The QUIC application error code.
    pub fn code(self) -> u32 {
        match self {
            Self::Unsupported => 1,
            Self::Limit => 2,
        }
    }
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
    /// The first frame of a bidirectional stream after the hello (with
    /// [`Feature::StreamKinds`]): what the stream carries.
    Open {
        /// A [`StreamKind`] name; unknown kinds are answered with [`Frame::Unsupported`].
        kind: String,
    },
    /// The answer to a frame or stream kind the receiver does not understand (with
    /// [`Feature::Unsupported`]); the stream then ends, the connection stays.
    Unsupported {
        /// The `t` of the frame that was not understood (`open` for an unknown kind).
        frame: String,
        /// The stream kind that was not understood, for `open`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kind: Option<String>,
    },
}

/// The `t` of every frame this implementation knows.
pub const FRAME_NAMES: [&str; 13] = [
    "hello",
    "close",
    "text",
    "ack",
    "refuse",
    "link_request",
    "link_accepted",
    "link_pins",
    "link_bundle",
    "link_done",
    "link_refused",
    "open",
    "unsupported",
];

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
    /// A well-formed frame whose type (`t`) this implementation does not know: answer it
    /// with [`Frame::Unsupported`]. The name is cut to [`MAX_NAME_LEN`] bytes.
    #[error("unknown frame type {0:?}")]
    UnknownFrame(String),
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
        let frame: Self = match ciborium::from_reader(&mut cursor) {
            Ok(f) => f,
            Err(e) => {
                return Err(
                    unknown_frame(bytes).unwrap_or_else(|| DecodeError::Malformed(e.to_string()))
                );
            }
        };
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
            Self::Hello(h) if h.max_version.is_some_and(|m| m < h.version) => {
                Err(DecodeError::Invalid("max_version below version"))
            }
            Self::Hello(h)
                if h.features.as_ref().is_some_and(|f| {
                    f.len() > MAX_FEATURES || f.iter().any(|n| n.len() > MAX_NAME_LEN)
                }) =>
            {
                Err(DecodeError::Invalid("too many or too long feature names"))
            }
            Self::Open { kind } if kind.is_empty() || kind.len() > MAX_NAME_LEN => {
                Err(DecodeError::Invalid("bad stream kind"))
            }
            Self::Unsupported { frame, kind }
                if frame.len() > MAX_NAME_LEN
                    || kind.as_ref().is_some_and(|k| k.len() > MAX_NAME_LEN) =>
            {
                Err(DecodeError::Invalid("name over MAX_NAME_LEN"))
            }
            _ => Ok(()),
        }
    }

    /// The frame's `t`, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Close { .. } => "close",
            Self::Text { .. } => "text",
            Self::Ack { .. } => "ack",
            Self::Refuse { .. } => "refuse",
            Self::LinkRequest { .. } => "link_request",
            Self::LinkAccepted { .. } => "link_accepted",
            Self::LinkPins { .. } => "link_pins",
            Self::LinkBundle(_) => "link_bundle",
            Self::LinkDone => "link_done",
            Self::LinkRefused { .. } => "link_refused",
            Self::Open { .. } => "open",
            Self::Unsupported { .. } => "unsupported",
        }
    }

    /// What a receiver answers to a frame it did not expect here: [`Frame::Unsupported`]
    /// naming it.
    pub fn unsupported(name: &str) -> Self {
        Self::Unsupported {
            frame: cut(name),
            kind: None,
        }
    }
}

fn cut(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// A CBOR map whose `t` is text but no frame this implementation knows: a newer peer's frame.
fn unknown_frame(bytes: &[u8]) -> Option<DecodeError> {
    let value: ciborium::Value = ciborium::from_reader(bytes).ok()?;
    let t = value
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some("t"))?
        .1
        .as_text()?;
    (!FRAME_NAMES.contains(&t)).then(|| DecodeError::UnknownFrame(cut(t)))
}

#[cfg(test)]
mod golden;

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
            max_version: None,
            identifier: Identifier::parse("alice@example.com").unwrap(),
            device_cert: DeviceCertificate::issue(&id, dev, "laptop", 1).unwrap(),
            checkpoint: None,
            features: None,
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
