//! `bash bench/wan`: the same v1 -> v2 release of the demo app (2 instances
//! behind nginx, load through it), with capstan's SSH link to the host going
//! through a proxy that delays each direction by half a round trip: 0, 50 and
//! 150 ms round trip (`BENCH_RTTS="0 50 150"`), runs alternating between the
//! delays (`BENCH_RUNS`, default 3). Prints, per delay, the medians of: wall
//! time, the time beyond the waits the config asks for, the time before the
//! first instance and per instance, the round trips before the first instance
//! and per instance, and each against the loopback run. Beside each run, the floor
//! of any tool that works over SSH: `ssh host true` through the same link. The load through nginx the
//! whole time: GETs, and POSTs (payments) on keep-alive connections.

// A benchmark prints its table; the tests' support unwraps.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::wan::ReportTimes;
use support::{capstan_bin, median, App, AppOptions, KeepAliveLoad, KeepAliveOptions, Sandbox};

const RPS: u32 = 50;
const POSTS_PER_S: u32 = 10;
const PAUSE_MS: u64 = 500;
const DRAIN_WAIT_MS: u64 = 300;

struct Sample {
    wall_ms: u64,
    /// Wall time minus the pauses and drain waits the config asks for, the pull and the
    /// containers' own start-to-healthy time (measured over loopback: the same image).
    beyond_ms: u64,
    /// From the run's start to the first instance's first step.
    start_ms: u64,
    /// From the first instance's first step to the last instance's last step, per instance.
    per_instance_ms: u64,
    start_trips: usize,
    per_instance_trips: usize,
    failed: u64,
    sent: u64,
    /// POSTs not answered 2xx, and sent.
    posts_failed: u64,
    posts_sent: u64,
    /// `ssh host true` through the same link, timed beside the run: a new connection,
    /// authenticated, and one command.
    ssh_true_ms: u64,
    /// Milliseconds per step name, per instance.
    steps: std::collections::BTreeMap<String, u64>,
}

fn run(sb: &Sandbox, rtt_ms: u64) -> Sample {
    sb.forget_images_but("v1");
    let app = App::new(sb, "wan", AppOptions::default());
    let proxy = support::wan::to_sandbox(sb, Duration::from_millis(rtt_ms));
    let config = support::wan::through(&app, sb, &proxy)
        .set("services.web.pause", format!("{PAUSE_MS}ms"))
        .set("services.web.drain.wait", format!("{DRAIN_WAIT_MS}ms"))
        .text();
    app.write_config(&config);
    let load = app.load(RPS);
    let posts = KeepAliveLoad::start(
        &app.lb_url(),
        KeepAliveOptions {
            get_rps: 0,
            get_paths: Vec::new(),
            post_rps: POSTS_PER_S,
            post_path: "/pay".into(),
            connections: 2,
            max_run: Duration::from_secs(120),
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = Command::new(capstan_bin())
        .args(["deploy", "--version", "v2", "--json"])
        .current_dir(app.dir())
        .env("REGISTRY_PASSWORD", sb.registry_password())
        .env("NO_COLOR", "1")
        .output()
        .expect("run capstan");
    let wall_ms = t.elapsed().as_millis() as u64;
    // BENCH_STDERR=DIR keeps what capstan said (with CAPSTAN_LOG=capstan=debug: each call to the host, timed).
    if let Ok(dir) = std::env::var("BENCH_STDERR") {
        let _ = std::fs::write(format!("{dir}/capstan-{rtt_ms}ms-{}.log", t.elapsed().as_nanos()), &out.stderr);
    }
    let ssh_true_ms = ssh_true(sb, &app, &proxy);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    let paid = posts.stop();
    if !paid.post_samples.is_empty() || !stats.samples.is_empty() {
        eprintln!("at {rtt_ms} ms, failures: GETs {:?}, POSTs {:?}", stats.samples, paid.post_samples);
    }
    assert!(out.status.success(), "capstan failed over {rtt_ms} ms: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    let times = ReportTimes::of(&report);
    let (first, last, n) = (times.first_ms, times.last_ms, times.instances);
    let asked = n * (PAUSE_MS + DRAIN_WAIT_MS) + times.steps.get("pull").copied().unwrap_or(0);
    let start_trips = proxy.turns_between(t, Duration::ZERO, Duration::from_millis(first));
    let instance_trips = proxy.turns_between(t, Duration::from_millis(first), Duration::from_millis(last));
    Sample {
        steps: times.per_instance_steps(),
        wall_ms,
        beyond_ms: wall_ms.saturating_sub(asked),
        start_ms: first,
        per_instance_ms: times.per_instance_ms(),
        start_trips,
        per_instance_trips: instance_trips / n as usize,
        failed: stats.failed,
        sent: stats.sent,
        posts_failed: paid.post_failed + paid.post_5xx + paid.post_other,
        posts_sent: paid.post_sent,
        ssh_true_ms,
    }
}

/// Milliseconds for `ssh host true` through `proxy` (the sandbox's key, the known_hosts
/// `support::wan::through` wrote for the proxy's port).
fn ssh_true(sb: &Sandbox, app: &App, proxy: &support::wan::WanProxy) -> u64 {
    let t = Instant::now();
    let out = Command::new("ssh")
        .args(support::ssh_base_args(sb.identity_file(), &app.dir().join("known_hosts_wan"), proxy.port()))
        .arg(format!("{}@127.0.0.1", sb.ssh_user()))
        .arg("true")
        .output()
        .expect("run ssh");
    assert!(out.status.success(), "ssh host true: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed().as_millis() as u64
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let rtts = support::wan::bench_rtts("0 50 150");
    let sb = Sandbox::get();
    let mut samples: Vec<Vec<Sample>> = rtts.iter().map(|_| Vec::new()).collect();
    for i in 0..runs {
        for (k, rtt) in rtts.iter().enumerate() {
            let s = run(sb, *rtt);
            eprintln!(
                "run {} at {rtt} ms: {} ms (start {} ms / {} round trips, per instance {} ms / {} round trips, failed GETs {}/{}, POSTs {}/{})",
                i + 1,
                s.wall_ms,
                s.start_ms,
                s.start_trips,
                s.per_instance_ms,
                s.per_instance_trips,
                s.failed,
                s.sent,
                s.posts_failed,
                s.posts_sent
            );
            samples[k].push(s);
        }
    }
    let med = |k: usize, f: fn(&Sample) -> u64| median(samples[k].iter().map(f).collect());
    println!("\ncapstan deploy of 2 instances over a delayed SSH link; median of {runs} run(s), runs alternating\n");
    println!(
        "| round trip | wall | beyond the waits asked for | start | per instance | vs {} ms: start | vs {} ms: per instance | round trips: start | per instance | `ssh host true` | vs {} ms | failed GETs | failed POSTs |",
        rtts[0], rtts[0], rtts[0]
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let s = |ms: u64| format!("{:.2} s", ms as f64 / 1000.0);
    let signed = |ms: i64| format!("{:+.2} s", ms as f64 / 1000.0);
    for (k, rtt) in rtts.iter().enumerate() {
        let failed: u64 = samples[k].iter().map(|x| x.failed).sum();
        let sent: u64 = samples[k].iter().map(|x| x.sent).sum();
        let (posts_failed, posts_sent): (u64, u64) = (samples[k].iter().map(|x| x.posts_failed).sum(), samples[k].iter().map(|x| x.posts_sent).sum());
        println!(
            "| {rtt} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {failed} of {sent} | {posts_failed} of {posts_sent} |",
            s(med(k, |x| x.wall_ms)),
            s(med(k, |x| x.beyond_ms)),
            s(med(k, |x| x.start_ms)),
            s(med(k, |x| x.per_instance_ms)),
            signed(med(k, |x| x.start_ms) as i64 - med(0, |x| x.start_ms) as i64),
            signed(med(k, |x| x.per_instance_ms) as i64 - med(0, |x| x.per_instance_ms) as i64),
            med(k, |x| x.start_trips as u64),
            med(k, |x| x.per_instance_trips as u64),
            s(med(k, |x| x.ssh_true_ms)),
            signed(med(k, |x| x.ssh_true_ms) as i64 - med(0, |x| x.ssh_true_ms) as i64),
        );
    }
    // Where the time goes: each step's median per instance, at each delay.
    support::wan::print_steps_table(&rtts, &samples.iter().map(|runs| runs.iter().map(|x| &x.steps).collect()).collect::<Vec<_>>());
}
