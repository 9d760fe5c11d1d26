//! Watching our own binding: our identifier's key history, at every login and on a timer.

use super::*;

/// Verifies our own identifier's key history; alarms on versions we did not make.
pub(crate) async fn monitor_own(inner: &Inner) -> Result<(), KtFailure> {
    let st = &mut held(inner).await?;
    let me = inner.identifier.clone();
    let history = match ask(
        inner,
        Request::KtHistory {
            identifier: me.clone(),
        },
    )
    .await
    {
        Ok(Reply::KtHistory { history }) => history,
        Ok(_) => return Err(KtFailure::Unavailable("unexpected answer".into())),
        Err(KtFailure::Unavailable(m)) => return Err(KtFailure::Unavailable(m)),
        Err(e) => return Err(e),
    };
    accept(inner, st, history.checkpoint)
        .await
        .map_err(|f| alarm(inner, f))?;
    let bad = |reason: String| KtFailure::BadProof {
        what: "key history",
        reason,
    };
    let proof = serde_json::from_value(history.proof).map_err(|e| bad(e.to_string()))?;
    let (vrf, cp, label) = (
        st.keys.vrf_public_key.0,
        history.checkpoint,
        AkdLabel::from(me.as_str()),
    );
    let results = verify_off_thread(move || {
        akd::verify::key_history_verify::<KtConfiguration>(
            &vrf,
            cp.root_hash.0,
            cp.epoch,
            label,
            proof,
            HistoryVerificationParams::default(),
        )
    })
    .await
    .map_err(|e| alarm(inner, bad(e)))?;
    // Our own lists only move forward: a newer entry with an older list is a replay.
    let own: Vec<u64> = results
        .iter()
        .filter(|r| kt_value_key(&r.value.0) == Some(inner.identity_key))
        .map(|r| list_version(kt_value_list(&r.value.0).as_ref()))
        .collect();
    let rolled_back = own.windows(2).find(|w| w[0] < w[1]);
    if let Some(w) = rolled_back {
        alarm(
            inner,
            KtFailure::ListRollback {
                identifier: me.clone(),
                held: w[1],
                offered: w[0],
            },
        );
    }
    // Newest first. Versions before our own key's newest version are from before we
    // registered (the registration said it replaced them); every later one is foreign.
    let mine = results
        .iter()
        .position(|r| kt_value_key(&r.value.0) == Some(inner.identity_key));
    // Our key's newest list no longer names this device: it was revoked (by another of our
    // devices, or by whoever holds the identity key).
    // (Not after a replayed list: that is the alarm, not a revocation.)
    if mine == Some(0)
        && rolled_back.is_none()
        && let Some(list) = results.first().and_then(|r| kt_value_list(&r.value.0))
        && !list.contains(&inner.cert.device_id)
    {
        revoked(inner, true);
    }
    let foreign = match mine {
        Some(i) => &results[..i],
        None => &results[..],
    };
    for r in foreign {
        let fp = kt_value_key(&r.value.0)
            .map_or_else(|| "unreadable".to_owned(), |k| k.fingerprint().to_string());
        let message = format!(
            "WARNING: the directory bound a key that is not yours to {me} (version {}, epoch {}, fingerprint {fp}); \
             someone may be receiving your messages. Contact your directory's operator and tell your contacts",
            r.version, r.epoch
        );
        if lock(&inner.kt.alarmed).insert(message.clone()) {
            warn!(
                version = r.version,
                epoch = r.epoch,
                "key transparency: own key replaced"
            );
            inner.emit(Event::Transparency {
                kind: "own-key-replaced",
                message,
            });
        }
    }
    Ok(())
}

/// Watches our own binding: at every login and every `interval` while connected.
pub(crate) async fn monitor_loop(inner: Arc<Inner>, interval: Duration) {
    let mut connected = inner.connected.subscribe();
    loop {
        if *connected.borrow_and_update() {
            match monitor_own(&inner).await {
                Ok(()) => {}
                Err(KtFailure::Unavailable(m)) => debug!("own-key monitor: {m}"),
                Err(f) => debug!("own-key monitor alarmed: {f}"),
            }
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            r = connected.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
