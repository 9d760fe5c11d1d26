//! `kt-bench`: the cost of key transparency at a given number of registered identities.
//!
//! Run: `cargo run --release -p dialtone-bench --bin kt-bench -- --sizes 10000,100000`.
//!
//! For each size N it builds the directory's real akd stack (`ExperimentalConfiguration` with
//! Dialtone's domain label, the SQLite storage of `dialtone-directory` on a file in a temporary
//! directory, a VRF key file) holding N identities, then prints:
//!
//! - the bulk load (N bindings published as one epoch);
//! - **epoch publish time**: one epoch of `--batch` new bindings on top of N (median of
//!   `--epochs` epochs), what the directory does every epoch interval;
//! - **lookup proof**: generation time on the directory, size as JSON on the wire and as the
//!   proof in akd's protobuf encoding, and **verification time** on the client (medians over `--lookups`
//!   random identities);
//! - the append-only proof between two consecutive epochs (size, verification time), what a
//!   client downloads to move its checkpoint one epoch forward;
//! - baseline, same run: the same publish and lookup on akd's in-memory storage (no SQLite),
//!   unless `--no-baseline`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use akd::{
    AkdLabel, AkdValue,
    storage::{Database, StorageManager, memory::AsyncInMemoryDatabase},
};
use clap::Parser;
use dialtone_directory::kt::{FileVrf, KtConfiguration, SqliteAkd};
use dialtone_proto::{
    DeviceId, Identifier,
    devices::{DeviceEntry, DeviceList, DeviceListContent},
    transparency::kt_value_devices,
};
use ed25519_dalek::SigningKey;

#[derive(Parser, Debug)]
#[command(about = "Key-transparency cost at 10k/100k identities")]
struct Args {
    /// Numbers of registered identities, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sizes: Vec<usize>,
    /// New bindings per measured epoch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Measured epochs per size.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Lookups (proof generation + verification) per size.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
    /// Skip the in-memory baseline.
    #[arg(long)]
    no_baseline: bool,
}

fn label(i: usize) -> AkdLabel {
    AkdLabel::from(format!("user{i:07}@example.com").as_str())
}

fn value(i: usize, round: u8) -> AkdValue {
    // What Dialtone publishes: version 2, a device list with two devices signed by the
    // identity key (deterministic per identity and round, so the check below can rebuild it).
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    seed[8] = round;
    let identity = SigningKey::from_bytes(&seed);
    let device = |n: u8| {
        let mut dseed = seed;
        dseed[31] = n;
        DeviceEntry {
            device_id: DeviceId::from_signing_key(&SigningKey::from_bytes(&dseed)),
            name: if n == 1 {
                "phone".into()
            } else {
                "laptop".into()
            },
            added_at: 1_764_000_000,
        }
    };
    let devices = vec![device(1), device(2)];
    let list = DeviceList::sign(
        &identity,
        DeviceListContent {
            identifier: Identifier::parse(&format!("user{i:07}@example.com"))
                .expect("a valid identifier"),
            version: 1_764_000_000_000 + u64::from(round),
            devices,
            registration_lock: false,
            unlocked_with_pin: false,
        },
    )
    .expect("a valid list");
    AkdValue(kt_value_devices(&list))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

struct Figures {
    bulk: Duration,
    publish: Duration,
    lookup_gen: Duration,
    verify: Duration,
    proof_json: usize,
    proof_bytes: usize,
    audit_json: usize,
    audit_verify: Duration,
}

/// A cheap deterministic sequence of indices in `0..n` (no rng dependency).
fn pick(n: usize, k: usize) -> Vec<usize> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..k)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        })
        .collect()
}

/// Bytes of the proof in akd's own binary (protobuf) encoding.
fn proof_bytes(p: &akd::LookupProof) -> usize {
    use protobuf::Message;
    akd::proto::specs::types::LookupProof::from(p)
        .write_to_bytes()
        .map_or(0, |b| b.len())
}

async fn run<S: Database + 'static>(db: S, vrf: FileVrf, n: usize, args: &Args) -> Figures {
    let manager = StorageManager::new(
        db,
        Some(Duration::from_secs(300)),
        Some(256 * 1024 * 1024),
        Some(Duration::from_secs(60)),
    );
    let d = akd::Directory::<KtConfiguration, S, FileVrf>::new(manager, vrf, Default::default())
        .await
        .expect("akd");
    let vrf_pk = d.get_public_key().await.expect("vrf");
    let t = Instant::now();
    d.publish((0..n).map(|i| (label(i), value(i, 0))).collect())
        .await
        .expect("bulk publish");
    let bulk = t.elapsed();

    let mut publishes = Vec::new();
    let mut roots = vec![d.get_epoch_hash().await.expect("root")];
    for e in 0..args.epochs {
        let start = n + e * args.batch;
        let updates = (start..start + args.batch)
            .map(|i| (label(i), value(i, 0)))
            .collect();
        let t = Instant::now();
        let eh = d.publish(updates).await.expect("publish");
        publishes.push(t.elapsed());
        roots.push(eh);
    }

    let mut gens = Vec::new();
    let mut verifies = Vec::new();
    let mut json_sizes = Vec::new();
    let mut byte_sizes = Vec::new();
    for i in pick(n, args.lookups) {
        let l = label(i);
        let t = Instant::now();
        let (proof, eh) = d.lookup(l.clone()).await.expect("lookup");
        gens.push(t.elapsed());
        let json = serde_json::to_vec(&proof).expect("json");
        json_sizes.push(json.len());
        byte_sizes.push(proof_bytes(&proof));
        // What the client does: parse the wire form, then verify against the signed root.
        let t = Instant::now();
        let parsed: akd::LookupProof = serde_json::from_slice(&json).expect("parse");
        let r = akd::verify::lookup_verify::<KtConfiguration>(
            vrf_pk.as_bytes(),
            eh.hash(),
            eh.epoch(),
            l,
            parsed,
        )
        .expect("verify");
        verifies.push(t.elapsed());
        assert_eq!(r.value, value(i, 0));
    }

    // One epoch forward: the append-only proof between the last two epochs.
    let (a, b) = (&roots[roots.len() - 2], &roots[roots.len() - 1]);
    let audit = d.audit(a.epoch(), b.epoch()).await.expect("audit");
    let audit_json = serde_json::to_vec(&audit).expect("json");
    let mut audit_verifies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let p: akd::AppendOnlyProof = serde_json::from_slice(&audit_json).expect("parse");
        akd::auditor::audit_verify::<KtConfiguration>(vec![a.hash(), b.hash()], p)
            .await
            .expect("audit verify");
        audit_verifies.push(t.elapsed());
    }
    json_sizes.sort_unstable();
    byte_sizes.sort_unstable();
    Figures {
        bulk,
        publish: median(publishes),
        lookup_gen: median(gens),
        verify: median(verifies),
        proof_json: json_sizes[json_sizes.len() / 2],
        proof_bytes: byte_sizes[byte_sizes.len() / 2],
        audit_json: audit_json.len(),
        audit_verify: median(audit_verifies),
    }
}

fn db_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "kt-bench: akd ExperimentalConfiguration, batch {} per epoch, {} epochs, {} lookups",
        args.batch, args.epochs, args.lookups
    );
    for &n in &args.sizes {
        let tmp = tempfile::tempdir()?;
        let vrf = FileVrf::load_or_create(&tmp.path().join("kt-vrf.key"))?;
        let db = SqliteAkd::open(tmp.path())?;
        let f = run(db, vrf.clone(), n, &args).await;
        println!(
            "\n== {n} identities (SQLite, {} MiB on disk)",
            db_size(tmp.path()) / (1 << 20)
        );
        println!("bulk load ({n} bindings, one epoch)      {}", fmt(f.bulk));
        println!(
            "epoch publish ({} new bindings)          {}",
            args.batch,
            fmt(f.publish)
        );
        println!(
            "lookup proof generation (median)         {}",
            fmt(f.lookup_gen)
        );
        println!(
            "lookup proof size (median)               {} B JSON, {} B protobuf",
            f.proof_json, f.proof_bytes
        );
        println!("lookup proof verification (median)       {}", fmt(f.verify));
        println!(
            "append-only proof, one epoch             {} B JSON, verified in {}",
            f.audit_json,
            fmt(f.audit_verify)
        );
        if !args.no_baseline {
            let b = run(AsyncInMemoryDatabase::new(), vrf, n, &args).await;
            println!("baseline, akd in-memory storage:");
            println!("  bulk load                              {}", fmt(b.bulk));
            println!(
                "  epoch publish ({} new bindings)        {}",
                args.batch,
                fmt(b.publish)
            );
            println!(
                "  lookup proof generation (median)       {}",
                fmt(b.lookup_gen)
            );
            println!("  lookup proof verification (median)     {}", fmt(b.verify));
        }
    }
    Ok(())
}
