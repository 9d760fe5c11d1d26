//! Checks a peer's hello needs: that the key and device it shows are the ones the log proves,
//! and that its checkpoint agrees with ours (no split view).

use super::*;

/// Makes sure `device` is on the device list the log proves for `id` (whose key `key` was
/// proven already): a list proven in the last few seconds is used as it is, otherwise the log
/// is asked again, so a revoked device is refused within seconds of the revocation. With the
/// directory out of reach (LAN mode), the last proven list decides.
pub(crate) async fn ensure_device(
    inner: &Inner,
    id: &Identifier,
    key: &IdentityKey,
    device: &DeviceId,
) -> Result<(), KtFailure> {
    let listed = |p: &Proven| p.devices.as_ref().is_none_or(|l| l.contains(device));
    let cached = lock(&inner.kt.proven)
        .get(id)
        .filter(|p| p.key == *key)
        .cloned();
    let not_listed = || KtFailure::DeviceNotListed {
        identifier: id.clone(),
        device: device.short(),
    };
    // A recent proof that lists the device is enough; one that does not is asked again (the
    // device may have been linked since).
    if let Some(p) = &cached
        && p.at.elapsed() < DEVICE_LIST_FRESH
        && listed(p)
    {
        return Ok(());
    }
    let reachable = *inner.connected.borrow();
    if !reachable {
        // LAN mode or an outage: the last list proven (in this run, else the one kept with
        // the pin), else the key alone.
        let pinned: Vec<DeviceId> = inner
            .lock()
            .pins
            .get(id)
            .filter(|p| p.identity_key == *key)
            .map(|p| p.devices.clone())
            .unwrap_or_default();
        return match &cached {
            Some(p) if !listed(p) => Err(not_listed()),
            Some(_) => Ok(()),
            None if !pinned.is_empty() && !pinned.contains(device) => Err(not_listed()),
            None => Ok(()),
        };
    }
    match prove_record(inner, id).await {
        Ok(p) if p.key != *key => Err(alarm(
            inner,
            KtFailure::KeyMismatch {
                identifier: id.clone(),
                claimed: key.fingerprint().to_string(),
                proven: p.key.fingerprint().to_string(),
            },
        )),
        Ok(p) if listed(&p) => Ok(()),
        Ok(_) => Err(not_listed()),
        Err(KtFailure::Unavailable(m)) => match &cached {
            Some(p) if !listed(p) => Err(not_listed()),
            Some(_) => Ok(()),
            None => Err(KtFailure::Unavailable(m)),
        },
        Err(f) => Err(alarm(inner, f)),
    }
}

/// Makes sure `claimed` is the key the log proves for `id`.
pub(crate) async fn ensure(
    inner: &Inner,
    id: &Identifier,
    claimed: &IdentityKey,
) -> Result<(), KtFailure> {
    if lock(&inner.kt.proven).get(id).map(|p| p.key) == Some(*claimed) {
        return Ok(());
    }
    let lan_only = inner.lan.is_some() && !*inner.connected.borrow();
    if !*inner.connected.borrow() && !lan_only {
        // The session may be coming back (after a directory restart): wait a little. In LAN
        // mode the directory is expected to be away: the proven pin decides at once.
        let mut rx = inner.connected.subscribe();
        let _ = tokio::time::timeout(RECONNECT_WAIT, rx.wait_for(|up| *up)).await;
    }
    let asked = if lan_only {
        Err(KtFailure::Unavailable(
            "the directory cannot be reached (LAN mode)".into(),
        ))
    } else {
        prove(inner, id).await
    };
    let proven = match asked {
        Ok(k) => k,
        Err(KtFailure::Unavailable(m)) => {
            // The directory cannot be asked. A pin that the log proved may be used; anything
            // else waits for the directory.
            let pinned = inner
                .lock()
                .pins
                .get(id)
                .filter(|p| p.proven)
                .map(|p| p.identity_key);
            if pinned == Some(*claimed) {
                debug!(peer = %id, "directory unavailable; using the pinned (proven) key");
                return Ok(());
            }
            return Err(KtFailure::Unavailable(m));
        }
        Err(f) => return Err(alarm(inner, f)),
    };
    if proven == *claimed {
        // A pin made on acceptance is now proven too.
        let mut st = inner.lock();
        if let Some(pin) = st.pins.get_mut(id)
            && pin.identity_key == proven
            && !pin.proven
        {
            pin.proven = true;
            if let Err(e) = inner.home.save_pins(&st.pins) {
                warn!("cannot save pinned keys: {e}");
            }
        }
    }
    if proven != *claimed {
        return Err(alarm(
            inner,
            KtFailure::KeyMismatch {
                identifier: id.clone(),
                claimed: claimed.fingerprint().to_string(),
                proven: proven.fingerprint().to_string(),
            },
        ));
    }
    Ok(())
}

/// Compares a peer's checkpoint with ours: the same epoch must have the same root, and the
/// directory must show us the peer's checkpoint in our own log.
pub(crate) async fn compare_with_peer(
    inner: &Inner,
    peer: &Identifier,
    theirs: &Checkpoint,
) -> Result<(), KtFailure> {
    // Nothing pinned yet: pin the log now, so that there is something to compare with.
    let st = &mut held(inner).await?;
    if theirs.verify(&st.keys.signing_key).is_err() {
        // Another directory, or a forged checkpoint: not comparable; say so.
        return Err(alarm(
            inner,
            KtFailure::SplitView {
                peer: peer.clone(),
                epoch: theirs.epoch,
            },
        ));
    }
    let split = || KtFailure::SplitView {
        peer: peer.clone(),
        epoch: theirs.epoch,
    };
    let remembered = lock(&inner.kt.state)
        .as_ref()
        .and_then(|s| s.roots.get(&theirs.epoch).copied());
    if let Some(root) = remembered {
        if root != theirs.root_hash {
            return Err(alarm(inner, split()));
        }
        return Ok(());
    }
    if theirs.epoch == st.checkpoint.epoch {
        return if *theirs == st.checkpoint {
            Ok(())
        } else {
            Err(alarm(inner, split()))
        };
    }
    if inner.lan.is_some() && !*inner.connected.borrow() {
        // LAN mode without the directory: what can be compared locally was; the rest waits
        // for the directory (not an attack, not a reason to refuse).
        return Err(KtFailure::Unavailable(
            "the directory cannot be reached to compare logs (LAN mode)".into(),
        ));
    }
    if theirs.epoch > st.checkpoint.epoch {
        // Our directory must lead us to their checkpoint.
        return match accept(inner, st, *theirs).await {
            Ok(()) => Ok(()),
            Err(KtFailure::Unavailable(m)) => Err(KtFailure::Unavailable(m)),
            Err(_) => Err(alarm(inner, split())),
        };
    }
    // Older than ours and not remembered: ask our directory for that epoch.
    let reply = ask(
        inner,
        Request::KtAudit {
            from: theirs.epoch,
            to: theirs.epoch,
        },
    )
    .await?;
    match reply {
        Reply::KtAudit { audit } if audit.checkpoints.first() == Some(theirs) => Ok(()),
        Reply::KtAudit { .. } => Err(alarm(inner, split())),
        _ => Err(KtFailure::Unavailable("unexpected answer".into())),
    }
}
