//! Many hosts (#7): real hosts in network namespaces (support/fleet.rs),
//! each with its own address, sshd, Docker engine, nginx and instances, all
//! driven by one `capstan.yml`. A parallel deploy under load, a failed canary
//! that stops the rest, and one host's failure that reverts every host.
//!
//! Each has the machine alone (`crate::alone`): three engines per fleet on a
//! small machine.

use std::time::Duration;

use crate::support;
use crate::support::edit;
use crate::support::{record_fault, AppOptions, Fleet, LoadStats};
use crate::{alone, sandbox};
use serde_json::{json, Value};

fn fleet(hint: &str) -> Fleet {
    let f = Fleet::start(sandbox(), 3, hint, AppOptions::default());
    eprintln!("fleet of 3 started in {:?}", f.startup_time());
    f
}

/// Each host's deployment log: `command outcome` per record.
fn outcomes(f: &Fleet) -> Vec<Vec<String>> {
    f.host_list()
        .iter()
        .map(|h| {
            let text = std::fs::read_to_string(h.state_dir().join("deploys.jsonl")).unwrap_or_default();
            text.lines()
                .map(|l| {
                    let r: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: a broken log line ({e}): {l:?}", h.name()));
                    format!("{} {}", r["command"].as_str().unwrap(), r["outcome"].as_str().unwrap())
                })
                .collect()
        })
        .collect()
}

fn no_lock_left(f: &Fleet) {
    for h in f.host_list() {
        assert!(!h.state_dir().join("lock.json").exists(), "{}: the lock is released", h.name());
    }
}

fn stop_all(load: Vec<support::LoadGen>) -> Vec<LoadStats> {
    std::thread::sleep(Duration::from_millis(300));
    load.into_iter().map(|l| l.stop()).collect()
}

fn assert_no_failed(stats: &[LoadStats]) {
    for (i, s) in stats.iter().enumerate() {
        assert!(s.sent > 0, "h{}: the load ran", i + 1);
        assert_eq!(s.failed, 0, "h{}: failed requests: {:?}", i + 1, s.samples);
    }
}

fn total(stats: &[LoadStats]) -> LoadStats {
    LoadStats {
        sent: stats.iter().map(|s| s.sent).sum(),
        ok: stats.iter().map(|s| s.ok).sum(),
        failed: stats.iter().map(|s| s.failed).sum(),
        ..Default::default()
    }
}

#[test]
fn three_hosts_roll_in_parallel_under_load() {
    let _turn = alone();
    let f = fleet("fpar");
    f.write_config(&edit(&f.default_config()).set("rollout", json!({ "parallel": 3 })).text());
    let load = f.load(50);
    let run = f.capstan(&["--json", "deploy", "--version", "v2"]);
    let stats = stop_all(load);
    run.assert_success();
    assert_eq!(f.versions(), vec![vec!["v2", "v2"]; 3]);
    assert_no_failed(&stats);
    no_lock_left(&f);
    assert_eq!(outcomes(&f), vec![vec!["deploy succeeded"]; 3]);
    // The report times each host; they ran at once: each started before any finished.
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{report:#}");
    let timing = |h: &Value, k: &str| h["timing"][k].as_u64().unwrap_or_else(|| panic!("timing.{k} of {h}"));
    let first_end = hosts.iter().map(|h| timing(h, "started_ms") + timing(h, "duration_ms")).min().unwrap();
    for h in hosts {
        assert_eq!(h["outcome"], "succeeded");
        assert!(timing(h, "connect_ms") > 0);
        assert!(timing(h, "started_ms") < first_end, "all three ran at once: {hosts:#?}");
    }
    let busy: u64 = hosts.iter().map(|h| timing(h, "duration_ms")).sum();
    eprintln!("3 hosts: wall {} ms, the hosts' rollouts add up to {busy} ms", report["duration_ms"]);
}

#[test]
fn a_failed_canary_stops_the_rest() {
    let _turn = alone();
    let f = fleet("fcan");
    f.write_config(&edit(&f.default_config()).set("rollout", json!({ "canary": 1 })).text());
    let before: Vec<Vec<String>> = f.host_list().iter().map(|h| h.images()).collect();
    let load = f.load(50);
    // `broken` fails its health gate: the canary takes it and gives it back.
    let run = f.capstan(&["--json", "deploy", "--version", "broken"]);
    let stats = stop_all(load);
    run.assert_status(1);
    assert_eq!(f.versions(), vec![vec!["v1", "v1"]; 3]);
    let after: Vec<Vec<String>> = f.host_list().iter().map(|h| h.images()).collect();
    assert_eq!(after, before);
    for h in &f.host_list()[1..] {
        assert_eq!(h.docker_ok(&["ps", "-aq"]).lines().count(), 2, "{}: nothing was created", h.name());
    }
    assert_no_failed(&stats);
    no_lock_left(&f);
    assert_eq!(outcomes(&f), vec![vec!["deploy rolled_back"], vec!["deploy skipped"], vec!["deploy skipped"]]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["outcome"], "rolled_back");
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["timing"]["canary"], true);
    assert_eq!(hosts[0]["outcome"], "rolled_back");
    for h in &hosts[1..] {
        assert_eq!(h["outcome"], "skipped", "{h:#}");
        assert!(h["timing"]["note"].as_str().unwrap().contains("rolled back"), "{h:#}");
    }
    assert!(run.stderr.contains("not started"), "{run}");
    record_fault(
        "the canary host fails its health gate (3 hosts, `canary: 1`)",
        "canary reverted; the other two never started (exit 1, `skipped` in their logs)",
        Some(&total(&stats)),
        None,
    );
}

#[test]
fn one_host_failing_reverts_every_host() {
    let _turn = alone();
    let f = fleet("fall");
    // One host at a time, so that the first two have finished when the third fails.
    f.write_config(&edit(&f.default_config()).set("rollout", json!({ "parallel": 1 })).text());
    f.host(2).cut_registry();
    let load = f.load(50);
    let run = f.capstan(&["--json", "deploy", "--version", "v2"]);
    let stats = stop_all(load);
    run.assert_status(1);
    assert_eq!(f.versions(), vec![vec!["v1", "v1"]; 3], "every host is back on v1\n{run}");
    assert_no_failed(&stats);
    no_lock_left(&f);
    assert_eq!(outcomes(&f), vec![vec!["deploy rolled_back"]; 3]);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["outcome"], "rolled_back");
    let hosts = report["hosts"].as_array().unwrap();
    for h in &hosts[..2] {
        assert_eq!(h["outcome"], "rolled_back", "{h:#}");
        assert!(h["instances"].as_array().unwrap().iter().all(|i| i["outcome"] == "reverted"), "{h:#}");
        assert!(h["timing"]["note"].as_str().unwrap().contains("failed (on_failure: revert_all)"), "{h:#}");
    }
    let third = f.host(2).ssh_host();
    assert!(run.stderr.contains(&format!("{third}: putting it back")) || run.stderr.contains("putting it back"), "{run}");
    record_fault(
        "the registry is unreachable from the last of 3 hosts (`parallel: 1`)",
        "its pull fails; the two hosts that finished are put back (`on_failure: revert_all`, exit 1)",
        Some(&total(&stats)),
        None,
    );
}
