//! `dialtone watch` and `dialtone chat`: the commands that hold an event subscription open.

use std::io::{BufRead, Write};

use dialtone_agent::{Home, api::ClientError};
use serde_json::{Value, json};

use super::{client, parse_identifier};
use crate::{
    exit::{Cause, Fail, Result, client_fail},
    render::{describe, printable},
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
        // `next_message` is cancel-safe: Ctrl-C loses nothing half-read.
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
        } else if ev["event"] == "message_sent" {
            let s = |k: &str| printable(ev[k].as_str().unwrap_or(""));
            Some(format!("me → {}: {}", s("to"), s("body")))
        } else {
            describe(ev)
        };
        if let Some(line) = line
            && writeln!(out, "{line}").and_then(|()| out.flush()).is_err()
        {
            return Ok(()); // stdout closed
        }
        if ev["event"] == "lagged" {
            return Err(Fail::new(
                Cause::Error,
                "this watcher fell behind and the agent cut it off (messages it did not \
                 take were not counted as shown); start it again",
            ));
        }
    }
}

pub(crate) async fn chat(home: &Home, with: &str) -> Result {
    let with = parse_identifier(with)?;
    // One connection for events and sends: the client keeps events that arrive while a send
    // waits for its answer, and its reads are cancel-safe, so `select!` loses nothing.
    let mut c = client(home).await?;
    c.call("events.subscribe", json!({}))
        .await
        .map_err(|e| client_fail(&e))?;
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
                match c.call("message.send", json!({"to": with, "body": line})).await {
                    Ok(_) => println!("  ✓ delivered"),
                    Err(ClientError::Rpc(e)) => println!("  ✗ not delivered: {}", e.message),
                    Err(e) => return Err(client_fail(&e)),
                }
            }
            msg = c.next_message() => {
                let msg = msg.map_err(|e| client_fail(&e))?;
                let ev = &msg["params"];
                if ev["event"] == "message_sent" && ev["to"].as_str() == Some(with.as_str()) {
                    // Sent from another front end of ours: this conversation shows it too.
                    println!("me: {}", printable(ev["body"].as_str().unwrap_or("")));
                    continue;
                }
                if ev["event"] == "lagged" {
                    return Err(Fail::new(
                        Cause::Error,
                        "this chat fell behind and the agent cut it off; start it again",
                    ));
                }
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
