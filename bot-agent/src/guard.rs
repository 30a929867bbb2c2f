//! The guard: no automation or script outlives its agent.
//!
//! The agent does not start a job's process directly but through itself,
//! `bot-agent __guard <grace_ms> -- program args…`. The guard leads the
//! job's process group and starts the program in it; it exits as the
//! program does (same code, or killed by the same signal), so the agent
//! sees the program's status. The agent's SIGTERM to the group reaches the
//! program; the guard holds its own (blocked) until the program is gone,
//! so the program keeps its grace period. Meanwhile it watches its parent: when the
//! agent is gone (SIGKILLed, crashed), the guard stops the whole group —
//! SIGTERM, then SIGKILL after the grace period, itself included — within
//! `WATCH` of the agent's death. (A parent-death signal would be quicker
//! but needs `unsafe` between fork and exec, and fires when the spawning
//! *thread* ends, not the process.)

use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, pthread_sigmask, raise};
use nix::unistd::{Pid, getpgrp};
use std::ffi::OsString;
use std::os::unix::process::{ExitStatusExt, parent_id};
use std::time::Duration;

/// The first argument that makes `bot-agent` a guard.
pub const ARG: &str = "__guard";

/// How often the guard looks for its agent.
const WATCH: Duration = Duration::from_millis(100);

/// The guard's argv before the program's: `__guard <grace_ms> --`.
pub fn prefix(grace: Duration) -> Vec<String> {
    vec![ARG.into(), grace.as_millis().to_string(), "--".into()]
}

/// Runs the guard on the arguments after `__guard`; returns the exit code
/// (or does not return: killed by the program's signal, or by its own
/// group's SIGKILL).
pub fn main(args: &[OsString]) -> i32 {
    let (grace, argv) = match parse(args) {
        Some(parsed) => parsed,
        None => {
            eprintln!("usage: bot-agent {ARG} <grace_ms> -- program [args…]");
            return 2;
        }
    };
    let agent = parent_id();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("guard: {e}");
            return 125;
        }
    };
    runtime.block_on(watch(agent, grace, argv))
}

fn parse(args: &[OsString]) -> Option<(Duration, Vec<OsString>)> {
    let grace: u64 = args.first()?.to_str()?.parse().ok()?;
    if args.get(1)? != "--" || args.len() < 3 {
        return None;
    }
    Some((Duration::from_millis(grace), args[2..].to_vec()))
}

async fn watch(agent: u32, grace: Duration, argv: Vec<OsString>) -> i32 {
    let Some((program, args)) = argv.split_first() else {
        return 2;
    };
    // Inherits stdio, environment, directory and the process group.
    let mut child = match tokio::process::Command::new(program).args(args).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {}: {e}", program.to_string_lossy());
            // As a shell does for a program that cannot be run.
            return 127;
        }
    };
    // Blocked only now: the program started with the default mask. The
    // runtime is single-threaded, so no other thread takes the signal.
    let term = {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set
    };
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), None);
    let mut tick = tokio::time::interval(WATCH);
    loop {
        tokio::select! {
            status = child.wait() => {
                let Ok(status) = status else { return 125 };
                if let Some(code) = status.code() {
                    return code;
                }
                // Die of the program's signal, so the agent reads it as
                // the program's own fate (a group SIGTERM held back so far
                // is delivered here too).
                let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&term), None);
                if let Some(signal) = status.signal().and_then(|s| Signal::try_from(s).ok()) {
                    let _ = raise(signal);
                }
                return 128 + status.signal().unwrap_or(0);
            }
            _ = tick.tick() => {
                if parent_id() != agent {
                    orphaned(&mut child, grace).await;
                }
            }
        }
    }
}

/// The agent is gone: stop the group (the guard holds back the SIGTERM it
/// sends, then takes the group's SIGKILL with the rest).
async fn orphaned(child: &mut tokio::process::Child, grace: Duration) -> ! {
    let group: Pid = getpgrp();
    let _ = killpg(group, Signal::SIGTERM);
    let _ = tokio::time::timeout(grace, child.wait()).await;
    let _ = killpg(group, Signal::SIGKILL);
    // Unreachable in practice: the SIGKILL above includes the guard.
    std::process::exit(137)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_guard_reads_its_grace_and_the_program() {
        let (grace, argv) = parse(&os(&["1500", "--", "sh", "-c", "exit 3"])).expect("parses");
        assert_eq!(grace, Duration::from_millis(1500));
        assert_eq!(argv, os(&["sh", "-c", "exit 3"]));
        assert_eq!(prefix(grace), vec!["__guard", "1500", "--"]);
    }

    #[test]
    fn a_guard_without_a_program_or_grace_is_refused() {
        assert!(parse(&os(&["1500", "--"])).is_none());
        assert!(parse(&os(&["soon", "--", "true"])).is_none());
        assert!(parse(&os(&["1500", "true"])).is_none());
        assert!(parse(&os(&[])).is_none());
    }
}
