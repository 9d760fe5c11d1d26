//! `dialtone status`, `status --connections`, `status set`, `lan` and `doctor`.

use anyhow::Context;
use dialtone_agent::Home;
use serde_json::json;

use super::call;
use crate::{
    args::StatusCommand,
    exit::{Cause, Fail, Result},
    render,
};

/// `dialtone lan`.
pub(crate) async fn lan(home: &Home, json: bool) -> Result {
    let peers = call(home, "lan.peers", json!({})).await?;
    render::answer(&peers, json, render::lan);
    Ok(())
}

pub(crate) async fn connections(home: &Home, json: bool) -> Result {
    let list = call(home, "connections.list", json!({})).await?;
    render::answer(&list, json, render::connections);
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
    render::answer(&st, json, render::status);
    Ok(())
}
