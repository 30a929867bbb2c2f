//! The one loop of outbound messages (webhook deliveries, notifications):
//! claim what is due (`SKIP LOCKED`, held for the length of an attempt so
//! no other reaper sends it meanwhile), send each, and record it delivered,
//! to be retried on the schedule (`orq_shared::retry`), or DEAD.
//!
//! * Attempts are bounded in flight overall and per lane (a webhook's
//!   endpoint), so one slow receiver never holds up the others.
//! * A lane may hold a few messages claimed beyond those in flight
//!   (`Pace::prefetch`), so a freed slot starts the next at once, without a
//!   claim in between; a claimed message that waited too long
//!   (`Pace::fresh_for`, well inside its claim) is given back unsent.
//! * Attempts are recorded by one recorder, in batches of those that ended
//!   about together (one transaction each), off the senders' path.
//! * At shutdown the attempts in flight finish (each is bounded by its
//!   timeout) and are recorded; messages claimed but not started are given
//!   back.

use orq_shared::CancellationToken;
use orq_shared::repo::RepoError;
use orq_shared::retry::{Retry, Schedule};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
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

/// An attempt made, waiting to be recorded.
pub struct Done<I, R> {
    pub item: I,
    pub sent: Sent,
    /// What the attempt learnt beside its verdict.
    pub report: R,
    pub verdict: Verdict,
}

/// A kind of outbound message.
pub trait Outbound: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    /// What an attempt learnt beside its verdict (a status code, its
    /// timing), for `record`.
    type Report: Send + Sync + 'static;

    /// Names the kind in logs.
    const NAME: &'static str;

    /// Before a claim: makes what is due (webhooks form deliveries from
    /// the outbox); `true` when there may be more to make (the loop looks
    /// again at once).
    fn prepare(&self) -> impl Future<Output = Result<bool, RepoError>> + Send {
        async { Ok(false) }
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

    /// Gives back messages claimed but not attempted.
    fn release(&self, items: Vec<Self::Item>)
    -> impl Future<Output = Result<(), RepoError>> + Send;

    /// The lane a message's attempts are bounded in; `None`: only the
    /// overall bound applies.
    fn lane(item: &Self::Item) -> Option<Uuid>;

    /// The attempt about to be made, as the schedule counts (1-based).
    fn attempt(item: &Self::Item) -> u32;

    fn send(&self, item: &Self::Item) -> impl Future<Output = (Sent, Self::Report)> + Send;

    /// Records attempts and their verdicts: those that ended about
    /// together, in one go where the kind can.
    fn record(
        &self,
        done: &[Done<Self::Item, Self::Report>],
    ) -> impl Future<Output = Result<(), RepoError>> + Send;
}

/// How hard the loop sends.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Most attempts in flight from one reaper.
    pub in_flight: usize,
    /// Most attempts in flight in one lane.
    pub per_lane: usize,
    /// Messages a lane may hold claimed beyond those in flight (0: claim
    /// only what can start now). Over all lanes at most `in_flight`.
    pub prefetch: usize,
    /// A message claimed this long ago and not started yet is given back
    /// unsent: well inside its claim, so no other reaper sends it while
    /// this one still holds it.
    pub fresh_for: Duration,
    /// How long to wait for more when nothing is due (an attempt that ends,
    /// a message coming due or `wake` wakes the loop sooner): the safety net.
    pub idle: Duration,
    pub schedule: Schedule,
    /// Woken when new messages may be due (PostgreSQL NOTIFY).
    pub wake: Option<Arc<Notify>>,
}

impl Pace {
    /// Most messages of one lane claimed here at once.
    fn lane_cap(&self) -> usize {
        self.per_lane.max(1) + self.prefetch
    }

    /// A lane holding this many or more is not claimed for: it has enough
    /// ready (half its prefetch) or in flight.
    fn lane_full(&self) -> usize {
        self.per_lane.max(1) + self.prefetch / 2
    }

    /// Most messages claimed here at once.
    fn total_cap(&self) -> usize {
        self.in_flight.max(1) + self.prefetch.min(self.in_flight)
    }
}

/// The shortest sleep between two looks: a message due "now" that cannot
/// be claimed yet (locked by another reaper) is not spun on.
const MIN_SLEEP: Duration = Duration::from_millis(5);

/// After attempts are recorded, the next look (forming, claiming) waits at
/// least this long since the last: one look serves many records.
const LOOK_GAP: Duration = Duration::from_millis(5);

/// Most attempts recorded in one transaction.
const RECORD_BATCH: usize = 256;

/// Attempts in flight from this reaper.
#[derive(Default)]
struct Flight {
    slots: Mutex<Slots>,
    /// Woken when an attempt ends (a slot is free).
    done: Notify,
    /// Woken when attempts were recorded (a job's next events may be
    /// formed; a retry is scheduled).
    recorded: Notify,
}

#[derive(Default)]
struct Slots {
    total: usize,
    lanes: HashMap<Uuid, usize>,
}

impl Flight {
    fn in_flight(&self) -> (usize, HashMap<Uuid, usize>) {
        self.slots
            .lock()
            .map(|s| (s.total, s.lanes.clone()))
            .unwrap_or_default()
    }

    fn take(&self, lane: Option<Uuid>) {
        if let Ok(mut slots) = self.slots.lock() {
            slots.total += 1;
            if let Some(l) = lane {
                *slots.lanes.entry(l).or_insert(0) += 1;
            }
        }
    }

    fn free(&self, lane: Option<Uuid>) {
        if let Ok(mut slots) = self.slots.lock() {
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
        self.done.notify_one();
    }
}

/// Messages claimed and not started yet, by lane, oldest claim first.
struct Ready<I> {
    lanes: HashMap<Option<Uuid>, VecDeque<(I, Instant)>>,
}

impl<I> Default for Ready<I> {
    fn default() -> Self {
        Ready {
            lanes: HashMap::new(),
        }
    }
}

impl<I> Ready<I> {
    fn len(&self) -> usize {
        self.lanes.values().map(VecDeque::len).sum()
    }

    fn in_lane(&self, lane: Option<Uuid>) -> usize {
        self.lanes.get(&lane).map_or(0, VecDeque::len)
    }

    /// What `lane` holds here: in flight (`in_flight`, by lane) and ready.
    fn held(&self, in_flight: &HashMap<Uuid, usize>, lane: Uuid) -> usize {
        in_flight.get(&lane).copied().unwrap_or(0) + self.in_lane(Some(lane))
    }

    fn push(&mut self, lane: Option<Uuid>, item: I) {
        self.lanes
            .entry(lane)
            .or_default()
            .push_back((item, Instant::now()));
    }

    /// Takes out what was claimed longer ago than `fresh_for`.
    fn stale(&mut self, fresh_for: Duration) -> Vec<I> {
        let mut old = Vec::new();
        for queue in self.lanes.values_mut() {
            while queue
                .front()
                .is_some_and(|(_, at)| at.elapsed() > fresh_for)
            {
                if let Some((item, _)) = queue.pop_front() {
                    old.push(item);
                }
            }
        }
        self.lanes.retain(|_, q| !q.is_empty());
        old
    }

    fn drain(&mut self) -> Vec<I> {
        self.lanes
            .drain()
            .flat_map(|(_, q)| q.into_iter().map(|(item, _)| item))
            .collect()
    }
}

/// Claims and sends until shutdown, then lets the attempts in flight end
/// and be recorded.
pub async fn run<K: Outbound>(kind: Arc<K>, pace: Pace, shutdown: CancellationToken) {
    let pace = Arc::new(pace);
    let flight = Arc::new(Flight::default());
    let tracker = TaskTracker::new();
    let wake = pace.wake.clone().unwrap_or_default();
    let (to_record, records) = mpsc::channel(pace.in_flight.max(1));
    let recorder = tokio::spawn(record_all(kind.clone(), records, flight.clone()));
    let mut ready = Ready::default();
    // A look forms and claims, then reads when the next message is due:
    // now (`look`), once LOOK_GAP has passed since the last (`look_later`,
    // after records), or at `next_look` (the next due message, or the idle
    // tick). Between looks, an ended attempt only starts what is ready, and
    // claims when its lane runs low: no statement per attempt.
    let mut look = true;
    let mut look_later = false;
    let mut last_look = Instant::now();
    let mut next_look = last_look + pace.idle;
    loop {
        let now = Instant::now();
        if now >= next_look || (look_later && now >= last_look + LOOK_GAP) {
            look = true;
        }
        let looking = look;
        let mut claimed = 0;
        if looking || wants_more(&pace, &flight, &ready) {
            if looking {
                (look, look_later) = (false, false);
                match kind.prepare().await {
                    Ok(more) => look = more,
                    Err(e) => {
                        tracing::warn!(error = %e, kind = K::NAME, "preparing outbound messages failed; will retry")
                    }
                }
                last_look = Instant::now();
                next_look = last_look + pace.idle;
            }
            match claim(&*kind, &pace, &flight, &mut ready).await {
                Ok(n) => claimed = n,
                Err(e) => {
                    tracing::warn!(error = %e, kind = K::NAME, "claiming outbound messages failed")
                }
            }
        }
        let stale = ready.stale(pace.fresh_for);
        if !stale.is_empty() {
            tracing::debug!(
                n = stale.len(),
                kind = K::NAME,
                "claimed messages waited too long; given back"
            );
            if let Err(e) = kind.release(stale).await {
                tracing::warn!(error = %e, kind = K::NAME, "giving messages back failed; their claims run out");
            }
        }
        start(&kind, &pace, &flight, &mut ready, &tracker, &to_record);
        if (claimed > 0 || look) && !shutdown.is_cancelled() {
            look |= looking;
            continue;
        }
        if looking {
            // Look again no later than the next message (of a lane with
            // room) is due: a retry goes out on its schedule.
            let (_, lanes) = flight.in_flight();
            match kind.next_due(&busy(&pace, &lanes, &ready)).await {
                Ok(Some(due)) => next_look = next_look.min(Instant::now() + due.max(MIN_SLEEP)),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, kind = K::NAME, "next due not read"),
            }
        }
        let until = if look_later {
            next_look.min(last_look + LOOK_GAP)
        } else {
            next_look
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {}
            _ = flight.done.notified() => {}
            _ = flight.recorded.notified() => look_later = true,
            _ = wake.notified() => look = true,
            _ = shutdown.cancelled() => break,
        }
    }
    let unsent = ready.drain();
    if !unsent.is_empty()
        && let Err(e) = kind.release(unsent).await
    {
        tracing::warn!(error = %e, kind = K::NAME, "giving messages back failed; their claims run out");
    }
    tracker.close();
    tracker.wait().await;
    drop(to_record);
    let _ = recorder.await;
}

/// Lanes not to claim for: those holding `lane_full` or more here.
fn busy<I>(pace: &Pace, in_flight: &HashMap<Uuid, usize>, ready: &Ready<I>) -> Vec<Uuid> {
    let lanes: std::collections::HashSet<Uuid> = in_flight
        .keys()
        .copied()
        .chain(ready.lanes.keys().flatten().copied())
        .collect();
    lanes
        .into_iter()
        .filter(|l| ready.held(in_flight, *l) >= pace.lane_full())
        .collect()
}

/// Whether to claim after an attempt ended: there is room, and nothing is
/// ready, or a lane with attempts in flight holds less than `lane_full`
/// (the lanes `busy` leaves out hold more: claiming for them is no use).
fn wants_more<I>(pace: &Pace, flight: &Flight, ready: &Ready<I>) -> bool {
    let (total, lanes) = flight.in_flight();
    if total + ready.len() >= pace.total_cap() {
        return false;
    }
    ready.len() == 0
        || lanes
            .keys()
            .any(|l| ready.held(&lanes, *l) < pace.lane_full())
}

/// Claims due messages for lanes with room; returns how many it kept.
async fn claim<K: Outbound>(
    kind: &K,
    pace: &Pace,
    flight: &Flight,
    ready: &mut Ready<K::Item>,
) -> Result<usize, RepoError> {
    let (total, lanes) = flight.in_flight();
    let room = pace.total_cap().saturating_sub(total + ready.len());
    if room == 0 {
        return Ok(0);
    }
    let busy = busy(pace, &lanes, ready);
    // A lane not busy holds less than `lane_full`: this many more keep it
    // within `lane_cap` (what is claimed beyond is given back).
    let per_lane = (pace.lane_cap() + 1)
        .saturating_sub(pace.lane_full())
        .max(pace.per_lane.max(1));
    let claimed = kind.claim(room, per_lane, &busy).await?;
    let mut kept = 0;
    let mut release = Vec::new();
    for item in claimed {
        let lane = K::lane(&item);
        if lane.is_some_and(|l| ready.held(&lanes, l) >= pace.lane_cap()) {
            release.push(item);
        } else {
            ready.push(lane, item);
            kept += 1;
        }
    }
    if !release.is_empty() {
        kind.release(release).await?;
    }
    Ok(kept)
}

/// Starts attempts of ready messages, within the bounds.
fn start<K: Outbound>(
    kind: &Arc<K>,
    pace: &Arc<Pace>,
    flight: &Arc<Flight>,
    ready: &mut Ready<K::Item>,
    tracker: &TaskTracker,
    to_record: &mpsc::Sender<Done<K::Item, K::Report>>,
) {
    let (mut total, lanes) = flight.in_flight();
    for (lane, queue) in ready.lanes.iter_mut() {
        let mut busy = lane.map_or(0, |l| lanes.get(&l).copied().unwrap_or(0));
        while total < pace.in_flight.max(1) && busy < pace.per_lane.max(1) {
            let Some((item, _)) = queue.pop_front() else {
                break;
            };
            total += 1;
            busy += 1;
            let lane = *lane;
            flight.take(lane);
            let (kind, pace, flight, to_record) = (
                kind.clone(),
                pace.clone(),
                flight.clone(),
                to_record.clone(),
            );
            tracker.spawn(async move {
                let (sent, report) = kind.send(&item).await;
                let verdict = verdict(
                    &sent,
                    K::attempt(&item),
                    &pace.schedule,
                    orq_shared::retry::jitter(),
                );
                let done = Done {
                    item,
                    sent,
                    report,
                    verdict,
                };
                // The slot stays taken until the recorder has the attempt:
                // a slow database slows sending, not the other way round.
                if to_record.send(done).await.is_err() {
                    tracing::warn!(
                        kind = K::NAME,
                        "an attempt was not recorded: the recorder stopped"
                    );
                }
                flight.free(lane);
            });
        }
    }
    ready.lanes.retain(|_, q| !q.is_empty());
}

/// Records attempts as they end, in batches, until every sender is gone.
/// A batch that cannot be recorded is tried again a few times; after that
/// its messages stay claimed until their claims run out, and are sent
/// again (at least once).
async fn record_all<K: Outbound>(
    kind: Arc<K>,
    mut records: mpsc::Receiver<Done<K::Item, K::Report>>,
    flight: Arc<Flight>,
) {
    let mut batch = Vec::with_capacity(RECORD_BATCH);
    while records.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut delay = Duration::from_millis(100);
        for tries in 1.. {
            match kind.record(&batch).await {
                Ok(()) => break,
                Err(e) if tries < 4 => {
                    tracing::warn!(error = %e, kind = K::NAME, tries, "recording attempts failed; will retry");
                    tokio::time::sleep(delay).await;
                    delay *= 4;
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = K::NAME, "recording attempts failed; they will be sent again once their claims run out");
                    break;
                }
            }
        }
        batch.clear();
        flight.recorded.notify_one();
    }
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

    fn pace(per_lane: usize, prefetch: usize) -> Pace {
        Pace {
            in_flight: 256,
            per_lane,
            prefetch,
            fresh_for: Duration::from_secs(20),
            idle: Duration::from_secs(1),
            schedule: Schedule::from_ms(&[5000]),
            wake: None,
        }
    }

    #[test]
    fn a_lane_is_claimed_for_until_half_its_prefetch_is_ready() {
        let pace = pace(4, 64);
        let (fast, slow) = (Uuid::now_v7(), Uuid::now_v7());
        let mut ready = Ready::default();
        for i in 0..40 {
            ready.push(Some(fast), i);
        }
        // The slow lane has its four in flight and nothing ready.
        let in_flight = HashMap::from([(slow, 4), (fast, 4)]);
        assert_eq!(pace.lane_cap(), 68);
        assert_eq!(busy(&pace, &in_flight, &ready), [fast], "44 held >= 36");
        let mut less = Ready::default();
        less.push(Some(fast), 0);
        assert!(busy(&pace, &in_flight, &less).is_empty());
        // Without prefetch a lane is busy once its slots are taken.
        let bare = self::pace(4, 0);
        let mut both = busy(&bare, &in_flight, &Ready::<u8>::default());
        both.sort();
        let mut want = vec![fast, slow];
        want.sort();
        assert_eq!(both, want);
        assert_eq!(bare.total_cap(), 256, "claims only what can start");
    }

    #[test]
    fn an_ended_attempt_claims_only_when_its_lane_runs_low() {
        let pace = pace(4, 64);
        let lane = Uuid::now_v7();
        let flight = Flight::default();
        for _ in 0..4 {
            flight.take(Some(lane));
        }
        let mut ready = Ready::default();
        for i in 0..32 {
            ready.push(Some(lane), i);
        }
        assert!(!wants_more(&pace, &flight, &ready), "36 held: enough");
        let mut low = Ready::default();
        low.push(Some(lane), 0);
        assert!(wants_more(&pace, &flight, &low), "5 held: low");
        let idle = Flight::default();
        assert!(
            wants_more(&pace, &idle, &Ready::<u8>::default()),
            "nothing ready"
        );
    }

    #[test]
    fn a_claim_that_waited_too_long_is_given_back_unsent() {
        let mut ready = Ready::default();
        let lane = Some(Uuid::now_v7());
        ready.push(lane, 1);
        ready.push(None, 2);
        assert!(ready.stale(Duration::from_secs(20)).is_empty());
        assert_eq!(ready.len(), 2);
        std::thread::sleep(Duration::from_millis(5));
        let mut old = ready.stale(Duration::from_millis(1));
        old.sort();
        assert_eq!(old, [1, 2]);
        assert_eq!(ready.len(), 0);
        assert!(ready.lanes.is_empty());
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
