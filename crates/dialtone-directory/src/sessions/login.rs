//! The one-connection login: a session opened without a query gets a challenge bound to its
//! connection as the first frame, and must answer it with the device's signature as its first
//! frame; then it is a session like any other (the Welcome follows). One TCP connection and
//! one TLS handshake per login, where the two-step login (`POST /v1/session/challenge`, then
//! the upgrade with the signed challenge in its query) needs two.
//!
//! The challenge is 32 random bytes drawn for this connection, never valid on another: no
//! record of used challenges is needed (a replayed answer was signed over another
//! connection's challenge).

use std::{sync::Arc, time::Duration};

use dialtone_proto::{
    directory::{ErrorBody, ErrorCode, ServerFrame, SessionLogin},
    keys::session_transcript,
};
use tracing::debug;

use crate::{AppState, store::q, ws::Incoming};

use super::{
    registry::encode,
    session::{Conn, Live, Start, open_session, welcome_step},
};

/// How long the directory waits for the answer to its challenge.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// RFC 6455 close code "policy violation": the login was refused.
const POLICY: u16 = 1008;

/// The login step of a session opened without a query: the challenge, the device's answer,
/// its registration, then the Welcome. `None` if the login failed (the connection is closed,
/// with an error frame saying why when the device answered at all).
pub(super) async fn login_step(st: Arc<AppState>, mut conn: Conn) -> Option<Live> {
    let mut challenge = [0u8; 32];
    rand::fill(&mut challenge[..]);
    let frame = encode(&ServerFrame::Challenge {
        challenge: hex::encode(challenge),
        expires_in_secs: LOGIN_TIMEOUT.as_secs(),
    })?;
    let sent = tokio::time::timeout(LOGIN_TIMEOUT, conn.send_text(frame.as_str())).await;
    if !matches!(sent, Ok(Ok(()))) {
        return None;
    }
    let answer =
        tokio::time::timeout(LOGIN_TIMEOUT, std::future::poll_fn(|cx| conn.poll_next(cx))).await;
    let login = match answer {
        Ok(Ok(Incoming::Text(t))) => match serde_json::from_str::<SessionLogin>(&t) {
            Ok(l) => l,
            Err(_) => {
                return refuse(conn, ErrorCode::BadJson, "expected the signed challenge").await;
            }
        },
        Ok(Ok(Incoming::Close(_)) | Err(_)) | Err(_) => return None,
        Ok(Ok(_)) => {
            return refuse(conn, ErrorCode::BadJson, "expected the signed challenge").await;
        }
    };
    let device = login.device_id;
    if device
        .verify(&session_transcript(&challenge, &device), &login.signature)
        .is_err()
    {
        return refuse(
            conn,
            ErrorCode::BadSignature,
            "the signature does not verify",
        )
        .await;
    }
    // Before the device is looked up: see `Sessions::register`.
    let mark = st.sessions.revocation_mark();
    let found = st.store.run(move |c| q::device(c, &device)).await;
    let (account, cert) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            return refuse(
                conn,
                ErrorCode::UnknownDevice,
                "this device is not registered",
            )
            .await;
        }
        Err(e) => {
            debug!("login: store error: {e}");
            return refuse(
                conn,
                ErrorCode::Internal,
                "the directory cannot log you in now",
            )
            .await;
        }
    };
    // The registration lock lapses only after a long time without a session: written with
    // the next housekeeping round, not here (a write per login would be most of its cost).
    st.sessions.seen_soon(&account.identifier);
    let (live, welcome) = open_session(
        st,
        conn,
        Start {
            account,
            cert,
            mark,
        },
    );
    welcome_step(live, welcome).await
}

/// Tells the device why its login failed, then closes the connection.
async fn refuse(mut conn: Conn, code: ErrorCode, msg: &str) -> Option<Live> {
    if let Some(text) = encode(&ServerFrame::Error {
        id: 0,
        error: ErrorBody::new(code, msg),
    }) {
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.send_text(text.as_str())).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.send_close(Some(POLICY))).await;
    None
}
