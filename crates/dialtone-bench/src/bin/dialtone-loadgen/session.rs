//! One simulated device's session task: its login, the commands the phases give it, its
//! reconnects (as an agent does), and how it reads the directory's frames.

use super::*;

/// Logs one device in and spawns its session task. Returns the command channel.
pub(crate) async fn login(
    target: Arc<Target>,
    source: IpAddr,
    devices: Arc<Vec<SigningKey>>,
    i: usize,
    shared: Arc<Shared>,
) -> anyhow::Result<mpsc::Sender<Cmd>> {
    let (mut ws, _) = login::login(&target, source, &devices[i], i).await?;
    // Publish once, as an agent does on login.
    ws.send(Message::Text(
        publish_text(PresenceState::Online, None).into(),
    ))
    .await?;
    let (tx, rx) = mpsc::channel::<Cmd>(4);
    let again = Again {
        target,
        source,
        devices,
    };
    tokio::spawn(session_task(ws, rx, shared, i, again));
    Ok(tx)
}

/// What a session task needs to log in again.
struct Again {
    target: Arc<Target>,
    source: IpAddr,
    devices: Arc<Vec<SigningKey>>,
}

impl Again {
    async fn login(&self, i: usize) -> anyhow::Result<(Ws, bool)> {
        let (mut ws, resumed) =
            login::login(&self.target, self.source, &self.devices[i], i).await?;
        ws.send(Message::Text(
            publish_text(PresenceState::Online, None).into(),
        ))
        .await?;
        Ok((ws, resumed))
    }

    /// Reconnects as an agent does after its session ended: full jitter below a cap that
    /// doubles from 250 ms to 2 s; gives up after two minutes.
    async fn reconnect(&self, i: usize) -> Option<Ws> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut cap_ms = 250u64;
        while Instant::now() < deadline {
            let wait = rand_below(cap_ms, i);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            if let Ok(Ok((ws, _))) =
                tokio::time::timeout(Duration::from_secs(10), self.login(i)).await
            {
                return Some(ws);
            }
            cap_ms = (cap_ms * 2).min(2000);
        }
        None
    }
}

/// A number in `0..=cap`, different per session and per call (no rand dependency).
fn rand_below(cap: u64, i: usize) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(i);
    h.finish() % (cap + 1)
}

async fn session_task(
    mut ws: Ws,
    mut rx: mpsc::Receiver<Cmd>,
    shared: Arc<Shared>,
    i: usize,
    again: Again,
) {
    // Answers not waited for: the login publish, then churn publishes.
    let mut unanswered = 1usize;
    'session: loop {
        tokio::select! {
            msg = ws.next() => match on_frame(msg, &shared) {
                Frame::Answer(_) => unanswered = unanswered.saturating_sub(1),
                Frame::Other => {}
                Frame::Closed => {
                    if !shared.reconnect.load(Ordering::Relaxed) {
                        break;
                    }
                    match again.reconnect(i).await {
                        Some(new) => {
                            ws = new;
                            unanswered = 1;
                            shared.back.lock().expect("back").push(Instant::now());
                        }
                        None => break,
                    }
                }
            },
            cmd = rx.recv() => match cmd {
                Some(Cmd::Close(done)) => {
                    let _ = ws.close(None).await;
                    // Until the directory's close frame (or the end of the connection).
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    let _ = done.send(());
                    // Parked until logged in again.
                    match rx.recv().await {
                        Some(Cmd::Login(done)) => match again.login(i).await {
                            Ok((new, resumed)) => {
                                ws = new;
                                unanswered = 1;
                                let _ = done.send(Ok(resumed));
                            }
                            Err(e) => {
                                let _ = done.send(Err(e));
                                break;
                            }
                        },
                        _ => break,
                    }
                }
                Some(Cmd::Login(done)) => {
                    let _ = done.send(Err(anyhow::anyhow!("already logged in")));
                }
                Some(Cmd::Send(text)) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                    unanswered += 1;
                }
                Some(Cmd::Loop { make, until, ok, bad, done }) => {
                    let mut k = i;
                    while Instant::now() < until {
                        if ws.send(Message::Text(make(k).into())).await.is_err() {
                            break 'session;
                        }
                        k += 1;
                        // Our answer is the one after those still outstanding.
                        let mut skip = unanswered;
                        loop {
                            match on_frame(ws.next().await, &shared) {
                                Frame::Answer(_) if skip > 0 => skip -= 1,
                                Frame::Answer(good) => {
                                    let c = if good { &ok } else { &bad };
                                    c.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                                Frame::Other => {}
                                Frame::Closed => break 'session,
                            }
                        }
                        unanswered = 0;
                    }
                    let _ = done.send(());
                }
                None => {
                    let _ = ws.close(None).await;
                    break;
                }
            },
        }
    }
    shared.closed.fetch_add(1, Ordering::Relaxed);
}

/// What a frame from the directory was.
enum Frame {
    /// A reply (true) or an error (false) to a request.
    Answer(bool),
    /// A push or a control frame.
    Other,
    /// The session ended.
    Closed,
}

/// Classifies a frame; records fan-out latency for sampled presence pushes.
fn on_frame(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    shared: &Shared,
) -> Frame {
    let t = match msg {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Frame::Closed,
        Some(Ok(_)) => return Frame::Other,
    };
    let Ok(p) = serde_json::from_str::<Peek>(&t) else {
        return Frame::Other;
    };
    match p.kind.as_str() {
        "reply" => Frame::Answer(true),
        "error" => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            Frame::Answer(false)
        }
        "presence" => {
            shared.pushes.fetch_add(1, Ordering::Relaxed);
            if shared.sampling.load(Ordering::Relaxed)
                && let Some(t0) = p
                    .contact
                    .and_then(|c| c.presence.message)
                    .and_then(|m| m.strip_prefix("lg:")?.parse::<u64>().ok())
            {
                let dt = shared.micros().saturating_sub(t0);
                shared
                    .fanout_us
                    .lock()
                    .expect("samples")
                    .push(dt.min(u64::from(u32::MAX)) as u32);
            }
            Frame::Other
        }
        _ => Frame::Other,
    }
}
