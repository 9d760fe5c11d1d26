//! The transparency log over HTTP, driven by the real `curl` client against a real directory
//! on a real SQLite file: every answer is checked the way an agent checks it (signature of the
//! checkpoint, akd proof against the signed root, chain and append-only proof between
//! checkpoints), the log survives a restart, and bad requests get typed 4xx errors.

use akd::{AkdLabel, HistoryVerificationParams};
use dialtone_directory::{Config, Server, kt::KtConfiguration};
use dialtone_proto::{
    IdentityKey,
    transparency::{Checkpoint, KtAudit, KtHistory, KtKeys, KtLookup, kt_value, kt_value_key},
};

mod support;
use support::{confirm_body, curl, keys, now, start_body};

async fn server(dir: &std::path::Path) -> Server {
    let mut c = Config::default();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.data_dir = dir.join("data");
    c.verify_outbox = Some(dir.join("outbox"));
    Server::bind(c).await.unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn register(base: &str, outbox: &std::path::Path, id: &str, seed: u8) {
    let k = keys(seed);
    let a = curl(
        "POST",
        &format!("{base}/v1/register/start"),
        Some(&start_body(&k, id, now())),
        &[],
    );
    assert_eq!(a.status, 202, "{}", a.body);
    let code = std::fs::read_to_string(outbox.join(id))
        .unwrap()
        .trim()
        .to_owned();
    let a = curl(
        "POST",
        &format!("{base}/v1/register/confirm"),
        Some(&confirm_body(&k, id, &code)),
        &[],
    );
    assert_eq!(a.status, 200, "{}", a.body);
}

fn get<T: serde::de::DeserializeOwned>(url: &str) -> T {
    let a = curl("GET", url, None, &[]);
    assert_eq!(a.status, 200, "{url}: {}", a.body);
    serde_json::from_value(a.body).unwrap()
}

/// What an agent does with a lookup: check the checkpoint signature, then the proof against
/// its root; returns the proven key and version.
fn verify_lookup(keys: &KtKeys, l: &KtLookup) -> (IdentityKey, u64) {
    l.checkpoint.verify(&keys.signing_key).unwrap();
    let proof = serde_json::from_value(l.proof.clone()).unwrap();
    let r = akd::verify::lookup_verify::<KtConfiguration>(
        &keys.vrf_public_key.0,
        l.checkpoint.root_hash.0,
        l.checkpoint.epoch,
        AkdLabel::from(l.identifier.as_str()),
        proof,
    )
    .unwrap();
    (kt_value_key(&r.value.0).unwrap(), r.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_are_published_signed_and_provable() {
    if !support::have_curl() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    let base = srv.url().to_owned();
    let outbox = tmp.path().join("outbox");
    let b = base.clone();
    let (keys0, last) = blocking(move || {
        let base = b;
        let keys: KtKeys = get(&format!("{base}/v1/kt/keys"));
        assert_eq!(keys.configuration, "akd-experimental/dialtone-kt/v1");
        let c0: Checkpoint = get(&format!("{base}/v1/kt/checkpoint"));
        c0.verify(&keys.signing_key).unwrap();
        assert_eq!(c0.epoch, 0, "a new directory starts at the empty epoch");

        register(&base, &outbox, "alice@example.com", 1);
        register(&base, &outbox, "bob@example.com", 2);
        // A lookup right after confirming waits for the epoch instead of failing.
        let l: KtLookup = get(&format!("{base}/v1/kt/lookup/alice@example.com"));
        let alice1 = IdentityKey::from_signing_key(&support::keys(1).identity);
        assert_eq!(verify_lookup(&keys, &l), (alice1, 1));
        // Alice registers a new key: version 2 in a later epoch.
        std::fs::remove_file(outbox.join("alice@example.com")).unwrap();
        register(&base, &outbox, "alice@example.com", 3);
        let l2: KtLookup = get(&format!("{base}/v1/kt/lookup/alice@example.com"));
        let alice2 = IdentityKey::from_signing_key(&support::keys(3).identity);
        assert_eq!(verify_lookup(&keys, &l2), (alice2, 2));
        assert!(l2.checkpoint.epoch > l.checkpoint.epoch);
        // A proof does not verify for a forged value: tamper with the proof's value.
        let mut forged = l2.clone();
        forged.proof["value"] = serde_json::Value::String(hex::encode(kt_value(&alice1)));
        let p = serde_json::from_value(forged.proof).unwrap();
        assert!(
            akd::verify::lookup_verify::<KtConfiguration>(
                &keys.vrf_public_key.0,
                forged.checkpoint.root_hash.0,
                forged.checkpoint.epoch,
                AkdLabel::from("alice@example.com"),
                p,
            )
            .is_err()
        );

        // Key history: both versions, newest first.
        let h: KtHistory = get(&format!("{base}/v1/kt/history/alice@example.com"));
        h.checkpoint.verify(&keys.signing_key).unwrap();
        let results = akd::verify::key_history_verify::<KtConfiguration>(
            &keys.vrf_public_key.0,
            h.checkpoint.root_hash.0,
            h.checkpoint.epoch,
            AkdLabel::from("alice@example.com"),
            serde_json::from_value(h.proof).unwrap(),
            HistoryVerificationParams::default(),
        )
        .unwrap();
        let hist: Vec<_> = results
            .iter()
            .map(|r| (r.version, kt_value_key(&r.value.0).unwrap()))
            .collect();
        assert_eq!(hist, vec![(2, alice2), (1, alice1)]);

        // Audit from the empty epoch to the latest: a signed hash chain and an append-only
        // proof that verifies against the roots.
        let latest: Checkpoint = get(&format!("{base}/v1/kt/checkpoint"));
        let a: KtAudit = get(&format!("{base}/v1/kt/audit?from=1&to={}", latest.epoch));
        assert_eq!(a.checkpoints.len() as u64, latest.epoch);
        for w in a.checkpoints.windows(2) {
            w[1].verify(&keys.signing_key).unwrap();
            assert!(w[0].is_followed_by(&w[1]));
        }
        assert_eq!(a.checkpoints.last(), Some(&latest));
        let hashes = a.checkpoints.iter().map(|c| c.root_hash.0).collect();
        let proof = serde_json::from_value(a.proof.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(akd::auditor::audit_verify::<KtConfiguration>(hashes, proof))
            .unwrap();
        // The same proof against a swapped root fails.
        let mut bad: Vec<[u8; 32]> = a.checkpoints.iter().map(|c| c.root_hash.0).collect();
        bad[0][0] ^= 1;
        let proof = serde_json::from_value(a.proof).unwrap();
        assert!(
            rt.block_on(akd::auditor::audit_verify::<KtConfiguration>(bad, proof))
                .is_err()
        );

        // From the empty epoch too (what a client that pinned a new directory asks for).
        let a0: KtAudit = get(&format!("{base}/v1/kt/audit?from=0&to={}", latest.epoch));
        assert_eq!(a0.checkpoints.first(), Some(&c0));
        let hashes = a0.checkpoints.iter().map(|c| c.root_hash.0).collect();
        let proof = serde_json::from_value(a0.proof).unwrap();
        rt.block_on(akd::auditor::audit_verify::<KtConfiguration>(hashes, proof))
            .unwrap();

        // Bad requests: typed errors.
        for (url, status, code) in [
            ("/v1/kt/lookup/nobody@example.com", 404, "not_found"),
            ("/v1/kt/lookup/not-an-identifier", 400, "invalid_identifier"),
            ("/v1/kt/history/nobody@example.com", 404, "not_found"),
            ("/v1/kt/audit?from=3&to=1", 400, "bad_request"),
            ("/v1/kt/audit?from=1&to=999", 400, "bad_request"),
            ("/v1/kt/audit?from=x&to=1", 400, "bad_request"),
            ("/v1/kt/audit", 400, "bad_request"),
        ] {
            let a = curl("GET", &format!("{base}{url}"), None, &[]);
            assert_eq!(
                (a.status, a.body["error"].as_str()),
                (status, Some(code)),
                "{url}: {}",
                a.body
            );
        }
        (keys, latest)
    })
    .await;
    srv.shutdown().await;

    // Restart on the same data: same keys, same log, and it extends.
    let srv = server(tmp.path()).await;
    let base = srv.url().to_owned();
    let outbox = tmp.path().join("outbox");
    blocking(move || {
        let keys: KtKeys = get(&format!("{base}/v1/kt/keys"));
        assert_eq!(keys.signing_key, keys0.signing_key);
        assert_eq!(keys.vrf_public_key, keys0.vrf_public_key);
        let c: Checkpoint = get(&format!("{base}/v1/kt/checkpoint"));
        assert_eq!(c, last);
        register(&base, &outbox, "carol@example.com", 4);
        let l: KtLookup = get(&format!("{base}/v1/kt/lookup/carol@example.com"));
        verify_lookup(&keys, &l);
        assert!(last.is_followed_by(&l.checkpoint));
    })
    .await;
    let mode = std::fs::metadata(tmp.path().join("data/kt-vrf.key"))
        .unwrap()
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
    srv.shutdown().await;
}
