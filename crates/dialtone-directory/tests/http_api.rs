//! The directory's HTTP API against bad input, driven by the real `curl` client: every
//! mistake a client can make gets a 4xx with a JSON error code, never a 500 or a panic.

use std::process::Command;

use dialtone_directory::{Config, Server};
use dialtone_proto::{
    DeviceId, IdentityKey,
    directory::ChallengeRequest,
    keys::{session_transcript, sign},
};
use ed25519_dalek::SigningKey;
use serde_json::Value;

mod support;
use support::{confirm_body, curl, keys, now, start_body};

async fn server(dir: &std::path::Path) -> Server {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.join("data");
    c.verify_outbox = Some(dir.join("outbox"));
    Server::bind(c).await.unwrap()
}

/// Runs blocking curl calls off the runtime that serves the directory.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_4xx() {
    if !support::have_curl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    let base = srv.url().to_owned();
    let outbox = tmp.path().join("outbox");
    blocking(move || {
        let k = keys(1);
        // Bad JSON, wrong shape, oversize, wrong content type.
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(b"{nope"),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("bad_json"))
        );
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(br#"{"identifier":"a@b.com"}"#),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("bad_request"))
        );
        let big = vec![b' '; 20 * 1024];
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&big),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (413, Some("payload_too_large"))
        );
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            None,
            &["-H", "Content-Type: text/plain", "-d", "x"],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("bad_json"))
        );
        // Invalid identifier inside otherwise valid JSON.
        let mut v: Value =
            serde_json::from_slice(&start_body(&k, "alice@example.com", now())).unwrap();
        v["identifier"] = "not an address".into();
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(v.to_string().as_bytes()),
            &[],
        );
        assert_eq!(a.status, 400);
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .contains("neither an email"),
            "{}",
            a.body
        );
        // Bad signature: valid request for another identifier's transcript.
        let mut v: Value =
            serde_json::from_slice(&start_body(&k, "alice@example.com", now())).unwrap();
        v["identifier"] = "mallory@example.com".into();
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(v.to_string().as_bytes()),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("bad_signature"))
        );
        // Stale timestamp.
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&start_body(&k, "alice@example.com", now() - 3600)),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("stale_timestamp"))
        );
        // Certificate of another identity.
        let other = keys(2);
        let mut v: Value =
            serde_json::from_slice(&start_body(&k, "alice@example.com", now())).unwrap();
        v["device_cert"] = serde_json::to_value(&other.cert).unwrap();
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(v.to_string().as_bytes()),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("invalid_certificate"))
        );

        // A good registration, then wrong codes until the attempt is void.
        let a = curl(
            "POST",
            &format!("{base}/v1/register/start"),
            Some(&start_body(&k, "alice@example.com", now())),
            &[],
        );
        assert_eq!(a.status, 202, "{}", a.body);
        let code = std::fs::read_to_string(outbox.join("alice@example.com"))
            .unwrap()
            .trim()
            .to_owned();
        let wrong = if code == "000000" { "111111" } else { "000000" };
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&k, "alice@example.com", wrong)),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("wrong_code"))
        );
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .contains("4 attempts left")
        );
        // The right code signed by another key is refused.
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&other, "alice@example.com", &code)),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (404, Some("no_pending_verification"))
        );
        for _ in 0..3 {
            curl(
                "POST",
                &format!("{base}/v1/register/confirm"),
                Some(&confirm_body(&k, "alice@example.com", wrong)),
                &[],
            );
        }
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&k, "alice@example.com", wrong)),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (429, Some("too_many_attempts"))
        );
        // The code no longer works either: the attempt is void.
        let a = curl(
            "POST",
            &format!("{base}/v1/register/confirm"),
            Some(&confirm_body(&k, "alice@example.com", &code)),
            &[],
        );
        assert_eq!(a.status, 404);

        // Repeated registrations are rate limited with Retry-After.
        let mut limited = None;
        for _ in 0..5 {
            let a = curl(
                "POST",
                &format!("{base}/v1/register/start"),
                Some(&start_body(&k, "alice@example.com", now())),
                &[],
            );
            if a.status != 202 {
                limited = Some(a);
                break;
            }
        }
        let a = limited.expect("never rate limited");
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (429, Some("rate_limited"))
        );
        assert!(a.headers.contains("retry-after:"), "{}", a.headers);

        // Unknown identifiers, routes and methods.
        let a = curl(
            "GET",
            &format!("{base}/v1/lookup/nobody@example.com"),
            None,
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (404, Some("not_found"))
        );
        let a = curl("GET", &format!("{base}/v1/lookup/garbage"), None, &[]);
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (400, Some("invalid_identifier"))
        );
        let a = curl("GET", &format!("{base}/v1/nothing-here"), None, &[]);
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (404, Some("not_found"))
        );
        let a = curl("GET", &format!("{base}/v1/register/start"), None, &[]);
        assert_eq!(a.status, 405);
        let a = curl(
            "POST",
            &format!("{base}/v1/session/challenge"),
            Some(br#"{"device_id":"00"}"#),
            &[],
        );
        assert_eq!(a.status, 400);
        let unknown = DeviceId::from_signing_key(&SigningKey::from_bytes(&[77; 32]));
        let a = curl(
            "POST",
            &format!("{base}/v1/session/challenge"),
            Some(&serde_json::to_vec(&ChallengeRequest { device_id: unknown }).unwrap()),
            &[],
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (404, Some("unknown_device"))
        );
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webfinger_challenges_and_persistence() {
    if !support::have_curl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    let base = srv.url().to_owned();
    let outbox = tmp.path().join("outbox");
    let k = keys(3);
    let ik = IdentityKey::from_signing_key(&k.identity);
    let (b2, ob2) = (base.clone(), outbox.clone());
    let dev = DeviceId::from_signing_key(&k.device);
    let device_key = k.device.clone();
    blocking(move || {
        let base = b2;
        for (id, seed) in [("carol@example.com", 3u8), ("+14155550100", 4)] {
            let kk = keys(seed);
            let a = curl(
                "POST",
                &format!("{base}/v1/register/start"),
                Some(&start_body(&kk, id, now())),
                &[],
            );
            assert_eq!(a.status, 202);
            let code = std::fs::read_to_string(ob2.join(id))
                .unwrap()
                .trim()
                .to_owned();
            let a = curl(
                "POST",
                &format!("{base}/v1/register/confirm"),
                Some(&confirm_body(&kk, id, &code)),
                &[],
            );
            assert_eq!(a.status, 200, "{}", a.body);
        }

        // WebFinger: acct:, mailto: and tel:, identity key only.
        for resource in ["acct:carol@example.com", "mailto:Carol@Example.com"] {
            let a = curl(
                "GET",
                &format!("{base}/.well-known/webfinger?resource={resource}"),
                None,
                &[],
            );
            assert_eq!(a.status, 200);
            assert!(
                a.headers.contains("content-type: application/jrd+json"),
                "{}",
                a.headers
            );
            assert!(a.headers.contains("access-control-allow-origin: *"));
            assert_eq!(a.body["subject"], "acct:carol@example.com");
            assert_eq!(
                a.body["properties"]["https://dialtone.im/ns/identity-key"],
                ik.to_string()
            );
            let text = a.body.to_string();
            for leak in ["addrs", "presence", "\"state\"", "endpoint"] {
                assert!(!text.contains(leak), "presence leaked ({leak}): {text}");
            }
        }
        let a = curl(
            "GET",
            &format!("{base}/.well-known/webfinger?resource=tel:%2B14155550100"),
            None,
            &[],
        );
        assert_eq!(
            (a.status, a.body["subject"].as_str()),
            (200, Some("tel:+14155550100"))
        );
        let a = curl(
            "GET",
            &format!("{base}/.well-known/webfinger?resource=acct:nobody@example.com"),
            None,
            &[],
        );
        assert_eq!(a.status, 404);
        let a = curl("GET", &format!("{base}/.well-known/webfinger"), None, &[]);
        assert_eq!(a.status, 400);
        let a = curl(
            "GET",
            &format!("{base}/.well-known/webfinger?resource=https://x"),
            None,
            &[],
        );
        assert_eq!(a.status, 400);

        // Session challenges: a wrong signature, then a replay of a good answer, are refused.
        let ask = || {
            let a = curl(
                "POST",
                &format!("{base}/v1/session/challenge"),
                Some(&serde_json::to_vec(&ChallengeRequest { device_id: dev }).unwrap()),
                &[],
            );
            assert_eq!(a.status, 200, "{}", a.body);
            let hexc = a.body["challenge"].as_str().unwrap().to_owned();
            let mut c = [0u8; 32];
            hex::decode_to_slice(&hexc, &mut c).unwrap();
            (hexc, c)
        };
        let ws = [
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "--max-time",
            "2",
        ];
        let (hexc, c) = ask();
        let wrong = sign(
            &SigningKey::from_bytes(&[9; 32]),
            &session_transcript(&c, &dev),
        );
        let a = curl(
            "GET",
            &format!("{base}/v1/session?device_id={dev}&challenge={hexc}&signature={wrong}"),
            None,
            &ws,
        );
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("bad_signature"))
        );
        let (hexc, c) = ask();
        let good = sign(&device_key, &session_transcript(&c, &dev));
        let url = format!("{base}/v1/session?device_id={dev}&challenge={hexc}&signature={good}");
        // First use upgrades (curl then times out on the open socket: fine, we only want the status).
        let out = Command::new("curl")
            .args(["-s", "-i", "-o", "-"])
            .args(ws)
            .arg(&url)
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let a = curl("GET", &url, None, &ws);
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (401, Some("challenge_invalid"))
        );
    })
    .await;
    srv.shutdown().await;

    // Registrations survive a restart on the same data.
    let srv = server(tmp.path()).await;
    let base = srv.url().to_owned();
    blocking(move || {
        let a = curl(
            "GET",
            &format!("{base}/v1/lookup/carol@example.com"),
            None,
            &[],
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.body["identity_key"], ik.to_string());
        // A public lookup shows no device certificates (docs/privacy.md).
        assert_eq!(a.body["devices"].as_array().unwrap().len(), 0);
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Config::default();
    c.listen = "0.0.0.0:0".parse().unwrap();
    c.data_dir = tmp.path().to_path_buf();
    let e = Server::bind(c).await.unwrap_err();
    assert!(e.to_string().contains("refusing plain HTTP"), "{e}");
}
