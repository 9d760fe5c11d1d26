//! Output for people: what is safe to print on a terminal, events as sentences, QR codes and
//! safety numbers. (`--json` output prints the agent's answers as they came.)

use dialtone_proto::Identifier;
use serde_json::Value;

/// Prints a QR code of `payload` in the terminal.
pub(crate) fn print_qr(payload: &str) {
    if let Ok(code) = qrcode::QrCode::new(payload.as_bytes()) {
        // Light modules drawn as blocks: reads right on the usual dark terminal background.
        let qr = code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build();
        println!("{qr}");
        println!();
    }
}

pub(crate) fn print_safety(id: &Identifier, v: &Value, confirmed: bool) {
    let number = v["safety_number"].as_str().unwrap_or("");
    let groups: Vec<&str> = number.split(' ').collect();
    println!("Safety number with {id}:");
    println!();
    for row in groups.chunks(4) {
        println!("    {}", row.join(" "));
    }
    println!();
    print_qr(v["qr_payload"].as_str().unwrap_or(""));
    if v["key"] == "changed" {
        println!("WARNING: this is a NEW key for {id}, not the one you pinned before.");
    }
    if confirmed {
        println!(
            "{id} is now verified. If their key ever changes, messages are blocked until you verify again."
        );
    } else if v["verified"] == true {
        println!("{id} is verified.");
    } else {
        println!("Compare these digits with {id} in person or on a call (or scan the code).");
        println!("If they match, run: dialtone contacts verify {id} --confirm");
    }
}

/// `text` from someone else, safe to print on a terminal: control characters (escape
/// sequences could rewrite the screen, the title or the clipboard) and bidirectional overrides
/// (they could reorder what is shown) are written as `\u{..}` escapes. `--json` output keeps
/// the text as it came.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn describe(ev: &Value) -> Option<String> {
    let s = |k: &str| printable(ev[k].as_str().unwrap_or(""));
    Some(match s("event").as_str() {
        "message" => format!("{}: {}", s("from"), s("body")),
        "presence" => format!(
            "* {} is now {}{}",
            s("identifier"),
            s("state"),
            ev["message"]
                .as_str()
                .map(|m| format!(": {}", printable(m)))
                .unwrap_or_default()
        ),
        "contact_request" => format!(
            "* {} wants to be your contact (key {}); `dialtone contacts accept {}`",
            s("from"),
            s("fingerprint"),
            s("from")
        ),
        "contact_changed" => format!(
            "* {} is now {}",
            s("identifier"),
            match s("relation").as_str() {
                "accepted" => "your contact".to_owned(),
                "none" => "no longer your contact".to_owned(),
                r => r.to_owned(),
            }
        ),
        "key_changed" => format!(
            "!!! WARNING: the identity key of {} CHANGED (pinned {}, now {}){}. Messages are refused until you \
             check with them and run `dialtone contacts trust {}`",
            s("identifier"),
            s("pinned_fingerprint"),
            s("new_fingerprint"),
            match s("reset").as_str() {
                "no-lock" =>
                    ", without a registration lock: whoever re-verified their email or phone could have done this",
                "locked" =>
                    "; their key had a registration lock: a lock-bypassed alarm follows if the new binding does not claim the PIN \
                     (a directory working with the new key's holder could fake that claim, so check with them in person either way)",
                _ => "",
            },
            s("identifier")
        ),
        "transparency" => format!("!!! {} [{}]", s("message"), s("kind")),
        "directory" => {
            if ev["connected"].as_bool() == Some(true) {
                "* connected to the directory".to_owned()
            } else {
                "* lost the directory; reconnecting".to_owned()
            }
        }
        _ => return None,
    })
}

/// Prints an answer of the agent: as it came with `--json`, else for people.
pub(crate) fn answer(v: &Value, json: bool, human: impl FnOnce(&Value)) {
    if json {
        println!("{v}");
    } else {
        human(v);
    }
}

/// `dialtone lan`: the devices seen on the LAN.
pub(crate) fn lan(peers: &Value) {
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

/// `dialtone status --connections`: the open peer connections.
pub(crate) fn connections(list: &Value) {
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
}

/// `dialtone status`: this person's presence and the directory session.
pub(crate) fn status(st: &Value) {
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

/// `dialtone contacts list`: contacts, requests and blocks with their presence.
pub(crate) fn contacts(list: &Value) {
    let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
        println!("no contacts yet: add one with `dialtone contacts add IDENTIFIER`");
        return;
    };
    for c in items {
        let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
        let relation = match s("relation").as_str() {
            "accepted" => String::new(),
            "incoming" => " (wants to be your contact: dialtone contacts accept)".into(),
            "outgoing" => " (request sent)".into(),
            "blocked" => " (blocked)".into(),
            other => format!(" ({other})"),
        };
        let msg = c["message"]
            .as_str()
            .map(|m| format!(" \"{}\"", printable(m)))
            .unwrap_or_default();
        let key = match (s("key").as_str(), c["verified"] == true) {
            ("changed", _) => "  KEY CHANGED!",
            (_, true) => "  (verified)",
            _ => "",
        };
        // While the agent cannot reach its directory the state is the last one known.
        let stale = if c["live"] == false {
            match c["confirmed_at"].as_u64() {
                Some(t) => format!(" (last known, {} ago)", ago(t)),
                None => " (unknown: the directory was never reached)".into(),
            }
        } else {
            String::new()
        };
        println!(
            "{:<32} {:<9}{stale}{msg}{relation}{key}",
            s("identifier"),
            s("state")
        );
    }
}

/// How long ago Unix time `t` was, roughly: `12 s`, `7 min`, `3 h`, `2 d`.
fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `dialtone send`: who took the message.
pub(crate) fn delivery(to: &Identifier, r: &Value) {
    let n = r["delivered_to"].as_array().map_or(0, Vec::len);
    println!(
        "delivered to {to} ({n} device{})",
        if n == 1 { "" } else { "s" }
    );
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn terminal_escapes_from_peers_are_shown_not_obeyed() {
        assert_eq!(printable("hello, world ✓"), "hello, world ✓");
        let hostile = "ok\x1b]52;c;cHduZWQ=\x07\r\x1b[2Kbob: fake\u{202e}txt.exe";
        let shown = printable(hostile);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert!(!shown.contains('\u{202e}'), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}") && shown.contains("\\u{202e}"),
            "{shown:?}"
        );
    }
}
