//! `dialtone status`, `status --connections`, `status set`, `lan` and `doctor`.

use anyhow::Context;
use dialtone_agent::Home;
use serde_json::json;

use super::call;
use crate::{
    args::StatusCommand,
    exit::{Cause, Fail, Result},
};

/// `dialtone lan`.
pub(crate) async fn lan(home: &Home, json: bool) -> Result {
    let peers = call(home, "lan.peers", json!({})).await?;
    if json {
        println!("{peers}");
    } else {
        let list = peers.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            println!("no Dialtone devices seen on the LAN (is the agent up with --lan?)");
        }
        for p in list {
            println!(
                "{}  device {}  {}",
                p["contact"].as_str().unwrap_or("(not a pinned contact)"),
                p["device"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(10)
                    .collect::<String>(),
                p["addrs"]
            );
        }
    }
    Ok(())
}

pub(crate) async fn connections(home: &Home, json: bool) -> Result {
    let list = call(home, "connections.list", json!({})).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        println!("no open peer connections");
    }
    for c in items {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
        let device: String = s("device").chars().take(8).collect();
        let rtt = c["rtt_ms"]
            .as_f64()
            .map(|ms| format!("rtt {ms:.1} ms"))
            .unwrap_or_else(|| "rtt -".into());
        println!(
            "{}  device {device}  {:<8}  {}  {rtt}",
            s("identifier"),
            s("path"),
            c["remote_addr"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

pub(crate) async fn doctor(home: &Home, json: bool) -> Result {
    let report = dialtone_agent::doctor::run(home).await?;
    if json {
        println!("{}", serde_json::to_string(&report).context("json")?);
    } else {
        for line in &report.summary {
            println!("{line}");
        }
    }
    if report.directory_reachable {
        Ok(())
    } else {
        Err(Fail::new(
            Cause::Directory,
            format!("the directory {} does not answer", report.directory),
        ))
    }
}

pub(crate) async fn status(home: &Home, set: Option<StatusCommand>, json: bool) -> Result {
    if let Some(StatusCommand::Set { state, message }) = set {
        let state = match state.as_str() {
            "online" | "away" | "busy" | "invisible" => state,
            other => {
                return Err(Fail::usage(format!(
                    "unknown state '{other}': use online, away, busy or invisible"
                )));
            }
        };
        call(
            home,
            "status.set",
            json!({"state": state, "message": message}),
        )
        .await?;
        println!(
            "you are {state}{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        );
        return Ok(());
    }
    let st = call(home, "agent.status", json!({})).await?;
    if json {
        println!("{st}");
    } else {
        let s = |k: &str| st[k].as_str().unwrap_or("").to_owned();
        println!(
            "{} is {}{}",
            s("identifier"),
            s("state"),
            st["message"]
                .as_str()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        println!(
            "directory {} ({})",
            s("directory"),
            if st["directory_connected"].as_bool() == Some(true) {
                "connected"
            } else {
                "NOT connected, retrying"
            }
        );
    }
    Ok(())
}
