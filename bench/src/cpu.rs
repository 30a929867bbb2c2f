//! Where the CPU goes: the CPU seconds each process spent in a measured
//! window, per 1,000 jobs, read from /proc (`utime + stime` of
//! `/proc/<pid>/stat`, plus `cutime + cstime`: what its reaped children
//! spent, so a PostgreSQL backend that exits inside the window still
//! counts, through the postmaster), sampled before and after the window.
//!
//! The services the bench started are its own. RabbitMQ (every `beam.smp`)
//! and PostgreSQL (every `postgres` process) are the machine's, shared with
//! whatever else runs on it: their figures include other users' load. The
//! machine's own busy time (/proc/stat) is printed beside them, so what no
//! listed process spent (other work) shows too.
//!
//! Each process is told apart by its pid and start time, and counted for
//! what it spent between the two samples (all of it when it started in
//! between); one that ended in between counts only through a parent that
//! reaped it (a test's own RabbitMQ node that stopped meanwhile would
//! otherwise make the sum go down).

use std::collections::BTreeMap;
use std::time::Instant;

/// What one process line of `/proc/<pid>/stat` tells: its name, when it
/// started (ticks after boot) and the clock ticks it and its reaped
/// children spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub start: u64,
    pub ticks: u64,
}

/// Parses a `/proc/<pid>/stat` line. The name sits between the first `(`
/// and the last `)` and may hold spaces and parentheses itself.
pub fn parse_stat(line: &str) -> Option<Stat> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    // After the name: state (field 3), …, utime (14), stime (15), cutime
    // (16), cstime (17), …, starttime (22).
    let fields: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let mut ticks = 0u64;
    for i in 11..=14 {
        ticks += fields.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    let start = fields.get(19)?.parse().ok()?;
    Some(Stat { comm, start, ticks })
}

/// Busy ticks of all CPUs from the `cpu` line of /proc/stat (everything
/// but idle and iowait; guest time is already in user).
pub fn parse_machine(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| v.get(i).copied().unwrap_or(0));
    Some(busy.sum())
}

/// `VmHWM` (peak resident set) of `/proc/<pid>/status`, in kB.
pub fn parse_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn stat_of(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The machine's processes named `comm`, with their stats.
fn named(comm: &str) -> Vec<(i32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat_of(pid)?)))
        .filter(|(_, s)| s.comm == comm)
        .collect()
}

/// The groups a window is reported by, in this order.
const RABBITMQ: &str = "RabbitMQ (beam.smp)*";
const POSTGRES: &str = "PostgreSQL (all postgres)*";
const BENCH: &str = "orq-bench (load)";

/// The processes to watch: the bench's own services by group ("gateway",
/// "dispatcher", "agents", …; a group's processes are summed), and the
/// shared servers, found by name at each sample.
pub struct Probe {
    own: Vec<(String, i32)>,
    tick_hz: f64,
}

/// A process told apart from a later one given its pid: (pid, start).
type Key = (i32, u64);

/// The ticks of each group's processes at one instant.
pub struct Sample {
    groups: BTreeMap<String, BTreeMap<Key, u64>>,
    machine: u64,
    at: Instant,
}

/// What a group's processes spent from `before` to `after`: each one's
/// growth, all of it for one that started in between.
fn spent(before: Option<&BTreeMap<Key, u64>>, after: Option<&BTreeMap<Key, u64>>) -> u64 {
    let Some(after) = after else {
        return 0;
    };
    after
        .iter()
        .map(|(key, &t)| t.saturating_sub(before.and_then(|b| b.get(key)).copied().unwrap_or(0)))
        .sum()
}

impl Probe {
    /// `own`: (group, pid) of each process the bench started.
    pub fn new(own: Vec<(String, i32)>) -> Probe {
        let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .unwrap_or(100) as f64;
        Probe { own, tick_hz }
    }

    pub fn sample(&self) -> Sample {
        let mut groups: BTreeMap<String, BTreeMap<Key, u64>> = BTreeMap::new();
        let mut add = |group: &str, pid: i32, stat: Stat| {
            groups
                .entry(group.to_string())
                .or_default()
                .insert((pid, stat.start), stat.ticks);
        };
        for (group, pid) in &self.own {
            if let Some(stat) = stat_of(*pid) {
                add(group, *pid, stat);
            }
        }
        for (group, comm) in [(RABBITMQ, "beam.smp"), (POSTGRES, "postgres")] {
            for (pid, stat) in named(comm) {
                add(group, pid, stat);
            }
        }
        let me = std::process::id() as i32;
        if let Some(stat) = stat_of(me) {
            add(BENCH, me, stat);
        }
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine(&s))
            .unwrap_or(0);
        Sample {
            groups,
            machine,
            at: Instant::now(),
        }
    }

    /// Prints the CPU seconds per 1,000 `what` each group spent between
    /// `before` and `after`, in which `n` of them were done.
    pub fn report(&self, before: &Sample, after: &Sample, n: usize, what: &str) {
        let per_1000 = |ticks: u64| ticks as f64 / self.tick_hz * 1000.0 / n.max(1) as f64;
        let delta = |g: &str| spent(before.groups.get(g), after.groups.get(g));
        let mut order: Vec<&str> = Vec::new();
        for (g, _) in &self.own {
            if !order.contains(&g.as_str()) {
                order.push(g);
            }
        }
        order.extend([RABBITMQ, POSTGRES, BENCH]);
        let listed: u64 = order.iter().map(|g| delta(g)).sum();
        let machine = after.machine.saturating_sub(before.machine);
        let parts: Vec<String> = order
            .iter()
            .map(|g| format!("{g} {:.3}", per_1000(delta(g))))
            .collect();
        println!(
            "  CPU s per 1,000 {what} ({:.1} s window): {}; machine busy {:.3} (not in a listed process: {:.3})",
            after.at.duration_since(before.at).as_secs_f64(),
            parts.join(", "),
            per_1000(machine),
            per_1000(machine.saturating_sub(listed)),
        );
        println!(
            "    * shared with other work on this machine: these figures include other users' load"
        );
    }

    /// Prints the peak resident set (`VmHWM`) of each process the bench
    /// started.
    pub fn peak_rss(&self) {
        let parts: Vec<String> = self
            .own
            .iter()
            .enumerate()
            .map(|(i, (group, pid))| {
                let kb = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| parse_hwm(&s));
                let same = self.own.iter().filter(|(g, _)| g == group).count();
                let name = if same > 1 {
                    let k = self.own[..i].iter().filter(|(g, _)| g == group).count();
                    format!("{group}[{k}]")
                } else {
                    group.clone()
                };
                match kb {
                    Some(kb) => format!("{name} {:.1} MB", kb as f64 / 1024.0),
                    None => format!("{name} ?"),
                }
            })
            .collect();
        println!("  peak RSS (VmHWM): {}", parts.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_the_ticks_of_it_and_its_reaped_children() {
        let line =
            "2986 (beam.smp) S 1 2986 2986 0 -1 4194560 1 0 0 0 1500 300 20 7 20 0 1 0 4242 1 1";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "beam.smp".into(),
                start: 4242,
                ticks: 1500 + 300 + 20 + 7
            })
        );
    }

    #[test]
    fn a_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let line = "7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 11 22 0 0 20 0 1 0 99 1 1";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "a) b (c".into(),
                start: 99,
                ticks: 33
            })
        );
        assert_eq!(parse_stat("7 (short) R 1 2"), None);
    }

    #[test]
    fn a_process_counts_what_it_spent_in_between_and_one_that_ended_nothing() {
        let before = BTreeMap::from([((1, 10), 500), ((2, 10), 900), ((3, 10), 50)]);
        // 1 went on, 2 ended (its 900 must not make the sum go down), 3's
        // pid was reused by a process started in between, 4 is new.
        let after = BTreeMap::from([((1, 10), 520), ((3, 77), 5), ((4, 80), 30)]);
        assert_eq!(spent(Some(&before), Some(&after)), 20 + 5 + 30);
        assert_eq!(spent(None, Some(&after)), 520 + 5 + 30);
        assert_eq!(spent(Some(&before), None), 0);
    }

    #[test]
    fn the_machine_is_busy_for_all_but_idle_and_iowait() {
        let stat = "cpu  100 10 20 5000 40 1 2 3 0 0\ncpu0 50 5 10 2500 20 0 1 1 0 0\n";
        assert_eq!(parse_machine(stat), Some(100 + 10 + 20 + 1 + 2 + 3));
    }

    #[test]
    fn the_peak_resident_set_is_read_in_kilobytes() {
        let status = "Name:\tgateway\nVmPeak:\t  900 kB\nVmHWM:\t   45120 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_hwm(status), Some(45120));
        assert_eq!(parse_hwm("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn this_process_is_found_in_proc() {
        let me = stat_of(std::process::id() as i32).map(|s| s.comm);
        assert!(me.as_deref().is_some_and(|c| !c.is_empty()), "{me:?}");
    }
}
