//! Processes the bench starts (proxies, backends, iperf3 clients): each one
//! inside its namespace, its output in a log file, and stopped when its guard
//! drops, children included (nginx's worker outlives a killed master).
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use gateway_tests::Netns;

use crate::place::command_in;

/// How long a process gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running process; stopped (SIGTERM, then SIGKILL for it and its
/// children) when dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` in `ns`, stdout and stderr to `log`.
    pub fn spawn(name: &str, ns: &Netns, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out
            .try_clone()
            .context("cannot duplicate a log descriptor")?;
        command_in(ns, cmd)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// An error (with the end of its log) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait().context("cannot wait for a child")? {
            bail!("{} exited ({status}): {}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to end by itself; kills it
    /// after that.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("process already stopped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("cannot wait for a child")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines of its log, on one line, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        if tail.is_empty() {
            format!("(nothing in {})", self.log.display())
        } else {
            tail
        }
    }

    /// The resident memory of the process and its children, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.pid();
        std::iter::once(pid)
            .chain(descendants(pid))
            .map(rss_of)
            .sum()
    }
}

impl Proc {
    /// Stops the process (SIGTERM, then SIGKILL for it and its children)
    /// and returns everything it wrote.
    pub fn stop(mut self) -> String {
        self.terminate();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // Found before the parent goes: its children are re-parented then.
        let family = descendants(child.id());
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        for pid in family {
            signal(pid, libc::SIGKILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on a process we started (or its child) takes no pointers.
    unsafe { libc::kill(pid, sig) };
}

/// Parent pid from `/proc/PID/stat` (the field after the parenthesised name).
fn parent_of(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process below `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some((p, parent_of(&stat)?))
        })
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    // Bounded: each pid is taken at most once.
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &parents {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// `VmRSS` of one process, in bytes (0 if it is gone).
fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::parent_of;

    #[test]
    fn the_parent_follows_the_name_even_with_spaces_in_it() {
        assert_eq!(parent_of("42 (nginx: worker) S 41 42 42 0"), Some(41));
        assert_eq!(parent_of("7 (a) b) R 1 7"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }
}
