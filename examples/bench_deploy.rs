//! `bash bench/deploy`: the same v1 -> v2 release of the demo app (2 instances
//! behind nginx, 200 requests/s through it) done by capstan and done the old way
//! (per instance: stop, run the new one, wait until healthy, pause; no drain),
//! in the same run on the same engine. Prints wall time, the time spent beyond
//! the waits no tool can avoid (pull, start-to-healthy, configured pauses and
//! drain waits), and failed requests, per run and as medians, with ratios.

// A program run by hand (bench/, the demo) whose printed figures are its product,
// over the tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{capstan_bin, edit, median, App, AppOptions, Sandbox};

const RPS: u32 = 200;
const PAUSE_MS: u64 = 500;
const DRAIN_WAIT_MS: u64 = 300;

struct Sample {
    /// capstan only: milliseconds per step name, summed over instances.
    steps: std::collections::BTreeMap<String, u64>,
    wall_ms: u64,
    unavoidable_ms: u64,
    sent: u64,
    failed: u64,
}

fn docker(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.docker(args).output().expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn config(app: &App) -> String {
    edit(&app.default_config()).set("services.web.pause", format!("{PAUSE_MS}ms")).set("services.web.drain.wait", format!("{DRAIN_WAIT_MS}ms")).text()
}

fn capstan_run(sb: &Sandbox) -> Sample {
    sb.forget_images_but("v1");
    let app = App::new(sb, "bench", AppOptions::default());
    app.write_config(&config(&app));
    let load = app.load(RPS);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let out = Command::new(capstan_bin())
        .args(["deploy", "--version", "v2", "--json"])
        .current_dir(app.dir())
        .env("REGISTRY_PASSWORD", sb.registry_password())
        .output()
        .expect("run capstan");
    let wall_ms = t.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert!(out.status.success(), "capstan failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let report: Value = serde_json::from_slice(&out.stdout).expect("report");
    // The waits no tool can avoid: the pull, start-to-healthy, and the configured pause and drain wait.
    let mut unavoidable = 0;
    let mut steps = std::collections::BTreeMap::new();
    for i in report["hosts"][0]["instances"].as_array().unwrap() {
        for s in i["steps"].as_array().unwrap() {
            *steps.entry(s["step"].as_str().unwrap().to_string()).or_insert(0) += s["duration_ms"].as_u64().unwrap();
            match s["step"].as_str().unwrap() {
                "pull" | "start" | "health" => unavoidable += s["duration_ms"].as_u64().unwrap(),
                "pause" => unavoidable += PAUSE_MS,
                "drain" => unavoidable += DRAIN_WAIT_MS,
                _ => {}
            }
        }
    }
    let in_steps: u64 = steps.values().sum();
    steps.insert("(outside steps: connect, resolve, plan, lock, log)".into(), wall_ms.saturating_sub(in_steps));
    Sample { steps, wall_ms, unavoidable_ms: unavoidable, sent: stats.sent, failed: stats.failed }
}

/// What the `appleboy/ssh-action` + shell script deploys do: stop, run, wait healthy, pause.
fn old_way_run(sb: &Sandbox) -> Sample {
    sb.forget_images_but("v1");
    let app = App::new(sb, "bench", AppOptions::default());
    let load = app.load(RPS);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut unavoidable = 0;
    let p = Instant::now();
    let pull = sb.docker(&["pull", "-q", &sb.image("v2")]).output().unwrap();
    assert!(pull.status.success(), "pull: {}", String::from_utf8_lossy(&pull.stderr));
    unavoidable += p.elapsed().as_millis() as u64;
    for name in app.instances() {
        let port = docker(sb, &["port", &name, "8080/tcp"]);
        let port = port.lines().next().unwrap().rsplit(':').next().unwrap().to_string();
        docker(sb, &["stop", &name]);
        docker(sb, &["rm", &name]);
        let s = Instant::now();
        docker(
            sb,
            &[
                "run",
                "-d",
                "--name",
                &name,
                "--restart",
                "unless-stopped",
                "-p",
                &format!("127.0.0.1:{port}:8080"),
                "-e",
                "DEMO_START_DELAY_MS=300",
                "-e",
                "APP_SETTING=kept",
                "--network",
                &format!("{}-net", app.name()),
                "--network-alias",
                "web",
                &sb.image("v2"),
            ],
        );
        let healthy = support::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            support::http::get(&format!("http://127.0.0.1:{port}/health")).ok().filter(|r| r.status == 200)
        });
        assert!(healthy.is_some(), "{name} never became healthy");
        unavoidable += s.elapsed().as_millis() as u64;
        std::thread::sleep(Duration::from_millis(PAUSE_MS));
        unavoidable += PAUSE_MS;
    }
    let wall_ms = t.elapsed().as_millis() as u64;
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    Sample { steps: Default::default(), wall_ms, unavoidable_ms: unavoidable, sent: stats.sent, failed: stats.failed }
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    let sb = Sandbox::get();
    let mut capstan = Vec::new();
    let mut old = Vec::new();
    for i in 0..runs {
        capstan.push(capstan_run(sb));
        old.push(old_way_run(sb));
        let (c, o) = (&capstan[i], &old[i]);
        eprintln!(
            "run {}: capstan {} ms (beyond waits {} ms, failed {}/{}), old way {} ms (beyond waits {} ms, failed {}/{})",
            i + 1,
            c.wall_ms,
            c.wall_ms.saturating_sub(c.unavoidable_ms),
            c.failed,
            c.sent,
            o.wall_ms,
            o.wall_ms.saturating_sub(o.unavoidable_ms),
            o.failed,
            o.sent
        );
    }
    let row = |name: &str, s: &[Sample]| {
        let wall = median(s.iter().map(|x| x.wall_ms).collect());
        let beyond = median(s.iter().map(|x| x.wall_ms.saturating_sub(x.unavoidable_ms)).collect());
        let failed: u64 = s.iter().map(|x| x.failed).sum();
        let sent: u64 = s.iter().map(|x| x.sent).sum();
        println!(
            "| {name} | {:.1} s | {:.1} s | {failed} of {sent} ({:.1}%) |",
            wall as f64 / 1000.0,
            beyond as f64 / 1000.0,
            100.0 * failed as f64 / sent.max(1) as f64
        );
        (wall, failed)
    };
    println!("2 instances, {RPS} req/s through nginx, pause {PAUSE_MS}ms, {runs} runs each (medians; failed requests summed)\n");
    println!("| v1 -> v2 | deploy time | beyond the unavoidable waits | failed requests |");
    println!("|---|---|---|---|");
    let (cw, _) = row("capstan (drain, health gate, traffic check)", &capstan);
    let (ow, _) = row("old way (stop, run, wait healthy, pause)", &old);
    println!("\ndeploy time ratio capstan / old way: {:.2}", cw as f64 / ow.max(1) as f64);
    println!("\ncapstan's time by step (median over runs, both instances summed):\n");
    println!("| step | ms |");
    println!("|---|---|");
    for name in capstan[0].steps.keys() {
        println!("| {name} | {} |", median(capstan.iter().map(|s| s.steps.get(name).copied().unwrap_or(0)).collect()));
    }
}
