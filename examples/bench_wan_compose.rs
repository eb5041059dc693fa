//! `bash bench/wan-compose`: the payment system of issue #14 (a Compose project,
//! nginx as a container routing by service name, two services of two instances)
//! taken from v1.0.0 to v1.1.0 by `capstan deploy`, with capstan's SSH link to the
//! host going through a proxy that delays each direction by half a round trip:
//! 0 and 150 ms round trip (`BENCH_RTTS`), runs alternating (`BENCH_RUNS`, default
//! 3). Under the load (100 GET/s, 25 POST/s over 8 keep-alive
//! connections) the whole time. Prints, per delay, the medians of the deploy time
//! and of the time per instance, each against loopback, the failed requests and
//! the charges recorded twice or missing, and each step's time per instance.

// A program run by hand (bench/) whose printed figures are its product, over the
// tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::wan::ReportTimes;
use support::{median, ComposeCli, KeepAliveStats, LedgerCheck, PaymentImages, PaymentSystem, Sandbox};

struct Sample {
    wall_ms: u64,
    /// From the first instance's first step to the last instance's last step, per instance.
    per_instance_ms: u64,
    /// From capstan's start to the first instance's first step.
    start_ms: u64,
    stats: KeepAliveStats,
    check: LedgerCheck,
    /// Milliseconds per step name, per instance.
    steps: BTreeMap<String, u64>,
}

fn run(sb: &Sandbox, rtt_ms: u64) -> Sample {
    PaymentImages::get().forget_all_but_start(sb);
    let sys = PaymentSystem::new("benchwan", ComposeCli::V2);
    let proxy = support::wan::to_sandbox(sb, Duration::from_millis(rtt_ms));
    // The config, its one host reached through the proxy (the sandbox sshd's
    // host key, at the proxy's port, in a known_hosts of its own).
    let known_hosts = support::wan::known_hosts(sys.dir(), sb, &proxy);
    let yaml = sys
        .render_config(&sys.config())
        .replace(&format!("  - {}\n", sb.ssh_host()), &format!("  - {}@127.0.0.1:{}\n", sb.ssh_user(), proxy.port()))
        .replace(&sb.known_hosts().display().to_string(), &known_hosts.display().to_string());
    sys.write_config(&yaml);
    let ((wall, run), stats, check) = sys.under_load(&format!("capstan at {rtt_ms} ms"), || {
        let t = Instant::now();
        // CAPSTAN_LOG=capstan=debug: each call to the host, timed (kept with BENCH_STDERR=DIR).
        let log = std::env::var("CAPSTAN_LOG").ok();
        let env: Vec<(&str, &str)> = log.iter().map(|l| ("CAPSTAN_LOG", l.as_str())).collect();
        let run = sys.capstan_with(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"], &env);
        (t.elapsed(), run)
    });
    if let Ok(dir) = std::env::var("BENCH_STDERR") {
        let _ = std::fs::write(format!("{dir}/capstan-compose-{rtt_ms}ms-{wall:?}.log"), &run.stderr);
    }
    assert!(run.success(), "capstan failed over {rtt_ms} ms: {run}");
    sys.assert_versions("v1.1.0", "v1.1.0");
    let report: Value = serde_json::from_str(&run.stdout).expect("capstan's JSON report");
    let times = ReportTimes::of(&report);
    Sample {
        wall_ms: wall.as_millis() as u64,
        per_instance_ms: times.per_instance_ms(),
        start_ms: times.first_ms,
        stats,
        check,
        steps: times.per_instance_steps(),
    }
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(3);
    let rtts = support::wan::bench_rtts("0 150");
    let sb = Sandbox::get();
    PaymentImages::get();
    let mut samples: Vec<Vec<Sample>> = rtts.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (k, rtt) in rtts.iter().enumerate() {
            let s = run(sb, *rtt);
            eprintln!(
                "run {} at {rtt} ms: {} ms (start {} ms, per instance {} ms), GET {}/{} failed, POST {}/{} not 2xx, {} 5xx, {} duplicate and {} missing charges",
                i + 1,
                s.wall_ms,
                s.start_ms,
                s.per_instance_ms,
                s.stats.get_failed,
                s.stats.get_sent,
                s.stats.post_sent - s.stats.post_2xx,
                s.stats.post_sent,
                s.stats.total_5xx(),
                s.check.duplicates.len(),
                s.check.missing.len()
            );
            samples[k].push(s);
        }
    }
    let med = |k: usize, f: fn(&Sample) -> u64| median(samples[k].iter().map(f).collect());
    let sum = |k: usize, f: &dyn Fn(&Sample) -> u64| samples[k].iter().map(f).sum::<u64>();
    println!("\nThe payment system (2 services x 2 instances, nginx in a container), v1.0.0 -> v1.1.0 over a delayed SSH link; median of {runs} run(s), runs alternating\n");
    println!(
        "| round trip | wall | start | per instance | vs {} ms: start | vs {} ms: per instance | failed GETs | POSTs not 2xx | 5xx | duplicate charges | answered charges missing |",
        rtts[0], rtts[0]
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let s = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    let signed = |ms: i64| format!("{:+.2} s", ms as f64 / 1000.0);
    for (k, rtt) in rtts.iter().enumerate() {
        println!(
            "| {rtt} ms | {} | {} | {} | {} | {} | {} of {} | {} of {} | {} | {} | {} |",
            s(med(k, |x| x.wall_ms)),
            s(med(k, |x| x.start_ms)),
            s(med(k, |x| x.per_instance_ms)),
            signed(med(k, |x| x.start_ms) as i64 - med(0, |x| x.start_ms) as i64),
            signed(med(k, |x| x.per_instance_ms) as i64 - med(0, |x| x.per_instance_ms) as i64),
            sum(k, &|x| x.stats.get_failed),
            sum(k, &|x| x.stats.get_sent),
            sum(k, &|x| x.stats.post_sent - x.stats.post_2xx),
            sum(k, &|x| x.stats.post_sent),
            sum(k, &|x| x.stats.total_5xx()),
            sum(k, &|x| x.check.duplicates.len() as u64),
            sum(k, &|x| x.check.missing.len() as u64),
        );
    }
    support::wan::print_steps_table(&rtts, &samples.iter().map(|runs| runs.iter().map(|x| &x.steps).collect()).collect::<Vec<_>>());
}
