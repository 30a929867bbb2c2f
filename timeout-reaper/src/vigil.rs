//! When may the reaper call an agent lost? Only on evidence, and only while
//! it can see. Pure decisions, fed by the reaper's loops.
//!
//! * **Silence** (no heartbeat for a window) is evidence only if the path
//!   heartbeats travel — RabbitMQ, a dispatcher, PostgreSQL — carried the
//!   reaper's own canary meanwhile. The cutoff is taken from the newest
//!   canary that came back, not from the clock: every heartbeat sent before
//!   that canary was applied before it. And not while the reaper's own
//!   database or broker link is down, nor within a grace after either (or
//!   the canaries) came back: agents need that long to be heard again —
//!   one silence window, or their reconnect backoff plus a heartbeat if
//!   that is longer.
//! * **Absence** from the broker (the agent's exclusive presence queue is
//!   gone: its connection closed, or RabbitMQ lost it for two AMQP
//!   heartbeats) is evidence once it lasts `absence`, for an agent this
//!   reaper saw present before, while its links have been up for the grace.

use std::collections::{HashMap, HashSet};
use time::{Duration, OffsetDateTime};

use orq_shared::domain::BotId;

/// The reaper's time rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Silence longer than this is loss (heartbeat interval × missed).
    pub window: Duration,
    /// How long after its links or the canaries come back the reaper waits
    /// before judging: at least `window`.
    pub grace: Duration,
}

impl Rules {
    /// `grace` is the larger of the window and an agent's longest
    /// reconnect backoff plus one heartbeat.
    pub fn new(window: Duration, reconnect_max: Duration, heartbeat: Duration) -> Rules {
        Rules {
            window,
            grace: window.max(reconnect_max + heartbeat),
        }
    }
}

/// What the reaper can see now.
#[derive(Debug, Clone, Default)]
pub struct Sight {
    /// Since when its broker connection has been up (the same connection).
    pub broker_up_since: Option<OffsetDateTime>,
    broker_generation: Option<u64>,
    /// Since when its database work has been succeeding.
    pub db_up_since: Option<OffsetDateTime>,
    /// When the newest of its canaries that came back was sent.
    pub canary_back: Option<OffsetDateTime>,
    /// Since when canaries have been coming back in time.
    pub path_up_since: Option<OffsetDateTime>,
}

/// Why the reaper does not judge silence now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blind {
    BrokerDown,
    BrokerJustBack,
    DatabaseDown,
    DatabaseJustBack,
    /// No canary came back yet, or the last one is older than the stall bound.
    PathStalled,
    PathJustBack,
}

impl Blind {
    pub fn as_str(self) -> &'static str {
        match self {
            Blind::BrokerDown => "broker_down",
            Blind::BrokerJustBack => "broker_just_back",
            Blind::DatabaseDown => "database_down",
            Blind::DatabaseJustBack => "database_just_back",
            Blind::PathStalled => "path_stalled",
            Blind::PathJustBack => "path_just_back",
        }
    }
}

impl Sight {
    /// The broker link now: its connection's generation when connected.
    pub fn broker(&mut self, now: OffsetDateTime, generation: Option<u64>) {
        match generation {
            Some(g) if self.broker_generation == Some(g) => {}
            Some(g) => {
                self.broker_generation = Some(g);
                self.broker_up_since = Some(now);
            }
            None => {
                self.broker_generation = None;
                self.broker_up_since = None;
            }
        }
    }

    /// A database round trip worked (`true`) or failed.
    pub fn database(&mut self, now: OffsetDateTime, ok: bool) {
        if !ok {
            self.db_up_since = None;
        } else if self.db_up_since.is_none() {
            self.db_up_since = Some(now);
        }
    }

    /// The newest canary back (as read from the database), judged against
    /// `stall`: a path that took longer is stalled.
    pub fn canary(&mut self, now: OffsetDateTime, back: Option<OffsetDateTime>, stall: Duration) {
        self.canary_back = back;
        let fresh = back.is_some_and(|sent| now - sent <= stall);
        if !fresh {
            self.path_up_since = None;
        } else if self.path_up_since.is_none() {
            self.path_up_since = Some(now);
        }
    }

    fn up_for(since: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<Duration> {
        since.map(|s| now - s)
    }

    /// Whether the broker and database links have both been up `grace`.
    fn links(&self, now: OffsetDateTime, grace: Duration) -> Result<(), Blind> {
        match Self::up_for(self.broker_up_since, now) {
            None => return Err(Blind::BrokerDown),
            Some(d) if d < grace => return Err(Blind::BrokerJustBack),
            _ => {}
        }
        match Self::up_for(self.db_up_since, now) {
            None => Err(Blind::DatabaseDown),
            Some(d) if d < grace => Err(Blind::DatabaseJustBack),
            _ => Ok(()),
        }
    }

    /// The heartbeat cutoff: an agent whose last heartbeat is older is
    /// silent.
    pub fn silence_cutoff(
        &self,
        now: OffsetDateTime,
        rules: Rules,
    ) -> Result<OffsetDateTime, Blind> {
        self.links(now, rules.grace)?;
        let back = self.canary_back.ok_or(Blind::PathStalled)?;
        match Self::up_for(self.path_up_since, now) {
            None => Err(Blind::PathStalled),
            Some(d) if d < rules.grace => Err(Blind::PathJustBack),
            Some(_) => Ok(back.min(now) - rules.window),
        }
    }

    /// Whether absence from the broker counts now.
    pub fn absence_counts(&self, now: OffsetDateTime, rules: Rules) -> Result<(), Blind> {
        self.links(now, rules.grace)
    }
}

/// Agents seen present, and since when those now absent have been.
#[derive(Debug, Default)]
pub struct Absences {
    seen: HashSet<BotId>,
    absent_since: HashMap<BotId, OffsetDateTime>,
}

impl Absences {
    /// One look at `bot`: present or not.
    pub fn observe(&mut self, bot: BotId, present: bool, now: OffsetDateTime) {
        if present {
            self.seen.insert(bot);
            self.absent_since.remove(&bot);
        } else if self.seen.contains(&bot) {
            self.absent_since.entry(bot).or_insert(now);
        }
    }

    /// Keeps only the bots still watched (the others were judged, removed
    /// or are known unavailable).
    pub fn retain(&mut self, watched: &HashSet<BotId>) {
        self.seen.retain(|b| watched.contains(b));
        self.absent_since.retain(|b, _| watched.contains(b));
    }

    /// Forgets everything (the reaper cannot see: start over).
    pub fn clear(&mut self) {
        self.seen.clear();
        self.absent_since.clear();
    }

    /// Bots absent for `absence` or more.
    pub fn lost(&self, now: OffsetDateTime, absence: Duration) -> Vec<BotId> {
        let mut lost: Vec<BotId> = self
            .absent_since
            .iter()
            .filter(|(_, since)| now - **since >= absence)
            .map(|(b, _)| *b)
            .collect();
        lost.sort_by_key(|b| b.0);
        lost
    }

    /// A judged bot starts over (it must be seen present again).
    pub fn forget(&mut self, bot: BotId) {
        self.seen.remove(&bot);
        self.absent_since.remove(&bot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::seconds(12);
    const STALL: Duration = Duration::seconds(3);
    const RULES: Rules = Rules {
        window: WINDOW,
        grace: WINDOW,
    };

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::seconds(1_000_000 + s)
    }

    /// A reaper that has seen everything working since `since`, with a
    /// canary back from `canary`.
    fn healthy(since: i64, canary: i64) -> Sight {
        let mut s = Sight::default();
        s.broker(t(since), Some(1));
        s.database(t(since), true);
        s.canary(t(since), Some(t(since)), STALL);
        s.canary(t(canary), Some(t(canary)), STALL);
        s
    }

    #[test]
    fn the_grace_covers_an_agents_reconnect_backoff_when_it_is_longer() {
        let r = Rules::new(
            Duration::seconds(3),
            Duration::seconds(5),
            Duration::seconds(1),
        );
        assert_eq!(r.grace, Duration::seconds(6));
        assert_eq!(r.window, Duration::seconds(3));
        let r = Rules::new(WINDOW, Duration::seconds(5), Duration::seconds(4));
        assert_eq!(r.grace, WINDOW);
        // After an outage the agents' backoff is the bound, not the window.
        let mut s = healthy(0, 100);
        s.broker(t(101), None);
        s.broker(t(110), Some(2));
        let short = Rules::new(
            Duration::seconds(3),
            Duration::seconds(5),
            Duration::seconds(1),
        );
        s.canary(t(114), Some(t(114)), STALL);
        assert_eq!(s.silence_cutoff(t(114), short), Err(Blind::BrokerJustBack));
        s.canary(t(116), Some(t(116)), STALL);
        assert_eq!(s.silence_cutoff(t(116), short), Ok(t(113)));
    }

    #[test]
    fn a_healthy_reaper_judges_silence_from_its_newest_canary() {
        let s = healthy(0, 100);
        assert_eq!(s.silence_cutoff(t(101), RULES), Ok(t(100) - WINDOW));
    }

    #[test]
    fn no_judgement_while_the_broker_is_down_or_within_a_window_after() {
        let mut s = healthy(0, 100);
        s.broker(t(101), None);
        assert_eq!(s.silence_cutoff(t(101), RULES), Err(Blind::BrokerDown));
        s.broker(t(110), Some(2));
        s.canary(t(111), Some(t(111)), STALL);
        assert_eq!(s.silence_cutoff(t(115), RULES), Err(Blind::BrokerJustBack));
        // The same connection seen again does not restart the clock.
        s.broker(t(116), Some(2));
        s.canary(t(122), Some(t(122)), STALL);
        assert_eq!(s.silence_cutoff(t(122), RULES), Ok(t(122) - WINDOW));
    }

    #[test]
    fn no_judgement_while_the_database_fails_or_within_a_window_after() {
        let mut s = healthy(0, 100);
        s.database(t(101), false);
        assert_eq!(s.silence_cutoff(t(101), RULES), Err(Blind::DatabaseDown));
        s.database(t(106), true);
        s.database(t(107), true);
        s.canary(t(107), Some(t(107)), STALL);
        assert_eq!(
            s.silence_cutoff(t(117), RULES),
            Err(Blind::DatabaseJustBack)
        );
        assert_eq!(s.silence_cutoff(t(118), RULES), Ok(t(107) - WINDOW));
    }

    #[test]
    fn a_stalled_heartbeat_path_blinds_the_reaper_whatever_its_own_links() {
        let mut s = healthy(0, 100);
        // Canaries stop coming back (a dispatcher stuck, the queue backed up).
        s.canary(t(104), Some(t(100)), STALL);
        assert_eq!(s.silence_cutoff(t(104), RULES), Err(Blind::PathStalled));
        // Back: a window must pass before silence counts again.
        s.canary(t(110), Some(t(110)), STALL);
        assert_eq!(s.silence_cutoff(t(115), RULES), Err(Blind::PathJustBack));
        s.canary(t(122), Some(t(122)), STALL);
        assert_eq!(s.silence_cutoff(t(122), RULES), Ok(t(122) - WINDOW));
    }

    #[test]
    fn a_new_reaper_waits_a_window_before_judging() {
        let mut s = Sight::default();
        assert_eq!(s.silence_cutoff(t(0), RULES), Err(Blind::BrokerDown));
        s.broker(t(0), Some(7));
        s.database(t(0), true);
        s.canary(t(1), Some(t(1)), STALL);
        assert!(s.silence_cutoff(t(5), RULES).is_err());
        s.canary(t(13), Some(t(13)), STALL);
        assert_eq!(s.silence_cutoff(t(13), RULES), Ok(t(13) - WINDOW));
    }

    #[test]
    fn absence_counts_only_with_links_up_for_a_window() {
        let mut s = healthy(0, 100);
        assert_eq!(s.absence_counts(t(100), RULES), Ok(()));
        s.broker(t(101), Some(9));
        assert_eq!(s.absence_counts(t(105), RULES), Err(Blind::BrokerJustBack));
        // A stalled heartbeat path is no reason to ignore the broker's word.
        s.canary(t(120), Some(t(100)), STALL);
        assert_eq!(s.absence_counts(t(120), RULES), Ok(()));
    }

    #[test]
    fn an_agent_is_lost_after_being_absent_long_enough_having_been_seen() {
        let (a, b, c) = (BotId::new(), BotId::new(), BotId::new());
        let absence = Duration::seconds(2);
        let mut abs = Absences::default();
        abs.observe(a, true, t(0));
        abs.observe(b, true, t(0));
        // Never seen present: registered, not connected yet. Not evidence.
        abs.observe(c, false, t(0));
        abs.observe(a, false, t(1));
        abs.observe(b, false, t(1));
        abs.observe(b, true, t(2)); // reconnected in time
        abs.observe(a, false, t(2));
        abs.observe(c, false, t(5));
        assert!(abs.lost(t(2), absence).is_empty());
        assert_eq!(abs.lost(t(3), absence), vec![a]);
        abs.forget(a);
        abs.observe(a, false, t(4));
        assert!(abs.lost(t(10), absence).is_empty(), "judged once");
        abs.observe(b, false, t(20));
        abs.retain(&HashSet::from([a]));
        assert!(
            abs.lost(t(30), absence).is_empty(),
            "b is no longer watched"
        );
    }
}
