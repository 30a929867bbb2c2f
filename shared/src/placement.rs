//! Placement, the pure part of matching: which free bot takes which waiting
//! job. The repository (`repo::jobs::matching`) locks the free bots and
//! pages through the waiting jobs; this decides, with no I/O.
//!
//! The rule: jobs oldest first, each to the bot that can take it with the
//! most free slots; among equals, the bot first in the given order (the
//! repository lists bots by `last_assigned_at`, so work spreads). A bot
//! can take a job when it has a free slot and
//! * a CSV job: the bot declares the job's system;
//! * a script job: the bot is an agent, is the job's host when it has one,
//!   carries all the job's tags, and runs no other run of the job's task
//!   when that task allows one run per bot (`multitasking = false`).

use std::collections::HashSet;
use uuid::Uuid;

use crate::domain::{BotId, Delivery};

/// A bot with free capacity, as the matcher locked it.
#[derive(Debug, Clone)]
pub struct FreeBot {
    pub id: BotId,
    pub capacity: i32,
    /// Jobs it holds already.
    pub active: i32,
    pub delivery: Delivery,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
}

/// A waiting job as the matcher sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Uuid,
    /// CSV jobs: the system a bot must declare; `None` for script jobs.
    pub system: Option<String>,
    /// Script jobs: the bot it must run on, the tags its bot must carry,
    /// and its task when at most one run of it may be on a bot.
    pub host: Option<BotId>,
    pub tags: Vec<String>,
    pub single_task: Option<Uuid>,
}

/// The free bots of one matching round and what this round gave them.
#[derive(Debug)]
pub struct Placement {
    bots: Vec<FreeBot>,
    /// Jobs placed on each bot this round.
    taken: Vec<i32>,
    /// (bot, task) pairs of one-run-per-bot tasks running or placed.
    busy: HashSet<(BotId, Uuid)>,
}

impl Placement {
    pub fn new(bots: Vec<FreeBot>) -> Placement {
        let taken = vec![0; bots.len()];
        Placement {
            bots,
            taken,
            busy: HashSet::new(),
        }
    }

    /// Records that `bot` already runs a run of the one-run-per-bot `task`.
    pub fn running(&mut self, bot: BotId, task: Uuid) {
        self.busy.insert((bot, task));
    }

    pub fn bots(&self) -> &[FreeBot] {
        &self.bots
    }

    fn free(&self, i: usize) -> i32 {
        self.bots[i].capacity - self.bots[i].active - self.taken[i]
    }

    /// Free slots left over all bots.
    pub fn slots(&self) -> i64 {
        (0..self.bots.len())
            .map(|i| i64::from(self.free(i).max(0)))
            .sum()
    }

    /// Every system a free bot declares (the query's filter for CSV jobs).
    pub fn systems(&self) -> Vec<String> {
        sorted_unique(self.bots.iter().flat_map(|b| b.systems.iter().cloned()))
    }

    /// The free agents (script jobs go only to agents).
    pub fn agent_ids(&self) -> Vec<Uuid> {
        self.agents().map(|b| b.id.0).collect()
    }

    /// Every tag a free agent carries (a script job needing others cannot
    /// be placed this round).
    pub fn agent_tags(&self) -> Vec<String> {
        sorted_unique(self.agents().flat_map(|b| b.tags.iter().cloned()))
    }

    fn agents(&self) -> impl Iterator<Item = &FreeBot> {
        self.bots.iter().filter(|b| b.delivery == Delivery::Agent)
    }

    fn fits(&self, job: &Candidate, i: usize) -> bool {
        let bot = &self.bots[i];
        if self.free(i) <= 0 {
            return false;
        }
        match &job.system {
            Some(system) => bot.systems.iter().any(|s| s == system),
            None => {
                bot.delivery == Delivery::Agent
                    && job.host.is_none_or(|h| h == bot.id)
                    && job.tags.iter().all(|t| bot.tags.contains(t))
                    && job
                        .single_task
                        .is_none_or(|t| !self.busy.contains(&(bot.id, t)))
            }
        }
    }

    /// Places `job` on the bot with the most free slots that can take it
    /// (the first such in order among equals); the bot's index, or `None`
    /// when no bot can take it this round.
    pub fn place(&mut self, job: &Candidate) -> Option<usize> {
        let best = (0..self.bots.len())
            .filter(|i| self.fits(job, *i))
            .max_by_key(|i| (self.free(*i), std::cmp::Reverse(*i)))?;
        self.taken[best] += 1;
        if let Some(task) = job.single_task {
            self.busy.insert((self.bots[best].id, task));
        }
        Some(best)
    }
}

/// How many waiting jobs to read per page for `slots` free slots (never
/// more than `limit`, unless the slots are more), and the most to read in
/// one round: a backlog that fits no bot must not hide the jobs behind it,
/// nor make a round read the whole table.
pub fn paging(slots: i64, limit: i64) -> (i64, i64) {
    let page = (slots * 8 + 32).min(limit.max(slots));
    (page, page * 16)
}

fn sorted_unique(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = items.collect();
    all.sort();
    all.dedup();
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(
        n: u128,
        capacity: i32,
        active: i32,
        delivery: Delivery,
        systems: &[&str],
        tags: &[&str],
    ) -> FreeBot {
        FreeBot {
            id: BotId(Uuid::from_u128(n)),
            capacity,
            active,
            delivery,
            systems: systems.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn csv(system: &str) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            system: Some(system.into()),
            host: None,
            tags: Vec::new(),
            single_task: None,
        }
    }

    fn script(host: Option<u128>, tags: &[&str], single_task: Option<u128>) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            system: None,
            host: host.map(|h| BotId(Uuid::from_u128(h))),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            single_task: single_task.map(Uuid::from_u128),
        }
    }

    #[test]
    fn jobs_go_to_the_bot_with_most_free_slots_and_the_first_among_equals() {
        let mut p = Placement::new(vec![
            bot(1, 2, 1, Delivery::Agent, &["S"], &[]),
            bot(2, 3, 0, Delivery::Agent, &["S"], &[]),
            bot(3, 3, 0, Delivery::Http, &["S"], &[]),
        ]);
        assert_eq!(p.slots(), 7);
        // 3 and 3 free: the first, then the other, then whoever has most.
        let order: Vec<_> = (0..7).map(|_| p.place(&csv("S"))).collect();
        assert_eq!(
            order,
            vec![
                Some(1),
                Some(2),
                Some(1),
                Some(2),
                Some(0),
                Some(1),
                Some(2)
            ]
        );
        assert_eq!(p.slots(), 0);
        assert_eq!(p.place(&csv("S")), None);
    }

    #[test]
    fn a_csv_job_needs_a_bot_that_declares_its_system() {
        let mut p = Placement::new(vec![
            bot(1, 5, 0, Delivery::Agent, &["A"], &[]),
            bot(2, 1, 0, Delivery::Http, &["B"], &[]),
        ]);
        assert_eq!(p.place(&csv("B")), Some(1));
        assert_eq!(p.place(&csv("B")), None);
        assert_eq!(p.place(&csv("C")), None);
        assert_eq!(p.place(&csv("A")), Some(0));
        assert_eq!(p.systems(), vec!["A".to_string(), "B".to_string()]);
    }

    #[test]
    fn a_script_job_needs_an_agent_its_host_and_its_tags() {
        let mut p = Placement::new(vec![
            bot(1, 9, 0, Delivery::Http, &[], &["linux"]),
            bot(2, 1, 0, Delivery::Agent, &[], &["linux"]),
            bot(3, 1, 0, Delivery::Agent, &[], &["linux", "gpu"]),
        ]);
        assert_eq!(p.agent_ids(), vec![Uuid::from_u128(2), Uuid::from_u128(3)]);
        assert_eq!(p.agent_tags(), vec!["gpu".to_string(), "linux".to_string()]);
        assert_eq!(p.place(&script(None, &["gpu"], None)), Some(2));
        assert_eq!(
            p.place(&script(Some(3), &[], None)),
            None,
            "its host is full"
        );
        assert_eq!(p.place(&script(Some(2), &["linux"], None)), Some(1));
        assert_eq!(
            p.place(&script(None, &[], None)),
            None,
            "no agent slot left"
        );
    }

    #[test]
    fn a_one_run_per_bot_task_never_gets_two_runs_on_one_bot() {
        let mut p = Placement::new(vec![
            bot(1, 5, 1, Delivery::Agent, &[], &[]),
            bot(2, 5, 0, Delivery::Agent, &[], &[]),
        ]);
        p.running(BotId(Uuid::from_u128(1)), Uuid::from_u128(7));
        assert_eq!(p.place(&script(None, &[], Some(7))), Some(1));
        // Both bots now run task 7; another task still fits.
        assert_eq!(p.place(&script(None, &[], Some(7))), None);
        assert_eq!(p.place(&script(None, &[], Some(8))), Some(0));
        // Multitasking runs (no single task) are not limited.
        assert!(p.place(&script(None, &[], None)).is_some());
    }

    #[test]
    fn pages_grow_with_the_slots_within_the_limit() {
        assert_eq!(paging(1, 256), (40, 640));
        assert_eq!(paging(100, 256), (256, 4096));
        // More slots than the limit: a page holds at least the slots.
        assert_eq!(paging(500, 256), (500, 8000));
    }
}
