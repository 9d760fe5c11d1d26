//! `dialtone id new|show`, `dialtone register` and `dialtone verify`: the identity, and its
//! registration with the directory.

use std::path::PathBuf;

use dialtone_agent::{DirectoryClient, DirectoryError, Home, home::Settings};
use dialtone_proto::{
    devices::{DeviceEntry, DeviceList, DeviceListContent},
    directory::{ErrorCode, RegisterConfirm, RegisterStart, check_pin},
    keys::{register_confirm_transcript, register_start_transcript, sign},
    rules::clean_code,
};
use serde_json::json;

use super::{devices, parse_identifier};
use crate::{
    args::{PassArgs, PinArgs},
    exit::{Fail, Result},
    input::{now, now_ms, passphrase, pin},
};

/// `dialtone id new`.
pub(crate) fn new(
    home: &Home,
    name: &str,
    no_passphrase: bool,
    force: bool,
    pass: &PassArgs,
) -> Result {
    let pass = passphrase(pass)?;
    if pass.is_none() && !no_passphrase {
        return Err(anyhow::anyhow!(
            "the identity key must be protected: give a passphrase with --passphrase-file FILE \
             or DIALTONE_PASSPHRASE, or pass --no-passphrase to store it unencrypted"
        )
        .into());
    }
    // Keys are written 0600 anyway; a strict umask also covers any temporary file.
    // SAFETY: umask only changes this process's file-creation mask.
    unsafe { libc::umask(0o077) };
    let (ik, cert) = home.create_identity(pass.as_deref(), name, now(), force)?;
    println!("created identity {}", ik.fingerprint());
    println!("device {} ({})", cert.device_id.short(), cert.name);
    println!("home {}", home.root().display());
    if pass.is_none() {
        println!("warning: the identity key is stored unencrypted");
    }
    Ok(())
}

/// `dialtone id show`.
pub(crate) fn show(home: &Home, json: bool) -> Result {
    let ik = home.identity_key()?;
    let cert = home.device_cert()?;
    let settings = home.settings()?;
    if json {
        println!(
            "{}",
            json!({
                "identity_key": ik, "fingerprint": ik.fingerprint().to_string(),
                "device": cert.device_id, "device_name": cert.name,
                "identifier": settings.identifier, "registered": settings.registered,
                "directory": settings.directory,
                "encrypted": home.identity_is_encrypted().ok(),
                "linked": home.is_linked(),
            })
        );
    } else {
        println!("{}", ik.fingerprint());
        println!("identity key  {ik}");
        println!("device        {} ({})", cert.device_id, cert.name);
        match (&settings.identifier, settings.registered) {
            (Some(id), true) => println!(
                "registered    {id} at {}",
                settings.directory.unwrap_or_default()
            ),
            (Some(id), false) => println!("pending       {id}: run `dialtone verify CODE`"),
            _ => println!("not registered"),
        }
    }
    Ok(())
}

pub(crate) async fn register(
    home: &Home,
    identifier: &str,
    directory: &str,
    ca: Option<PathBuf>,
    pass: &PassArgs,
) -> Result {
    let identifier = parse_identifier(identifier)?;
    let client = DirectoryClient::new(directory, ca.as_deref())?;
    let key = home.identity_signing_key(passphrase(pass)?.as_deref())?;
    let cert = home.device_cert()?;
    let ik = home.identity_key()?;
    let ts = now();
    let transcript = register_start_transcript(&identifier, &ik, &cert, ts);
    let device = ed25519_dalek::SigningKey::from_bytes(&*home.device_secret()?);
    let req = RegisterStart {
        signature: sign(&key, &transcript),
        device_signature: sign(&device, &transcript),
        identifier: identifier.clone(),
        identity_key: ik,
        device_cert: cert,
        timestamp: ts,
    };
    let started = client.register_start(&req).await?;
    let ca = ca.map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    home.save_settings(&Settings {
        directory: Some(client.base().to_owned()),
        directory_ca: ca,
        identifier: Some(identifier.clone()),
        registered: false,
        ..home.settings()?
    })?;
    println!(
        "a verification code was sent to {identifier} (by {}); it is valid for {} minutes",
        started.channel,
        started.expires_in_secs / 60
    );
    println!("next: dialtone verify CODE");
    Ok(())
}

pub(crate) async fn verify(home: &Home, code: &str, pass: &PassArgs, pin_args: &PinArgs) -> Result {
    let mut settings = home.settings()?;
    let (Some(identifier), Some(directory)) =
        (settings.identifier.clone(), settings.directory.clone())
    else {
        return Err(anyhow::anyhow!(
            "nothing to verify: run `dialtone register IDENTIFIER --directory URL` first"
        )
        .into());
    };
    let Some(code) = clean_code(code) else {
        return Err(Fail::usage(format!(
            "'{code}' is not a code: codes are 6 digits"
        )));
    };
    let pin = pin(pin_args)?;
    if let Some(p) = &pin {
        check_pin(p).map_err(Fail::usage)?;
    }
    let client = DirectoryClient::new(&directory, settings.directory_ca.as_deref())?;
    let key = home.identity_signing_key(passphrase(pass)?.as_deref())?;
    let ik = home.identity_key()?;
    let cert = home.device_cert()?;
    // The device list to publish: this device, plus the other devices of this key if the
    // identifier is bound to it already (a re-registration keeps them).
    // Not registered yet is fine; any other failure must stop here, or the list below would
    // drop (revoke) this key's other devices.
    let current = match client.lookup(&identifier).await {
        Ok(rec) => Some(rec),
        Err(DirectoryError::Refused { body, .. }) if body.error == ErrorCode::NotFound => None,
        Err(e) => return Err(e.into()),
    };
    // The list to start from: the newer of the one this device signed last and the one the
    // directory shows (its answer carries no proof: it could be an older list of ours, with a
    // revoked device or without the lock, for us to sign again).
    let mine = devices::last_published(home, &identifier, &ik);
    let mut entries = Vec::new();
    let mut previous_version = mine.as_ref().map(|l| l.version);
    let mut other_key_locked = false;
    let mut own_locked = false;
    let mut own_unlocked = false;
    if let Some(rec) = &current {
        if rec.identity_key == ik {
            // Only a list our own key signed is carried over.
            let shown = rec.device_list.as_ref().filter(|l| {
                l.verify().is_ok() && l.identity_key == ik && l.identifier == identifier
            });
            if let (Some(s), Some(m)) = (shown, &mine)
                && s.version < m.version
            {
                eprintln!(
                    "warning: the directory shows an older device list (version {}) than the one this device published last (version {}); keeping the newer one",
                    s.version, m.version
                );
            }
            let base = match (shown, &mine) {
                (Some(s), Some(m)) if s.version < m.version => Some(m),
                (Some(s), _) => Some(s),
                (None, m) => m.as_ref(),
            };
            if let Some(l) = base {
                entries = l.devices.clone();
                previous_version = previous_version.max(Some(l.version));
                // Re-verifying our own key keeps its lock (`dialtone lock clear` removes it),
                // and how the key was first bound.
                own_locked = l.registration_lock;
                own_unlocked = l.unlocked_with_pin;
            }
        } else {
            other_key_locked = rec
                .device_list
                .as_ref()
                .is_some_and(|l| l.registration_lock);
        }
    }
    if !entries.iter().any(|e| e.device_id == cert.device_id) {
        entries.retain(|e| e.name != cert.name);
        entries.push(DeviceEntry {
            device_id: cert.device_id,
            name: cert.name.clone(),
            added_at: now(),
        });
    }
    let sign_list = |unlocked: bool| {
        DeviceList::sign(
            &key,
            DeviceListContent {
                identifier: identifier.clone(),
                version: DeviceList::next_version(previous_version, now_ms()),
                devices: entries.clone(),
                registration_lock: pin.is_some() || own_locked,
                unlocked_with_pin: unlocked,
            },
        )
        .map_err(|e| Fail::usage(format!("cannot make the device list: {e}")))
    };
    let mut unlocked = (pin.is_some() && other_key_locked) || own_unlocked;
    let mut tries = 0;
    let (done, published) = loop {
        let list = sign_list(unlocked)?;
        let req = RegisterConfirm {
            signature: sign(&key, &register_confirm_transcript(&identifier, &code, &ik)),
            identifier: identifier.clone(),
            identity_key: ik,
            code: code.clone(),
            device_list: Some(list.clone()),
            pin: pin.clone(),
        };
        match client.register_confirm(&req).await {
            // The lock lapsed (or was opened) unlike the public record suggested: say so
            // truthfully in the list and try once more.
            Err(DirectoryError::Refused { body, .. })
                if body.error == ErrorCode::UnlockMismatch && tries == 0 =>
            {
                unlocked = !unlocked;
                tries += 1;
            }
            other => break (other?, list),
        }
    };
    settings.registered = true;
    home.save_settings(&settings)?;
    devices::remember(home, &published);
    println!(
        "registered {} with identity {}",
        done.identifier,
        done.identity_key.fingerprint()
    );
    if pin.is_some() {
        println!("registration lock: on (keep the PIN safe; `dialtone lock clear` turns it off)");
    } else if own_locked {
        println!("registration lock: still on, with its PIN (`dialtone lock clear` turns it off)");
    }
    if done.replaced_key {
        println!(
            "note: this replaced the key that was registered for {} before; your contacts will be warned",
            done.identifier
        );
    }
    println!("next: dialtone up");
    Ok(())
}
