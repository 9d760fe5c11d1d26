//! HTTP routes: registration, session challenges, public lookups, WebFinger, info.
//! Every error is a JSON [`ErrorBody`] with a 4xx status (5xx only for our own faults).
//!
//! The parts: [`error`] (the JSON error answer and body extractor), [`register`]
//! (registration and its lock), [`session`] (session challenges and device-link offers),
//! [`lookup`] (public lookups and WebFinger), [`kt`] (the transparency log's routes) and
//! [`router`] (the route table, info and health).

mod error;
mod kt;
mod lookup;
mod register;
mod router;
mod session;

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::http::StatusCode;
use dialtone_proto::{Identifier, directory::ErrorCode};

pub(crate) use error::{ApiError, Body};
pub(crate) use router::router;

/// The client's address, set per connection by the accept loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key a client is rate-limited under: its IPv4 address, or the /64 of its IPv6 address
/// (one host usually holds a whole /64, so per-address limits would be no limit at all). An
/// IPv4-mapped IPv6 address counts as the IPv4 address.
pub(crate) fn ip_of(addr: &ClientAddr) -> IpAddr {
    rate_key(addr.0.ip())
}

fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The per-address limit of unauthenticated requests.
pub(super) fn limit_ip(st: &crate::AppState, addr: &ClientAddr) -> Result<(), ApiError> {
    check(
        &st.limits.requests_ip,
        ip_of(addr),
        "requests from your address",
    )
}

pub(crate) fn check(
    limiter: &std::sync::Mutex<dialtone_proto::rules::RateLimiter<IpAddr>>,
    ip: IpAddr,
    what: &str,
) -> Result<(), ApiError> {
    let mut l = limiter
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    if l.len() > 100_000 {
        l.prune(now);
    }
    l.check(&ip, now).map_err(|w| ApiError::limited(what, w))
}

fn parse_identifier(raw: &str) -> Result<Identifier, ApiError> {
    Identifier::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidIdentifier,
            e.to_string(),
        )
    })
}

fn not_registered(id: &Identifier) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no one is registered as {id}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        assert_ne!(rate_key(a), rate_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rate_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(rate_key(v4), v4);
    }
}
