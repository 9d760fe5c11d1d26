//! Golden bytes: the CBOR body of one sample of every frame, byte for byte. Another
//! implementation can check its encoder against these; `docs/protocol.md` lists the same
//! hex (checked below), so the document cannot drift from the code.

use ed25519_dalek::SigningKey;

use super::*;
use crate::{
    IdentityKey,
    devices::{DeviceEntry, DeviceList, DeviceListContent, LinkBundle, LinkedPin},
    keys::DeviceId,
    transparency::{Checkpoint, KtKeys},
};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn alice() -> Identifier {
    Identifier::parse("alice@example.com").unwrap()
}

fn cert() -> DeviceCertificate {
    DeviceCertificate::issue(&key(1), DeviceId::from_signing_key(&key(2)), "laptop", 1).unwrap()
}

fn checkpoint() -> Checkpoint {
    Checkpoint::sign(&key(9), 3, Hash32([4; 32]), Hash32([5; 32]))
}

/// One sample of every frame, named as in the document.
pub(super) fn samples() -> Vec<(&'static str, Frame)> {
    let id = MessageId([0xab; 16]);
    let list = DeviceList::sign(
        &key(1),
        DeviceListContent {
            identifier: alice(),
            version: 7,
            devices: vec![DeviceEntry {
                device_id: DeviceId::from_signing_key(&key(2)),
                name: "laptop".into(),
                added_at: 1,
            }],
            registration_lock: false,
            unlocked_with_pin: false,
        },
    )
    .unwrap();
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                max_version: Some(MAX_PROTOCOL_VERSION),
                identifier: alice(),
                device_cert: cert(),
                checkpoint: Some(checkpoint()),
                features: Some(Features::ALL.names()),
            }),
        ),
        (
            "hello (legacy)",
            Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                max_version: None,
                identifier: alice(),
                device_cert: cert(),
                checkpoint: None,
                features: None,
            }),
        ),
        (
            "close",
            Frame::Close {
                code: CloseCode::NotAContact,
            },
        ),
        (
            "text",
            Frame::Text {
                id,
                sent_at_ms: 1_700_000_000_000,
                body: "hi".into(),
            },
        ),
        ("ack", Frame::Ack { id, shown_to: 1 }),
        (
            "refuse",
            Frame::Refuse {
                id,
                refusal: Refusal::DoNotDisturb,
            },
        ),
        (
            "link_request",
            Frame::LinkRequest {
                offer: "AB12".into(),
                name: "phone".into(),
                proof: Hash32([6; 32]),
            },
        ),
        (
            "link_accepted",
            Frame::LinkAccepted {
                proof: Hash32([7; 32]),
            },
        ),
        (
            "link_pins",
            Frame::LinkPins {
                pins: vec![LinkedPin {
                    identifier: Identifier::parse("bob@example.com").unwrap(),
                    identity_key: IdentityKey::from_signing_key(&key(3)),
                    verified: true,
                    proven: true,
                    registration_lock: false,
                    devices: vec![DeviceId::from_signing_key(&key(4))],
                    list_version: 7,
                    not_a_contact: false,
                }],
            },
        ),
        (
            "link_bundle",
            Frame::LinkBundle(Box::new(LinkBundle {
                identifier: alice(),
                directory: "https://dir.example".into(),
                cert: cert(),
                list,
                kt: Some((
                    KtKeys {
                        signing_key: IdentityKey::from_signing_key(&key(9)),
                        vrf_public_key: Hash32([8; 32]),
                        configuration: "akd-experimental/dialtone-kt/v1".into(),
                    },
                    checkpoint(),
                )),
            })),
        ),
        ("link_done", Frame::LinkDone),
        (
            "link_refused",
            Frame::LinkRefused {
                reason: "no".into(),
            },
        ),
        (
            "open",
            Frame::Open {
                kind: StreamKind::Message.name().into(),
            },
        ),
        (
            "unsupported",
            Frame::Unsupported {
                frame: "open".into(),
                kind: Some("file".into()),
            },
        ),
    ]
}

const DOC: &str = include_str!("../../../../docs/protocol.md");

/// The golden hex of each sample, read from the document's table (`| name | hex |`) under
/// "## Golden bytes".
fn documented(name: &str) -> Option<String> {
    let table = DOC.split("## Golden bytes").nth(1)?;
    table.lines().find_map(|l| {
        let mut cells = l.split('|').map(str::trim).filter(|c| !c.is_empty());
        let first = cells.next()?;
        (first == format!("`{name}`")).then(|| {
            cells
                .next()
                .unwrap_or("")
                .trim_matches('`')
                .replace(' ', "")
        })
    })
}

#[test]
fn every_frame_matches_its_golden_bytes_in_the_document() {
    let mut missing = Vec::new();
    for (name, frame) in samples() {
        let hex = hex::encode(frame.encode_body());
        // Decodes back to the same frame.
        assert_eq!(
            Frame::decode_body(&frame.encode_body()).unwrap(),
            frame,
            "{name}"
        );
        match documented(name) {
            Some(doc) => assert_eq!(
                doc, hex,
                "golden bytes of `{name}` differ from the document"
            ),
            None => missing.push(format!("| `{name}` | `{hex}` |")),
        }
    }
    assert!(
        missing.is_empty(),
        "docs/protocol.md lacks golden rows:\n{}",
        missing.join("\n")
    );
    // Every frame the codec knows has a sample.
    for t in FRAME_NAMES {
        assert!(samples().iter().any(|(_, f)| f.name() == t), "{t}");
    }
}

#[test]
fn unknown_frames_are_named_and_old_hellos_still_decode() {
    // A newer peer's frame: well-formed CBOR with an unknown `t` decodes to its name.
    let mut b = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Map(vec![
            ("t".into(), "file_offer".into()),
            ("size".into(), 10.into()),
        ]),
        &mut b,
    )
    .unwrap();
    assert_eq!(
        Frame::decode_body(&b),
        Err(DecodeError::UnknownFrame("file_offer".into()))
    );
    // A known `t` with bad fields stays malformed.
    let mut b = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Map(vec![("t".into(), "ack".into())]),
        &mut b,
    )
    .unwrap();
    assert!(matches!(
        Frame::decode_body(&b),
        Err(DecodeError::Malformed(_))
    ));

    // Today's agents decode the new hello: their `Hello` had no `max_version` or `features`
    // and ignores fields it does not know (this is its definition, copied).
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct OldHello {
        version: u32,
        identifier: Identifier,
        device_cert: DeviceCertificate,
        #[serde(default)]
        checkpoint: Option<Checkpoint>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(tag = "t", rename_all = "snake_case")]
    enum OldFrame {
        Hello(OldHello),
    }
    let (_, new) = &samples()[0];
    let OldFrame::Hello(old) = ciborium::from_reader(&new.encode_body()[..]).unwrap();
    assert_eq!(old.version, 1, "an old agent accepts only version 1");
    // And the legacy hello is exactly today's: no field beyond them.
    let (_, legacy) = &samples()[1];
    let v: ciborium::Value = ciborium::from_reader(&legacy.encode_body()[..]).unwrap();
    let keys: Vec<_> = v
        .as_map()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_text().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["t", "version", "identifier", "device_cert"]);
    let Frame::Hello(h) = legacy else {
        unreachable!()
    };
    assert_eq!(h.features(), Features::LEGACY);
}

#[test]
fn hello_limits_are_checked() {
    let Frame::Hello(mut h) = samples().remove(0).1 else {
        unreachable!()
    };
    h.max_version = Some(0);
    assert!(Frame::decode_body(&Frame::Hello(h.clone()).encode_body()).is_err());
    h.max_version = None;
    h.features = Some(vec!["x".into(); MAX_FEATURES + 1]);
    assert!(Frame::decode_body(&Frame::Hello(h.clone()).encode_body()).is_err());
    h.features = Some(vec!["x".repeat(MAX_NAME_LEN + 1)]);
    assert!(Frame::decode_body(&Frame::Hello(h).encode_body()).is_err());
    let open = Frame::Open {
        kind: String::new(),
    };
    assert!(Frame::decode_body(&open.encode_body()).is_err());
}
