//! `dialtone contacts …`.

use dialtone_agent::Home;
use serde_json::json;

use super::{call, parse_identifier};
use crate::{
    args::ContactsCommand,
    exit::Result,
    render::{self, print_safety},
};

pub(crate) async fn contacts(home: &Home, c: ContactsCommand) -> Result {
    let (method, who, verb) = match c {
        ContactsCommand::List { json } => return list_contacts(home, json).await,
        ContactsCommand::Add { identifier } => ("contacts.add", identifier, "asked"),
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
    if method == "contacts.add" {
        // The directory answers the same whether or not they are online (a stranger learns
        // nothing of anyone's presence), so say what that means.
        println!(
            "{verb} {id}: they see it only if they are online now; `dialtone watch` shows when they accept"
        );
    } else {
        println!("{verb} {id}");
    }
    Ok(())
}

async fn list_contacts(home: &Home, json: bool) -> Result {
    let list = call(home, "contacts.list", json!({})).await?;
    render::answer(&list, json, render::contacts);
    Ok(())
}
