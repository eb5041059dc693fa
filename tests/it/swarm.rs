//! `target: swarm` end to end: the capstan binary against a real single-node
//! swarm (the sandbox's engine, `docker swarm init`), a Swarm service of three
//! replicas behind nginx and the load generator through it, the registry with a
//! password (the nodes pull with the credentials capstan sends), and the sshd.
//! The routing mesh cannot run on this machine (no IPVS in its kernel): the
//! replicas share port 8080 on the host's network with SO_REUSEPORT, and nginx is
//! the load balancer (see support/swarm.rs). One Swarm app at a time.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::edit;
use crate::support::{Run, SwarmApp};
use crate::{alone, sandbox};
use serde_json::Value;

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{run}"))
}

fn log_records(app: &SwarmApp) -> Vec<Value> {
    let text = std::fs::read_to_string(app.state_dir().join("deploys.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("every log line is JSON")).collect()
}

/// The report's one row: the Swarm service.
fn row(report: &Value) -> &Value {
    let rows = report["hosts"][0]["instances"].as_array().expect("instances");
    assert_eq!(rows.len(), 1, "one row, the Swarm service: {rows:?}");
    &rows[0]
}

fn steps(row: &Value) -> Vec<String> {
    row["steps"].as_array().unwrap().iter().map(|s| format!("{}{}", s["step"].as_str().unwrap(), if s["ok"] == true { "" } else { " FAILED" })).collect()
}

/// `capstan deploy --version <v> --json` under 200 requests a second through nginx.
fn deploy_under_load(app: &SwarmApp, version: &str) -> (Run, support::LoadStats, Duration) {
    let load = app.load(200);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let run = app.capstan(&["deploy", "--version", version, "--json"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    (run, load.stop(), took)
}

/// [`deploy_under_load`], sampling meanwhile how many tasks of `good` run: the fewest seen.
fn deploy_counting_capacity(app: &SwarmApp, version: &str, good: &str) -> (Run, support::LoadStats, Duration, usize) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut fewest = usize::MAX;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                fewest = fewest.min(app.running_images().iter().filter(|i| *i == good).count());
                std::thread::sleep(Duration::from_millis(200));
            }
            fewest
        });
        let (run, stats, took) = deploy_under_load(app, version);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (run, stats, took, sampler.join().expect("the capacity sampler"))
    })
}

#[test]
fn a_swarm_deploy_under_load_loses_no_request() {
    let _turn = alone();
    let app = SwarmApp::new(sandbox(), "swarm-deploy", "v1", 3);
    app.write_config(&app.config(""));
    let before = app.image();
    // check and --dry-run share the plan and change nothing.
    let run = app.capstan(&["deploy", "--version", "v2", "--dry-run", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let plan = &json(&run)["plan"]["hosts"][0]["services"][0]["instances"][0];
    assert_eq!((plan["name"].as_str(), plan["from_image"].as_str(), plan["replace"].as_bool()), (Some(app.service()), Some(before.as_str()), Some(true)));
    assert_eq!(app.image(), before, "a dry run changes nothing");

    let (run, stats, took) = deploy_under_load(&app, "v2");
    eprintln!("[swarm] v1 -> v2 of 3 replicas in {took:?} under load: {stats}");
    assert_eq!(run.status, 0, "{run}\n{}", app.tasks_text());
    let report = json(&run);
    assert_eq!(report["outcome"], "succeeded");
    let r = row(&report);
    assert_eq!(r["name"], app.service());
    assert_eq!(r["outcome"], "replaced");
    assert_eq!(r["from_image"], before.as_str());
    let to = r["to_image"].as_str().unwrap().to_string();
    assert!(to.contains("/capstan-demo@sha256:") && to != before, "{to}");
    assert_eq!(steps(r), ["update", "converge", "health", "traffic"]);
    let update = &r["steps"][0]["detail"];
    assert!(update.as_str().unwrap().contains("parallelism 1, delay 0s, start-first, failure_action rollback, monitor 2s"), "{update}");

    assert_eq!(app.image(), to, "the spec names the release's digest");
    assert_eq!(app.running_images(), vec![to.clone(); 3], "{}", app.tasks_text());
    assert_eq!(app.versions(), ["v2"]);
    assert_eq!(stats.failed, 0, "failed requests during the Swarm update: {stats}");
    assert!(stats.sent >= 1000, "the load generator sent only {} requests", stats.sent);
    assert!(stats.by_version.get("v2").copied().unwrap_or(0) > 0, "no request reached v2: {stats}");

    let log = log_records(&app);
    assert_eq!(log.len(), 1);
    assert_eq!((log[0]["command"].as_str(), log[0]["version"].as_str(), log[0]["outcome"].as_str()), (Some("deploy"), Some("v2"), Some("succeeded")));
    assert_eq!(log[0]["instances"][0]["name"], app.service());
    assert_eq!(log[0]["instances"][0]["to_image"], to.as_str());
    let run = app.capstan(&["history", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let records = &json(&run)["hosts"][0]["records"];
    assert_eq!(records[0]["instances"][0]["from_image"], before.as_str());
    assert!(run.stderr.contains("deploy") && run.stderr.contains("v2") && run.stderr.contains("succeeded"), "{}", run.stderr);
}

#[test]
fn a_release_whose_healthcheck_fails_is_rolled_back_by_swarm() {
    let _turn = alone();
    // hc-ok and hc-bad carry a Docker HEALTHCHECK; hc-bad's probes a port nothing listens on.
    let app = SwarmApp::new(sandbox(), "swarm-hc", "hc-ok", 3);
    app.write_config(&app.config(""));
    let before = app.image();
    let t = Instant::now();
    let (run, stats, took, fewest) = deploy_counting_capacity(&app, "hc-bad", &before);
    eprintln!("[swarm] hc-ok -> hc-bad, rolled back by Swarm in {took:?} under load: {stats}; fewest hc-ok tasks running: {fewest}");
    assert_eq!(run.status, 1, "exit 1 for a rolled-back deploy\n{run}\n{}", app.tasks_text());
    let report = json(&run);
    assert_eq!(report["outcome"], "rolled_back");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("Swarm rolled the update back"), "{error}");
    let r = row(&report);
    assert_eq!(r["outcome"], "reverted");
    assert_eq!(steps(r), ["update", "converge FAILED", "revert converge", "revert health"], "Swarm rolled back by itself");
    assert_eq!(app.update_state(), "rollback_completed");
    assert_eq!(app.image(), before, "back on the old digest");
    assert_eq!(app.running_images(), vec![before.clone(); 3], "{}", app.tasks_text());
    assert_eq!(app.versions(), ["hc-ok"]);
    // start-first waited for the HEALTHCHECK: at no moment did fewer hc-ok tasks run than before.
    // (Which task Swarm's rollback stops is its own business: it may start a spare hc-ok task and
    // shut one down as surplus.) And Swarm did try hc-bad: its tasks were stopped.
    assert!(fewest >= 3, "only {fewest} hc-ok tasks ran at one moment\n{}", app.tasks_text());
    assert!(!app.stopped_images().is_empty(), "Swarm never tried hc-bad\n{}", app.tasks_text());
    assert_eq!(stats.failed, 0, "failed requests while Swarm tried hc-bad and rolled back: {stats}");
    let log = log_records(&app);
    assert_eq!(log.last().unwrap()["outcome"], "rolled_back");
    assert_eq!(log.last().unwrap()["instances"][0]["outcome"], "reverted");
    support::record_fault(
        "Swarm target: a release whose HEALTHCHECK fails (hc-bad, 3 replicas, start-first)",
        "Swarm rolled it back (failure_action rollback); capstan waited for rollback_completed, checked the tasks, reported rolled_back, exit 1",
        Some(&stats),
        Some(t.elapsed()),
    );
}

#[test]
fn a_release_capstan_finds_unhealthy_is_put_back_by_swarm_s_rollback() {
    let _turn = alone();
    // `broken` has no HEALTHCHECK: Swarm completes the update, capstan's own /health probe fails.
    let app = SwarmApp::new(sandbox(), "swarm-broken", "v1", 3);
    app.write_config(&edit(&app.config("")).set("services.web.health.timeout", "3s").text());
    let before = app.image();
    let (run, stats, took) = deploy_under_load(&app, "broken");
    eprintln!("[swarm] v1 -> broken, put back with Swarm's rollback in {took:?} under load: {stats}");
    assert_eq!(run.status, 1, "{run}\n{}", app.tasks_text());
    let report = json(&run);
    assert_eq!(report["outcome"], "rolled_back");
    assert!(report["error"].as_str().unwrap().contains("not healthy"), "{}", report["error"]);
    let r = row(&report);
    assert_eq!(r["outcome"], "reverted");
    assert_eq!(steps(r), ["update", "converge", "health FAILED", "revert rollback", "revert converge", "revert health"]);
    assert_eq!(app.update_state(), "rollback_completed");
    assert_eq!(app.image(), before);
    assert_eq!(app.running_images(), vec![before.clone(); 3], "{}", app.tasks_text());
    assert_eq!(stats.failed, 0, "failed requests: {stats}");
}

#[test]
fn rollback_returns_to_the_previous_digest() {
    let _turn = alone();
    let app = SwarmApp::new(sandbox(), "swarm-rollback", "v1", 2);
    app.write_config(&app.config(""));
    let v1 = app.image();
    let run = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(run.status, 0, "{run}");
    let v2 = app.image();
    assert_ne!(v1, v2);
    let load = app.load(200);
    let run = app.capstan(&["rollback", "--to", "previous", "--json"]);
    let stats = load.stop();
    eprintln!("[swarm] rollback to the previous digest under load: {stats}");
    assert_eq!(run.status, 0, "{run}");
    let report = json(&run);
    assert_eq!(report["command"], "rollback");
    assert_eq!(report["version"], "v1", "named after the tag the image carries on the host");
    assert_eq!(row(&report)["to_image"], v1.as_str());
    assert_eq!(app.image(), v1, "the digest the log recorded");
    assert_eq!(app.running_images(), vec![v1.clone(); 2]);
    assert_eq!(app.versions(), ["v1"]);
    assert_eq!(stats.failed, 0, "failed requests during the rollback: {stats}");
    let seen: Vec<String> = log_records(&app).iter().map(|r| format!("{} {}", r["command"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(seen, ["deploy succeeded", "rollback succeeded"]);
}
