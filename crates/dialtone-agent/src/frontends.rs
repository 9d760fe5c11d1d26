//! Front ends: who the agent hands events to, and what "delivered" means.
//!
//! A front end is a local-API connection that called `events.subscribe`, or an in-process
//! [`Subscription`] of an embedded agent. Each has a queue of its own, bounded at
//! [`QUEUE_LEN`] events:
//!
//! - An event is handed to every front end at once ([`FrontEnds::send`]); nothing waits.
//! - A message is handed to every front end, and [`FrontEnds::deliver`] waits (at most
//!   [`DELIVER_WAIT`], well inside a sender's 5 s acknowledgement timeout) until at least one
//!   has *taken* it: an in-process subscriber took it from its queue, a socket front end wrote
//!   its line to the connection (the write completed, not merely queued). The peer's
//!   acknowledgement says how many took it (`shown_to`); none is a `no-front-end` refusal.
//! - A stuck front end is cut off, never allowed to hold messages in memory: its queue is
//!   full, its oldest event has waited more than [`STUCK_AFTER`], or it did not take a message
//!   within [`DELIVER_WAIT`] (seen at the end of that wait, at the next event handed to it, or when it next reads). Its queue is emptied at once, it gets a `lagged` event if it
//!   still reads, and it ends (a socket front end's connection is closed).

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::Event;

/// Events a front end may have waiting before it is cut off as stuck.
pub const QUEUE_LEN: usize = 128;
/// How long a front end's oldest event may wait before it is cut off as stuck (a message:
/// [`DELIVER_WAIT`]). Generous: a front end that reads, even on a loaded machine, keeps up.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);
/// How long a message waits for a front end to take it before it is refused `no-front-end`
/// (the sender waits 5 s for the acknowledgement).
pub const DELIVER_WAIT: Duration = Duration::from_millis(2500);
/// Once one front end took a message, how long the others are given to take it too before
/// the acknowledgement goes (it counts those that did).
const GRACE: Duration = Duration::from_millis(100);
/// Front ends at most (local-API subscribers and in-process subscriptions together).
pub const MAX_FRONT_ENDS: usize = 64;

/// Names a front end while the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontEndId(u64);

/// What a front end's queue holds.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) event: Arc<Event>,
    at: Instant,
    /// For a message: fired once the front end took it.
    pub(crate) taken: Option<oneshot::Sender<()>>,
}

/// What a front end reads next.
#[derive(Debug)]
pub(crate) enum Next {
    Item(Item),
    /// Cut off as stuck; `missed` events were dropped.
    Lagged(u64),
    /// The agent stopped.
    Closed,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Item>,
    /// Set when the front end was cut off (`Some(missed)`), or the agent stopped (`None`
    /// with `closed`).
    lagged: Option<u64>,
    closed: bool,
}

#[derive(Debug)]
struct Queue {
    id: FrontEndId,
    state: Mutex<QueueState>,
    notify: Notify,
    /// Cancelled when the front end is cut off or the agent stops.
    ended: CancellationToken,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `item`, or cuts the front end off if it is stuck. Returns whether it was queued.
    fn push(&self, item: Item) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        if st.items.len() >= QUEUE_LEN || stale(&st) {
            cut(&mut st, 1);
            drop(st);
            self.notify.notify_one();
            self.ended.cancel();
            return false;
        }
        st.items.push_back(item);
        drop(st);
        self.notify.notify_one();
        true
    }

    fn cut(&self) {
        cut(&mut self.lock(), 0);
        self.notify.notify_one();
        self.ended.cancel();
    }

    /// The next item; cancel-safe (nothing is taken from the queue until it is returned).
    /// A front end that comes back to read after its oldest event went stale is cut off
    /// instead: it is not handed old messages as if they were new.
    async fn next(&self) -> Next {
        loop {
            {
                let mut st = self.lock();
                if stale(&st) {
                    cut(&mut st, 0);
                    self.ended.cancel();
                }
                if let Some(item) = st.items.pop_front() {
                    return Next::Item(item);
                }
                if let Some(missed) = st.lagged.take() {
                    return Next::Lagged(missed);
                }
                if st.closed {
                    return Next::Closed;
                }
            }
            self.notify.notified().await;
        }
    }
}

/// Whether the oldest event waited too long: a message not taken within the wait its sender
/// was given, or any event not taken for much longer. Such a front end does not read.
fn stale(st: &QueueState) -> bool {
    st.items.front().is_some_and(|i| {
        let limit = if i.taken.is_some() {
            DELIVER_WAIT
        } else {
            STUCK_AFTER
        };
        i.at.elapsed() > limit
    })
}

/// Cuts a front end off: its queue is dropped at once (messages in it count as not taken).
fn cut(st: &mut QueueState, extra: u64) {
    if st.closed {
        return;
    }
    st.lagged = Some(st.items.len() as u64 + extra);
    st.items.clear();
    st.closed = true;
}

/// Every front end of the agent.
#[derive(Debug, Default)]
pub(crate) struct FrontEnds {
    list: Mutex<Vec<Arc<Queue>>>,
    next_id: AtomicU64,
}

impl FrontEnds {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<Queue>>> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new front end, or `None` if [`MAX_FRONT_ENDS`] are attached.
    pub(crate) fn attach(self: &Arc<Self>) -> Option<Subscription> {
        let mut list = self.lock();
        list.retain(|q| !q.lock().closed);
        if list.len() >= MAX_FRONT_ENDS {
            return None;
        }
        let queue = Arc::new(Queue {
            id: FrontEndId(self.next_id.fetch_add(1, Ordering::Relaxed)),
            state: Mutex::new(QueueState::default()),
            notify: Notify::new(),
            ended: CancellationToken::new(),
        });
        list.push(queue.clone());
        Some(Subscription {
            queue,
            front_ends: self.clone(),
            ended: false,
        })
    }

    fn detach(&self, id: FrontEndId) {
        self.lock().retain(|q| q.id != id);
    }

    fn snapshot(&self, except: Option<FrontEndId>) -> Vec<Arc<Queue>> {
        let mut list = self.lock();
        list.retain(|q| !q.lock().closed);
        list.iter()
            .filter(|q| Some(q.id) != except)
            .cloned()
            .collect()
    }

    /// Hands an event to every front end (but `except`), without waiting; returns to how
    /// many. A stuck front end is cut off instead.
    pub(crate) fn send_except(&self, event: Event, except: Option<FrontEndId>) -> usize {
        let event = Arc::new(event);
        self.snapshot(except)
            .into_iter()
            .filter(|q| {
                q.push(Item {
                    event: event.clone(),
                    at: Instant::now(),
                    taken: None,
                })
            })
            .count()
    }

    /// Hands an event to every front end, without waiting; returns to how many.
    pub(crate) fn send(&self, event: Event) -> usize {
        self.send_except(event, None)
    }

    /// Hands a message to every front end and waits until at least one took it (see the
    /// module doc); returns how many took it (0: none is attached, or none took it within
    /// [`DELIVER_WAIT`]).
    pub(crate) async fn deliver(&self, event: Event) -> u32 {
        let event = Arc::new(event);
        let mut waits = FuturesUnordered::new();
        let mut pending: Vec<Arc<Queue>> = Vec::new();
        for q in self.snapshot(None) {
            let (tx, rx) = oneshot::channel();
            let queued = q.push(Item {
                event: event.clone(),
                at: Instant::now(),
                taken: Some(tx),
            });
            if queued {
                let id = q.id;
                pending.push(q);
                waits.push(async move { (id, rx.await.is_ok()) });
            }
        }
        drop(event);
        let deadline = tokio::time::sleep(DELIVER_WAIT);
        tokio::pin!(deadline);
        let mut grace: Option<tokio::time::Instant> = None;
        let mut taken = 0u32;
        loop {
            let grace_over = async {
                match grace {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                r = waits.next() => match r {
                    None => break,
                    Some((id, took)) => {
                        pending.retain(|q| q.id != id);
                        if took {
                            taken += 1;
                            grace.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
                        }
                    }
                },
                () = grace_over => {
                    // Acknowledged now (counting those that took it); the others get the
                    // rest of the wait, in the background, and are cut off if they let it
                    // pass: no queue holds a message beyond it.
                    if !pending.is_empty() {
                        let until = tokio::time::Instant::now() + DELIVER_WAIT;
                        tokio::spawn(async move {
                            let rest = async {
                                while let Some((id, _)) = waits.next().await {
                                    pending.retain(|q| q.id != id);
                                }
                            };
                            let _ = tokio::time::timeout_at(until, rest).await;
                            // Held the message for the whole wait without taking it: stuck.
                            for q in &pending {
                                q.cut();
                            }
                        });
                    }
                    break;
                }
                () = &mut deadline => {
                    // Held a message for the whole wait without taking it: stuck.
                    for q in &pending {
                        q.cut();
                    }
                    break;
                }
            }
        }
        taken
    }

    /// Ends every front end (the agent stops).
    pub(crate) fn close_all(&self) {
        for q in std::mem::take(&mut *self.lock()) {
            let mut st = q.lock();
            st.items.clear();
            st.closed = true;
            drop(st);
            q.notify.notify_one();
            q.ended.cancel();
        }
    }
}

/// A stream of the agent's events for one front end, from [`crate::AgentHandle::subscribe`].
///
/// Read it promptly: a subscription that does not take its events is cut off (it reads
/// [`Event::Lagged`], then `None`), and a message counts as shown on it only once
/// [`Subscription::next`] returned it. Dropping it detaches the front end.
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
    front_ends: Arc<FrontEnds>,
    ended: bool,
}

impl Subscription {
    /// Names this front end (for [`crate::SendOptions::front_end`]).
    pub fn id(&self) -> FrontEndId {
        self.queue.id
    }

    /// The next event; `None` once the subscription ended (after [`Event::Lagged`], or when
    /// the agent stopped). Cancel-safe: an event is gone from the queue only once returned.
    pub async fn next(&mut self) -> Option<Event> {
        match self.next_item().await? {
            Next::Item(item) => {
                if let Some(taken) = item.taken {
                    let _ = taken.send(());
                }
                Some(Arc::unwrap_or_clone(item.event))
            }
            Next::Lagged(missed) => Some(Event::Lagged { missed }),
            Next::Closed => None,
        }
    }

    /// The next queued item as is (the local API fires `taken` once the line is written).
    pub(crate) async fn next_item(&mut self) -> Option<Next> {
        if self.ended {
            return None;
        }
        let next = self.queue.next().await;
        if matches!(next, Next::Closed) {
            self.ended = true;
        }
        Some(next)
    }

    /// Resolves once this front end was cut off, or the agent stopped.
    pub(crate) fn ended(&self) -> WaitForCancellationFuture<'_> {
        self.queue.ended.cancelled()
    }

    /// Whether this front end was cut off, or the agent stopped.
    pub(crate) fn is_ended(&self) -> bool {
        self.queue.ended.is_cancelled()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.cut();
        self.front_ends.detach(self.queue.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any event stands in for a message here: what matters is how it is handed over.
    fn message() -> Event {
        Event::Lagged { missed: 7 }
    }

    #[tokio::test]
    async fn a_front_end_that_never_reads_does_not_keep_a_message_another_took() {
        let fe = Arc::new(FrontEnds::default());
        let mut reader = fe.attach().unwrap();
        let mut idle = fe.attach().unwrap();
        let read = tokio::spawn(async move {
            let got = reader.next().await;
            (reader, got)
        });
        // Acknowledged once the reader took it, without waiting for the idle one.
        assert_eq!(fe.deliver(message()).await, 1);
        let (_reader, got) = read.await.unwrap();
        assert!(matches!(got, Some(Event::Lagged { missed: 7 })));
        // The idle front end is given the rest of the wait, then cut off: when it comes back
        // to read it is told it lagged, not handed the old message.
        tokio::time::sleep(DELIVER_WAIT + Duration::from_secs(2)).await;
        assert!(idle.is_ended(), "the idle front end was not cut off");
        assert!(matches!(
            idle.next().await,
            Some(Event::Lagged { missed: 1 })
        ));
        assert!(idle.next().await.is_none());
    }

    #[tokio::test]
    async fn with_no_front_end_nobody_took_it() {
        let fe = Arc::new(FrontEnds::default());
        assert_eq!(fe.deliver(message()).await, 0);
    }
}
