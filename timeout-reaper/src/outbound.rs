//! The one loop of outbound messages (webhook deliveries, notifications):
//! claim what is due (`SKIP LOCKED`, held for the length of an attempt so
//! no other reaper sends it meanwhile), send each, and record it delivered,
//! to be retried on the schedule (`orq_shared::retry`), or DEAD. Attempts
//! are bounded in flight overall and per lane (a webhook's endpoint), so
//! one slow receiver never holds up the others; at shutdown the attempts in
//! flight finish (each is bounded by its timeout).

use orq_shared::CancellationToken;
use orq_shared::repo::RepoError;
use orq_shared::retry::{Retry, Schedule};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

/// How one attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    Delivered,
    /// Failed; tried again on the schedule, not before `retry_after`.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Failed for good (a webhook's `410 Gone`).
    Refused {
        error: String,
    },
}

impl Sent {
    pub fn error(&self) -> Option<&str> {
        match self {
            Sent::Delivered => None,
            Sent::Failed { error, .. } | Sent::Refused { error } => Some(error),
        }
    }
}

/// What becomes of a message after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Pending again, for another attempt after this wait.
    RetryIn(Duration),
    Dead,
}

/// The verdict on attempt `attempt` (as the schedule counts them, 1-based).
pub fn verdict(sent: &Sent, attempt: u32, schedule: &Schedule, jitter: f64) -> Verdict {
    match sent {
        Sent::Delivered => Verdict::Delivered,
        Sent::Refused { .. } => Verdict::Dead,
        Sent::Failed { retry_after, .. } => {
            match schedule.next_attempt(attempt, *retry_after, jitter) {
                Retry::In(wait) => Verdict::RetryIn(wait),
                Retry::Dead => Verdict::Dead,
            }
        }
    }
}

/// A kind of outbound message.
pub trait Outbound: Send + Sync + 'static {
    type Item: Send + 'static;
    /// What an attempt learnt beside its verdict (a status code, its
    /// timing), for `record`.
    type Report: Send;

    /// Names the kind in logs.
    const NAME: &'static str;

    /// Before each claim: makes what is due (webhooks form deliveries from
    /// the outbox).
    fn prepare(&self) -> impl Future<Output = Result<(), RepoError>> + Send {
        async { Ok(()) }
    }

    /// Claims up to `limit` due messages, at most `per_lane` of one lane
    /// and none of a `busy` lane.
    fn claim(
        &self,
        limit: usize,
        per_lane: usize,
        busy: &[Uuid],
    ) -> impl Future<Output = Result<Vec<Self::Item>, RepoError>> + Send;

    /// How long until the next message of a lane not `busy` is due, when
    /// one is pending: the loop sleeps that long at most, so a retry goes
    /// out on its schedule rather than at the next idle tick.
    fn next_due(
        &self,
        _busy: &[Uuid],
    ) -> impl Future<Output = Result<Option<Duration>, RepoError>> + Send {
        async { Ok(None) }
    }

    /// Gives back messages claimed but not attempted now.
    fn release(&self, items: Vec<Self::Item>)
    -> impl Future<Output = Result<(), RepoError>> + Send;

    /// The lane a message's attempts are bounded in; `None`: only the
    /// overall bound applies.
    fn lane(item: &Self::Item) -> Option<Uuid>;

    /// The attempt about to be made, as the schedule counts (1-based).
    fn attempt(item: &Self::Item) -> u32;

    fn send(&self, item: &Self::Item) -> impl Future<Output = (Sent, Self::Report)> + Send;

    /// Records an attempt and its verdict.
    fn record(
        &self,
        item: Self::Item,
        sent: Sent,
        report: Self::Report,
        verdict: Verdict,
    ) -> impl Future<Output = Result<(), RepoError>> + Send;
}

/// How hard the loop sends.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Most attempts in flight from one reaper.
    pub in_flight: usize,
    /// Most attempts in flight in one lane.
    pub per_lane: usize,
    /// How long to wait for more when nothing is due (an attempt that ends,
    /// a message coming due or `wake` wakes the loop sooner): the safety net.
    pub idle: Duration,
    pub schedule: Schedule,
    /// Woken when new messages may be due (PostgreSQL NOTIFY).
    pub wake: Option<Arc<Notify>>,
}

/// The shortest sleep between two looks: a message due "now" that cannot
/// be claimed yet (locked by another reaper) is not spun on.
const MIN_SLEEP: Duration = Duration::from_millis(5);

/// Attempts in flight from this reaper.
#[derive(Default)]
struct Flight {
    slots: Mutex<Slots>,
    /// Woken when an attempt ends (a slot is free).
    done: Notify,
}

#[derive(Default)]
struct Slots {
    total: usize,
    lanes: HashMap<Uuid, usize>,
}

/// Claims and sends until shutdown, then lets the attempts in flight end.
pub async fn run<K: Outbound>(kind: Arc<K>, pace: Pace, shutdown: CancellationToken) {
    let pace = Arc::new(pace);
    let flight = Arc::new(Flight::default());
    let tracker = TaskTracker::new();
    let never = Notify::new();
    let wake = pace.wake.clone();
    let woken = wake.as_deref().unwrap_or(&never);
    loop {
        if let Err(e) = kind.prepare().await {
            tracing::warn!(error = %e, kind = K::NAME, "preparing outbound messages failed; will retry");
        }
        let mut sleep = pace.idle;
        match dispatch(&kind, &pace, &flight, &tracker).await {
            Ok(n) if n > 0 && !shutdown.is_cancelled() => continue,
            Ok(_) => {
                // With a free slot, sleep no longer than the next message
                // is due; with none, an attempt's end wakes the loop.
                if let Some((_, busy)) = flight.room(pace.in_flight, pace.per_lane.max(1)) {
                    match kind.next_due(&busy).await {
                        Ok(Some(due)) => sleep = sleep.min(due).max(MIN_SLEEP),
                        Ok(None) => {}
                        Err(e) => tracing::debug!(error = %e, kind = K::NAME, "next due not read"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = K::NAME, "claiming outbound messages failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = flight.done.notified() => {}
            _ = woken.notified() => {}
            _ = shutdown.cancelled() => break,
        }
    }
    tracker.close();
    tracker.wait().await;
}

impl Flight {
    /// How many more attempts may start, and the lanes at their bound;
    /// `None` when none may.
    fn room(&self, in_flight: usize, per_lane: usize) -> Option<(usize, Vec<Uuid>)> {
        let slots = self.slots.lock().ok()?;
        let room = in_flight.saturating_sub(slots.total);
        (room > 0).then(|| {
            let busy = slots
                .lanes
                .iter()
                .filter(|(_, n)| **n >= per_lane)
                .map(|(lane, _)| *lane)
                .collect();
            (room, busy)
        })
    }
}

/// Claims due messages for lanes with a free slot and starts their
/// attempts; returns how many started.
async fn dispatch<K: Outbound>(
    kind: &Arc<K>,
    pace: &Arc<Pace>,
    flight: &Arc<Flight>,
    tracker: &TaskTracker,
) -> Result<usize, RepoError> {
    let per_lane = pace.per_lane.max(1);
    let Some((room, busy)) = flight.room(pace.in_flight, per_lane) else {
        return Ok(0);
    };
    let claimed = kind.claim(room, per_lane, &busy).await?;
    let mut started = 0;
    let mut release = Vec::new();
    for item in claimed {
        let lane = K::lane(&item);
        let admitted = {
            let mut slots = flight.slots.lock().map_err(|_| poisoned())?;
            let full = lane.is_some_and(|l| slots.lanes.get(&l).is_some_and(|n| *n >= per_lane));
            if !full {
                slots.total += 1;
                if let Some(l) = lane {
                    *slots.lanes.entry(l).or_insert(0) += 1;
                }
            }
            !full
        };
        if !admitted {
            release.push(item);
            continue;
        }
        started += 1;
        let (kind, pace, flight) = (kind.clone(), pace.clone(), flight.clone());
        tracker.spawn(async move {
            if let Err(e) = attempt(&*kind, item, &pace.schedule).await {
                tracing::warn!(error = %e, kind = K::NAME, "recording an attempt failed; it will be retried");
            }
            if let Ok(mut slots) = flight.slots.lock() {
                slots.total = slots.total.saturating_sub(1);
                if let Some(l) = lane
                    && let Some(n) = slots.lanes.get_mut(&l)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        slots.lanes.remove(&l);
                    }
                }
            }
            flight.done.notify_one();
        });
    }
    if !release.is_empty() {
        kind.release(release).await?;
    }
    Ok(started)
}

/// One attempt of one message, and its record.
async fn attempt<K: Outbound>(
    kind: &K,
    item: K::Item,
    schedule: &Schedule,
) -> Result<(), RepoError> {
    let (sent, report) = kind.send(&item).await;
    let verdict = verdict(
        &sent,
        K::attempt(&item),
        schedule,
        orq_shared::retry::jitter(),
    );
    kind.record(item, sent, report, verdict).await
}

fn poisoned() -> RepoError {
    RepoError::Corrupt("a lock was poisoned".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(retry_after: Option<Duration>) -> Sent {
        Sent::Failed {
            error: "HTTP 500".into(),
            retry_after,
        }
    }

    #[test]
    fn a_delivery_ends_and_a_refusal_is_dead_at_once() {
        let schedule = Schedule::from_ms(&[5000]);
        assert_eq!(
            verdict(&Sent::Delivered, 1, &schedule, 0.0),
            Verdict::Delivered
        );
        let gone = Sent::Refused {
            error: "HTTP 410 Gone".into(),
        };
        assert_eq!(verdict(&gone, 1, &schedule, 0.0), Verdict::Dead);
    }

    #[test]
    fn a_failure_follows_the_schedule_then_dies() {
        let schedule = Schedule::from_ms(&[5000, 60_000]);
        let wait = |s| Verdict::RetryIn(Duration::from_secs(s));
        assert_eq!(verdict(&failed(None), 1, &schedule, 0.0), wait(5));
        assert_eq!(verdict(&failed(None), 2, &schedule, 1.0), wait(72));
        assert_eq!(
            verdict(&failed(Some(Duration::from_secs(30))), 1, &schedule, 0.0),
            wait(30)
        );
        assert_eq!(verdict(&failed(None), 3, &schedule, 0.0), Verdict::Dead);
    }
}
