//! Results: the figures, their samples over repetitions, the summary of each
//! (median, min, max), and the markdown report with ratios to `direct` and
//! to HAProxy.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{sys::Machine, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One figure of the table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    /// Shorter, for the chart.
    pub short: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// Shown as a whole number with thousands separators.
    pub count: bool,
}

const fn metric(
    key: &'static str,
    label: &'static str,
    short: &'static str,
    unit: &'static str,
    better: Better,
    count: bool,
) -> Metric {
    Metric {
        key,
        label,
        short,
        unit,
        better,
        count,
    }
}

pub const BULK1: &str = "bulk1_gbit_s";
pub const BULK8: &str = "bulk8_gbit_s";
pub const RR_P50: &str = "rr_p50_us";
pub const RR_P99: &str = "rr_p99_us";
pub const CONN_RATE: &str = "conn_per_s";
pub const CPU: &str = "cpu_s_per_gb";
pub const KERNEL_SHARE: &str = "bulk_kernel_pct";
/// The verdict program's average run time, from the kernel's run-time
/// statistics (`--bpf-stats`), over the bulk runs and over the echo runs
/// (round trips, new connections, idle connections).
pub const VERDICT_BULK_NS: &str = "verdict_bulk_ns_per_run";
pub const VERDICT_ECHO_NS: &str = "verdict_echo_ns_per_run";
pub const IDLE_CONNS: &str = "idle_conns";
pub const IDLE_RSS: &str = "idle_rss_mib";
pub const IDLE_KERNEL: &str = "idle_kernel_mib";
/// Not a row: the host's steal time during the round-trip run, in percent
/// of all CPU time (see [`steal_paragraph`]).
pub const RR_STEAL: &str = "rr_steal_pct";

/// The table's rows, in order. Samples carry more keys (raw counts,
/// retransmits, means); those are in results.json only.
pub const METRICS: [Metric; 12] = [
    metric(
        BULK1,
        "bulk, 1 connection",
        "bulk ×1",
        "Gbit/s",
        Better::Higher,
        false,
    ),
    metric(
        BULK8,
        "bulk, 8 connections",
        "bulk ×8",
        "Gbit/s",
        Better::Higher,
        false,
    ),
    metric(
        RR_P50,
        "64 B round trip, p50",
        "RTT p50",
        "µs",
        Better::Lower,
        false,
    ),
    metric(
        RR_P99,
        "64 B round trip, p99",
        "RTT p99",
        "µs",
        Better::Lower,
        false,
    ),
    metric(
        CONN_RATE,
        "new connections (8 in flight)",
        "conn/s",
        "/s",
        Better::Higher,
        true,
    ),
    metric(
        CPU,
        "CPU per GB, 1 connection",
        "CPU/GB",
        "CPU-s/GB",
        Better::Lower,
        false,
    ),
    metric(
        KERNEL_SHARE,
        "bulk bytes redirected in the kernel",
        "in kernel",
        "%",
        Better::Higher,
        false,
    ),
    metric(
        VERDICT_BULK_NS,
        "verdict program, bulk runs, per run",
        "verdict bulk",
        "ns",
        Better::Lower,
        false,
    ),
    metric(
        VERDICT_ECHO_NS,
        "verdict program, echo runs, per run",
        "verdict echo",
        "ns",
        Better::Lower,
        false,
    ),
    metric(
        IDLE_CONNS,
        "idle connections held",
        "idle conns",
        "",
        Better::Higher,
        true,
    ),
    metric(
        IDLE_RSS,
        "proxy RSS, idle connections",
        "proxy RSS",
        "MiB",
        Better::Lower,
        false,
    ),
    metric(
        IDLE_KERNEL,
        "kernel memory, idle connections",
        "kernel mem",
        "MiB",
        Better::Lower,
        false,
    ),
];

/// What one contender measured in one repetition.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sample {
    pub rep: usize,
    pub metrics: BTreeMap<&'static str, f64>,
    /// Figure key -> why it has no value this time.
    pub errors: BTreeMap<&'static str, String>,
    /// Figure key -> what to know about its value (fewer idle connections
    /// than asked for, failed connection attempts).
    pub notes: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(values: &[f64]) -> Option<Summary> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContenderResult {
    pub name: &'static str,
    pub command: String,
    pub samples: Vec<Sample>,
    pub summary: BTreeMap<&'static str, Summary>,
}

impl ContenderResult {
    pub fn new(name: &'static str, command: String) -> Self {
        ContenderResult {
            name,
            command,
            samples: Vec::new(),
            summary: BTreeMap::new(),
        }
    }

    /// Fills `summary` from the samples, for every key any sample has.
    pub fn summarise(&mut self) {
        let keys: std::collections::BTreeSet<&'static str> = self
            .samples
            .iter()
            .flat_map(|s| s.metrics.keys().copied())
            .collect();
        self.summary = keys
            .into_iter()
            .filter_map(|k| {
                let values: Vec<f64> = self
                    .samples
                    .iter()
                    .filter_map(|s| s.metrics.get(k).copied())
                    .collect();
                Some((k, Summary::of(&values)?))
            })
            .collect();
    }

    pub fn median(&self, key: &str) -> Option<f64> {
        self.summary.get(key).map(|s| s.median)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LayoutResult {
    pub name: &'static str,
    pub description: &'static str,
    pub seconds: f64,
    pub contenders: Vec<ContenderResult>,
}

impl LayoutResult {
    pub fn contender(&self, name: &str) -> Option<&ContenderResult> {
        self.contenders.iter().find(|c| c.name == name)
    }
}

/// Everything results.json holds.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: Machine,
    pub plan: Plan,
    pub layouts: Vec<LayoutResult>,
}

/// A value with about three significant digits; counts and large values as
/// whole numbers with thousands separators.
pub fn number(v: f64, count: bool) -> String {
    let a = v.abs();
    if count || a >= 1000.0 {
        return thousands(v.round() as i64);
    }
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

fn label(m: &Metric) -> String {
    if m.unit.is_empty() {
        format!("{} {}", m.label, arrow(m))
    } else {
        format!("{}, {} {}", m.label, m.unit, arrow(m))
    }
}

/// One cell: `median (min–max)`, or why there is none.
fn cell(c: &ContenderResult, m: &Metric) -> String {
    match c.summary.get(m.key) {
        Some(s) if s.n > 1 && s.min != s.max => format!(
            "{} ({}–{})",
            number(s.median, m.count),
            number(s.min, m.count),
            number(s.max, m.count)
        ),
        Some(s) => number(s.median, m.count),
        None if c.samples.iter().any(|s| s.errors.contains_key(m.key)) => "failed".to_owned(),
        None => "—".to_owned(),
    }
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
        _ => "—".to_owned(),
    }
}

/// The whole report.
pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let p = &r.plan;
    let _ = writeln!(md, "# gateway benchmark\n");
    let _ = writeln!(
        md,
        "Taken {} on {}, {} cores, Linux {}; gateway {} (release build).\n",
        m.date, m.cpu, m.cores, m.kernel, m.commit
    );
    let _ = writeln!(
        md,
        "{} run: {} repetitions, contenders interleaved in each, each repetition starting one further on (A B C, B C A, C A B, …); \
         each cell is the median over repetitions with (min–max). Bulk: iperf3, {} s per run, \
         client to server. Round trips: {} per run, 64 B each way, one connection, TCP_NODELAY. \
         New connections: 8 clients for {} s, each connecting, sending 64 B, reading the echo, \
         closing. CPU per GB: busy time of the whole system (user, system, irq, softirq from \
         /proc/stat) during the 1-connection bulk run, per 10^9 bytes received. Idle: up to {} \
         connections opened through the proxy and held, each checked by a 1-byte echo{}; proxy \
         RSS is the proxy's processes' VmRSS, kernel memory the growth of slab memory \
         (sockets, files, epoll, BPF map elements) with them open. Every process has an \
         open-files limit of {}; a proxy holds two descriptors per connection. Nothing is \
         pinned to a CPU: client, proxy, backend and softirqs share the {} cores. A proxy is \
         started afresh for each group of figures.\n",
        if p.quick { "Quick" } else { "Full" },
        p.reps,
        p.bulk_secs,
        thousands(p.round_trips as i64),
        p.conn_secs,
        thousands(p.idle_target as i64),
        if p.idle_every_rep {
            ""
        } else {
            " (first repetition only)"
        },
        thousands(m.nofile_limit as i64),
        m.cores,
    );
    let _ = writeln!(md, "Contenders:\n");
    if let Some(l) = r.layouts.first() {
        for c in &l.contenders {
            let _ = writeln!(md, "- `{}`: {}", c.name, c.command);
        }
    }
    let _ = writeln!(
        md,
        "\nBackends: iperf3 -s \
         for bulk, an echo server (one thread, tokio) for the rest. Tools: {}.\n",
        m.tools.join("; ")
    );
    for l in &r.layouts {
        layout(&mut md, l);
    }
    md
}

fn layout(md: &mut String, l: &LayoutResult) {
    let _ = writeln!(md, "## {}: {}\n", l.name, l.description);
    let names: Vec<&str> = l.contenders.iter().map(|c| c.name).collect();
    let _ = writeln!(md, "| figure | {} |", names.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(names.len()));
    for m in &METRICS {
        let cells: Vec<String> = l.contenders.iter().map(|c| cell(c, m)).collect();
        let _ = writeln!(md, "| {} | {} |", label(m), cells.join(" | "));
    }
    let direct = l.contender("direct");
    let haproxy = l.contender("haproxy");
    let others: Vec<&ContenderResult> =
        l.contenders.iter().filter(|c| c.name != "direct").collect();
    if !others.is_empty() && (direct.is_some() || haproxy.is_some()) {
        let _ = writeln!(
            md,
            "\nRatios of medians, to `direct` / to `haproxy` (↑: higher is better, ↓: lower \
             is better):\n"
        );
        let names: Vec<&str> = others.iter().map(|c| c.name).collect();
        let _ = writeln!(md, "| figure | {} |", names.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(names.len()));
        for m in &METRICS {
            let base_d = direct.and_then(|d| d.median(m.key));
            let base_h = haproxy.and_then(|h| h.median(m.key));
            if base_d.is_none() && base_h.is_none() {
                continue;
            }
            let cells: Vec<String> = others
                .iter()
                .map(|c| {
                    let v = c.median(m.key);
                    format!("{} / {}", ratio(v, base_d), ratio(v, base_h))
                })
                .collect();
            let _ = writeln!(md, "| {} {} | {} |", m.label, arrow(m), cells.join(" | "));
        }
    }
    let failures: Vec<String> = l
        .contenders
        .iter()
        .flat_map(|c| {
            c.samples.iter().flat_map(move |s| {
                s.errors.iter().map(move |(k, e)| {
                    format!("- `{}`, repetition {}, {k}: {e}", c.name, s.rep + 1)
                })
            })
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailures:\n\n{}", failures.join("\n"));
    }
    let notes: Vec<String> = l
        .contenders
        .iter()
        .flat_map(|c| {
            c.samples.iter().flat_map(move |s| {
                s.notes.iter().map(move |(k, n)| {
                    format!("- `{}`, repetition {}, {k}: {n}", c.name, s.rep + 1)
                })
            })
        })
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\nNotes:\n\n{}", notes.join("\n"));
    }
    if let Some(p) = steal_paragraph(l) {
        let _ = writeln!(md, "\n{p}");
    }
    let _ = writeln!(md, "\n({:.0} s for this layout.)\n", l.seconds);
}

/// How much of the round-trip runs' time the hypervisor took from this
/// machine's CPUs (steal), and the tails of the runs with the least and the
/// most of it: a virtual CPU taken away stalls every round trip in flight,
/// whichever proxy carries it. The tail is p99 / p50 of a run, so that the
/// runs of all contenders can be pooled.
pub fn steal_paragraph(l: &LayoutResult) -> Option<String> {
    let mut runs: Vec<(f64, f64)> = l
        .contenders
        .iter()
        .flat_map(|c| &c.samples)
        .filter_map(|s| {
            let steal = *s.metrics.get(RR_STEAL)?;
            let tail = s.metrics.get(RR_P99)? / s.metrics.get(RR_P50)?;
            Some((steal, tail))
        })
        .collect();
    if runs.len() < 4 {
        return None;
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let half = runs.len() / 2;
    let steal: Vec<f64> = runs.iter().map(|r| r.0).collect();
    let tails = |part: &[(f64, f64)]| {
        Summary::of(&part.iter().map(|r| r.1).collect::<Vec<_>>()).map_or(f64::NAN, |s| s.median)
    };
    let all = Summary::of(&steal)?;
    Some(format!(
        "Steal (CPU time the hypervisor gave to others) during the {} round-trip runs: \
         median {:.2}%, up to {:.2}%. p99 / p50 of the runs with the least steal (up to \
         {:.2}%): {:.2}; with the most: {:.2}.",
        runs.len(),
        all.median,
        all.max,
        steal[half - 1],
        tails(&runs[..half]),
        tails(&runs[runs.len() - half..]),
    ))
}

pub fn arrow(m: &Metric) -> &'static str {
    match m.better {
        Better::Higher => "↑",
        Better::Lower => "↓",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).expect("values");
        assert_eq!(s.median, 2.5);
        assert!(Summary::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn numbers() {
        assert_eq!(number(1234.4, false), "1,234");
        assert_eq!(number(12.345, false), "12.3");
        assert_eq!(number(0.01234, false), "0.012");
        assert_eq!(number(9968.0, true), "9,968");
        assert_eq!(thousands(-1_234_567), "-1,234,567");
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25×");
        assert_eq!(ratio(Some(1.0), None), "—");
    }

    #[test]
    fn cells_show_spread_and_failures() {
        let mut c = ContenderResult::new("x", String::new());
        for (rep, v) in [3.0, 1.0, 2.0].into_iter().enumerate() {
            let mut s = Sample {
                rep,
                ..Sample::default()
            };
            s.metrics.insert(BULK1, v);
            s.errors.insert(BULK8, "refused".into());
            c.samples.push(s);
        }
        c.summarise();
        assert_eq!(cell(&c, &METRICS[0]), "2.00 (1.00–3.00)");
        assert_eq!(cell(&c, &METRICS[1]), "failed");
        assert_eq!(cell(&c, &METRICS[2]), "—");
    }

    #[test]
    fn steal_splits_the_round_trip_runs_in_halves() {
        let mut c = ContenderResult::new("x", String::new());
        // (steal %, p50, p99): the runs with more steal have longer tails.
        for (rep, (steal, p50, p99)) in [
            (0.0, 20.0, 40.0),
            (2.0, 20.0, 200.0),
            (0.1, 30.0, 60.0),
            (1.5, 30.0, 300.0),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = Sample {
                rep,
                ..Sample::default()
            };
            s.metrics.insert(RR_STEAL, steal);
            s.metrics.insert(RR_P50, p50);
            s.metrics.insert(RR_P99, p99);
            c.samples.push(s);
        }
        let l = LayoutResult {
            name: "lo",
            description: "",
            seconds: 0.0,
            contenders: vec![c],
        };
        let p = steal_paragraph(&l).expect("four runs");
        assert!(
            p.contains("4 round-trip runs: median 0.80%, up to 2.00%"),
            "{p}"
        );
        assert!(
            p.contains("least steal (up to 0.10%): 2.00; with the most: 10.00"),
            "{p}"
        );
    }
}
