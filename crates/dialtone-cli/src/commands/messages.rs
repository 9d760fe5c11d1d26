//! `dialtone send`.

use anyhow::Context;
use dialtone_agent::Home;
use serde_json::json;

use super::{call, parse_identifier};
use crate::{exit::Result, render};

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
    render::answer(&r, json, |r| render::delivery(&to, r));
    Ok(())
}
