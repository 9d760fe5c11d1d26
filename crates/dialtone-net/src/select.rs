//! Which of a connection's open paths carries its data: IPv6 first, then IPv4, the relay last.
//!
//! iroh's built-in selector ranks direct paths by round-trip time with a 3 ms bonus for IPv6
//! and a 5 ms margin against flapping. On a LAN or in a data centre both families have
//! sub-millisecond RTTs, so whichever direct path hole punching opened *first* stays selected
//! and the other one is closed: with both families available iroh kept IPv4 about as often as
//! IPv6. Dialtone promises "IPv6 first" (DESIGN.md §1.5), so it installs this selector:
//!
//! - a direct path (IPv6 or IPv4) always wins over the relay, at once (as in iroh);
//! - among direct paths, IPv6 gets a [`IPV6_ADVANTAGE`] bonus on its RTT: it is chosen unless
//!   IPv4 is faster by more than that (a clearly worse IPv6 route, such as a far tunnel);
//! - within that ranking, the current path is kept unless another is better by
//!   [`SWITCH_MARGIN`] (no flapping on jitter).
//!
//! iroh calls the selector each time a path opens or closes, so an IPv6 path that punches
//! after an IPv4 one still takes over; iroh then closes the unused direct path.
//!
//! The hook (`Builder::path_selector`) sits behind iroh's `unstable-custom-transports` feature,
//! which only makes these types public and is outside iroh's semver promise: the workspace pins
//! iroh to an exact version, and an upgrade must recheck this file against iroh's
//! `socket/biased_rtt_path_selector.rs`.

use std::time::Duration;

use iroh::endpoint::transports::{AddrKind, PathSelection, PathSelectionContext, PathSelector};

/// How much slower (in RTT) an IPv6 path may be than an IPv4 one and still be preferred.
pub const IPV6_ADVANTAGE: Duration = Duration::from_millis(50);

/// A path replaces the current one of the same rank only if its (biased) RTT is at least this
/// much better (iroh's own value).
pub const SWITCH_MARGIN: Duration = Duration::from_millis(5);

/// The kind of a candidate path, as the ranking sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    V6,
    V4,
    Relay,
    Other,
}

impl From<AddrKind> for Kind {
    fn from(k: AddrKind) -> Self {
        match k {
            AddrKind::IpV6 => Kind::V6,
            AddrKind::IpV4 => Kind::V4,
            AddrKind::Relay => Kind::Relay,
            _ => Kind::Other,
        }
    }
}

/// Lower is better: (backup tier, biased RTT in ns).
fn sort_key(kind: Kind, rtt: Duration) -> (u8, i128) {
    let rtt = rtt.as_nanos() as i128;
    match kind {
        Kind::V6 => (0, rtt - IPV6_ADVANTAGE.as_nanos() as i128),
        Kind::V4 | Kind::Other => (0, rtt),
        Kind::Relay => (1, rtt),
    }
}

/// The index of the candidate to select, or `None` to keep the current selection.
/// `candidates` are `(kind, rtt, is_current)`; a path without stats is skipped.
fn pick(candidates: &[(Kind, Option<Duration>, bool)]) -> Option<usize> {
    let mut best: Option<(usize, (u8, i128))> = None;
    let mut current: Option<(u8, i128)> = None;
    for (i, (kind, rtt, is_current)) in candidates.iter().enumerate() {
        let Some(rtt) = rtt else { continue };
        let key = sort_key(*kind, *rtt);
        if *is_current && current.is_none_or(|c| key < c) {
            current = Some(key);
        }
        if best.is_none_or(|(_, b)| key < b) {
            best = Some((i, key));
        }
    }
    let (index, (tier, biased)) = best?;
    match current {
        None => Some(index),
        Some((cur_tier, _)) if cur_tier != tier => Some(index),
        Some((_, cur)) if biased + SWITCH_MARGIN.as_nanos() as i128 <= cur => Some(index),
        Some(_) => None,
    }
}

/// The path selector every Dialtone endpoint installs (see the module documentation).
#[derive(Debug, Default)]
pub struct Ipv6First;

impl PathSelector for Ipv6First {
    fn select(&self, ctx: &PathSelectionContext<'_>) -> PathSelection {
        let current = ctx.current();
        let paths: Vec<_> = ctx.paths().collect();
        let candidates: Vec<(Kind, Option<Duration>, bool)> = paths
            .iter()
            .map(|p| {
                let path = p.network_path();
                (
                    Kind::from(path.addr_kind()),
                    p.stats().map(|s| s.rtt),
                    Some(path) == current,
                )
            })
            .collect();
        let mut selection = PathSelection::none();
        if let Some(i) = pick(&candidates)
            && let Some(p) = paths.get(i)
        {
            selection.set(p);
        }
        selection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Option<Duration> {
        Some(Duration::from_secs_f64(n / 1000.0))
    }

    #[test]
    fn nothing_to_choose_keeps_the_selection() {
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[(Kind::V4, None, false)]), None);
    }

    #[test]
    fn first_path_is_taken_even_the_relay() {
        assert_eq!(pick(&[(Kind::Relay, ms(1.0), false)]), Some(0));
    }

    #[test]
    fn direct_wins_over_the_relay_at_once_even_if_slower() {
        let c = [(Kind::Relay, ms(1.0), true), (Kind::V4, ms(80.0), false)];
        assert_eq!(pick(&c), Some(1));
    }

    #[test]
    fn ipv6_punched_after_ipv4_takes_over() {
        // The lab's case: both sub-millisecond, IPv4 selected first.
        let c = [(Kind::V4, ms(0.25), true), (Kind::V6, ms(0.40), false)];
        assert_eq!(pick(&c), Some(1));
    }

    #[test]
    fn ipv6_selected_is_kept_when_ipv4_opens() {
        let c = [(Kind::V6, ms(0.40), true), (Kind::V4, ms(0.25), false)];
        assert_eq!(pick(&c), None);
    }

    #[test]
    fn much_slower_ipv6_loses_to_ipv4() {
        let c = [(Kind::V4, ms(20.0), true), (Kind::V6, ms(90.0), false)];
        assert_eq!(pick(&c), None);
        let c = [(Kind::V6, ms(90.0), true), (Kind::V4, ms(20.0), false)];
        assert_eq!(pick(&c), Some(1));
    }

    #[test]
    fn no_flapping_between_paths_of_one_family() {
        let c = [(Kind::V4, ms(10.0), true), (Kind::V4, ms(7.0), false)];
        assert_eq!(pick(&c), None);
        let c = [(Kind::V4, ms(10.0), true), (Kind::V4, ms(4.0), false)];
        assert_eq!(pick(&c), Some(1));
    }

    #[test]
    fn relay_is_kept_while_nothing_direct_exists() {
        let c = [(Kind::Relay, ms(2.0), true), (Kind::Relay, ms(1.0), false)];
        assert_eq!(pick(&c), None);
    }
}
