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
//!   carries all the job's required tags, and runs no other run of the job's task
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
    pub required_tags: Vec<String>,
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
                    && job.required_tags.iter().all(|t| bot.tags.contains(t))
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

/// A registered bot, whatever its load or status: what could ever take a
/// job. (A bot that is down may come back; a draining one takes nothing
/// until it is resumed; a deleted one is gone.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KnownBot {
    pub id: BotId,
    pub delivery: Delivery,
    pub systems: Vec<String>,
    pub tags: Vec<String>,
    pub draining: bool,
}

/// What a waiting job asks of its bot; the stranded check looks at each
/// distinct ask once, however many jobs share it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Needs {
    /// A CSV job's system; `None` for a script job.
    pub system: Option<String>,
    pub host: Option<BotId>,
    pub required_tags: Vec<String>,
}

/// Why no registered bot can take a job: it would wait for ever, so it is
/// flagged (a WARNING event and the job's `waiting_reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Stranded {
    #[error("no bot declares system {0:?}")]
    NoBotForSystem(String),
    #[error("every bot declaring system {0:?} is draining")]
    SystemDraining(String),
    #[error("its host {0} is not a registered bot")]
    HostGone(BotId),
    #[error("its host {0} is a legacy HTTP bot; scripts run only on agents")]
    HostNotAgent(BotId),
    #[error("its host {host} does not carry its required tags: {}", .missing.join(", "))]
    HostLacksTags { host: BotId, missing: Vec<String> },
    #[error("its host {0} is draining")]
    HostDraining(BotId),
    #[error("no agent bot is registered")]
    NoAgent,
    #[error("no agent carries every one of its required tags: {}", .0.join(", "))]
    NoAgentWithTags(Vec<String>),
    #[error("every agent that could run it is draining")]
    AgentsDraining,
}

/// Why no bot of `bots` could ever take a job that `needs` this, or `None`
/// when one could (now or once it has a free slot).
pub fn stranded(needs: &Needs, bots: &[KnownBot]) -> Option<Stranded> {
    let carries = |bot: &KnownBot| needs.required_tags.iter().all(|t| bot.tags.contains(t));
    if let Some(system) = &needs.system {
        let declaring: Vec<&KnownBot> = bots
            .iter()
            .filter(|b| b.systems.iter().any(|s| s == system))
            .collect();
        return if declaring.is_empty() {
            Some(Stranded::NoBotForSystem(system.clone()))
        } else if declaring.iter().all(|b| b.draining) {
            Some(Stranded::SystemDraining(system.clone()))
        } else {
            None
        };
    }
    if let Some(host) = needs.host {
        let Some(bot) = bots.iter().find(|b| b.id == host) else {
            return Some(Stranded::HostGone(host));
        };
        let missing: Vec<String> = needs
            .required_tags
            .iter()
            .filter(|t| !bot.tags.contains(t))
            .cloned()
            .collect();
        return if bot.delivery != Delivery::Agent {
            Some(Stranded::HostNotAgent(host))
        } else if !missing.is_empty() {
            Some(Stranded::HostLacksTags { host, missing })
        } else if bot.draining {
            Some(Stranded::HostDraining(host))
        } else {
            None
        };
    }
    let agents: Vec<&KnownBot> = bots
        .iter()
        .filter(|b| b.delivery == Delivery::Agent)
        .collect();
    let able: Vec<&&KnownBot> = agents.iter().filter(|b| carries(b)).collect();
    if agents.is_empty() {
        Some(Stranded::NoAgent)
    } else if able.is_empty() {
        Some(Stranded::NoAgentWithTags(needs.required_tags.clone()))
    } else if able.iter().all(|b| b.draining) {
        Some(Stranded::AgentsDraining)
    } else {
        None
    }
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
            required_tags: Vec::new(),
            single_task: None,
        }
    }

    fn script(host: Option<u128>, tags: &[&str], single_task: Option<u128>) -> Candidate {
        Candidate {
            id: Uuid::now_v7(),
            system: None,
            host: host.map(|h| BotId(Uuid::from_u128(h))),
            required_tags: tags.iter().map(|s| s.to_string()).collect(),
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

    fn known(
        n: u128,
        delivery: Delivery,
        systems: &[&str],
        tags: &[&str],
        draining: bool,
    ) -> KnownBot {
        KnownBot {
            id: BotId(Uuid::from_u128(n)),
            delivery,
            systems: systems.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            draining,
        }
    }

    fn needs(system: Option<&str>, host: Option<u128>, tags: &[&str]) -> Needs {
        Needs {
            system: system.map(str::to_string),
            host: host.map(|h| BotId(Uuid::from_u128(h))),
            required_tags: tags.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_csv_job_is_stranded_when_its_system_has_no_bot_or_only_draining_ones() {
        let bots = vec![
            known(1, Delivery::Agent, &["A"], &[], false),
            known(2, Delivery::Http, &["B"], &[], true),
            known(3, Delivery::Agent, &["B"], &[], true),
        ];
        assert_eq!(stranded(&needs(Some("A"), None, &[]), &bots), None);
        assert_eq!(
            stranded(&needs(Some("B"), None, &[]), &bots),
            Some(Stranded::SystemDraining("B".into()))
        );
        assert_eq!(
            stranded(&needs(Some("C"), None, &[]), &bots),
            Some(Stranded::NoBotForSystem("C".into()))
        );
        assert_eq!(
            stranded(&needs(Some("A"), None, &[]), &[]),
            Some(Stranded::NoBotForSystem("A".into()))
        );
        // One bot of B back from draining is enough, whatever its status.
        let mut resumed = bots.clone();
        resumed[1].draining = false;
        assert_eq!(stranded(&needs(Some("B"), None, &[]), &resumed), None);
    }

    #[test]
    fn a_script_job_with_a_host_needs_that_agent_registered_carrying_its_tags_and_not_draining() {
        let bots = vec![
            known(1, Delivery::Agent, &[], &["gpu"], false),
            known(2, Delivery::Http, &[], &["gpu"], false),
            known(3, Delivery::Agent, &[], &[], true),
        ];
        let host = |n: u128| BotId(Uuid::from_u128(n));
        assert_eq!(stranded(&needs(None, Some(1), &["gpu"]), &bots), None);
        assert_eq!(
            stranded(&needs(None, Some(9), &[]), &bots),
            Some(Stranded::HostGone(host(9)))
        );
        assert_eq!(
            stranded(&needs(None, Some(2), &[]), &bots),
            Some(Stranded::HostNotAgent(host(2)))
        );
        assert_eq!(
            stranded(&needs(None, Some(1), &["gpu", "linux"]), &bots),
            Some(Stranded::HostLacksTags {
                host: host(1),
                missing: vec!["linux".into()]
            })
        );
        assert_eq!(
            stranded(&needs(None, Some(3), &[]), &bots),
            Some(Stranded::HostDraining(host(3)))
        );
    }

    #[test]
    fn a_script_job_without_a_host_needs_an_agent_carrying_every_required_tag() {
        let bots = vec![
            known(1, Delivery::Http, &[], &["gpu", "linux"], false),
            known(2, Delivery::Agent, &[], &["linux"], false),
            known(3, Delivery::Agent, &[], &["gpu", "linux"], true),
        ];
        assert_eq!(stranded(&needs(None, None, &[]), &bots), None);
        assert_eq!(stranded(&needs(None, None, &["linux"]), &bots), None);
        assert_eq!(
            stranded(&needs(None, None, &["gpu"]), &bots),
            Some(Stranded::AgentsDraining),
            "the only agent with gpu is draining; the HTTP bot does not count"
        );
        assert_eq!(
            stranded(&needs(None, None, &["arm", "gpu"]), &bots),
            Some(Stranded::NoAgentWithTags(vec!["arm".into(), "gpu".into()]))
        );
        assert_eq!(
            stranded(&needs(None, None, &[]), &bots[..1]),
            Some(Stranded::NoAgent)
        );
        assert_eq!(
            Stranded::NoAgentWithTags(vec!["arm".into(), "gpu".into()]).to_string(),
            "no agent carries every one of its required tags: arm, gpu"
        );
    }
}
