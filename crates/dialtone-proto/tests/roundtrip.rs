//! Round trips of every codec in `dialtone-proto`, over values proptest makes up: peer
//! frames (CBOR), the directory protocol's JSON, device certificates and lists (JSON, CBOR
//! and their transparency-log value), device-link codes, and identifiers (normalization is
//! idempotent). Each decoded value must equal the one encoded, and still verify where it is
//! signed. Decoding mutated encodings never panics.
//!
//! The fuzz targets in `fuzz/` start from seeds written from these same values:
//! `fuzz_seeds_decode` checks that the checked-in seeds still decode, and
//! `DIALTONE_WRITE_FUZZ_SEEDS=1 cargo nextest run -p dialtone-proto --test roundtrip` writes
//! them again after a format change.

// The crate's clippy.toml forbids IO in the sans-IO core; this test (not the crate) reads
// and writes the fuzz seeds and reads the environment.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::{net::SocketAddr, path::PathBuf};

use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey, Refusal,
    devices::{DeviceEntry, DeviceList, DeviceListContent, LinkBundle, LinkCode, LinkedPin},
    directory::{
        ClientFrame, ContactEntry, DeviceEndpoint, EndpointInfo, ErrorBody, ErrorCode,
        LinkOfferRequest, LinkToken, PresenceState, PresenceView, PublicRecord, RegisterConfirm,
        RegisterStart, Relation, Reply, Request, ServerFrame,
    },
    keys::sign,
    transparency::{Checkpoint, Hash32, KtKeys, kt_value_devices, kt_value_list},
    wire::{
        CloseCode, Frame, Hello, MAX_LINK_PINS, MAX_PROTOCOL_VERSION, MessageId, PROTOCOL_VERSION,
    },
};
use ed25519_dalek::SigningKey;
use proptest::{collection::vec, option, prelude::*, sample::select};
use serde::{Serialize, de::DeserializeOwned};

// ---- strategies ----

fn signing_key() -> impl Strategy<Value = SigningKey> {
    any::<[u8; 32]>().prop_map(|b| SigningKey::from_bytes(&b))
}

fn device_id() -> impl Strategy<Value = DeviceId> {
    signing_key().prop_map(|k| DeviceId::from_signing_key(&k))
}

fn hash32() -> impl Strategy<Value = Hash32> {
    any::<[u8; 32]>().prop_map(Hash32)
}

fn email() -> impl Strategy<Value = Identifier> {
    "[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9]{1,12}\\.(com|org|net|ch|example)"
        .prop_filter_map("valid email", |s| Identifier::parse(&s).ok())
}

fn phone() -> impl Strategy<Value = Identifier> {
    ("(\\+1415555|\\+4144668|\\+3314567|\\+4930123)", "[0-9]{4}")
        .prop_filter_map("valid phone", |(p, n)| {
            Identifier::parse(&format!("{p}{n}")).ok()
        })
}

fn identifier() -> impl Strategy<Value = Identifier> {
    prop_oneof![email(), phone()]
}

/// A device name as `check_device_name` takes it: printable, 1 to 64 bytes.
fn device_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._'éü-]{1,20}"
}

fn cert() -> impl Strategy<Value = DeviceCertificate> {
    (signing_key(), device_id(), device_name(), any::<u64>())
        .prop_map(|(k, d, n, t)| DeviceCertificate::issue(&k, d, &n, t).expect("a valid name"))
}

fn checkpoint() -> impl Strategy<Value = Checkpoint> {
    (signing_key(), any::<u64>(), hash32(), hash32())
        .prop_map(|(k, e, r, p)| Checkpoint::sign(&k, e, r, p))
}

fn device_list() -> impl Strategy<Value = DeviceList> {
    (
        signing_key(),
        identifier(),
        any::<u64>(),
        vec((device_id(), any::<u64>()), 1..=4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(k, identifier, version, devs, lock, unlocked)| {
            let devices = devs
                .into_iter()
                .enumerate()
                .map(|(i, (device_id, added_at))| DeviceEntry {
                    device_id,
                    // Distinct names; ids are distinct but for a 2^-256 chance.
                    name: format!("device {i}"),
                    added_at,
                })
                .collect();
            let content = DeviceListContent {
                identifier,
                version,
                devices,
                registration_lock: lock,
                unlocked_with_pin: unlocked,
            };
            DeviceList::sign(&k, content).expect("a valid list")
        })
}

fn identity_key() -> impl Strategy<Value = IdentityKey> {
    signing_key().prop_map(|k| IdentityKey::from_signing_key(&k))
}

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

fn close_code() -> impl Strategy<Value = CloseCode> {
    (0u64..32).prop_filter_map("a known code", CloseCode::from_code)
}

fn linked_pin() -> impl Strategy<Value = LinkedPin> {
    (
        identifier(),
        identity_key(),
        any::<[bool; 5]>(),
        vec(device_id(), 0..3),
        any::<u64>(),
    )
        .prop_map(
            |(identifier, identity_key, b, devices, list_version)| LinkedPin {
                identifier,
                identity_key,
                verified: b[0],
                proven: b[1],
                registration_lock: b[2],
                devices,
                list_version,
                not_a_contact: b[4],
            },
        )
}

fn link_bundle() -> impl Strategy<Value = LinkBundle> {
    (
        identifier(),
        "https://[a-z]{1,10}\\.example(:[0-9]{1,4})?",
        cert(),
        device_list(),
        option::of((identity_key(), hash32(), "[ -~]{0,20}", checkpoint())),
    )
        .prop_map(|(identifier, directory, cert, list, kt)| LinkBundle {
            identifier,
            directory,
            cert,
            list,
            kt: kt.map(|(signing_key, vrf_public_key, configuration, c)| {
                (
                    KtKeys {
                        signing_key,
                        vrf_public_key,
                        configuration,
                    },
                    c,
                )
            }),
        })
}

fn link_code() -> impl Strategy<Value = LinkCode> {
    any::<[u8; 10]>().prop_map(LinkCode::from_random)
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            identifier(),
            cert(),
            option::of(checkpoint()),
            option::of(Just(MAX_PROTOCOL_VERSION)),
            option::of(vec("[a-z-]{1,20}", 0..6)),
        )
            .prop_map(|(identifier, c, cp, max_version, features)| {
                Frame::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    max_version,
                    identifier,
                    device_cert: c,
                    checkpoint: cp,
                    features,
                })
            }),
        "[a-z-]{1,20}".prop_map(|kind| Frame::Open { kind }),
        ("[a-z_]{1,20}", option::of("[a-z-]{1,20}"))
            .prop_map(|(frame, kind)| Frame::Unsupported { frame, kind }),
        close_code().prop_map(|code| Frame::Close { code }),
        (message_id(), any::<u64>(), ".{0,200}").prop_map(|(id, sent_at_ms, body)| {
            Frame::Text {
                id,
                sent_at_ms,
                body,
            }
        }),
        (message_id(), any::<u32>()).prop_map(|(id, shown_to)| Frame::Ack { id, shown_to }),
        (message_id(), select(Refusal::ALL.to_vec()))
            .prop_map(|(id, refusal)| Frame::Refuse { id, refusal }),
        (link_code(), device_name(), hash32()).prop_map(|(c, name, proof)| {
            Frame::LinkRequest {
                offer: c.offer().to_owned(),
                name,
                proof,
            }
        }),
        hash32().prop_map(|proof| Frame::LinkAccepted { proof }),
        vec(linked_pin(), 0..4).prop_map(|pins| Frame::LinkPins { pins }),
        link_bundle().prop_map(|b| Frame::LinkBundle(Box::new(b))),
        Just(Frame::LinkDone),
        ".{0,100}".prop_map(|reason| Frame::LinkRefused { reason }),
    ]
}

fn endpoint() -> impl Strategy<Value = EndpointInfo> {
    (
        vec(any::<SocketAddr>(), 0..4),
        option::of("https://[a-z]{1,8}\\.example:[0-9]{2,4}"),
    )
        .prop_map(|(addrs, relay_url)| EndpointInfo { addrs, relay_url })
}

fn presence_state() -> impl Strategy<Value = PresenceState> {
    select(vec![
        PresenceState::Online,
        PresenceState::Away,
        PresenceState::Busy,
        PresenceState::Invisible,
        PresenceState::Offline,
    ])
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        identifier().prop_map(|identifier| Request::Block { identifier }),
        identifier().prop_map(|to| Request::ContactRequest { to }),
        (identifier(), any::<bool>())
            .prop_map(|(from, accept)| Request::ContactRespond { from, accept }),
        identifier().prop_map(|identifier| Request::ContactRemove { identifier }),
        Just(Request::Contacts),
        identifier().prop_map(|identifier| Request::Lookup { identifier }),
        (any::<u64>(), any::<u64>()).prop_map(|(from, to)| Request::KtAudit { from, to }),
        Just(Request::KtCheckpoint),
        identifier().prop_map(|identifier| Request::KtHistory { identifier }),
        identifier().prop_map(|identifier| Request::KtLookup { identifier }),
        Just(Request::Ping),
        (presence_state(), option::of(".{0,40}"), endpoint()).prop_map(
            |(state, message, endpoint)| Request::Publish {
                state,
                message,
                endpoint,
            }
        ),
        (link_code(), endpoint()).prop_map(|(c, endpoint)| Request::LinkOffer {
            offer: c.offer().to_owned(),
            token: c.rendezvous_token(),
            endpoint,
        }),
        (device_list(), vec(cert(), 0..3), option::of("[0-9]{4,8}")).prop_map(
            |(list, certs, pin)| Request::PublishDevices {
                list: Box::new(list),
                certs,
                pin,
            }
        ),
        identifier().prop_map(|identifier| Request::Unblock { identifier }),
    ]
}

fn contact_entry() -> impl Strategy<Value = ContactEntry> {
    (
        identifier(),
        identity_key(),
        select(vec![
            Relation::Accepted,
            Relation::Blocked,
            Relation::Incoming,
            Relation::None,
            Relation::Outgoing,
        ]),
        presence_state(),
        option::of(".{0,30}"),
        vec((cert(), endpoint(), presence_state()), 0..2),
    )
        .prop_map(
            |(identifier, identity_key, relation, state, message, devs)| ContactEntry {
                identifier,
                identity_key,
                relation,
                presence: PresenceView {
                    state,
                    message,
                    devices: devs
                        .into_iter()
                        .map(|(cert, endpoint, state)| DeviceEndpoint {
                            cert,
                            endpoint,
                            state,
                        })
                        .collect(),
                },
            },
        )
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (identifier(), identity_key(), device_id(), any::<u64>()).prop_map(
            |(identifier, identity_key, device_id, heartbeat_secs)| ServerFrame::Welcome {
                identifier,
                identity_key,
                device_id,
                heartbeat_secs,
            }
        ),
        any::<u64>().prop_map(|id| ServerFrame::Reply {
            id,
            reply: Reply::Pong
        }),
        (any::<u64>(), vec(contact_entry(), 0..3)).prop_map(|(id, contacts)| {
            ServerFrame::Reply {
                id,
                reply: Reply::Contacts { contacts },
            }
        }),
        (any::<u64>(), checkpoint()).prop_map(|(id, checkpoint)| ServerFrame::Reply {
            id,
            reply: Reply::KtCheckpoint { checkpoint },
        }),
        (any::<u64>(), ".{0,60}", option::of(any::<u64>())).prop_map(|(id, m, r)| {
            let mut error = ErrorBody::new(ErrorCode::RateLimited, m);
            error.retry_after_secs = r;
            ServerFrame::Error { id, error }
        }),
        contact_entry().prop_map(|contact| ServerFrame::Presence { contact }),
        (identifier(), identity_key())
            .prop_map(|(from, identity_key)| ServerFrame::ContactRequest { from, identity_key }),
        contact_entry().prop_map(|contact| ServerFrame::ContactChanged { contact }),
    ]
}

fn register_start() -> impl Strategy<Value = RegisterStart> {
    (identifier(), signing_key(), cert(), any::<u64>()).prop_map(|(identifier, k, c, t)| {
        let t0 = dialtone_proto::keys::Transcript::new("test");
        RegisterStart {
            identifier,
            identity_key: IdentityKey::from_signing_key(&k),
            device_cert: c,
            timestamp: t,
            signature: sign(&k, &t0),
            device_signature: sign(&k, &t0.u64(t)),
        }
    })
}

fn register_confirm() -> impl Strategy<Value = RegisterConfirm> {
    (
        identifier(),
        signing_key(),
        "[0-9]{6}",
        option::of(device_list()),
        option::of("[ -~]{4,12}"),
    )
        .prop_map(|(identifier, k, code, device_list, pin)| RegisterConfirm {
            identifier,
            identity_key: IdentityKey::from_signing_key(&k),
            signature: sign(
                &k,
                &dialtone_proto::keys::Transcript::new("test").str(&code),
            ),
            code,
            device_list,
            pin,
        })
}

// ---- properties ----

/// `v` to JSON and back: the value read serializes to the same JSON.
fn json_roundtrip<T: Serialize + DeserializeOwned>(v: &T) -> T {
    let json = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    back
}

fn cbor_roundtrip<T: Serialize + DeserializeOwned>(v: &T) -> T {
    let mut bytes = Vec::new();
    ciborium::into_writer(v, &mut bytes).unwrap();
    ciborium::from_reader(&bytes[..]).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn frames_decode_to_what_was_encoded(f in frame()) {
        let enc = f.encode();
        let len = Frame::decode_len(enc[..4].try_into().unwrap()).unwrap();
        prop_assert_eq!(len, enc.len() - 4);
        prop_assert_eq!(Frame::decode_body(&enc[4..]), Ok(f));
    }

    #[test]
    fn mutated_frames_never_panic(
        f in frame(),
        flips in vec((any::<prop::sample::Index>(), 1u8..), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = f.encode_body();
        for (i, x) in flips {
            let i = i.index(body.len());
            body[i] ^= x;
        }
        let _ = Frame::decode_body(&body);
        let _ = Frame::decode_body(&body[..cut.index(body.len() + 1)]);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode_body(&bytes);
        if let Some(p) = bytes.first_chunk::<4>() {
            let _ = Frame::decode_len(*p);
        }
    }

    #[test]
    fn certificates_round_trip_and_still_verify(c in cert()) {
        let j = json_roundtrip(&c);
        prop_assert_eq!(&j, &c);
        prop_assert_eq!(&cbor_roundtrip(&c), &c);
        prop_assert!(j.verify().is_ok());
    }

    #[test]
    fn device_lists_round_trip_and_still_verify(l in device_list()) {
        let j = json_roundtrip(&l);
        prop_assert_eq!(&j, &l);
        prop_assert!(j.verify().is_ok());
        prop_assert_eq!(&cbor_roundtrip(&l), &l);
        prop_assert_eq!(kt_value_list(&kt_value_devices(&l)), Some(l));
    }

    #[test]
    fn a_changed_list_no_longer_verifies(l in device_list(), bump in 1u64..) {
        let mut m = l.clone();
        m.version = m.version.wrapping_add(bump);
        prop_assert!(m.verify().is_err());
    }

    #[test]
    fn checkpoints_and_link_bundles_round_trip(c in checkpoint(), b in link_bundle()) {
        prop_assert_eq!(json_roundtrip(&c), c);
        prop_assert_eq!(cbor_roundtrip(&c), c);
        prop_assert_eq!(&json_roundtrip(&b), &b);
    }

    #[test]
    fn link_codes_parse_back(c in link_code()) {
        let shown = c.display();
        prop_assert_eq!(LinkCode::parse(&shown), Ok(c.clone()));
        prop_assert_eq!(LinkCode::parse(&shown.to_lowercase().replace('-', " ")), Ok(c.clone()));
        let r = LinkOfferRequest { offer: c.offer().to_owned(), token: c.rendezvous_token() };
        prop_assert_eq!(json_roundtrip(&r), r);
    }

    #[test]
    fn client_frames_round_trip(id in any::<u64>(), request in request()) {
        json_roundtrip(&ClientFrame { id, request });
    }

    #[test]
    fn server_frames_round_trip(f in server_frame()) {
        json_roundtrip(&f);
    }

    #[test]
    fn registration_bodies_round_trip(s in register_start(), c in register_confirm()) {
        json_roundtrip(&s);
        json_roundtrip(&c);
    }

    #[test]
    fn public_records_round_trip(
        identifier in identifier(),
        identity_key in identity_key(),
        devices in vec(cert(), 0..3),
        device_list in option::of(device_list()),
    ) {
        let r = PublicRecord { identifier, identity_key, devices, device_list };
        prop_assert_eq!(json_roundtrip(&r), r);
    }

    #[test]
    fn message_ids_and_tokens_round_trip(id in message_id(), t in any::<[u8; 16]>()) {
        prop_assert_eq!(json_roundtrip(&id), id);
        prop_assert_eq!(cbor_roundtrip(&id), id);
        prop_assert_eq!(json_roundtrip(&LinkToken(t)), LinkToken(t));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Normalization is idempotent: a normalized identifier parses to itself, whatever
    /// string it came from.
    #[test]
    fn identifier_normalization_is_idempotent(s in ".{0,40}|[ A-Za-z0-9.+@:()-]{1,30}") {
        if let Ok(id) = Identifier::parse(&s) {
            prop_assert_eq!(Identifier::parse(id.as_str()), Ok(id.clone()));
            prop_assert_eq!(Identifier::parse(&id.to_string()), Ok(id.clone()));
            prop_assert_eq!(json_roundtrip(&id), id);
        }
    }

    /// Other spellings of the same identifier normalize to it.
    #[test]
    fn spellings_normalize_to_one_identifier(id in identifier(), upper in any::<bool>()) {
        let s = id.as_str();
        let spelled = match id.kind() {
            dialtone_proto::ids::IdentifierKind::Email => {
                let s = if upper { s.to_uppercase() } else { s.to_owned() };
                format!("  mailto:{s} ")
            }
            dialtone_proto::ids::IdentifierKind::Phone => format!(" tel:{} ", &s),
        };
        prop_assert_eq!(Identifier::parse(&spelled), Ok(id));
    }
}

#[test]
fn wire_names_round_trip() {
    for r in Refusal::ALL {
        assert_eq!(Refusal::from_wire(r.as_str()), Some(r));
        assert_eq!(json_roundtrip(&r), r);
    }
    for code in 0..64 {
        if let Some(c) = CloseCode::from_code(code) {
            assert_eq!(u64::from(c.code()), code);
            assert_eq!(json_roundtrip(&c), c);
        }
    }
}

// ---- the fuzz targets' seeds ----

/// Fixed, valid encodings for the fuzz targets to start from: (target, name, bytes), drawn
/// from the strategies above with a fixed seed.
fn fuzz_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use proptest::{
        strategy::ValueTree,
        test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
    };
    fn draw<S: Strategy>(r: &mut TestRunner, s: S) -> S::Value {
        s.new_tree(r).unwrap().current()
    }
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut r = TestRunner::new_with_rng(Config::default(), rng);
    let mut seeds = Vec::new();
    // One frame of each kind (its Debug form starts with the variant's name).
    let kinds = [
        "Hello",
        "Close",
        "Text",
        "Ack",
        "Refuse",
        "LinkRequest",
        "LinkAccepted",
        "LinkPins",
        "LinkBundle",
        "LinkDone",
        "LinkRefused",
    ];
    for kind in kinds {
        let f = loop {
            let f = draw(&mut r, frame());
            let debug = format!("{f:?}");
            if debug
                .strip_prefix(kind)
                .is_some_and(|rest| !rest.starts_with(char::is_alphabetic))
            {
                break f;
            }
        };
        seeds.push(("peer_frame", kind.to_lowercase(), f.encode_body()));
    }
    let publish = ClientFrame {
        id: 9,
        request: Request::PublishDevices {
            list: Box::new(draw(&mut r, device_list())),
            certs: vec![draw(&mut r, cert())],
            pin: Some("1234".into()),
        },
    };
    let record = PublicRecord {
        identifier: Identifier::parse("bob@example.com").unwrap(),
        identity_key: draw(&mut r, identity_key()),
        devices: vec![draw(&mut r, cert())],
        device_list: Some(draw(&mut r, device_list())),
    };
    let json = [
        (
            "register-start",
            serde_json::to_vec(&draw(&mut r, register_start())),
        ),
        (
            "register-confirm",
            serde_json::to_vec(&draw(&mut r, register_confirm())),
        ),
        ("publish-devices", serde_json::to_vec(&publish)),
        (
            "server-frame",
            serde_json::to_vec(&draw(&mut r, server_frame())),
        ),
        ("public-record", serde_json::to_vec(&record)),
    ];
    for (name, bytes) in json {
        seeds.push(("directory_json", name.to_owned(), bytes.unwrap()));
    }
    seeds
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Whether a `directory_json` seed still parses as the type it was written from.
fn json_seed_parses(name: &str, bytes: &[u8]) -> bool {
    match name {
        "register-start" => serde_json::from_slice::<RegisterStart>(bytes).is_ok(),
        "register-confirm" => serde_json::from_slice::<RegisterConfirm>(bytes).is_ok(),
        "publish-devices" => serde_json::from_slice::<ClientFrame>(bytes).is_ok(),
        "server-frame" => serde_json::from_slice::<ServerFrame>(bytes).is_ok(),
        "public-record" => serde_json::from_slice::<PublicRecord>(bytes).is_ok(),
        _ => false,
    }
}

/// The checked-in seeds of the fuzz targets are still valid encodings (the fuzzer's best
/// start): a format change that breaks them fails here, and says how to write them again.
#[test]
fn fuzz_seeds_decode() {
    let write = std::env::var_os("DIALTONE_WRITE_FUZZ_SEEDS").is_some();
    let again = "write the seeds again with \
                 DIALTONE_WRITE_FUZZ_SEEDS=1 cargo nextest run -p dialtone-proto --test roundtrip";
    for (target, name, bytes) in fuzz_seeds() {
        let path = corpus_dir(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk =
            std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; {again}", path.display()));
        let valid = match target {
            "peer_frame" => Frame::decode_body(&on_disk).is_ok(),
            _ => json_seed_parses(&name, &on_disk),
        };
        assert!(valid, "{} no longer decodes: {again}", path.display());
    }
}

#[test]
fn pins_chunks_stay_under_the_limit() {
    // A LinkPins frame of MAX_LINK_PINS pins decodes; one more is refused.
    let pin = LinkedPin {
        identifier: Identifier::parse("a@example.com").unwrap(),
        identity_key: IdentityKey::from_signing_key(&SigningKey::from_bytes(&[3; 32])),
        verified: false,
        proven: true,
        registration_lock: false,
        devices: Vec::new(),
        list_version: 0,
        not_a_contact: false,
    };
    let ok = Frame::LinkPins {
        pins: vec![pin.clone(); MAX_LINK_PINS],
    };
    assert_eq!(Frame::decode_body(&ok.encode_body()), Ok(ok));
    let over = Frame::LinkPins {
        pins: vec![pin; MAX_LINK_PINS + 1],
    };
    assert!(Frame::decode_body(&over.encode_body()).is_err());
}
