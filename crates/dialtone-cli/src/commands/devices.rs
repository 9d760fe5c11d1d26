//! `dialtone device link|list|revoke` and `dialtone lock set|clear`.

use dialtone_agent::{DirectoryClient, Home, home::Settings, link};
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier, IdentityKey, Refusal,
    devices::{DeviceEntry, DeviceList, DeviceListContent},
    directory::check_pin,
};
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};

use super::{call, client};
use crate::{
    args::{DeviceCommand, LockCommand, PassArgs},
    exit::{Cause, Fail, Result, client_fail, link_cause},
    input::{now, now_ms, passphrase, pin},
    render::{print_qr, printable},
};

/// The identity key, or a clear error on a linked device (which has none).
fn identity(home: &Home, pass: &PassArgs) -> Result<SigningKey> {
    if home.is_linked() {
        return Err(Fail::usage(
            "this device was linked and holds no identity key: link, revoke and lock from \
             the device that has it (the one you registered with)",
        ));
    }
    Ok(home.identity_signing_key(passphrase(pass)?.as_deref())?)
}

/// The account's current list as the log proves it, and this device's id. Without a
/// published list (an account registered before device lists), the list starts from this
/// device alone.
async fn current(home: &Home) -> Result<(Option<DeviceList>, Vec<DeviceEntry>, DeviceId)> {
    let v = call(home, "devices.list", json!({})).await?;
    let list: Option<DeviceList> = serde_json::from_value(v["list"].clone()).unwrap_or(None);
    let me: DeviceId = serde_json::from_value(v["this_device"].clone())
        .map_err(|e| anyhow::anyhow!("unexpected answer from the agent: {e}"))?;
    let entries = match &list {
        Some(l) => l.devices.clone(),
        None => {
            let cert = home.device_cert()?;
            vec![DeviceEntry {
                device_id: cert.device_id,
                name: cert.name,
                added_at: cert.created_at,
            }]
        }
    };
    Ok((list, entries, me))
}

/// The list this device published last for `identifier` under `key` (see
/// [`Home::own_list`]), if it has one and it is intact.
pub(crate) fn last_published(
    home: &Home,
    identifier: &Identifier,
    key: &IdentityKey,
) -> Option<DeviceList> {
    home.own_list()
        .ok()
        .flatten()
        .filter(|l| l.verify().is_ok() && l.identity_key == *key && l.identifier == *identifier)
}

/// Keeps the list just published as this device's last (see [`Home::own_list`]).
pub(crate) fn remember(home: &Home, list: &DeviceList) {
    if let Err(e) = home.save_own_list(list) {
        eprintln!("warning: cannot record the published device list: {e}");
    }
}

fn sign_next(
    key: &SigningKey,
    home: &Home,
    old: Option<&DeviceList>,
    devices: Vec<DeviceEntry>,
    lock: Option<bool>,
) -> Result<DeviceList> {
    let identifier = home
        .settings()?
        .identifier
        .ok_or_else(|| anyhow::anyhow!("not registered: run `dialtone register` first"))?;
    // The last list this device signed: the log must not show an older one (a directory
    // replaying an old list would have it signed again, revoked devices and all).
    let mine = last_published(home, &identifier, &IdentityKey::from_signing_key(key));
    // (A bare key where this device published a list is older too: version 0.)
    let shown = old.map_or(0, |l| l.version);
    if let Some(mine) = &mine
        && old.is_none_or(|o| o.identity_key == mine.identity_key)
        && shown < mine.version
    {
        return Err(Fail::new(
            Cause::Refused(Refusal::DirectoryUntrusted),
            format!(
                "WARNING: the directory's log shows an older device list (version {shown}) than the one this device published last (version {}): it may be replaying an old list. Nothing was changed; tell the directory's operator. If it really lost its records (a restored backup), `dialtone register` and `dialtone verify` publish your list again",
                mine.version
            ),
        ));
    }
    let previous = old.map(|l| l.version).max(mine.map(|l| l.version));
    DeviceList::sign(
        key,
        DeviceListContent {
            identifier,
            version: DeviceList::next_version(previous, now_ms()),
            devices,
            registration_lock: lock.unwrap_or_else(|| old.is_some_and(|l| l.registration_lock)),
            unlocked_with_pin: old.is_some_and(|l| l.unlocked_with_pin),
        },
    )
    .map_err(|e| Fail::usage(e.to_string()))
}

pub(crate) async fn run(home: &Home, c: DeviceCommand) -> Result {
    match c {
        DeviceCommand::Link {
            code: None,
            ticket: None,
            timeout,
            pass,
            ..
        } => show_code(home, timeout, &pass).await,
        DeviceCommand::Link {
            code,
            ticket,
            directory,
            directory_ca,
            name,
            bind,
            ..
        } => {
            let given = ticket.or(code).unwrap_or_default();
            join(home, &given, directory, directory_ca, name, bind).await
        }
        DeviceCommand::List { json } => list(home, json).await,
        DeviceCommand::Revoke { name, pass } => revoke(home, &name, &pass).await,
    }
}

async fn show_code(home: &Home, timeout: u64, pass: &PassArgs) -> Result {
    // Ask for the passphrase first: a wrong one should not cost the new device a code.
    let key = identity(home, pass)?;
    let offer = call(home, "devices.link_start", json!({})).await?;
    let code = offer["code"].as_str().unwrap_or("");
    println!("On the new device, run:");
    println!();
    println!(
        "    dialtone device link {code} --directory {} --name NAME",
        directory(home)?
    );
    println!();
    println!("or scan this code there (`dialtone device link --ticket TEXT`):");
    print_qr(offer["ticket"].as_str().unwrap_or(""));
    println!(
        "The code is valid for {} minutes and works once. Waiting for the new device…",
        offer["expires_in_secs"].as_u64().unwrap_or(600) / 60
    );
    let mut c = client(home).await?;
    let joined = c
        .call("devices.link_wait", json!({ "timeout_secs": timeout }))
        .await
        .map_err(|e| client_fail(&e))?;
    let device: DeviceId = serde_json::from_value(joined["device"].clone())
        .map_err(|e| anyhow::anyhow!("unexpected answer from the agent: {e}"))?;
    let name = joined["name"].as_str().unwrap_or("").to_owned();
    println!(
        "device {:?} ({}) proved the code; linking it…",
        printable(&name),
        device.short()
    );
    // Whatever stops the link here, the new device is told at once (it is waiting).
    let prepared = async {
        let (old, mut entries, _) = current(home).await?;
        if entries.iter().any(|e| e.name == name) {
            return Err(Fail::usage(format!(
                    "a device named {name:?} exists already: link again and pick another --name on the new device"
                )));
        }
        entries.push(DeviceEntry {
            device_id: device,
            name: name.clone(),
            added_at: now(),
        });
        let list = sign_next(&key, home, old.as_ref(), entries, None)?;
        let cert = DeviceCertificate::issue(&key, device, &name, now()).map_err(|e| Fail::usage(e.to_string()))?;
        Ok((list, cert))
    }
    .await;
    let (list, cert) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = call(home, "devices.link_cancel", json!({})).await;
            return Err(e);
        }
    };
    call(
        home,
        "devices.link_finish",
        json!({ "cert": cert, "list": list }),
    )
    .await?;
    remember(home, &list);
    println!(
        "linked {:?}: it can go online with `dialtone up`, and your contacts' messages reach it too",
        printable(&name)
    );
    Ok(())
}

fn directory(home: &Home) -> Result<String> {
    Ok(home
        .settings()?
        .directory
        .ok_or_else(|| anyhow::anyhow!("not registered: run `dialtone register` first"))?)
}

async fn join(
    home: &Home,
    given: &str,
    directory: Option<String>,
    ca: Option<std::path::PathBuf>,
    name: Option<String>,
    bind: Vec<std::net::SocketAddr>,
) -> Result {
    let (code, from_ticket) = link::parse_ticket(given).map_err(Fail::usage)?;
    let Some(directory) = directory.or(from_ticket) else {
        return Err(Fail::usage(
            "which directory? pass --directory URL (the other device prints it), or use --ticket",
        ));
    };
    let Some(name) = name else {
        return Err(Fail::usage(
            "name this device with --name (for example --name laptop)",
        ));
    };
    if home.path("identity.pub").exists() {
        return Err(Fail::usage(format!(
            "{} holds an identity already; link into a new, empty --home",
            home.root().display()
        )));
    }
    let client = DirectoryClient::new(&directory, ca.as_deref())?;
    let ca = ca.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    home.save_settings(&Settings {
        directory_ca: ca,
        ..home.settings()?
    })?;
    let linked = link::join(home, &client, &code, &name, bind)
        .await
        .map_err(|e| Fail::new(link_cause(&e), format!("the device was not linked: {e}")))?;
    println!(
        "this device ({}) is now linked to {} (identity {}); {} contact key{} came along",
        linked.cert.name,
        linked.identifier,
        linked.cert.identity_key.fingerprint(),
        linked.pins,
        if linked.pins == 1 { "" } else { "s" }
    );
    println!("next: dialtone up");
    Ok(())
}

async fn list(home: &Home, json: bool) -> Result {
    let v = call(home, "devices.list", json!({})).await?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let me = v["this_device"].as_str().unwrap_or("");
    let Some(list) = v["list"].as_object() else {
        println!("this account has published no device list yet (registered before device lists)");
        println!("only this device: {}", home.device_cert()?.name);
        return Ok(());
    };
    println!(
        "devices of {} (version {}, proven by the transparency log):",
        list["identifier"].as_str().unwrap_or(""),
        list["version"]
    );
    for d in list["devices"].as_array().into_iter().flatten() {
        let id = d["device_id"].as_str().unwrap_or("");
        println!(
            "  {:<20} {}{}",
            printable(d["name"].as_str().unwrap_or("")),
            id.chars().take(10).collect::<String>(),
            if id == me { "  (this device)" } else { "" }
        );
    }
    println!(
        "registration lock: {}",
        if list["registration_lock"] == Value::Bool(true) {
            "on"
        } else {
            "off"
        }
    );
    Ok(())
}

async fn revoke(home: &Home, name: &str, pass: &PassArgs) -> Result {
    let key = identity(home, pass)?;
    let (old, mut entries, me) = current(home).await?;
    let Some(pos) = entries.iter().position(|e| e.name == name) else {
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        return Err(Fail::usage(format!(
            "no device named {name:?}; the devices are: {}",
            names.join(", ")
        )));
    };
    if entries[pos].device_id == me {
        return Err(Fail::usage(
            "this is the device you are on: revoke it from another device",
        ));
    }
    let gone = entries.remove(pos);
    let list = sign_next(&key, home, old.as_ref(), entries, None)?;
    call(home, "devices.publish", json!({ "list": list })).await?;
    remember(home, &list);
    println!(
        "revoked {:?} ({}): it is off your device list and can no longer connect to anyone",
        printable(&gone.name),
        gone.device_id.short()
    );
    Ok(())
}

pub(crate) async fn lock(home: &Home, c: LockCommand) -> Result {
    let (pin, pass, on) = match &c {
        LockCommand::Set { pin: p, pass } => {
            let Some(p) = pin(p)? else {
                return Err(Fail::usage(
                    "give the PIN with --pin-file FILE or DIALTONE_PIN",
                ));
            };
            check_pin(&p).map_err(Fail::usage)?;
            (Some(p), pass, true)
        }
        LockCommand::Clear { pass } => (None, pass, false),
    };
    let key = identity(home, pass)?;
    let (old, entries, _) = current(home).await?;
    let list = sign_next(&key, home, old.as_ref(), entries, Some(on))?;
    call(home, "devices.publish", json!({ "list": list, "pin": pin })).await?;
    remember(home, &list);
    if on {
        println!(
            "registration lock on: re-verifying your identifier is no longer enough to bind another key to it; \
             the directory asks for this PIN (`dialtone verify CODE --pin-file FILE`). Keep it safe."
        );
    } else {
        println!("registration lock off");
    }
    Ok(())
}
