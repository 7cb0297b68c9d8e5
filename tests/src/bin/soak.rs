//! `cargo xtask soak --minutes N`: random mixes of the data path scenarios on
//! every dataplane and topology until the time is up; then a report of what
//! moved, the gateways' peak memory, and every mismatch (there must be none).
use std::{
    panic::AssertUnwindSafe,
    process::ExitCode,
    time::{Duration, Instant},
};

use gateway_tests::{scenarios, Net};
use rand::{Rng as _, SeedableRng as _};

fn main() -> ExitCode {
    let minutes: f64 = std::env::args()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(10.0);
    let seed: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    let deadline = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let veth = Net::veth();
    let (mut runs, mut connections, mut bytes, mut failures) = (0u64, 0u64, 0u64, 0u64);
    let (mut peak_rss, mut peak_held) = (0u64, 0u64);
    let mut failed = Vec::new();
    eprintln!("soak: {minutes} minutes, seed {seed}");
    while Instant::now() < deadline {
        let net = if rng.random_range(0..2) == 0 {
            Net::Loopback
        } else {
            veth.clone()
        };
        let dp = ["ebpf", "ebpf", "splice", "userspace"][rng.random_range(0..4)];
        let which = rng.random_range(0..9);
        // Bulk both ways runs on the kernel path, moved there mid-stream or
        // from the start: where retransmitted segments straddle what TCP
        // already has (docs/datapath.md).
        let dp = match which {
            8 if rng.random_range(0..2) == 0 => "auto-ebpf",
            8 => "ebpf",
            _ => dp,
        };
        let round_seed: u64 = rng.random();
        let name = [
            "mixed",
            "mixed",
            "mixed",
            "sizes",
            "half_close",
            "early_data",
            "resets",
            "backpressure",
            "bulk",
        ][which];
        let started = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| match which {
            0..=2 => {
                let m = scenarios::mixed(&net, dp, 200, 12, round_seed, 22);
                peak_rss = peak_rss.max(m.peak_rss);
                peak_held = peak_held.max(m.peak_held);
                (m.connections, m.bytes, m.failures)
            }
            3 => {
                scenarios::sizes(&net, dp);
                (6, 2 * (16 * 1024 * 1024), 0)
            }
            4 => {
                scenarios::half_close(&net, dp);
                (4, 12 * 1024 * 1024, 0)
            }
            5 => {
                scenarios::early_data(&net, dp);
                (20, 4000, 0)
            }
            6 => {
                scenarios::resets(&net, dp);
                (2, 512 * 1024, 0)
            }
            7 => {
                scenarios::backpressure(&net, dp, 4);
                (4, 4 * 96 * 1024 * 1024, 0)
            }
            _ => {
                let b = scenarios::bulk_echo(&net, dp, 2, 2, 256 * 1024 * 1024);
                for f in &b.failures {
                    eprintln!("soak: bulk {dp}: {f}");
                }
                let bad = (b.failures.len() + b.detected.len()) as u64;
                (b.connections, b.bytes, bad)
            }
        }));
        runs += 1;
        match result {
            Ok((c, b, f)) => {
                connections += c;
                bytes += b;
                failures += f;
                if f > 0 {
                    failed.push(format!(
                        "{name} {dp} {} seed {round_seed}: {f} mismatches",
                        net.name()
                    ));
                }
            }
            Err(_) => {
                failures += 1;
                failed.push(format!(
                    "{name} {dp} {} seed {round_seed}: failed",
                    net.name()
                ));
            }
        }
        eprintln!(
            "soak: {name:<12} {dp:<9} {:<8} {:>6.1}s  total {connections} connections, {} MiB, {failures} failures",
            net.name(),
            started.elapsed().as_secs_f64(),
            bytes >> 20
        );
    }
    println!("| minutes | runs | connections | MiB moved | agent peak RSS (MiB) | peak bytes held (MiB) | failures |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {minutes} | {runs} | {connections} | {} | {} | {} | {failures} |",
        bytes >> 20,
        peak_rss >> 20,
        peak_held >> 20
    );
    for f in &failed {
        println!("- {f}");
    }
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
