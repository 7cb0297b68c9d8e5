//! What the bench reads from the system: CPU time from `/proc/stat`, kernel
//! memory from `/proc/meminfo` and `/proc/net/sockstat`, the open-files
//! limit, and a description of the machine.
use std::{process::Command, time::SystemTime};

use anyhow::Context as _;

/// Busy CPU time of the whole system, all CPUs, in clock ticks: user, nice,
/// system, irq and softirq (not idle, iowait or steal). Kernel work done on
/// behalf of sockets (softirq, the verdict program) is charged here, not to
/// the process that owns the socket.
pub fn busy_ticks() -> anyhow::Result<u64> {
    Ok(cpu_ticks()?.busy())
}

/// The whole system's CPU time so far, all CPUs, by what it went to
/// (`/proc/stat`'s `cpu` line, clock ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user, nice, system, idle, iowait, irq, softirq, steal.
    fields: [u64; 8],
}

impl CpuTicks {
    fn busy(&self) -> u64 {
        [0, 1, 2, 5, 6].iter().map(|&i| self.fields[i]).sum()
    }

    /// Time the hypervisor gave this machine's virtual CPUs to someone
    /// else while they had work.
    pub fn steal(&self) -> u64 {
        self.fields[7]
    }

    pub fn total(&self) -> u64 {
        self.fields.iter().sum()
    }

    /// Steal as a share of all CPU time since `before`, in percent.
    pub fn steal_pct_since(&self, before: &CpuTicks) -> f64 {
        let total = self.total().saturating_sub(before.total());
        if total == 0 {
            return 0.0;
        }
        self.steal().saturating_sub(before.steal()) as f64 * 100.0 / total as f64
    }
}

pub fn cpu_ticks() -> anyhow::Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_cpu(&stat).context("/proc/stat has no `cpu` line")
}

fn parse_cpu(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut t = CpuTicks::default();
    for (field, v) in t.fields.iter_mut().zip(line.split_whitespace().skip(1)) {
        *field = v.parse().unwrap_or(0);
    }
    Some(t)
}

/// Clock ticks per second (`/proc/stat`'s unit).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Kernel memory in slab caches (`Slab:` of `/proc/meminfo`), in bytes:
/// sockets, their inodes and files, epoll items, BPF map elements.
pub fn slab_bytes() -> anyhow::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("/proc/meminfo has no Slab line")
}

/// Memory TCP buffers hold, system-wide (`TCP: ... mem` of
/// `/proc/net/sockstat`, in pages), in bytes.
pub fn tcp_mem_bytes() -> anyhow::Result<u64> {
    let stat =
        std::fs::read_to_string("/proc/net/sockstat").context("cannot read /proc/net/sockstat")?;
    let pages = parse_tcp_mem(&stat).context("/proc/net/sockstat has no TCP mem")?;
    Ok(pages * page_size())
}

fn parse_tcp_mem(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "mem")?;
    words.get(at + 1)?.parse().ok()
}

fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Raises the open-files soft limit to the hard one (children inherit it);
/// returns it.
pub fn raise_nofile() -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(lim.rlim_cur)
}

/// What the numbers were taken on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    pub nofile_limit: u64,
    pub tools: Vec<String>,
}

impl Machine {
    pub fn describe(nofile_limit: u64) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
        let tools = [
            ("haproxy", &["-v"][..]),
            ("nginx", &["-v"][..]),
            ("iperf3", &["--version"][..]),
        ]
        .iter()
        .filter_map(|(tool, args)| first_line(tool, args))
        .collect();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            date: utc_now(),
            commit: first_line("git", &["describe", "--always", "--dirty"])
                .unwrap_or_else(|| "unknown".to_owned()),
            nofile_limit,
            tools,
        }
    }
}

/// The first line a command prints (stdout, else stderr: nginx -v).
fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    let line = String::from_utf8_lossy(&text)
        .lines()
        .next()?
        .trim()
        .to_owned();
    (!line.is_empty()).then_some(line)
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let (y, m, d) = civil_date(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (counting in
/// 400-year eras of 146,097 days whose years start on 1 March).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32, day as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_454), (2026, 1, 1));
        assert_eq!(civil_date(-1), (1969, 12, 31));
    }

    #[test]
    fn proc_files() {
        let stat = "cpu  10 2 30 1000 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        let t = parse_cpu(stat).expect("a cpu line");
        assert_eq!(t.busy(), 10 + 2 + 30 + 6 + 7);
        assert_eq!(t.steal(), 8);
        assert_eq!(t.total(), 10 + 2 + 30 + 1000 + 5 + 6 + 7 + 8);
        let later = parse_cpu("cpu  20 2 30 1060 5 6 7 18 0 0\n").expect("a cpu line");
        assert!((later.steal_pct_since(&t) - 12.5).abs() < 1e-9);
        let sockstat = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 1 alloc 4 mem 12\n";
        assert_eq!(parse_tcp_mem(sockstat), Some(12));
    }
}
