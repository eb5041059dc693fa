//! `bash bench/compose`: the payment system of issue #14 (a Compose project,
//! nginx as a container routing by service name, two services of two
//! instances) taken from v1.0.0 to v1.1.0 under the same GET+POST keep-alive
//! load (100 GET/s, 25 POST/s over 8 persistent connections), by capstan and by
//! the runbook's own procedure, in alternating runs on the same engine:
//!
//! - capstan: `capstan deploy --version v1.1.0 --skip-build` with the issue's
//!   config (health every 500 ms, 2 good probes, drain wait 1 s, pause 1 s);
//! - the runbook, per instance (service-a-2, service-a-1, service-b-2,
//!   service-b-1): `docker compose stop <svc>`, `SERVICE_X_TAG=v1.1.0 docker
//!   compose up -d --no-deps <svc>`, wait until its /health answers 200
//!   (polled every 500 ms), pause 1 s.
//!
//! Each run starts from a fresh system with only v1.0.0 in the engine, so both
//! pull. Prints, per run and then as a table (medians of the times, sums of the
//! counts): deploy time, nginx reloads (SIGHUPs in nginx's log), failed GETs,
//! failed POSTs, 5xx, charges recorded twice or answered and missing, and what
//! a `docker compose up -d` right after would recreate.

// A program run by hand (bench/, the demo) whose printed figures are its product,
// over the tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{median, ComposeCli, KeepAliveStats, LedgerCheck, PaymentImages, PaymentSystem, Sandbox};

const PAUSE: Duration = Duration::from_secs(1);
const HEALTH_EVERY: Duration = Duration::from_millis(500);
/// The runbook's order: service A (instance 2, then 1), then service B.
const ORDER: [(&str, &str, u16); 4] = [
    ("service-a-2", "SERVICE_A_TAG", 3001),
    ("service-a-1", "SERVICE_A_TAG", 3001),
    ("service-b-2", "SERVICE_B_TAG", 3002),
    ("service-b-1", "SERVICE_B_TAG", 3002),
];

struct Sample {
    wall: Duration,
    reloads: usize,
    /// capstan only: the report's `hosts[0].reloads`, when it has one.
    reported_reloads: Option<String>,
    stats: KeepAliveStats,
    check: LedgerCheck,
    /// Containers `docker compose up -d` recreated (or removed, or added) right after.
    recreated_after: usize,
    /// capstan only: milliseconds per step name, summed over instances.
    steps: BTreeMap<String, u64>,
}

/// nginx's reloads since `before`, and how many containers `docker compose up -d` changes now.
fn finish(sys: &PaymentSystem, before: usize) -> (usize, usize) {
    let reloads = sys.nginx_reloads() - before;
    let up = sys.compose_up(ComposeCli::V2);
    (reloads, up.changed.len())
}

fn capstan_run(sb: &Sandbox) -> Sample {
    PaymentImages::get().forget_all_but_start(sb);
    let sys = PaymentSystem::new("benchcapstan", ComposeCli::V2);
    sys.write_config(&sys.render_config(&sys.config()));
    let before = sys.nginx_reloads();
    let (timed, stats, check) = sys.under_load("capstan", || {
        let t = Instant::now();
        let run = sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"]);
        (t.elapsed(), run)
    });
    let (wall, run) = timed;
    assert!(run.success(), "capstan failed: {run}");
    sys.assert_versions("v1.1.0", "v1.1.0");
    let report: Value = serde_json::from_str(&run.stdout).expect("capstan's JSON report");
    let mut steps = BTreeMap::new();
    for i in report["hosts"][0]["instances"].as_array().into_iter().flatten() {
        for s in i["steps"].as_array().into_iter().flatten() {
            *steps.entry(s["step"].as_str().unwrap_or("?").to_string()).or_insert(0) += s["duration_ms"].as_u64().unwrap_or(0);
        }
    }
    let reported = &report["hosts"][0]["reloads"];
    let reported_reloads = (!reported.is_null()).then(|| reported.to_string());
    let (reloads, recreated_after) = finish(&sys, before);
    Sample { wall, reloads, reported_reloads, stats, check, recreated_after, steps }
}

fn runbook_run(sb: &Sandbox) -> Sample {
    PaymentImages::get().forget_all_but_start(sb);
    let sys = PaymentSystem::new("benchrunbook", ComposeCli::V2);
    let before = sys.nginx_reloads();
    let (wall, stats, check) = sys.under_load("runbook", || {
        let t = Instant::now();
        for (service, variable, port) in ORDER {
            let out = support::proc::run(&mut sys.compose_cmd(ComposeCli::V2, &["stop", service]), None, Duration::from_secs(120)).expect("compose stop");
            assert!(out.success(), "compose stop {service}: {}", out.stderr);
            let mut up = sys.compose_cmd(ComposeCli::V2, &["up", "-d", "--no-deps", service]);
            up.env(variable, "v1.1.0");
            let out = support::proc::run(&mut up, None, Duration::from_secs(120)).expect("compose up");
            assert!(out.success(), "compose up -d --no-deps {service}: {}", out.stderr);
            let healthy = support::wait_for(Duration::from_secs(60), HEALTH_EVERY, || {
                let c = sys.container_of(service)?;
                let ip = sys.container_ip(&c.id)?;
                support::http::get_with(&format!("http://{ip}:{port}/health"), &[], Duration::from_secs(2)).ok().filter(|r| r.status == 200)
            });
            assert!(healthy.is_some(), "{service} never answered 200 on /health");
            std::thread::sleep(PAUSE);
        }
        t.elapsed()
    });
    sys.assert_versions("v1.1.0", "v1.1.0");
    let (reloads, recreated_after) = finish(&sys, before);
    Sample { wall, reloads, reported_reloads: None, stats, check, recreated_after, steps: BTreeMap::new() }
}

fn describe(s: &Sample) -> String {
    format!(
        "{:.1} s, {} reloads{}, GET {}/{} failed, POST {}/{} failed ({} unanswered), {} 5xx, {} duplicate and {} missing charges, up -d after recreates {}",
        s.wall.as_secs_f64(),
        s.reloads,
        s.reported_reloads.as_ref().map(|r| format!(" (report: {r})")).unwrap_or_default(),
        s.stats.get_failed,
        s.stats.get_sent,
        s.stats.post_sent - s.stats.post_2xx,
        s.stats.post_sent,
        s.stats.post_failed,
        s.stats.total_5xx(),
        s.check.duplicates.len(),
        s.check.missing.len(),
        s.recreated_after
    )
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).filter(|r| *r > 0).unwrap_or(3);
    let sb = Sandbox::get();
    PaymentImages::get();
    let mut capstan = Vec::new();
    let mut runbook = Vec::new();
    for i in 0..runs {
        // Alternating, and which goes first alternates too.
        if i % 2 == 0 {
            capstan.push(capstan_run(sb));
            runbook.push(runbook_run(sb));
        } else {
            runbook.push(runbook_run(sb));
            capstan.push(capstan_run(sb));
        }
        eprintln!("run {}: capstan {}\n       runbook {}", i + 1, describe(&capstan[i]), describe(&runbook[i]));
    }
    let sum = |s: &[Sample], f: &dyn Fn(&Sample) -> u64| s.iter().map(f).sum::<u64>();
    let row = |name: &str, s: &[Sample]| {
        let wall = median(s.iter().map(|x| x.wall).collect());
        let reloads: Vec<String> = s.iter().map(|x| x.reloads.to_string()).collect();
        println!(
            "| {name} | {:.1} s | {} | {} of {} | {} of {} ({} unanswered) | {} | {} | {} | {} |",
            wall.as_secs_f64(),
            reloads.join(", "),
            sum(s, &|x| x.stats.get_failed),
            sum(s, &|x| x.stats.get_sent),
            sum(s, &|x| x.stats.post_sent - x.stats.post_2xx),
            sum(s, &|x| x.stats.post_sent),
            sum(s, &|x| x.stats.post_failed),
            sum(s, &|x| x.stats.total_5xx()),
            sum(s, &|x| x.check.duplicates.len() as u64),
            sum(s, &|x| x.check.missing.len() as u64),
            s.iter().map(|x| x.recreated_after.to_string()).collect::<Vec<_>>().join(", "),
        );
        wall
    };
    println!(
        "The payment system (2 services x 2 instances, nginx in a container), v1.0.0 -> v1.1.0 under 100 GET/s + 25 POST/s \
         over 8 keep-alive connections; {runs} runs each, alternating (deploy time: median; reloads and `up -d` after: per run; counts: summed)\n"
    );
    println!("| v1.0.0 -> v1.1.0 | deploy time | nginx reloads | failed GETs (not 2xx) | failed POSTs (not 2xx) | 5xx (GET+POST) | duplicate charges | answered charges missing | `compose up -d` after recreates |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let cw = row("capstan deploy", &capstan);
    let rw = row("runbook (stop, up -d --no-deps, wait healthy, pause)", &runbook);
    println!("\ndeploy time ratio capstan / runbook: {:.2}", cw.as_secs_f64() / rw.as_secs_f64().max(0.001));
    if let Some(r) = capstan.iter().find_map(|s| s.reported_reloads.clone()) {
        println!("capstan's report counts reloads as: {r}");
    }
    println!("\ncapstan's time by step (median over runs, the four instances summed):\n");
    println!("| step | ms |");
    println!("|---|---|");
    let names: Vec<String> = capstan[0].steps.keys().cloned().collect();
    for name in names {
        let ms = median(capstan.iter().map(|s| Duration::from_millis(s.steps.get(&name).copied().unwrap_or(0))).collect());
        println!("| {name} | {} |", ms.as_millis());
    }
}
