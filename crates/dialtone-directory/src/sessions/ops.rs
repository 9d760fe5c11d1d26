//! The requests a session answers: publish, contacts, lookups, transparency, device lists.

use std::time::Instant;

use axum::http::StatusCode;
use dialtone_proto::{
    DeviceCertificate, DeviceId, Identifier,
    devices::DeviceList,
    directory::{
        ClientFrame, ErrorBody, ErrorCode, LinkOfferInfo, MAX_ADDRS, MAX_STATUS_MESSAGE_LEN,
        PresenceState, Relation, Reply, Request, ServerFrame, check_pin, is_link_offer,
    },
};
use tracing::debug;

use crate::{
    AppState,
    http::{ApiError, now_secs},
    store::{Account, LockChange, StoreError, q},
};

use super::session::Ctx;

pub(super) async fn handle_text(st: &AppState, ctx: &mut Ctx, text: &str) -> ServerFrame {
    let frame: ClientFrame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            // Echo the id if there is one, so the client can match the error.
            let id = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.get("id").and_then(serde_json::Value::as_u64))
                .unwrap_or(0);
            return ServerFrame::Error {
                id,
                error: ErrorBody::new(ErrorCode::BadJson, format!("bad request frame: {e}")),
            };
        }
    };
    match handle_request(st, ctx, frame.request).await {
        Ok(reply) => ServerFrame::Reply {
            id: frame.id,
            reply,
        },
        Err(e) => ServerFrame::Error {
            id: frame.id,
            error: e.body().clone(),
        },
    }
}

pub(super) fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

async fn account_of(st: &AppState, id: &Identifier) -> Result<Account, ApiError> {
    let id2 = id.clone();
    st.store
        .run(move |c| q::account(c, &id2))
        .await?
        .ok_or_else(|| err(ErrorCode::NotFound, format!("no one is registered as {id}")))
}

async fn relation(
    st: &AppState,
    owner: &Identifier,
    peer: &Identifier,
) -> Result<Relation, ApiError> {
    let (o, p) = (owner.clone(), peer.clone());
    Ok(st.store.run(move |c| q::relation(c, &o, &p)).await?)
}

async fn set_relations(
    st: &AppState,
    pairs: Vec<(Identifier, Identifier, Relation)>,
) -> Result<(), ApiError> {
    let now = now_secs();
    st.store
        .run(move |c| {
            let tx = c.transaction()?;
            for (o, p, r) in &pairs {
                q::set_relation(&tx, o, p, *r, now)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(())
}

fn is_reachable(st: &AppState, who: &Identifier) -> bool {
    st.sessions.lock().get(who).is_some_and(|devs| {
        devs.iter()
            .any(|d| matches!(d.state, Some(s) if s != PresenceState::Invisible))
    })
}

async fn handle_request(st: &AppState, ctx: &mut Ctx, req: Request) -> Result<Reply, ApiError> {
    let me = ctx.account.identifier.clone();
    match req {
        Request::Ping => Ok(Reply::Pong),
        Request::Publish {
            state,
            message,
            endpoint,
        } => {
            limit(ctx)?;
            if state == PresenceState::Offline {
                return Err(err(
                    ErrorCode::BadRequest,
                    "'offline' cannot be published; close the session instead",
                ));
            }
            if message
                .as_ref()
                .is_some_and(|m| m.len() > MAX_STATUS_MESSAGE_LEN)
            {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("status message over {MAX_STATUS_MESSAGE_LEN} bytes"),
                ));
            }
            if endpoint.addrs.len() > MAX_ADDRS {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("more than {MAX_ADDRS} addresses"),
                ));
            }
            let changed = {
                let mut map = st.sessions.lock();
                match map
                    .get_mut(&me)
                    .and_then(|l| l.iter_mut().find(|d| d.id == ctx.session))
                {
                    // A refresh that changes nothing tells the contacts nothing.
                    Some(d)
                        if d.state == Some(state)
                            && d.message == message
                            && d.endpoint == endpoint =>
                    {
                        false
                    }
                    Some(d) => {
                        d.state = Some(state);
                        d.message = message;
                        d.endpoint = endpoint;
                        true
                    }
                    None => false,
                }
            };
            if changed {
                st.sessions.fan_out(st, &ctx.account.identifier).await;
            }
            Ok(Reply::Done)
        }
        Request::LinkOffer {
            offer,
            token,
            endpoint,
        } => {
            limit(ctx)?;
            if !is_link_offer(&offer) || endpoint.addrs.len() > MAX_ADDRS {
                return Err(err(
                    ErrorCode::BadRequest,
                    "a link offer is 4 characters of 0-9A-Z and an endpoint",
                ));
            }
            let device = session_device(st, &me, ctx.session)?;
            let info = LinkOfferInfo {
                identifier: me,
                device_id: device,
                endpoint,
            };
            st.sessions.offer_link(offer, token, info, ctx.session)?;
            Ok(Reply::Done)
        }
        Request::PublishDevices { list, certs, pin } => {
            limit(ctx)?;
            publish_devices(st, ctx, *list, certs, pin).await
        }
        Request::Contacts => {
            limit(ctx)?;
            let m = me.clone();
            let rows = st.store.run(move |c| q::relations(c, &m)).await?;
            Ok(Reply::Contacts {
                contacts: rows.iter().map(|(a, r)| st.sessions.entry(a, *r)).collect(),
            })
        }
        Request::Lookup { identifier } => {
            limit(ctx)?;
            let who = identifier.clone();
            let found = st
                .store
                .run(move |c| {
                    Ok(match q::account(c, &who)? {
                        Some(a) => Some((a, q::relation(c, &me, &who)?)),
                        None => None,
                    })
                })
                .await?;
            let (account, rel) = found.ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no one is registered as {identifier}"),
                )
            })?;
            Ok(Reply::Lookup {
                contact: st.sessions.entry(&account, rel),
            })
        }
        Request::KtCheckpoint => Ok(Reply::KtCheckpoint {
            checkpoint: st.sessions.view.checkpoint(&st.kt, Some(&me)).await?,
        }),
        Request::KtLookup { identifier } => {
            limit(ctx)?;
            Ok(Reply::KtLookup {
                lookup: st
                    .sessions
                    .view
                    .lookup(&st.kt, &identifier, Some(&me))
                    .await?,
            })
        }
        Request::KtHistory { identifier } => {
            limit(ctx)?;
            Ok(Reply::KtHistory {
                history: st
                    .sessions
                    .view
                    .history(&st.kt, &identifier, Some(&me))
                    .await?,
            })
        }
        Request::KtAudit { from, to } => {
            limit(ctx)?;
            Ok(Reply::KtAudit {
                audit: st.sessions.view.audit(&st.kt, from, to, Some(&me)).await?,
            })
        }
        Request::ContactRequest { to } => {
            limit(ctx)?;
            if to == me {
                return Err(err(ErrorCode::BadRequest, "you cannot add yourself"));
            }
            limit_contact_requests(st, &me)?;
            let them = account_of(st, &to).await?;
            match relation(st, &me, &to).await? {
                // After a key change they wait for us to confirm their new key: this does.
                Relation::Accepted => {
                    if relation(st, &to, &me).await? == Relation::Outgoing {
                        return accept(st, &ctx.account, &them).await;
                    }
                    return Ok(Reply::Done);
                }
                Relation::Blocked => {
                    return Err(err(
                        ErrorCode::Blocked,
                        format!("you have blocked {to}; unblock them first"),
                    ));
                }
                Relation::Incoming => return accept(st, &ctx.account, &them).await,
                _ => {}
            }
            // The answer, and what the requester's own state shows, are the same whether `to`
            // is online, offline, invisible or has blocked the requester: a stranger learns
            // nothing of their presence (docs/privacy.md). The request reaches them only if
            // they are online now; otherwise nothing of it is kept on their side.
            let delivered =
                relation(st, &to, &me).await? != Relation::Blocked && is_reachable(st, &to);
            let mut pairs = vec![(me.clone(), to.clone(), Relation::Outgoing)];
            if delivered {
                pairs.push((to.clone(), me.clone(), Relation::Incoming));
            }
            set_relations(st, pairs).await?;
            if delivered {
                st.sessions.push(
                    &to,
                    &ServerFrame::ContactRequest {
                        from: me,
                        identity_key: ctx.account.identity_key,
                    },
                );
            }
            Ok(Reply::Done)
        }
        Request::ContactRespond { from, accept: yes } => {
            limit(ctx)?;
            if relation(st, &me, &from).await? != Relation::Incoming {
                return Err(err(
                    ErrorCode::Conflict,
                    format!("there is no contact request from {from}"),
                ));
            }
            let them = account_of(st, &from).await?;
            if yes {
                accept(st, &ctx.account, &them).await
            } else {
                set_relations(
                    st,
                    vec![
                        (me.clone(), from.clone(), Relation::None),
                        (from.clone(), me.clone(), Relation::None),
                    ],
                )
                .await?;
                st.sessions.push(
                    &from,
                    &ServerFrame::ContactChanged {
                        contact: st.sessions.entry(&ctx.account, Relation::None),
                    },
                );
                Ok(Reply::Done)
            }
        }
        Request::ContactRemove { identifier } => {
            limit(ctx)?;
            let them = account_of(st, &identifier).await?;
            let mine = relation(st, &me, &identifier).await?;
            let theirs = relation(st, &identifier, &me).await?;
            let mut pairs = Vec::new();
            if mine != Relation::Blocked {
                pairs.push((me.clone(), identifier.clone(), Relation::None));
            }
            if theirs != Relation::Blocked {
                pairs.push((identifier.clone(), me.clone(), Relation::None));
            }
            set_relations(st, pairs).await?;
            if theirs != Relation::Blocked {
                tell_unlinked(st, &them.identifier, &ctx.account);
            }
            Ok(Reply::Done)
        }
        Request::Block { identifier } => {
            limit(ctx)?;
            let them = account_of(st, &identifier).await?;
            let theirs = relation(st, &identifier, &me).await?;
            let mut pairs = vec![(me.clone(), identifier.clone(), Relation::Blocked)];
            if theirs != Relation::Blocked {
                pairs.push((identifier.clone(), me.clone(), Relation::None));
            }
            set_relations(st, pairs).await?;
            if theirs != Relation::Blocked {
                tell_unlinked(st, &them.identifier, &ctx.account);
            }
            Ok(Reply::Done)
        }
        Request::Unblock { identifier } => {
            limit(ctx)?;
            account_of(st, &identifier).await?;
            if relation(st, &me, &identifier).await? == Relation::Blocked {
                set_relations(st, vec![(me, identifier, Relation::None)]).await?;
            }
            Ok(Reply::Done)
        }
        _ => Err(err(ErrorCode::BadRequest, "unsupported request")),
    }
}

/// The device of session `session` of `me` (its own session is closing if it is gone).
/// Tells `who` (if online) that `me` is no longer their contact.
fn tell_unlinked(st: &AppState, who: &Identifier, me: &Account) {
    st.sessions.push(
        who,
        &ServerFrame::ContactChanged {
            contact: st.sessions.entry(me, Relation::None),
        },
    );
}

fn session_device(st: &AppState, me: &Identifier, session: u64) -> Result<DeviceId, ApiError> {
    st.sessions
        .lock()
        .get(me)
        .and_then(|l| l.iter().find(|d| d.id == session))
        .map(|d| d.cert.device_id)
        .ok_or_else(|| err(ErrorCode::Conflict, "this session is closing"))
}

/// [`Request::PublishDevices`]: checks the list against the account and makes it the
/// published one; ends the sessions of devices that left it.
async fn publish_devices(
    st: &AppState,
    ctx: &Ctx,
    list: DeviceList,
    certs: Vec<DeviceCertificate>,
    pin: Option<String>,
) -> Result<Reply, ApiError> {
    let me = ctx.account.identifier.clone();
    let bad = |m: String| err(ErrorCode::BadDeviceList, m);
    let requester = session_device(st, &me, ctx.session)?;
    crate::devicelist::check_owned(&list, &me, &ctx.account.identity_key, &requester)
        .map_err(|r| bad(r.to_string()))?;
    if certs.len() > dialtone_proto::devices::MAX_DEVICES {
        return Err(bad("too many certificates".into()));
    }
    for c in &certs {
        c.verify().map_err(|e| {
            err(
                ErrorCode::InvalidCertificate,
                format!("a device certificate is invalid: {e}"),
            )
        })?;
        match list.devices.iter().find(|d| d.device_id == c.device_id) {
            Some(d) if d.name == c.name && c.identity_key == list.identity_key => {}
            _ => {
                return Err(err(
                    ErrorCode::InvalidCertificate,
                    format!("the certificate of {:?} does not match the list", c.name),
                ));
            }
        }
    }
    let lock = match (&pin, list.registration_lock) {
        (Some(_), false) => {
            return Err(bad("a PIN was given but the list turns the lock off".into()));
        }
        (Some(p), true) => {
            check_pin(p).map_err(bad)?;
            let p = p.clone();
            LockChange::Set(
                tokio::task::spawn_blocking(move || crate::reglock::hash_pin(&p))
                    .await
                    .map_err(|_| ApiError::from(StoreError::Join))?,
            )
        }
        (None, true) => LockChange::Keep,
        (None, false) => LockChange::Clear,
    };
    let now = now_secs();
    let m2 = me.clone();
    let removed = st
        .store
        .run(move |c| {
            let tx = c.transaction()?;
            let account = q::account(&tx, &m2)?
                .ok_or_else(|| StoreError::Invalid("the account is gone".into()))?;
            let refused = |r: crate::devicelist::ListRefusal| StoreError::Invalid(r.to_string());
            if account.identity_key != list.identity_key {
                return Err(refused(crate::devicelist::ListRefusal::OtherKey));
            }
            let current = q::device_list(&tx, &m2)?;
            // How the key was bound is carried over from list to list; with no list yet
            // (a key bound by an older client), no PIN was given for it.
            crate::devicelist::check_successor(current.as_ref(), &list, false).map_err(refused)?;
            if current.as_ref().is_some_and(|c| c.unlocked_with_pin) && !list.unlocked_with_pin {
                return Err(refused(crate::devicelist::ListRefusal::BindingChanged));
            }
            if matches!(lock, LockChange::Keep) && q::lock(&tx, &m2)?.and_then(|l| l.hash).is_none()
            {
                return Err(StoreError::Invalid(
                    "turning on the registration lock needs a PIN".into(),
                ));
            }
            let registered = q::devices(&tx, &m2)?;
            let mut new_certs = Vec::new();
            for d in &list.devices {
                if registered.iter().any(|r| r.device_id == d.device_id) {
                    continue;
                }
                let Some(cert) = certs.iter().find(|c| c.device_id == d.device_id) else {
                    return Err(StoreError::Invalid(format!(
                        "{:?} is new on the list but has no certificate",
                        d.name
                    )));
                };
                if q::device(&tx, &d.device_id)?.is_some() {
                    return Err(StoreError::Invalid(format!(
                        "{:?} is registered to another account",
                        d.name
                    )));
                }
                new_certs.push(cert.clone());
            }
            let removed = q::set_device_list(&tx, &m2, &list, &new_certs, lock, now)?;
            tx.commit()?;
            Ok(removed)
        })
        .await
        .map_err(|e| match e {
            StoreError::Invalid(m) => bad(m),
            e => e.into(),
        })?;
    debug!(removed = removed.len(), "device list published");
    st.kt.notify();
    if !removed.is_empty() {
        st.sessions.key_replaced(st, &me, &removed).await;
    }
    Ok(Reply::Done)
}

/// Contact requests are limited per requesting account, over all its sessions: each one is
/// a question about a person, and a budget per session would grow with the sessions opened.
fn limit_contact_requests(st: &AppState, me: &Identifier) -> Result<(), ApiError> {
    let now = Instant::now();
    let mut l = st
        .limits
        .contact_requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if l.len() > 100_000 {
        l.prune(now);
    }
    l.check(me, now).map_err(|w| {
        let secs = w.as_secs().max(1);
        let mut e = err(
            ErrorCode::RateLimited,
            format!("too many contact requests; try again in {secs} s"),
        );
        e.set_retry_after(secs);
        e
    })
}

fn limit(ctx: &mut Ctx) -> Result<(), ApiError> {
    ctx.limiter.check(Instant::now()).map_err(|w| {
        err(
            ErrorCode::RateLimited,
            format!("too many requests; try again in {} s", w.as_secs().max(1)),
        )
    })
}

/// Both sides accept: tell both, with each other's presence, so each sees the other at once.
async fn accept(st: &AppState, me: &Account, them: &Account) -> Result<Reply, ApiError> {
    set_relations(
        st,
        vec![
            (
                me.identifier.clone(),
                them.identifier.clone(),
                Relation::Accepted,
            ),
            (
                them.identifier.clone(),
                me.identifier.clone(),
                Relation::Accepted,
            ),
        ],
    )
    .await?;
    st.sessions.push(
        &them.identifier,
        &ServerFrame::ContactChanged {
            contact: st.sessions.entry(me, Relation::Accepted),
        },
    );
    st.sessions.push(
        &me.identifier,
        &ServerFrame::ContactChanged {
            contact: st.sessions.entry(them, Relation::Accepted),
        },
    );
    // And each side's current presence, as any later change would arrive.
    st.sessions.push(
        &them.identifier,
        &ServerFrame::Presence {
            contact: st.sessions.entry(me, Relation::Accepted),
        },
    );
    st.sessions.push(
        &me.identifier,
        &ServerFrame::Presence {
            contact: st.sessions.entry(them, Relation::Accepted),
        },
    );
    Ok(Reply::Done)
}
