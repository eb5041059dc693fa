//! `bash bench/hosts`: the same v1 -> v2 release deployed by capstan to fleets
//! of 1, 5, 10 and 20 real hosts on this machine (tests/it/support/fleet.rs: each
//! host its own network and mount namespace, dockerd, sshd, nginx and 2 demo
//! instances), with every host rolled at once (`rollout: { parallel: N }`) and
//! load through every host's nginx. A fresh fleet per size (and per run), so
//! each deploy pulls v2 on every host.
//!
//! Prints per fleet size: the wall time of `capstan deploy`, its ratio to one
//! host, the time the hosts spent in their steps (median and slowest host), the
//! fleet's startup time and memory, the machine's CPU use (the fleet idle,
//! with the load, during the deploy), and failed requests; and the machine
//! (cores, memory).
//!
//! BENCH_HOSTS="1 5 10 20" (sizes), BENCH_RUNS=1 (fresh fleets per size;
//! medians), BENCH_RPS=10 (requests/s through each host's nginx; 0: no load).

// A program run by hand (bench/, the demo) whose printed figures are its product,
// over the tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{edit, median, AppOptions, Fleet, Sandbox};

struct Sample {
    hosts: usize,
    startup_ms: u64,
    /// The proportional set size of all the fleet's processes, in MiB.
    fleet_mib: u64,
    deploy_ms: u64,
    /// Per host, the sum of its steps' durations (the report's), in ms.
    host_steps_ms: Vec<u64>,
    /// Per step name, the median over hosts of its duration summed over the host's instances, in ms.
    steps: BTreeMap<String, u64>,
    /// Share of the machine's CPU time busy: the fleet idle, with the load, and during the deploy (3 s windows before it).
    cpu_idle_fleet: f64,
    cpu_load: f64,
    cpu_busy: f64,
    sent: u64,
    failed: u64,
    parallel_key: bool,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The proportional set size of a process, in KiB (0 if it is gone).
fn pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines().find(|l| l.starts_with("Pss:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines().find(|l| l.starts_with(&format!("{key}:"))).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// (busy, total) jiffies of all CPUs.
fn cpu_times() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Share of the machine's CPU time busy over the next `window`.
fn cpu_busy_over(window: Duration) -> f64 {
    let a = cpu_times();
    std::thread::sleep(window);
    let b = cpu_times();
    (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64
}

fn one_run(sb: &Sandbox, n: usize, rps: u32) -> Sample {
    let fleet = Fleet::start(sb, n, "bench", AppOptions::default());
    let startup_ms = fleet.startup_time().as_millis() as u64;
    std::thread::sleep(Duration::from_secs(1));
    let fleet_mib = fleet.host_list().iter().flat_map(|h| h.pids()).map(pss_kib).sum::<u64>() / 1024;

    // Every host at once; if this capstan does not know `rollout:`, without it
    // (every host is rolled at once then too).
    let base = fleet.default_config();
    let with_key = edit(&base).set("rollout", serde_json::json!({ "parallel": n })).text();
    fleet.write_config(&with_key);
    let check = fleet.capstan(&["check", "--version", "v2"]);
    let parallel_key = check.success();
    if !parallel_key {
        eprintln!("capstan check refused `rollout: {{ parallel: {n} }}`; benchmarking without it:\n{check}");
        fleet.write_config(&base);
    }

    let cpu_idle_fleet = cpu_busy_over(Duration::from_secs(3));
    let loads = if rps > 0 { fleet.load(rps) } else { Vec::new() };
    std::thread::sleep(Duration::from_millis(500));
    let cpu_load = cpu_busy_over(Duration::from_secs(3));
    let cpu0 = cpu_times();
    let t = Instant::now();
    let run = fleet.capstan(&["deploy", "--version", "v2", "--json"]);
    let deploy_ms = t.elapsed().as_millis() as u64;
    let cpu1 = cpu_times();
    std::thread::sleep(Duration::from_millis(500));
    let stats: Vec<_> = loads.into_iter().map(|l| l.stop()).collect();
    assert!(run.success(), "capstan deploy to {n} hosts failed:\n{run}\n{}", fleet.logs());
    let versions = fleet.versions();
    assert!(versions.iter().flatten().all(|v| v == "v2"), "not every instance runs v2: {versions:?}");

    let report: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    // Per host: step name -> ms, summed over the host's instances.
    let per_host: Vec<BTreeMap<String, u64>> = report["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let mut steps = BTreeMap::new();
                    for s in h["instances"].as_array().into_iter().flatten().flat_map(|i| i["steps"].as_array().cloned().unwrap_or_default()) {
                        if let (Some(name), Some(ms)) = (s["step"].as_str(), s["duration_ms"].as_u64()) {
                            *steps.entry(name.to_string()).or_insert(0) += ms;
                        }
                    }
                    steps
                })
                .collect()
        })
        .unwrap_or_default();
    let host_steps_ms: Vec<u64> = per_host.iter().map(|h| h.values().sum()).collect();
    let names: std::collections::BTreeSet<&String> = per_host.iter().flat_map(|h| h.keys()).collect();
    let steps = names.into_iter().map(|name| (name.clone(), median(per_host.iter().map(|h| h.get(name).copied().unwrap_or(0)).collect()))).collect();
    let cpu_busy = (cpu1.0 - cpu0.0) as f64 / (cpu1.1 - cpu0.1).max(1) as f64;
    let sent = stats.iter().map(|s| s.sent).sum();
    let failed = stats.iter().map(|s| s.failed).sum();
    for s in stats.iter().filter(|s| s.failed > 0) {
        eprintln!("failed requests: {s}");
    }
    let sample = Sample { hosts: n, startup_ms, fleet_mib, deploy_ms, host_steps_ms, steps, cpu_idle_fleet, cpu_load, cpu_busy, sent, failed, parallel_key };
    eprintln!(
        "[bench] {n} hosts: startup {:.1} s, fleet memory {} MiB, deploy {:.1} s, CPU busy {:.0}% idle fleet / {:.0}% with load / {:.0}% deploying, failed {failed} of {sent}",
        startup_ms as f64 / 1000.0,
        sample.fleet_mib,
        deploy_ms as f64 / 1000.0,
        cpu_idle_fleet * 100.0,
        cpu_load * 100.0,
        cpu_busy * 100.0
    );
    drop(fleet);
    sample
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_HOSTS")
        .unwrap_or_else(|_| "1 5 10 20".into())
        .split_whitespace()
        .map(|s| s.parse().expect("BENCH_HOSTS: numbers of hosts"))
        .collect();
    let runs: usize = env_or("BENCH_RUNS", 1);
    let rps: u32 = env_or("BENCH_RPS", 10);
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = meminfo("MemTotal") as f64 / 1024.0 / 1024.0;
    let sb = Sandbox::get();

    let mut rows: Vec<Vec<Sample>> = Vec::new();
    for &n in &sizes {
        rows.push((0..runs).map(|_| one_run(sb, n, rps)).collect());
    }

    println!(
        "\nmachine: {cores} cores, {mem_gib:.1} GiB memory; {runs} run(s) per size (medians), a fresh fleet per run; \
         each host: its own network + mount namespace, dockerd, sshd, nginx, 2 demo instances; \
         v1 -> v2 (pulled on every host), {}\n",
        if rps > 0 { format!("{rps} req/s through each host's nginx") } else { "no load".into() }
    );
    println!(
        "| hosts | `capstan deploy` wall time | ratio to 1 host | steps per host (median / slowest) | fleet startup | fleet memory | CPU busy: idle fleet / with load / deploying | failed requests |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let base = rows.iter().find(|r| r[0].hosts == 1).map(|r| median(r.iter().map(|s| s.deploy_ms).collect()));
    for r in &rows {
        let n = r[0].hosts;
        let wall = median(r.iter().map(|s| s.deploy_ms).collect());
        let ratio = base.map(|b| format!("{:.2}", wall as f64 / b.max(1) as f64)).unwrap_or_else(|| "— (no 1-host run)".into());
        let steps_med = median(r.iter().map(|s| median(s.host_steps_ms.clone())).collect());
        let steps_max = median(r.iter().map(|s| s.host_steps_ms.iter().copied().max().unwrap_or(0)).collect());
        let startup = median(r.iter().map(|s| s.startup_ms).collect());
        let mib = median(r.iter().map(|s| s.fleet_mib).collect());
        let pct = |f: fn(&Sample) -> f64| median(r.iter().map(|s| (f(s) * 1000.0) as u64).collect()) as f64 / 10.0;
        let (idle, load, cpu) = (pct(|s| s.cpu_idle_fleet), pct(|s| s.cpu_load), pct(|s| s.cpu_busy));
        let failed: u64 = r.iter().map(|s| s.failed).sum();
        let sent: u64 = r.iter().map(|s| s.sent).sum();
        println!(
            "| {n} | {} | {ratio} | {} / {} | {} | {mib} MiB ({} MiB a host) | {idle:.0}% / {load:.0}% / {cpu:.0}% | {failed} of {sent} |",
            secs(wall),
            secs(steps_med),
            secs(steps_max),
            secs(startup),
            mib / n as u64
        );
    }
    println!("\ntime in each step, per host (median over hosts, the host's instances summed):\n");
    let names: std::collections::BTreeSet<&String> = rows.iter().flatten().flat_map(|s| s.steps.keys()).collect();
    println!("| step |{}", rows.iter().map(|r| format!(" {} hosts |", r[0].hosts)).collect::<String>());
    println!("|---|{}", "---|".repeat(rows.len()));
    for name in names {
        let cells: String = rows.iter().map(|r| format!(" {} |", secs(median(r.iter().map(|s| s.steps.get(name).copied().unwrap_or(0)).collect())))).collect();
        println!("| {name} |{cells}");
    }
    if rows.iter().flatten().any(|s| !s.parallel_key) {
        println!("\n(some runs without `rollout: parallel`: this capstan refused the key; it rolls every host at once without it)");
    } else {
        println!("\nconfig: `rollout: {{ parallel: <hosts> }}` (every host at once)");
    }
}
