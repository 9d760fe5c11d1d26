//! `dialtone contacts …`.

use dialtone_agent::Home;
use serde_json::json;

use super::{call, parse_identifier};
use crate::{
    args::ContactsCommand,
    exit::Result,
    render::{print_safety, printable},
};

pub(crate) async fn contacts(home: &Home, c: ContactsCommand) -> Result {
    let (method, who, verb) = match c {
        ContactsCommand::List { json } => return list_contacts(home, json).await,
        ContactsCommand::Add { identifier } => {
            ("contacts.add", identifier, "contact request sent to")
        }
        ContactsCommand::Accept { identifier } => ("contacts.accept", identifier, "accepted"),
        ContactsCommand::Reject { identifier } => ("contacts.reject", identifier, "rejected"),
        ContactsCommand::Remove { identifier } => ("contacts.remove", identifier, "removed"),
        ContactsCommand::Block { identifier } => ("contacts.block", identifier, "blocked"),
        ContactsCommand::Unblock { identifier } => ("contacts.unblock", identifier, "unblocked"),
        ContactsCommand::Verify {
            identifier,
            confirm,
            json,
        } => {
            let id = parse_identifier(&identifier)?;
            let v = call(
                home,
                "contacts.verify",
                json!({"identifier": id, "confirm": confirm}),
            )
            .await?;
            if json {
                println!("{v}");
                return Ok(());
            }
            print_safety(&id, &v, confirm);
            return Ok(());
        }
        ContactsCommand::Trust { identifier } => {
            let id = parse_identifier(&identifier)?;
            let r = call(home, "contacts.trust", json!({"identifier": id})).await?;
            println!(
                "now trusting the key {} for {id}",
                r["fingerprint"].as_str().unwrap_or("?")
            );
            return Ok(());
        }
    };
    let id = parse_identifier(&who)?;
    call(home, method, json!({"identifier": id})).await?;
    println!("{verb} {id}");
    Ok(())
}

async fn list_contacts(home: &Home, json: bool) -> Result {
    let list = call(home, "contacts.list", json!({})).await?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let Some(items) = list.as_array().filter(|a| !a.is_empty()) else {
        println!("no contacts yet: add one with `dialtone contacts add IDENTIFIER`");
        return Ok(());
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
        println!(
            "{:<32} {:<9}{msg}{relation}{key}",
            s("identifier"),
            s("state")
        );
    }
    Ok(())
}
