//! `dialtone-loadgen`: how many live sessions one directory holds, and what they cost.
//!
//! Run: `scripts/loadgen.sh --sessions 100000` (builds release binaries, raises the open-file
//! limit, runs this). It
//!
//! 1. generates N people (an identity key and one certified device each) and provisions them,
//!    with a ring of mutual contacts (each person has `--contacts` of them), straight into a
//!    fresh data folder ([`dialtone_directory::provision`]);
//! 2. starts the real `dialtone-directory` binary on 127.0.0.1 (rate limits per IP lifted:
//!    every simulated device comes from one of a few loopback addresses);
//! 3. logs every device in as an agent does (`--login one`: WebSocket upgrade, the
//!    directory's challenge on it, Ed25519 signature, Welcome, publish; `--login two`: the
//!    older login with the HTTP challenge on a connection of its own), over plain TCP or
//!    (`--tls`) TLS with a private CA, from `--sources` addresses 127.0.0.x so ephemeral ports
//!    do not run out, and keeps the sessions open, answering the directory's pings;
//! 4. measures: logins per second, directory memory per session (RSS growth ÷ sessions),
//!    directory CPU and bytes per idle session, presence fan-out latency to contacts under
//!    churn (publisher's clock to contact's clock, one process), lookups per second and
//!    authenticated presence publishes per second (closed loops, `--window` outstanding), and
//!    the directory's CPU time per operation; then closes `--relogin-n` sessions and logs
//!    them in again (with `--tls`, resuming their TLS sessions) and, with `--restart`, stops
//!    the directory, starts it again on the same port and times how long until every device
//!    is back, each reconnecting as an agent does (full jitter below a cap doubling from
//!    250 ms to 2 s).
//!
//! Every phase is bounded in time and count; the directory is stopped at the end.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use dialtone_directory::provision::{Person, provision};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    directory::{ClientFrame, EndpointInfo, PresenceState, Request},
};
use ed25519_dalek::SigningKey;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

mod login;
mod process;
mod session;
use login::{LoginMode, Target, Ws};
use process::{
    callgrind_control, callgrind_total, machine_busy, private_ca, proc_stats, raise_nofile,
    start_directory, tcp_bytes,
};
use session::login;

#[derive(Parser, Debug, Clone)]
#[command(about = "Dialtone directory load generator")]
struct Args {
    /// Simulated devices (one person each), all kept online at once.
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Mutual contacts per person (a ring: the nearest neighbours on each side).
    #[arg(long, default_value_t = 10)]
    contacts: usize,
    /// Loopback source addresses 127.0.0.1..=127.0.0.N (about 28 000 ports each).
    #[arg(long)]
    sources: Option<u8>,
    /// Logins in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_window: usize,
    /// Requests in flight at once in the closed-loop phases (sipp's `-l 200` likewise).
    #[arg(long, default_value_t = 200)]
    window: usize,
    /// Seconds of the idle phase (CPU and bytes per idle session).
    #[arg(long, default_value_t = 10.0)]
    idle_secs: f64,
    /// Seconds of presence churn (fan-out latency).
    #[arg(long, default_value_t = 10.0)]
    churn_secs: f64,
    /// Presence changes per second during churn (each fans out to the online contacts).
    #[arg(long, default_value_t = 1000)]
    churn_rate: u32,
    /// Seconds of the closed-loop lookup phase.
    #[arg(long, default_value_t = 5.0)]
    lookup_secs: f64,
    /// Seconds of the closed-loop publish phase.
    #[arg(long, default_value_t = 10.0)]
    publish_secs: f64,
    /// Which login the devices use.
    #[arg(long, value_enum, default_value_t = LoginMode::One)]
    login: LoginMode,
    /// The directory on TLS (a private CA), as in production.
    #[arg(long)]
    tls: bool,
    /// Sessions closed and logged in again at the end (reconnects; TLS resumes).
    #[arg(long, default_value_t = 1000)]
    relogin_n: usize,
    /// At the end, restart the directory and time until every device is back.
    #[arg(long)]
    restart: bool,
    /// Run the measured directory under `valgrind --tool=callgrind`, counting instructions
    /// only during the login phase (`callgrind_control`): instructions per login, robust to
    /// a busy machine. Use a few hundred sessions: everything runs ~50× slower.
    #[arg(long)]
    callgrind: bool,
    /// The directory binary (default: next to this one).
    #[arg(long)]
    directory_bin: Option<PathBuf>,
    /// Print one JSON object instead of a report.
    #[arg(long)]
    json: bool,
}

/// Builds the `k`-th request of a closed loop.
type MakeRequest = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// What a session task is asked to do.
enum Cmd {
    /// Send one request and do not wait for its answer (churn).
    Send(String),
    /// Close the session, then report.
    Close(oneshot::Sender<()>),
    /// Log in again (after `Close`), then report whether TLS resumed.
    Login(oneshot::Sender<anyhow::Result<bool>>),
    /// Closed loop on this session: send a request, wait for its answer, again, until
    /// `until`; count answers and errors, then report on `done`.
    Loop {
        make: MakeRequest,
        until: Instant,
        ok: Arc<AtomicU64>,
        bad: Arc<AtomicU64>,
        done: oneshot::Sender<()>,
    },
}

/// Shared counters and samples.
#[derive(Default)]
struct Shared {
    /// Fan-out latencies in µs (publisher's send → a contact's receipt).
    fanout_us: Mutex<Vec<u32>>,
    /// Whether fan-out samples are being taken.
    sampling: std::sync::atomic::AtomicBool,
    pushes: AtomicU64,
    errors: AtomicU64,
    closed: AtomicUsize,
    base: std::sync::OnceLock<Instant>,
    /// Set before a directory restart: a session that ends logs in again, as an agent does.
    reconnect: std::sync::atomic::AtomicBool,
    /// Sessions back after the restart, and when each came back.
    back: Mutex<Vec<Instant>>,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.base.get_or_init(Instant::now).elapsed().as_micros() as u64
    }
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    contact: Option<PeekContact>,
}
#[derive(Deserialize)]
struct PeekContact {
    presence: PeekPresence,
}
#[derive(Deserialize)]
struct PeekPresence {
    #[serde(default)]
    message: Option<String>,
}

fn identifier(i: usize) -> Identifier {
    Identifier::parse(&format!("lg{i}@load.test")).expect("valid email")
}

fn key(i: usize, what: u8) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
    seed[8] = what;
    seed[31] = 0x5a;
    SigningKey::from_bytes(&seed)
}

/// Generates the people on all cores.
fn people(n: usize) -> anyhow::Result<Vec<(Person, SigningKey)>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = n.div_ceil(threads).max(1);
    let mut out = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(|i| {
                            let id = key(i, 1);
                            let dev = key(i, 2);
                            let cert = DeviceCertificate::issue(
                                &id,
                                DeviceId::from_signing_key(&dev),
                                "loadgen",
                                1_700_000_000,
                            )?;
                            Ok((
                                Person {
                                    identifier: identifier(i),
                                    device: cert,
                                },
                                dev,
                            ))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().expect("keygen thread")?);
        }
        anyhow::Ok(())
    })?;
    Ok(out)
}

/// A ring: i is a contact of i±1 … i±k/2.
fn ring(n: usize, k: usize) -> Vec<(usize, usize)> {
    let half = (k / 2).min(n.saturating_sub(1) / 2);
    let mut pairs = Vec::with_capacity(n * half);
    for i in 0..n {
        for d in 1..=half {
            pairs.push((i, (i + d) % n));
        }
    }
    pairs
}

fn publish_text(state: PresenceState, message: Option<String>) -> String {
    let f = ClientFrame {
        id: 1,
        request: Request::Publish {
            state,
            message,
            endpoint: EndpointInfo {
                addrs: vec![
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 4433),
                    "[2001:db8::1]:4433".parse().expect("literal"),
                ],
                relay_url: None,
            },
        },
    };
    serde_json::to_string(&f).expect("serializable")
}

fn lookup_text(who: &Identifier) -> String {
    let f = ClientFrame {
        id: 1,
        request: Request::Lookup {
            identifier: who.clone(),
        },
    };
    serde_json::to_string(&f).expect("serializable")
}

#[derive(Debug, Clone, Copy, Default)]
struct Pct {
    n: usize,
    median: f64,
    p99: f64,
    max: f64,
}

fn pct(mut v: Vec<u32>) -> Pct {
    if v.is_empty() {
        return Pct::default();
    }
    v.sort_unstable();
    let q = |p: f64| f64::from(v[((v.len() as f64 - 1.0) * p).round() as usize]);
    Pct {
        n: v.len(),
        median: q(0.5),
        p99: q(0.99),
        max: q(1.0),
    }
}

/// Closed loop: `window` sessions, spread over all of them, each send a request built by
/// `make(k)`, wait for its answer and go again, until `secs` pass (sipp runs its calls the
/// same way). Returns (answered, failed, elapsed).
async fn closed_loop(
    sessions: &Arc<Vec<mpsc::Sender<Cmd>>>,
    window: usize,
    secs: f64,
    make: MakeRequest,
) -> (u64, u64, Duration) {
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let window = window.clamp(1, sessions.len());
    let step = sessions.len() / window;
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(secs);
    let mut done = Vec::with_capacity(window);
    for w in 0..window {
        let (tx, rx) = oneshot::channel();
        let cmd = Cmd::Loop {
            make: make.clone(),
            until,
            ok: ok.clone(),
            bad: bad.clone(),
            done: tx,
        };
        if sessions[w * step].send(cmd).await.is_ok() {
            done.push(rx);
        } else {
            bad.fetch_add(1, Ordering::Relaxed);
        }
    }
    for rx in done {
        let _ = tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), rx).await;
    }
    (
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed),
        t0.elapsed(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // reqwest needs a process-wide crypto provider even for plain HTTP.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = args.sessions;
    if n < 2 {
        bail!("--sessions must be at least 2");
    }
    let sources = args
        .sources
        .unwrap_or_else(|| u8::try_from(n / 20_000 + 1).unwrap_or(u8::MAX))
        .max(1);
    // Each session is a socket here and one in the directory (which inherits the limit),
    // plus a few hundred for the HTTP pools and files.
    let nofile = raise_nofile(n as u64 + 4096);
    if nofile < n as u64 + 512 {
        bail!(
            "the open-file limit is {nofile}, too low for {n} sessions: run as root (the \
             limit is raised automatically, unless the machine withholds CAP_SYS_RESOURCE) or \
             raise the hard limit (`ulimit -Hn`, LimitNOFILE=) to at least {}",
            n + 512
        );
    }
    let bin = match &args.directory_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("dialtone-directory"),
    };
    let shared = Arc::new(Shared::default());
    let _ = shared.micros();

    let t = Instant::now();
    let folks = people(n)?;
    let keygen = t.elapsed();
    let data = tempfile::tempdir()?;
    let t = Instant::now();
    let persons: Vec<Person> = folks.iter().map(|(p, _)| p.clone()).collect();
    provision(data.path(), &persons, &ring(n, args.contacts))?;
    drop(persons);
    let seed_time = t.elapsed();
    let ids: Vec<Identifier> = folks.iter().map(|(p, _)| p.identifier.clone()).collect();
    let devices: Vec<SigningKey> = folks.into_iter().map(|(_, d)| d).collect();
    eprintln!(
        "loadgen: {n} people generated in {:.1} s, provisioned in {:.1} s",
        keygen.as_secs_f64(),
        seed_time.as_secs_f64()
    );

    let dir = start_directory(&bin, data.path(), "127.0.0.1:0", None, false)?;
    // The provisioned bindings go into the transparency log first (one epoch, in the
    // background): wait for it, so that its work is not counted as the sessions'.
    let t = Instant::now();
    let probe = reqwest::Client::builder().no_proxy().build()?;
    let last = format!("{}/v1/kt/lookup/{}", dir.url, ids[n - 1]);
    loop {
        if probe
            .get(&last)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("the provisioned bindings were not published within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "loadgen: transparency log published in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Start afresh, so that the memory the publishing used and freed (which sessions would
    // then reuse) does not make them look smaller than they are.
    drop(dir);
    // With TLS: a private CA, its certificate for 127.0.0.1, and one client configuration per
    // device (each keeps its own tickets, as an agent does).
    let tls_files = if args.tls {
        let (ca, cert, key) = private_ca(data.path());
        Some((ca, (cert, key)))
    } else {
        None
    };
    let dir = start_directory(
        &bin,
        data.path(),
        "127.0.0.1:0",
        tls_files.as_ref().map(|(_, ck)| ck),
        args.callgrind,
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, _) = proc_stats(dir.child.id())?;
    let target = Arc::new(Target {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), dir.port),
        mode: args.login,
        tls: match &tls_files {
            Some((ca, _)) => Some(Arc::new(login::device_tls(
                &std::fs::read_to_string(ca)?,
                n,
            )?)),
            None => None,
        },
    });

    if args.callgrind {
        callgrind_control(dir.child.id(), "--instr=on")?;
    }
    // Log everyone in.
    let gate = Arc::new(Semaphore::new(args.connect_window));
    let devices = Arc::new(devices);
    let t = Instant::now();
    let (_, cpu0) = proc_stats(dir.child.id())?;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let k = i % sources as usize;
        let target = target.clone();
        let devices = devices.clone();
        let shared = shared.clone();
        set.spawn(async move {
            let _permit = permit;
            let src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, k as u8 + 1));
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                login(target, src, devices, i, shared),
            )
            .await;
            (i, r)
        });
    }
    let mut senders: Vec<Option<mpsc::Sender<Cmd>>> = (0..n).map(|_| None).collect();
    let mut failures = 0usize;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r? {
            (i, Ok(Ok(tx))) => senders[i] = Some(tx),
            (_, Ok(Err(e))) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            (_, Err(_)) => {
                failures += 1;
                first_error.get_or_insert_with(|| "login timed out".to_owned());
            }
        }
    }
    let login_time = t.elapsed();
    let (_, cpu1) = proc_stats(dir.child.id())?;
    let login_instructions = if args.callgrind {
        callgrind_control(dir.child.id(), "--instr=off")?;
        callgrind_control(dir.child.id(), "--dump")?;
        Some(callgrind_total(data.path())? as f64 / (n - failures).max(1) as f64)
    } else {
        None
    };
    let logged_in = n - failures;
    let login_rate = logged_in as f64 / login_time.as_secs_f64();
    let login_cpu_us = (cpu1 - cpu0) * 1e6 / logged_in.max(1) as f64;
    eprintln!(
        "loadgen: {logged_in}/{n} sessions in {:.1} s ({login_rate:.0}/s){}",
        login_time.as_secs_f64(),
        first_error
            .as_ref()
            .map(|e| format!("; first failure: {e}"))
            .unwrap_or_default()
    );
    let live: Vec<(usize, mpsc::Sender<Cmd>)> = senders
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s?)))
        .collect();
    if live.len() < 2 {
        bail!("fewer than two sessions came up");
    }
    let live_idx: Arc<Vec<usize>> = Arc::new(live.iter().map(|(i, _)| *i).collect());
    let live_tx: Arc<Vec<mpsc::Sender<Cmd>>> = Arc::new(live.into_iter().map(|(_, s)| s).collect());

    // Let the login publishes settle, then measure memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, _) = proc_stats(dir.child.id())?;
    let per_session = rss1.saturating_sub(rss0) as f64 / logged_in.max(1) as f64;

    // Idle: nothing but the directory's heartbeats.
    let b0 = tcp_bytes(dir.port);
    let (_, c0) = proc_stats(dir.child.id())?;
    let m0 = machine_busy();
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_secs)).await;
    let idle_wall = t.elapsed().as_secs_f64();
    let (_, c1) = proc_stats(dir.child.id())?;
    let m1 = machine_busy();
    let b1 = tcp_bytes(dir.port);
    let idle_machine_pct = (m1 - m0) / idle_wall * 100.0;
    let idle_cpu_pct = (c1 - c0) / idle_wall * 100.0;
    let idle_cpu_us_per_session_s = (c1 - c0) * 1e6 / idle_wall / logged_in as f64;
    let idle_bytes_per_session_s = b1.saturating_sub(b0) as f64 / idle_wall / logged_in as f64;

    // Churn: open loop at `churn_rate` presence changes per second; latency at the contacts.
    shared.sampling.store(true, Ordering::Relaxed);
    let pushes0 = shared.pushes.load(Ordering::Relaxed);
    let t = Instant::now();
    let total = (args.churn_rate as f64 * args.churn_secs) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let mut k = 0usize;
    while sent < total && t.elapsed().as_secs_f64() < args.churn_secs + 5.0 {
        tick.tick().await;
        let due = ((t.elapsed().as_secs_f64() * args.churn_rate as f64) as u64).min(total);
        while sent < due {
            k = (k + 7919) % live_tx.len();
            let state = if sent.is_multiple_of(2) {
                PresenceState::Away
            } else {
                PresenceState::Online
            };
            let text = publish_text(state, Some(format!("lg:{}", shared.micros())));
            let _ = live_tx[k].try_send(Cmd::Send(text));
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.sampling.store(false, Ordering::Relaxed);
    let churn_pushes = shared.pushes.load(Ordering::Relaxed) - pushes0;
    let fanout = pct(std::mem::take(
        &mut *shared.fanout_us.lock().expect("samples"),
    ));

    // Lookups: each session looks up its ring neighbour (an accepted contact).
    let ids = Arc::new(ids);
    let (li, lidx) = (ids.clone(), live_idx.clone());
    let (_, c0) = proc_stats(dir.child.id())?;
    let (lk_ok, lk_bad, lk_t) = closed_loop(
        &live_tx,
        args.window,
        args.lookup_secs,
        Arc::new(move |k| {
            let me = lidx[k % lidx.len()];
            lookup_text(&li[(me + 1) % li.len()])
        }),
    )
    .await;
    let (_, c1) = proc_stats(dir.child.id())?;
    let lookup_rate = lk_ok as f64 / lk_t.as_secs_f64();
    let lookup_cpu_us = (c1 - c0) * 1e6 / lk_ok.max(1) as f64;

    // Presence changes: each one fanned out to the online contacts.
    let pushes0 = shared.pushes.load(Ordering::Relaxed);
    let (_, c0) = proc_stats(dir.child.id())?;
    let (ch_ok, ch_bad, ch_t) = closed_loop(
        &live_tx,
        args.window,
        args.publish_secs,
        Arc::new(|k| {
            // Each session counts its own requests up by one: its state flips every time.
            let state = if k.is_multiple_of(2) {
                PresenceState::Away
            } else {
                PresenceState::Online
            };
            publish_text(state, None)
        }),
    )
    .await;
    let (_, c1) = proc_stats(dir.child.id())?;
    let change_rate = ch_ok as f64 / ch_t.as_secs_f64();
    // Every change reached the watching contacts (their sessions read and count the pushes).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let change_pushes = shared.pushes.load(Ordering::Relaxed) - pushes0;
    let change_cpu_us = (c1 - c0) * 1e6 / ch_ok.max(1) as f64;

    // Session refreshes: an authenticated publish of the state the device already has (what
    // an agent sends when its addresses are re-checked); nothing to fan out.
    let (_, c0) = proc_stats(dir.child.id())?;
    let (pb_ok, pb_bad, pb_t) = closed_loop(
        &live_tx,
        args.window,
        args.publish_secs,
        Arc::new(|_| publish_text(PresenceState::Online, None)),
    )
    .await;
    let (_, c1) = proc_stats(dir.child.id())?;
    let publish_rate = pb_ok as f64 / pb_t.as_secs_f64();
    let publish_cpu_us = (c1 - c0) * 1e6 / pb_ok.max(1) as f64;
    let (rss_end, _) = proc_stats(dir.child.id())?;

    // Reconnects: close some sessions, then log them in again (`window` at a time); with TLS
    // each resumes its TLS session.
    let r_n = args.relogin_n.min(live_tx.len());
    let mut closing = Vec::with_capacity(r_n);
    for tx in live_tx.iter().take(r_n) {
        let (done, rx) = oneshot::channel();
        if tx.send(Cmd::Close(done)).await.is_ok() {
            closing.push(rx);
        }
    }
    for rx in closing {
        let _ = tokio::time::timeout(Duration::from_secs(10), rx).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, c0) = proc_stats(dir.child.id())?;
    let t = Instant::now();
    let (mut re_ok, mut re_resumed, mut re_bad) = (0u64, 0u64, 0u64);
    for chunk in live_tx[..r_n].chunks(args.connect_window.max(1)) {
        let mut waits = Vec::with_capacity(chunk.len());
        for tx in chunk {
            let (done, rx) = oneshot::channel();
            if tx.send(Cmd::Login(done)).await.is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(Ok(resumed))) => {
                    re_ok += 1;
                    re_resumed += u64::from(resumed);
                }
                _ => re_bad += 1,
            }
        }
    }
    let re_t = t.elapsed();
    let (_, c1) = proc_stats(dir.child.id())?;
    let relogin_rate = re_ok as f64 / re_t.as_secs_f64();
    let relogin_cpu_us = (c1 - c0) * 1e6 / re_ok.max(1) as f64;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A directory restart: every device reconnects as an agent does.
    let mut dir = dir;
    let restart = if args.restart {
        let open_before = live_tx.len() - shared.closed.load(Ordering::Relaxed);
        shared.reconnect.store(true, Ordering::Relaxed);
        let port = dir.port;
        let t_stop = Instant::now();
        drop(dir);
        let stopped = t_stop.elapsed();
        dir = start_directory(
            &bin,
            data.path(),
            &format!("127.0.0.1:{port}"),
            tls_files.as_ref().map(|(_, ck)| ck),
            false,
        )?;
        let t_up = Instant::now();
        let deadline = t_up + Duration::from_secs(150);
        while shared.back.lock().expect("back").len() < open_before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let back = std::mem::take(&mut *shared.back.lock().expect("back"));
        let mut secs: Vec<f64> = back
            .iter()
            .map(|b| b.saturating_duration_since(t_up).as_secs_f64())
            .collect();
        secs.sort_by(f64::total_cmp);
        let q = |p: f64| {
            secs.get(((secs.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        shared.reconnect.store(false, Ordering::Relaxed);
        json!({
            "sessions": open_before, "back": back.len(),
            "stop_s": stopped.as_secs_f64(),
            "half_back_s": q(0.5), "p99_back_s": q(0.99), "all_back_s": q(1.0),
        })
    } else {
        serde_json::Value::Null
    };

    let still_open = live_tx.len() - shared.closed.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    drop(live_tx);
    drop(dir);

    let report = json!({
        "sessions_target": n,
        "sessions_held": logged_in,
        "sessions_open_at_end": still_open,
        "sources": sources,
        "contacts_per_person": args.contacts,
        "login_per_s": login_rate,
        "login_dir_cpu_us": login_cpu_us,
        "login_dir_instructions": login_instructions,
        "rss_before_mib": rss0 as f64 / 1048576.0,
        "rss_after_login_mib": rss1 as f64 / 1048576.0,
        "rss_end_mib": rss_end as f64 / 1048576.0,
        "bytes_per_session": per_session,
        "idle_dir_cpu_percent": idle_cpu_pct,
        "idle_machine_busy_percent": idle_machine_pct,
        "idle_dir_cpu_us_per_session_per_s": idle_cpu_us_per_session_s,
        "idle_tcp_payload_bytes_per_session_per_s": idle_bytes_per_session_s,
        "churn_publishes": sent,
        "churn_pushes_received": churn_pushes,
        "fanout_latency_us": {"n": fanout.n, "median": fanout.median, "p99": fanout.p99, "max": fanout.max},
        "lookups_per_s": lookup_rate,
        "lookup_failures": lk_bad,
        "lookup_dir_cpu_us": lookup_cpu_us,
        "presence_changes_per_s": change_rate,
        "presence_change_failures": ch_bad,
        "presence_change_dir_cpu_us": change_cpu_us,
        "publishes_per_s": publish_rate,
        "publish_failures": pb_bad,
        "publish_dir_cpu_us": publish_cpu_us,
        "error_frames": errors,
        "login": match args.login { LoginMode::One => "one connection", LoginMode::Two => "two connections" },
        "tls": args.tls,
        "relogins": r_n,
        "relogin_per_s": relogin_rate,
        "relogin_dir_cpu_us": relogin_cpu_us,
        "relogin_resumed": re_resumed,
        "relogin_failures": re_bad,
        "presence_change_pushes_received": change_pushes,
        "restart": restart,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if ch_ok > 0 && change_pushes == 0 {
        bail!("{ch_ok} presence changes reached no watching contact");
    }
    if failures > 0 || still_open < logged_in {
        bail!(
            "{failures} logins failed and {} sessions closed early",
            logged_in - still_open
        );
    }
    Ok(())
}
