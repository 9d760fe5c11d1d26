//! `dialtone up` (foreground or `--detach`) and `dialtone down`.

use std::{io::Write, time::Duration};

use anyhow::Context;
use dialtone_agent::{Agent, AgentConfig, Home, api::Client};
use serde_json::json;

use super::call;
use crate::{
    args::UpArgs,
    exit::{Fail, Result},
};

pub(crate) async fn up(home: Home, args: UpArgs) -> Result {
    if args.detach {
        return detach(&home, &args).await;
    }
    init_tracing();
    let mut config = AgentConfig::new(home.clone());
    if !args.bind.is_empty() {
        config.bind = args.bind.clone();
    }
    config.portmapper = !args.no_portmapper;
    config.direct_only = args.direct_only;
    config.lan = args.lan;
    if let Some(secs) = args.kt_monitor_interval {
        config.kt_monitor_interval = Duration::from_secs(secs.max(1));
    }
    let agent = Agent::start(config).await?;
    let _ = std::fs::write(home.path("agent.pid"), format!("{}\n", std::process::id()));
    let st = agent.handle().status();
    println!(
        "dialtone agent up: {} (device {}), directory {}, local API {}",
        st.identifier,
        st.device.short(),
        st.directory,
        home.socket_path().display()
    );
    let _ = std::io::stdout().flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install signal handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = agent.shutdown_requested() => {}
    }
    agent.shutdown().await;
    let _ = std::fs::remove_file(home.path("agent.pid"));
    println!("dialtone agent stopped");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DIALTONE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("dialtone=info,dialtone_agent=info,warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn detach(home: &Home, args: &UpArgs) -> Result {
    use std::os::unix::process::CommandExt;
    if Client::connect(&home.socket_path()).await.is_ok() {
        println!("the agent is already running");
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the dialtone executable")?;
    let log_path = home.path("agent.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home").arg(home.root()).arg("up");
    for b in &args.bind {
        cmd.arg("--bind").arg(b.to_string());
    }
    if args.no_portmapper {
        cmd.arg("--no-portmapper");
    }
    if args.direct_only {
        cmd.arg("--direct-only");
    }
    if args.lan {
        cmd.arg("--lan");
    }
    if let Some(secs) = args.kt_monitor_interval {
        cmd.arg("--kt-monitor-interval").arg(secs.to_string());
    }
    cmd.stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("log file")?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the agent")?;
    let exited = |status: std::process::ExitStatus| -> Fail {
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let last: Vec<&str> = tail.lines().rev().take(5).collect();
        anyhow::anyhow!(
            "the agent exited ({status}):\n{}",
            last.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
        .into()
    };
    for _ in 0..150 {
        if let Some(status) = child.try_wait().context("agent")? {
            return Err(exited(status));
        }
        if Client::connect(&home.socket_path()).await.is_ok() {
            println!(
                "dialtone agent started in the background (pid {}); log: {}",
                child.id(),
                log_path.display()
            );
            // Return once online (presence published, contacts synced), so that the next
            // command finds us reachable; a directory out of reach is not an error (and in
            // LAN mode, not waited for).
            if !args.lan && !wait_online(home, &mut child, Duration::from_secs(10)).await {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(exited(status));
                }
                println!(
                    "not connected to the directory yet: the agent keeps trying (`dialtone status` shows it)"
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!(
        "the agent did not start within 15 s; see {}",
        log_path.display()
    )
    .into())
}

/// Waits up to `limit` until the agent's directory session is up (not once it exited).
async fn wait_online(home: &Home, agent: &mut std::process::Child, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !matches!(agent.try_wait(), Ok(None)) {
            return false;
        }
        if let Ok(st) = call(home, "agent.status", json!({})).await
            && st["directory_connected"].as_bool() == Some(true)
        {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn down(home: &Home) -> Result {
    call(home, "agent.shutdown", json!({})).await?;
    for _ in 0..100 {
        if !home.socket_path().exists() {
            println!("dialtone agent stopped");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(anyhow::anyhow!("the agent did not stop within 10 s").into())
}
