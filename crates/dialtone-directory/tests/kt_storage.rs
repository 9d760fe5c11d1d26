//! akd's storage on the directory's SQLite file: akd's own conformance suite, then a real
//! akd directory on the file — publish, prove, verify, close, reopen, and prove again.

use akd::{AkdLabel, AkdValue, HistoryParams, HistoryVerificationParams, storage::StorageManager};
use dialtone_directory::kt::{FileVrf, KtConfiguration, SqliteAkd};

#[tokio::test]
async fn sqlite_storage_passes_akds_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteAkd::open(dir.path()).unwrap();
    akd::storage::tests::run_test_cases_for_storage_impl(db).await;
    assert!(dir.path().join("directory.sqlite3").exists());
}

type Dir = akd::Directory<KtConfiguration, SqliteAkd, FileVrf>;

async fn open(path: &std::path::Path) -> Dir {
    let db = SqliteAkd::open(path).unwrap();
    let vrf = FileVrf::load_or_create(&path.join("kt-vrf.key")).unwrap();
    Dir::new(StorageManager::new_no_cache(db), vrf, Default::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_directory_on_sqlite_survives_a_restart_and_its_proofs_verify() {
    let dir = tempfile::tempdir().unwrap();
    let alice = AkdLabel::from("alice@example.com");
    let (root1, vrf_pk) = {
        let d = open(dir.path()).await;
        d.publish(vec![
            (alice.clone(), AkdValue(vec![1; 33])),
            (AkdLabel::from("bob@example.com"), AkdValue(vec![2; 33])),
        ])
        .await
        .unwrap();
        let eh = d
            .publish(vec![(alice.clone(), AkdValue(vec![3; 33]))])
            .await
            .unwrap();
        (eh, d.get_public_key().await.unwrap())
    };
    // A fresh process: the same file and key file.
    let d = open(dir.path()).await;
    let eh = d.get_epoch_hash().await.unwrap();
    assert_eq!(eh, root1, "the tree after a reopen is the tree before it");
    assert_eq!(
        d.get_public_key().await.unwrap().as_bytes(),
        vrf_pk.as_bytes()
    );
    let (proof, eh) = d.lookup(alice.clone()).await.unwrap();
    let r = akd::verify::lookup_verify::<KtConfiguration>(
        vrf_pk.as_bytes(),
        eh.hash(),
        eh.epoch(),
        alice.clone(),
        proof.clone(),
    )
    .unwrap();
    assert_eq!(r.value, AkdValue(vec![3; 33]));
    assert_eq!(r.version, 2);
    // The proof does not verify for another label or another root.
    assert!(
        akd::verify::lookup_verify::<KtConfiguration>(
            vrf_pk.as_bytes(),
            eh.hash(),
            eh.epoch(),
            AkdLabel::from("bob@example.com"),
            proof.clone(),
        )
        .is_err()
    );
    let mut other_root = eh.hash();
    other_root[0] ^= 1;
    assert!(
        akd::verify::lookup_verify::<KtConfiguration>(
            vrf_pk.as_bytes(),
            other_root,
            eh.epoch(),
            alice.clone(),
            proof,
        )
        .is_err()
    );
    let (hist, eh) = d
        .key_history(&alice, HistoryParams::Complete)
        .await
        .unwrap();
    let results = akd::verify::key_history_verify::<KtConfiguration>(
        vrf_pk.as_bytes(),
        eh.hash(),
        eh.epoch(),
        alice.clone(),
        hist,
        HistoryVerificationParams::default(),
    )
    .unwrap();
    let values: Vec<_> = results.iter().map(|r| r.value.0[0]).collect();
    assert_eq!(values, vec![3, 1], "newest first");
    // Append-only proof from epoch 1 to 2 verifies against the two roots.
    let d1 = d.audit(1, 2).await.unwrap();
    assert_eq!(d1.epochs, vec![1]);
}
