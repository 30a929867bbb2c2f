//! Chaos: every kind of service SIGKILLed at random under a steady load, and
//! started again. A client posts CSV tasks, each under its own
//! `Idempotency-Key` and retried until answered, while a seeded loop kills a
//! gateway (restarted on the same port), a dispatcher, the reaper or an agent
//! (restarted under its name) every 1.5-3 s. Afterwards: no task lost, none
//! created twice, every row run, and no row run twice but the ones in flight
//! on an agent when it was killed.
//!
//! `ORQ_TEST_SEED=<n>` replays a run's schedule of kills (the processes'
//! timing still varies).

use orq_e2e::{Env, Proc, agent_config, free_port};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Tasks the client posts, spread over `POSTING`.
const TASKS: usize = 150;
const ROWS: usize = 5;
const POSTING: Duration = Duration::from_secs(30);
/// The kills go on at least this long, and until the last task is answered.
const CHAOS: Duration = Duration::from_secs(35);
/// How long the system may take to finish every task once the kills stop.
const DRAIN: Duration = Duration::from_secs(180);
const DISPATCHERS: usize = 2;
/// The agents: (name, capacity).
const AGENTS: [(&str, u16); 3] = [("chaos-a", 1), ("chaos-b", 2), ("chaos-c", 2)];

/// Agents log where each job starts, for reading a failure.
const AGENT_LOG: &[(&str, &str)] = &[("RUST_LOG", "info,bot_agent=debug")];

/// What a victim was, for the tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Gateway,
    Dispatcher,
    Reaper,
    Agent,
}

struct Agent {
    name: &'static str,
    capacity: u16,
    config: PathBuf,
    proc: Proc,
}

/// Every process of the deployment, each restartable as it was started.
struct Cast<'a> {
    env: &'a Env,
    port: u16,
    gateway: Proc,
    dispatchers: Vec<Proc>,
    reaper: Proc,
    agents: Vec<Agent>,
}

/// The victims, numbered: gateway, dispatchers, reaper, agents.
impl Cast<'_> {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn victims(&self) -> usize {
        1 + self.dispatchers.len() + 1 + self.agents.len()
    }

    fn kind(&self, victim: usize) -> Kind {
        match victim {
            0 => Kind::Gateway,
            v if v <= self.dispatchers.len() => Kind::Dispatcher,
            v if v == self.dispatchers.len() + 1 => Kind::Reaper,
            _ => Kind::Agent,
        }
    }

    fn proc(&mut self, victim: usize) -> &mut Proc {
        let d = self.dispatchers.len();
        match victim {
            0 => &mut self.gateway,
            v if v <= d => &mut self.dispatchers[v - 1],
            v if v == d + 1 => &mut self.reaper,
            v => &mut self.agents[v - d - 2].proc,
        }
    }

    fn start_dispatcher(env: &Env, n: usize) -> anyhow::Result<Proc> {
        env.start_dispatcher(&format!("dispatcher-{n}"), &[])
    }

    /// One reaper, at the agents' 1 s heartbeats, and a retry limit no job
    /// reaches here: a job moved off several killed agents must still finish.
    fn start_reaper(env: &Env) -> anyhow::Result<Proc> {
        let mut extra = orq_e2e::REAPER_MATCHING_AGENTS.to_vec();
        extra.push(("ORQ_REAPER__MAX_ATTEMPTS", "1000"));
        env.start_reaper(&extra)
    }

    async fn restart(&mut self, victim: usize) -> anyhow::Result<()> {
        let d = self.dispatchers.len();
        let (env, url) = (self.env, self.url());
        match victim {
            0 => self.gateway = env.start_gateway_on(self.port, &[]).await?.0,
            v if v <= d => self.dispatchers[v - 1] = Cast::start_dispatcher(env, v)?,
            v if v == d + 1 => self.reaper = Cast::start_reaper(env)?,
            v => {
                let agent = &mut self.agents[v - d - 2];
                agent.proc = env
                    .start_agent(&url, agent.name, &agent.config, AGENT_LOG)
                    .await?;
            }
        }
        Ok(())
    }
}

/// An automation that logs every run of a row — its key, attempt, agent and
/// start time (bash's `$EPOCHREALTIME`: no extra process) — and takes 0.2 s.
fn automation(env: &Env, name: &str, capacity: u16, log: &Path) -> anyhow::Result<PathBuf> {
    let script = format!(
        "cat > /dev/null\necho \"$ORQ_IDEMPOTENCY_KEY $ORQ_ATTEMPT $ORQ_BOT_NAME $EPOCHREALTIME\" >> {}\nsleep 0.2\n",
        log.display()
    );
    let path = env.dir.join("automation.sh");
    std::fs::write(&path, script)?;
    let argv = ["bash", path.to_str().unwrap_or_default()];
    agent_config(
        &env.dir,
        &format!("{name}.toml"),
        capacity,
        &[("Chaos", &argv)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loop_under_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let seed = std::env::var("ORQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random::<u64>());
    eprintln!("chaos seed {seed} (ORQ_TEST_SEED={seed} replays the schedule of kills)");
    let mut rng = StdRng::seed_from_u64(seed);

    let env = Env::new("chaos").await?;
    let runs_log = env.dir.join("runs.log");
    let port = free_port();
    let (gateway, gw) = env.start_gateway_on(port, &[]).await?;
    let dispatchers = (1..=DISPATCHERS)
        .map(|n| Cast::start_dispatcher(&env, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reaper = Cast::start_reaper(&env)?;
    let mut agents = Vec::new();
    for (name, capacity) in AGENTS {
        let config = automation(&env, name, capacity, &runs_log)?;
        let proc = env.start_agent(&gw, name, &config, AGENT_LOG).await?;
        agents.push(Agent {
            name,
            capacity,
            config,
            proc,
        });
    }
    let mut cast = Cast {
        env: &env,
        port,
        gateway,
        dispatchers,
        reaper,
        agents,
    };

    // The load: TASKS posts, evenly spread, each under its own key.
    let posted = Arc::new(AtomicBool::new(false));
    let answered_count = Arc::new(AtomicUsize::new(0));
    let client = env.client();
    let tasks_url = format!("{gw}/tasks");
    let mut csv = String::from("n\n");
    for r in 1..=ROWS {
        csv.push_str(&format!("{r}\n"));
    }
    let attachment = orq_e2e::orq_shared::attachment::encode(&csv);
    let start = Instant::now();
    let load = {
        let (posted, answered_count) = (posted.clone(), answered_count.clone());
        async move {
            let answers = futures::future::try_join_all((0..TASKS).map(|i| {
                let (client, url, answered_count) =
                    (client.clone(), tasks_url.clone(), answered_count.clone());
                let body = json!({"description": format!("chaos-{i}"), "system": "Chaos",
                                  "attachment": attachment});
                async move {
                    tokio::time::sleep(POSTING.mul_f64(i as f64 / TASKS as f64)).await;
                    let key = format!("chaos-{i}");
                    let (v, replayed, failures) =
                        orq_e2e::post_until_answered(&client, &url, &key, &body).await?;
                    let answer = (
                        v["id"].as_str().unwrap_or_default().to_string(),
                        failures,
                        replayed,
                    );
                    answered_count.fetch_add(1, Ordering::SeqCst);
                    anyhow::Ok((key, answer))
                }
            }))
            .await;
            posted.store(true, Ordering::SeqCst);
            answers
        }
    };

    // The chaos: a kill every 1.5-3 s, the victim started again after a
    // pause inside that interval; an agent's pause is up to 3.5 s, so it
    // comes back sometimes within the reaper's 2 s absence rule (it resumes
    // its own jobs) and sometimes after it (its jobs move).
    let mut timeline = String::new();
    let chaos = async {
        let mut kills: Vec<(Kind, usize)> = Vec::new();
        while !(posted.load(Ordering::SeqCst) && start.elapsed() >= CHAOS) {
            let spacing = rng.random_range(1500..=3000u64);
            let victim = rng.random_range(0..cast.victims());
            let kind = cast.kind(victim);
            let pause = match kind {
                Kind::Agent => rng.random_range(100..=3500),
                _ => rng.random_range(100..=spacing - 300),
            };
            tokio::time::sleep(Duration::from_millis(
                spacing.saturating_sub(pause).max(300),
            ))
            .await;
            let name = cast.proc(victim).name.clone();
            cast.proc(victim).kill9();
            kills.push((kind, victim));
            let _ = writeln!(
                timeline,
                "{:>7.2}s kill -9 {name}, restart after {pause} ms ({} tasks answered)",
                start.elapsed().as_secs_f64(),
                answered_count.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(pause)).await;
            cast.restart(victim).await?;
        }
        anyhow::Ok(kills)
    };
    let (answers, kills) = tokio::join!(load, chaos);
    let chaos_end = Instant::now();
    std::fs::write(env.dir.join("chaos.log"), &timeline)?;
    eprint!("{timeline}");
    let kills = kills?;
    let answers = answers?;

    // Drain: every task reaches a final state.
    let db = env.db().await?;
    let drained = orq_e2e::eventually(DRAIN, "every task in a final state", || {
        let db = &db;
        async move {
            let open: i64 = db
                .query_one(
                    "SELECT count(*) FROM jobs WHERE kind = 'system' \
                     AND status NOT IN ('COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED')",
                    &[],
                )
                .await?
                .get(0);
            Ok((open == 0).then_some(()))
        }
    })
    .await;
    let drain = chaos_end.elapsed();
    if let Err(e) = drained {
        let open = db
            .query(
                "SELECT id::text, status, attempt, rows_done, bot_id::text FROM jobs \
                 WHERE kind = 'system' AND status NOT IN ('COMPLETE', 'FAILED', 'TIMEOUT', 'CANCELED')",
                &[],
            )
            .await?;
        for r in &open {
            eprintln!(
                "open: {} {} attempt {} rows_done {} bot {:?}",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, i32>(2),
                r.get::<_, i32>(3),
                r.get::<_, Option<String>>(4)
            );
        }
        return Err(e);
    }

    // The tally.
    let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut agent_kills: HashMap<&str, usize> = HashMap::new();
    for (kind, victim) in &kills {
        *by_kind.entry(*kind).or_default() += 1;
        if *kind == Kind::Agent {
            let agent = &cast.agents[victim - DISPATCHERS - 2];
            *agent_kills.entry(agent.name).or_default() += 1;
        }
    }
    let (retried, replays) = answers
        .iter()
        .fold((0, 0), |(f, p), (_, (_, failures, replayed))| {
            (f + usize::from(*failures > 0), p + usize::from(*replayed))
        });

    // 0 lost, 0 duplicated: one job per key, the one its answer named, and
    // it COMPLETE with every row done.
    let rows = db
        .query(
            "SELECT description, id::text, status, attempt, rows_done FROM jobs WHERE kind = 'system'",
            &[],
        )
        .await?;
    let jobs: HashMap<String, (String, String, i32, i32)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect();
    assert_eq!(jobs.len(), rows.len(), "two jobs under one key");
    assert_eq!(rows.len(), TASKS, "{} jobs for {TASKS} keys", rows.len());
    let mut moved = 0;
    for (key, (id, _, _)) in &answers {
        let Some((stored, status, attempt, rows_done)) = jobs.get(key) else {
            panic!("{key}: no job");
        };
        assert_eq!(stored, id, "{key}: the answer names its job");
        assert_eq!(status, "COMPLETE", "{key} ({id}) lost: {status}");
        assert_eq!(*rows_done, ROWS as i32, "{key} ({id})");
        moved += usize::from(*attempt > 1);
    }

    // Every row ran; rows ran more than once only where an agent was killed,
    // at most its capacity (the rows in flight) per kill.
    let log = std::fs::read_to_string(&runs_log)?;
    let mut runs: HashMap<&str, Vec<(&str, &str, &str)>> = HashMap::new();
    for line in log.lines() {
        let mut parts = line.split(' ');
        let (Some(key), Some(attempt), Some(agent), Some(at)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("a torn line in the runs log: {line:?}");
        };
        runs.entry(key).or_default().push((attempt, agent, at));
    }
    let ids: std::collections::HashSet<&str> =
        answers.iter().map(|(_, (id, _, _))| id.as_str()).collect();
    for key in runs.keys() {
        let job = key.split(':').next().unwrap_or_default();
        assert!(ids.contains(job), "a row of a job nobody asked for: {key}");
    }
    for id in &ids {
        for row in 1..=ROWS {
            assert!(
                runs.contains_key(format!("{id}:{row}").as_str()),
                "row {row} of {id} never ran"
            );
        }
    }
    let mut rerun_rows = 0;
    let mut extra_runs = 0;
    let mut interrupted: HashMap<&str, usize> = HashMap::new();
    let mut reruns = String::new();
    for (key, list) in &runs {
        if list.len() > 1 {
            rerun_rows += 1;
            extra_runs += list.len() - 1;
            // Every run but the last was cut short (or its end not
            // recorded) by its agent's death.
            for (_, agent, _) in &list[..list.len() - 1] {
                *interrupted.entry(agent).or_default() += 1;
            }
            let _ = writeln!(reruns, "  {key}: {list:?}");
        }
    }
    let in_flight_bound: usize = cast
        .agents
        .iter()
        .map(|a| agent_kills.get(a.name).copied().unwrap_or(0) * usize::from(a.capacity))
        .sum();
    eprintln!(
        "{TASKS} tasks of {ROWS} rows ({retried} posts retried, {replays} answers replayed); \
         kills: {by_kind:?}, agents {agent_kills:?}; {moved} tasks moved to another attempt; \
         {rerun_rows} rows run more than once ({extra_runs} extra runs) for {} agent kills \
         (in-flight bound {in_flight_bound}); drained {:.1} s after the chaos\n{reruns}",
        by_kind.get(&Kind::Agent).copied().unwrap_or(0),
        drain.as_secs_f64()
    );
    // The history of every job with a row run twice, for reading a failure.
    let mut histories = String::new();
    let mut rerun_jobs: Vec<&str> = runs
        .iter()
        .filter(|(_, list)| list.len() > 1)
        .filter_map(|(key, _)| key.split(':').next())
        .collect();
    rerun_jobs.sort_unstable();
    rerun_jobs.dedup();
    for job in rerun_jobs {
        let events = db
            .query(
                "SELECT created_at::text, type, description, bot_id::text, attempt FROM job_events \
                 WHERE job_id = $1::text::uuid ORDER BY created_at, id",
                &[&job],
            )
            .await?;
        let _ = writeln!(histories, "{job}:");
        for e in &events {
            let _ = writeln!(
                histories,
                "  {} {} {:?} bot {:?} attempt {:?}",
                e.get::<_, String>(0),
                e.get::<_, String>(1),
                e.get::<_, String>(2),
                e.get::<_, Option<String>>(3),
                e.get::<_, Option<i32>>(4)
            );
        }
    }
    std::fs::write(env.dir.join("reruns.log"), format!("{reruns}\n{histories}"))?;
    for agent in &cast.agents {
        let cut = interrupted.get(agent.name).copied().unwrap_or(0);
        let killed = agent_kills.get(agent.name).copied().unwrap_or(0);
        assert!(
            cut <= killed * usize::from(agent.capacity),
            "{}: {cut} runs repeated elsewhere, but it was killed {killed} times \
             with capacity {}:\n{reruns}",
            agent.name,
            agent.capacity
        );
    }
    assert!(
        extra_runs <= in_flight_bound,
        "{extra_runs} extra runs for an in-flight bound of {in_flight_bound}"
    );
    assert!(kills.len() >= 8, "only {} kills", kills.len());
    drop(cast);
    env.cleanup().await
}
