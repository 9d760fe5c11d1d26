//! `dialtone-bench`: measures what a person feels, on loopback, against a raw iroh baseline
//! measured in the same run.
//!
//! Run: `scripts/bench.sh` (builds release binaries, then runs this). It starts a real
//! `dialtone-directory` process, registers two people with the real `dialtone` CLI, then embeds
//! two agents in this process (the agent library, as a bot would), each on a tokio runtime of
//! its own built as the `dialtone` binary builds its own, so the two sides are scheduled as two
//! processes would be (sharing one runtime's workers was 2× faster on round trips and 2× slower
//! on throughput, and like no real deployment). It prints medians:
//!
//! - message round trip on an established connection (send → peer acknowledges);
//! - cold first message: no open connection (connect + hellos + deliver + ack);
//! - directory lookup round trip on the session;
//! - login → contact sees presence (agent start until the contact's agent gets the push),
//!   over HTTPS/WSS with a private CA unless `--plain-http`;
//! - messages per second from one person to another (`--window` sends in flight, each
//!   acknowledged), and the CPU time of both agents (and bob's front end) per message. Bob's
//!   front end is a real local-API client: a thread of its own on the agent's Unix socket
//!   that subscribes to events and reads and parses every event line, as the CLI's `chat` or
//!   a bot does; the burst counts only if it parsed every message;
//! - baseline: a raw iroh echo (one stream per message, same frame size) between two bare
//!   endpoints on the same two runtimes, and the ratio of Dialtone's round trip to it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use dialtone_agent::{Agent, AgentConfig, Event, Home};
use dialtone_proto::{Identifier, directory::PresenceState};
use dialtone_testkit::{Directory, Person};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Dialtone loopback benchmark")]
struct Args {
    /// Round trips on an established connection.
    #[arg(long, default_value_t = 1000)]
    rtt_n: usize,
    /// Cold first messages.
    #[arg(long, default_value_t = 50)]
    cold_n: usize,
    /// Login → presence measurements.
    #[arg(long, default_value_t = 20)]
    login_n: usize,
    /// Messages in the throughput burst.
    #[arg(long, default_value_t = 20_000)]
    burst_n: usize,
    /// Sends in flight at once during the burst.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Run the directory on plain HTTP (loopback) instead of HTTPS with a private CA.
    #[arg(long)]
    plain_http: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

fn config(home: &std::path::Path) -> anyhow::Result<AgentConfig> {
    let mut c = AgentConfig::new(Home::open(home)?);
    c.bind = vec!["127.0.0.1:0".parse()?, "[::1]:0".parse()?];
    c.portmapper = false;
    c.serve_api = false;
    Ok(c)
}

/// Bob's front end: a local-API client on the agent's Unix socket, on a thread of its own
/// (as a separate process would be). It subscribes to events, then reads every line and
/// parses it as JSON; a message event counts once its body was read as the text sent.
struct FrontEnd {
    /// Message events parsed.
    messages: Arc<AtomicUsize>,
    /// Lines that were not the JSON expected.
    bad: Arc<AtomicUsize>,
}

impl FrontEnd {
    fn attach(socket: &std::path::Path, body: String) -> anyhow::Result<Self> {
        use std::io::{BufRead, Write};
        let mut sock = std::os::unix::net::UnixStream::connect(socket)
            .with_context(|| format!("connect to {}", socket.display()))?;
        sock.write_all(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\",\"params\":{}}\n",
        )?;
        let mut reader = std::io::BufReader::new(sock.try_clone()?);
        // The answer to the subscription (events may only follow it).
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let answer: serde_json::Value = serde_json::from_str(&line)?;
        if answer["result"]["subscribed"] != true {
            bail!("events.subscribe answered {answer}");
        }
        let messages = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(AtomicUsize::new(0));
        let (m, b) = (messages.clone(), bad.clone());
        std::thread::spawn(move || {
            let _keep = sock;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) if v["method"] == "event" => {
                        let p = &v["params"];
                        if p["event"] == "message" {
                            if p["body"].as_str() == Some(body.as_str()) {
                                m.fetch_add(1, Ordering::Relaxed);
                            } else {
                                b.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => {
                        b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(Self { messages, bad })
    }

    /// Waits (up to `timeout`) until `n` messages were parsed; the count.
    async fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let t = Instant::now();
        while self.messages.load(Ordering::Relaxed) < n && t.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.messages.load(Ordering::Relaxed)
    }
}

async fn wait_event(
    rx: &mut dialtone_agent::Subscription,
    timeout: Duration,
    pred: impl Fn(&Event) -> bool,
) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, async {
        loop {
            match rx.next().await {
                Some(ev) if pred(&ev) => return Ok(()),
                Some(_) => {}
                None => bail!("event stream ended"),
            }
        }
    })
    .await
    .context("timed out waiting for an event")?
}

fn presence_is(who: &Identifier, state: PresenceState) -> impl Fn(&Event) -> bool + '_ {
    move |e| matches!(e, Event::Presence { identifier, state: s, .. } if identifier == who && *s == state)
}

#[derive(Debug, Clone)]
struct Stats {
    n: usize,
    median_us: f64,
    p90_us: f64,
    p99_us: f64,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    Stats {
        n: v.len(),
        median_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
    }
}

/// A runtime of its own for bob's agent (and the echo server of the baseline), built as the
/// `dialtone` binary builds its own ([`dialtone_agent::runtime`]): the two sides are then
/// scheduled as two processes would be, rather than sharing one runtime's workers.
fn second_runtime() -> anyhow::Result<tokio::runtime::Handle> {
    let rt = dialtone_agent::runtime()?;
    let handle = rt.handle().clone();
    // It lives as long as the process: a runtime must not be dropped inside another's task.
    std::mem::forget(rt);
    Ok(handle)
}

/// Alice's agent and the measuring loops run on the first runtime, also built as the
/// `dialtone` binary builds its own.
fn main() -> anyhow::Result<()> {
    dialtone_agent::runtime()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = tempfile::tempdir()?;
    let (dir, extra) = if args.plain_http {
        (Directory::start(), Vec::new())
    } else {
        let (ca, cert, key) = private_ca(tls.path());
        let dir = Directory::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
        (dir, vec!["--directory-ca".to_owned(), ca])
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let alice_p = Person::new(ALICE);
    alice_p.register_with(&dir, &extra);
    let bob_p = Person::new(BOB);
    bob_p.register_with(&dir, &extra);
    let alice_id = Identifier::parse(ALICE)?;
    let bob_id = Identifier::parse(BOB)?;

    let alice = Agent::start(config(&alice_p.home)?).await?;
    // Bob's agent runs on a runtime of its own, as a second process would.
    let bob_rt = second_runtime()?;
    // Bob's first agent serves the local API, for its front end.
    let mut bob_config = config(&bob_p.home)?;
    bob_config.serve_api = true;
    let bob_socket = Home::open(&bob_p.home)?.socket_path();
    let mut bob = bob_rt.spawn(Agent::start(bob_config)).await??;
    let (a, b) = (alice.handle(), bob.handle());
    for h in [&a, &b] {
        if !h.wait_connected(Duration::from_secs(10)).await {
            bail!("agent did not reach the directory");
        }
    }
    let mut b_events = b.subscribe().context("subscribe")?;
    let mut a_events = a.subscribe().context("subscribe")?;
    a.add_contact(bob_id.clone()).await?;
    wait_event(&mut b_events, Duration::from_secs(10), |e| {
        matches!(e, Event::ContactRequest { .. })
    })
    .await?;
    b.respond(alice_id.clone(), true).await?;
    wait_event(
        &mut a_events,
        Duration::from_secs(10),
        presence_is(&bob_id, PresenceState::Online),
    )
    .await?;

    // Bob's front end is the local-API client below, which reads and parses every event: a
    // message is acknowledged once a front end took it. The in-process subscriptions used to
    // wait for the contact go now (unread, they would be cut off by the burst; alice's is
    // attached again for the login phase).
    drop((a_events, b_events));

    // Established connection round trips.
    let body = "x".repeat(64);
    let front_end = FrontEnd::attach(&bob_socket, body.clone())?;
    for _ in 0..50 {
        a.send(bob_id.clone(), body.clone()).await?;
    }
    let mut rtt = Vec::with_capacity(args.rtt_n);
    for _ in 0..args.rtt_n {
        let t = Instant::now();
        a.send(bob_id.clone(), body.clone()).await?;
        rtt.push(t.elapsed());
    }

    // Throughput: `window` senders in flight, every message acknowledged.
    let sent = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.window.max(1) {
        let (a, bob_id, body, sent, n) = (
            a.clone(),
            bob_id.clone(),
            body.clone(),
            sent.clone(),
            args.burst_n,
        );
        set.spawn(async move {
            while sent.fetch_add(1, Ordering::Relaxed) < n {
                a.send(bob_id.clone(), body.clone()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let burst_time = t.elapsed();
    let burst_rate = args.burst_n as f64 / burst_time.as_secs_f64();
    let burst_cpu_us = (cpu_seconds() - cpu0) * 1e6 / args.burst_n.max(1) as f64;
    // Every message acknowledged was taken by the front end: it must have parsed them all.
    let expected = 50 + args.rtt_n + args.burst_n;
    let parsed = front_end.wait_for(expected, Duration::from_secs(10)).await;
    let bad_lines = front_end.bad.load(Ordering::Relaxed);
    if parsed < expected || bad_lines > 0 {
        bail!(
            "bob's front end parsed {parsed} of {expected} messages ({bad_lines} bad lines): \
             acknowledged messages were not all shown"
        );
    }

    // Cold first message.
    let mut cold = Vec::with_capacity(args.cold_n);
    for _ in 0..args.cold_n {
        a.drop_connections();
        b.drop_connections();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        a.send(bob_id.clone(), body.clone()).await?;
        cold.push(t.elapsed());
    }

    // Lookup on the session.
    // Stays under the directory's per-session limit on lookups (a burst of 100).
    let mut lookup = Vec::new();
    for _ in 0..80 {
        let t = Instant::now();
        a.lookup(bob_id.clone()).await?;
        lookup.push(t.elapsed());
    }

    // Login → contact sees presence.
    let mut a_events = a.subscribe().context("subscribe")?;
    let mut login = Vec::with_capacity(args.login_n);
    for _ in 0..args.login_n {
        bob.shutdown().await;
        wait_event(
            &mut a_events,
            Duration::from_secs(10),
            presence_is(&bob_id, PresenceState::Offline),
        )
        .await
        .context("bob offline")?;
        let t = Instant::now();
        let bob_config = config(&bob_p.home)?;
        bob = bob_rt.spawn(Agent::start(bob_config)).await??;
        wait_event(
            &mut a_events,
            Duration::from_secs(10),
            presence_is(&bob_id, PresenceState::Online),
        )
        .await
        .context("bob online")?;
        login.push(t.elapsed());
    }
    bob.shutdown().await;
    alice.shutdown().await;

    let baseline = raw_iroh_echo(args.rtt_n, body.len() + 40, &bob_rt).await?;

    let rtt = stats(rtt);
    let cold = stats(cold);
    let lookup = stats(lookup);
    let login = stats(login);
    let baseline = stats(baseline);
    let ratio = rtt.median_us / baseline.median_us;
    if args.json {
        let s = |s: &Stats| json!({"n": s.n, "median_us": s.median_us, "p90_us": s.p90_us, "p99_us": s.p99_us});
        println!(
            "{}",
            json!({
                "message_rtt": s(&rtt), "cold_first_message": s(&cold), "lookup": s(&lookup),
                "login_to_presence": s(&login), "raw_iroh_echo": s(&baseline),
                "rtt_ratio_to_raw_iroh": ratio,
                "burst": {"n": args.burst_n, "window": args.window, "msgs_per_s": burst_rate,
                          "cpu_us_per_msg_both_agents": burst_cpu_us,
                          "front_end": "local API client on the Unix socket, every event parsed",
                          "front_end_parsed": parsed},
                "directory_tls": !args.plain_http,
            })
        );
    } else {
        println!(
            "{:<44} {:>6} {:>12} {:>12} {:>12}",
            "measure (loopback)", "n", "median", "p90", "p99"
        );
        for (name, s) in [
            ("message round trip, established connection", &rtt),
            ("cold first message (connect+hello+ack)", &cold),
            ("directory lookup on the session", &lookup),
            ("login -> contact sees presence", &login),
            ("baseline: raw iroh echo, stream per message", &baseline),
        ] {
            println!(
                "{name:<44} {:>6} {:>9.0} µs {:>9.0} µs {:>9.0} µs",
                s.n, s.median_us, s.p90_us, s.p99_us
            );
        }
        println!("ratio of Dialtone round trip to raw iroh echo (medians): {ratio:.2}x");
        println!(
            "burst: {} messages, {} in flight, each acknowledged: {burst_rate:.0} msg/s, \
             {burst_cpu_us:.1} µs CPU per message (both agents and bob's front end, which \
             parsed {parsed} message events from the local API)",
            args.burst_n, args.window
        );
        println!(
            "directory over {}",
            if args.plain_http {
                "plain HTTP"
            } else {
                "HTTPS/WSS (private CA)"
            }
        );
    }
    Ok(())
}

/// CPU time (user + system) of this process, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only the struct passed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A private CA and a certificate for 127.0.0.1 (the testkit's), as path strings.
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    let (a, b, c) = dialtone_testkit::private_ca(dir, &["127.0.0.1"]);
    (
        a.display().to_string(),
        b.display().to_string(),
        c.display().to_string(),
    )
}

/// Two bare iroh endpoints on loopback; one echoes every stream. Measures the same shape of
/// exchange as a Dialtone message (open stream, write, finish, read the answer).
async fn raw_iroh_echo(
    n: usize,
    size: usize,
    server_rt: &tokio::runtime::Handle,
) -> anyhow::Result<Vec<Duration>> {
    let mk = |seed: u8| {
        let mut c = dialtone_net::EndpointConfig::new([seed; 32]);
        c.bind = vec!["127.0.0.1:0".parse().expect("literal")];
        c.portmapper = false;
        c
    };
    // The echo server lives on the second runtime, as bob's agent does.
    let server_config = mk(7);
    let server = server_rt
        .spawn(async move { dialtone_net::bind(&server_config).await })
        .await??;
    let client = dialtone_net::bind(&mk(9)).await?;
    let server_id = dialtone_net::device_id(&server).context("server id")?;
    let info = dialtone_net::local_endpoint_info(&server);
    let srv = server.clone();
    server_rt.spawn(async move {
        while let Some(inc) = srv.accept().await {
            let Ok(acc) = inc.accept() else { continue };
            let Ok(conn) = acc.await else { continue };
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(buf) = recv.read_to_end(1 << 16).await {
                            let _ = send.write_all(&buf).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let conn = dialtone_net::connect(&client, &server_id, &info, Duration::from_secs(5)).await?;
    let payload = vec![0u8; size];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&payload).await?;
        send.finish()?;
        let back = recv.read_to_end(1 << 16).await?;
        if back.len() != size {
            bail!("echo returned {} bytes", back.len());
        }
        if i >= 50 {
            out.push(t.elapsed());
        }
    }
    client.close().await;
    server.close().await;
    Ok(out)
}
