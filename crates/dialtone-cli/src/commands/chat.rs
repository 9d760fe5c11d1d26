//! `dialtone watch` and `dialtone chat`: the commands that hold an event subscription open.

use std::io::{BufRead, Write};

use dialtone_agent::{Home, api::ClientError};
use serde_json::{Value, json};

use super::{client, parse_identifier};
use crate::{
    exit::{Result, client_fail},
    render::describe,
};

pub(crate) async fn watch(home: &Home, json: bool) -> Result {
    let mut c = client(home).await?;
    c.call("events.subscribe", json!({}))
        .await
        .map_err(|e| client_fail(&e))?;
    let mut out = std::io::stdout();
    if json {
        // Tells scripts that the subscription is in place: nothing after this line is missed.
        let _ = writeln!(out, "{}", json!({"event": "watching"})).and_then(|()| out.flush());
    } else {
        eprintln!("watching; Ctrl-C to stop");
    }
    loop {
        let msg = tokio::select! {
            m = c.next_message() => m.map_err(|e| client_fail(&e))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        if msg.get("method").and_then(Value::as_str) != Some("event") {
            continue;
        }
        let ev = &msg["params"];
        let line = if json {
            Some(ev.to_string())
        } else {
            describe(ev)
        };
        if let Some(line) = line
            && writeln!(out, "{line}").and_then(|()| out.flush()).is_err()
        {
            return Ok(()); // stdout closed
        }
    }
}

pub(crate) async fn chat(home: &Home, with: &str) -> Result {
    let with = parse_identifier(with)?;
    let mut events = client(home).await?;
    events
        .call("events.subscribe", json!({}))
        .await
        .map_err(|e| client_fail(&e))?;
    let mut sender = client(home).await?;
    println!("chatting with {with}; type a line and Enter to send, /quit to leave");
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                let line = line.trim_end().to_owned();
                if line == "/quit" { return Ok(()); }
                if line.is_empty() { continue; }
                match sender.call("message.send", json!({"to": with, "body": line})).await {
                    Ok(_) => println!("  ✓ delivered"),
                    Err(ClientError::Rpc(e)) => println!("  ✗ not delivered: {}", e.message),
                    Err(e) => return Err(client_fail(&e)),
                }
            }
            msg = events.next_message() => {
                let msg = msg.map_err(|e| client_fail(&e))?;
                let ev = &msg["params"];
                let about = ev["from"].as_str().or_else(|| ev["identifier"].as_str());
                if (about == Some(with.as_str())
                    || ev["event"] == "directory"
                    || ev["event"] == "transparency")
                    && let Some(line) = describe(ev)
                {
                    println!("{line}");
                }
            }
        }
    }
}
