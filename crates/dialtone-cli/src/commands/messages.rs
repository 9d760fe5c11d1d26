//! `dialtone send`.

use anyhow::Context;
use dialtone_agent::Home;
use serde_json::json;

use super::{call, parse_identifier};
use crate::exit::Result;

pub(crate) async fn send(home: &Home, to: &str, text: Vec<String>, json: bool) -> Result {
    let to = parse_identifier(to)?;
    let body = if text.len() == 1 && text[0] == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read standard input")?;
        s.trim_end_matches('\n').to_owned()
    } else {
        text.join(" ")
    };
    let r = call(home, "message.send", json!({"to": to, "body": body})).await?;
    if json {
        println!("{r}");
    } else {
        let n = r["delivered_to"].as_array().map_or(0, Vec::len);
        println!(
            "delivered to {to} ({n} device{})",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
