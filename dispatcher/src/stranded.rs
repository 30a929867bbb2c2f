//! Stranded jobs: waiting jobs that no registered bot could ever take (a
//! system whose bots are all draining or gone, a host that is gone, a
//! required tag no agent carries). Each pass looks, per customer with
//! waiting work, at what the jobs created since its last pass ask of a bot;
//! when the customer's bots changed (one registered, deleted, drained,
//! resumed, given other systems or tags), at every waiting job. A job no
//! bot can take gets a WARNING event and its `waiting_reason`; one a bot
//! could take again has the reason cleared. The judgement itself is
//! `placement::stranded`.

use orq_shared::CancellationToken;
use orq_shared::domain::CustomerId;
use orq_shared::placement::{KnownBot, stranded};
use orq_shared::repo::{RepoError, jobs};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use time::OffsetDateTime;

/// How far back a pass looks before the previous one: a job's `created_at`
/// is its transaction's start, so one committed later than the previous
/// pass may carry an earlier time.
const OVERLAP: Duration = Duration::from_secs(5);

/// What the last pass saw of one customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    bots: u64,
    at: OffsetDateTime,
}

/// The passes' memory: per customer, its bots when last checked and when.
#[derive(Debug, Default)]
pub struct Stranded {
    seen: HashMap<CustomerId, Seen>,
}

/// What one pass changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub flagged: u64,
    pub cleared: u64,
}

fn fingerprint(bots: &[KnownBot]) -> u64 {
    let mut h = DefaultHasher::new();
    bots.hash(&mut h);
    h.finish()
}

impl Stranded {
    /// From which instant a customer's waiting jobs need looking at, given
    /// its bots now: all of them (`None`) when its bots changed or it was
    /// never looked at.
    fn since(&self, customer: CustomerId, bots: u64) -> Option<OffsetDateTime> {
        self.seen
            .get(&customer)
            .filter(|s| s.bots == bots)
            .map(|s| s.at - OVERLAP)
    }

    /// One pass over every customer with waiting work.
    pub async fn pass(
        &mut self,
        db: &mut impl deadpool_postgres::GenericClient,
        now: OffsetDateTime,
    ) -> Result<Pass, RepoError> {
        let mut done = Pass::default();
        let customers = jobs::customers_with_waiting(db).await?;
        self.seen.retain(|c, _| customers.contains(c));
        for customer in customers {
            let bots = jobs::known_bots(db, customer).await?;
            let print = fingerprint(&bots);
            let since = self.since(customer, print);
            for (needs, reason) in jobs::waiting_needs(db, customer, since).await? {
                let verdict = stranded(&needs, &bots).map(|s| s.to_string());
                if verdict == reason {
                    continue;
                }
                let tx = db.transaction().await?;
                let n = jobs::mark_stranded(&tx, customer, &needs, verdict.as_deref()).await?;
                tx.commit().await?;
                match &verdict {
                    Some(why) => {
                        tracing::warn!(%customer, jobs = n, reason = %why, "waiting jobs no bot can take");
                        done.flagged += n;
                    }
                    None => done.cleared += n,
                }
            }
            self.seen.insert(
                customer,
                Seen {
                    bots: print,
                    at: now,
                },
            );
        }
        metrics::counter!("orq_stranded_flagged_total").increment(done.flagged);
        Ok(done)
    }
}

pub async fn run(pool: deadpool_postgres::Pool, interval_ms: u64, shutdown: CancellationToken) {
    if interval_ms == 0 {
        return;
    }
    let mut state = Stranded::default();
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let passed = match pool.get().await {
            Ok(mut db) => state
                .pass(&mut db, OffsetDateTime::now_utc())
                .await
                .map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = passed {
            tracing::warn!(error = %e, "stranded-jobs pass failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orq_shared::domain::{BotId, Delivery};
    use uuid::Uuid;

    fn bot(draining: bool) -> KnownBot {
        KnownBot {
            id: BotId(Uuid::from_u128(1)),
            delivery: Delivery::Agent,
            systems: vec!["S".into()],
            tags: Vec::new(),
            draining,
        }
    }

    #[test]
    fn a_customer_is_looked_at_whole_first_and_whenever_its_bots_change() {
        let customer = CustomerId(Uuid::from_u128(7));
        let mut s = Stranded::default();
        let at = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(100);
        let print = fingerprint(&[bot(false)]);
        assert_eq!(s.since(customer, print), None, "never looked at");
        s.seen.insert(customer, Seen { bots: print, at });
        assert_eq!(
            s.since(customer, print),
            Some(at - OVERLAP),
            "bots unchanged: only jobs created since the last pass, with an overlap"
        );
        assert_eq!(
            s.since(customer, fingerprint(&[bot(true)])),
            None,
            "a bot drained: every waiting job again"
        );
        assert_eq!(s.since(customer, fingerprint(&[])), None, "a bot deleted");
    }
}
