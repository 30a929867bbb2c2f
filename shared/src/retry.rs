//! The retry schedule of outbound messages (webhooks, notifications): after
//! a failed attempt, when the next one goes, or that there is none. Pure, so
//! every attempt number is tested here; the senders only apply it.

use std::time::Duration;

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after this wait.
    In(Duration),
    /// No attempt left: the message is DEAD.
    Dead,
}

/// Most a receiver's `Retry-After` may hold a message back.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(86_400);

/// How far jitter moves a wait: ±20 %.
const JITTER: f64 = 0.2;

/// The waits between attempts, from the configuration (milliseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl Schedule {
    pub fn from_ms(waits: &[u64]) -> Schedule {
        Schedule(waits.iter().map(|ms| Duration::from_millis(*ms)).collect())
    }

    /// `next_attempt` on this schedule.
    pub fn next_attempt(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Retry {
        next_attempt(attempt, &self.0, retry_after, jitter)
    }
}

/// After failed attempt `attempt` (1-based; 0 counts as 1): the schedule's
/// wait for it, moved by up to ±20 % (`jitter` in -1..=1, clamped), and no
/// shorter than the receiver's `Retry-After` (capped at a day); `Dead` once
/// the schedule has no wait left, so a schedule of n waits allows n + 1
/// attempts.
pub fn next_attempt(
    attempt: u32,
    schedule: &[Duration],
    retry_after: Option<Duration>,
    jitter: f64,
) -> Retry {
    let Some(base) = schedule.get(attempt.saturating_sub(1) as usize) else {
        return Retry::Dead;
    };
    let jittered = base.mul_f64(1.0 + JITTER * jitter.clamp(-1.0, 1.0));
    let asked = retry_after.unwrap_or_default().min(RETRY_AFTER_CAP);
    Retry::In(jittered.max(asked))
}

/// A random jitter in -1..1.
pub fn jitter() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    const SCHEDULE: [Duration; 3] = [
        Duration::from_secs(5),
        Duration::from_secs(300),
        Duration::from_secs(1800),
    ];

    #[test]
    fn the_first_failure_waits_the_first_step() {
        assert_eq!(next_attempt(1, &SCHEDULE, None, 0.0), Retry::In(secs(5)));
        assert_eq!(
            next_attempt(0, &SCHEDULE, None, 0.0),
            Retry::In(secs(5)),
            "attempt 0 is read as the first"
        );
    }

    #[test]
    fn each_failure_waits_its_own_step_up_to_the_last() {
        assert_eq!(next_attempt(2, &SCHEDULE, None, 0.0), Retry::In(secs(300)));
        assert_eq!(next_attempt(3, &SCHEDULE, None, 0.0), Retry::In(secs(1800)));
    }

    #[test]
    fn beyond_the_schedule_the_message_is_dead() {
        assert_eq!(next_attempt(4, &SCHEDULE, None, 0.0), Retry::Dead);
        assert_eq!(next_attempt(u32::MAX, &SCHEDULE, None, 0.0), Retry::Dead);
        assert_eq!(
            next_attempt(4, &SCHEDULE, Some(secs(60)), 0.0),
            Retry::Dead,
            "Retry-After does not add attempts"
        );
        assert_eq!(next_attempt(1, &[], None, 0.0), Retry::Dead);
    }

    #[test]
    fn jitter_moves_a_wait_by_at_most_a_fifth() {
        assert_eq!(next_attempt(2, &SCHEDULE, None, 1.0), Retry::In(secs(360)));
        assert_eq!(next_attempt(2, &SCHEDULE, None, -1.0), Retry::In(secs(240)));
        assert_eq!(
            next_attempt(2, &SCHEDULE, None, 5.0),
            Retry::In(secs(360)),
            "jitter is clamped"
        );
        assert_eq!(next_attempt(2, &SCHEDULE, None, -5.0), Retry::In(secs(240)));
        for _ in 0..1000 {
            let j = jitter();
            assert!((-1.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn retry_after_lengthens_a_wait_up_to_a_day() {
        assert_eq!(
            next_attempt(1, &SCHEDULE, Some(secs(60)), 0.0),
            Retry::In(secs(60))
        );
        assert_eq!(
            next_attempt(2, &SCHEDULE, Some(secs(60)), 0.0),
            Retry::In(secs(300)),
            "never shortens one"
        );
        assert_eq!(
            next_attempt(1, &SCHEDULE, Some(secs(10 * 86_400)), 0.0),
            Retry::In(secs(86_400))
        );
    }

    #[test]
    fn a_schedule_reads_milliseconds() {
        let s = Schedule::from_ms(&[5000, 300_000]);
        assert_eq!(s, Schedule(vec![secs(5), secs(300)]));
        assert_eq!(s.next_attempt(2, None, -1.0), Retry::In(secs(240)));
        assert_eq!(s.next_attempt(3, None, 0.0), Retry::Dead);
    }
}
