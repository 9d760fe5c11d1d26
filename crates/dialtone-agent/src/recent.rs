//! A bounded, time-limited memory of recent outcomes by key: what makes a retry idempotent.
//!
//! Used twice: the receiver remembers which message ids it already showed (the sender's one
//! redial would otherwise show a message twice), and `message.send` remembers a front end's
//! `client_id` (a retry returns the first outcome instead of sending again). Only outcomes
//! are kept, never a message body; at most `cap` entries, each at most `ttl`.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::sync::watch;

/// The first claim of a key: fill it with the outcome (dropping it unfilled forgets the key).
#[derive(Debug)]
pub(crate) struct Filler<V>(watch::Sender<Option<V>>);

impl<V> Filler<V> {
    pub(crate) fn fill(self, v: V) {
        self.0.send_replace(Some(v));
    }
}

/// What a claim found.
#[derive(Debug)]
pub(crate) enum Claim<V> {
    /// Nobody had this key: do the work, then [`Filler::fill`].
    First(Filler<V>),
    /// Someone has: the outcome (waiting for it if the work is still under way), or `None`
    /// if that attempt was given up without an outcome.
    Again(watch::Receiver<Option<V>>),
}

/// Waits for the outcome of an earlier claim; `None` if it was given up.
pub(crate) async fn outcome<V: Clone>(mut rx: watch::Receiver<Option<V>>) -> Option<V> {
    let done = rx.wait_for(Option::is_some).await.map(|v| v.clone());
    match done {
        Ok(v) => v,
        Err(_) => rx.borrow().clone(),
    }
}

#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, (u64, watch::Receiver<Option<V>>)>,
    order: VecDeque<(u64, Instant, K)>,
    seq: u64,
}

/// See the module doc.
#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    entries: Mutex<Entries<K, V>>,
    cap: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V: Clone> Recent<K, V> {
    pub(crate) fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
            }),
            cap,
            ttl,
        }
    }

    /// Claims `key`: [`Claim::First`] if it is new (or its earlier attempt was given up).
    pub(crate) fn claim(&self, key: K) -> Claim<V> {
        let mut e = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Entries { map, order, seq } = &mut *e;
        // Forget what is too old, or too much.
        while let Some((s, at, _)) = order.front() {
            if at.elapsed() <= self.ttl && map.len() < self.cap {
                break;
            }
            let s = *s;
            if let Some((_, _, k)) = order.pop_front()
                && map.get(&k).is_some_and(|(ms, _)| *ms == s)
            {
                map.remove(&k);
            }
        }
        if let Some((_, rx)) = map.get(&key) {
            // Given up without an outcome (the filler dropped unfilled): claim it afresh.
            let abandoned = rx.has_changed().is_err() && rx.borrow().is_none();
            if !abandoned {
                return Claim::Again(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        *seq += 1;
        map.insert(key.clone(), (*seq, rx));
        order.push_back((*seq, Instant::now(), key));
        Claim::First(Filler(tx))
    }

    /// Entries held now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_claimed_once_and_the_outcome_is_shared() {
        let r: Recent<u32, &str> = Recent::new(4, Duration::from_secs(60));
        let Claim::First(f) = r.claim(1) else {
            panic!("first claim")
        };
        let Claim::Again(rx) = r.claim(1) else {
            panic!("second claim")
        };
        f.fill("done");
        assert_eq!(outcome(rx).await, Some("done"));
        // Given up without an outcome: the next claim is first again.
        let Claim::First(f) = r.claim(2) else {
            panic!()
        };
        drop(f);
        assert!(matches!(r.claim(2), Claim::First(_)));
    }

    #[test]
    fn it_is_bounded() {
        let r: Recent<u32, ()> = Recent::new(8, Duration::from_secs(60));
        for k in 0..1000 {
            if let Claim::First(f) = r.claim(k) {
                f.fill(());
            }
        }
        assert!(r.len() <= 8, "{}", r.len());
        // The oldest were forgotten, the newest are kept.
        assert!(matches!(r.claim(999), Claim::Again(_)));
        assert!(matches!(r.claim(0), Claim::First(_)));
    }
}
