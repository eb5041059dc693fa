//! End-to-end: the gates on real traffic (`gates:`), against the real sandbox host
//! under load through nginx, which logs with capstan's `log_format`. A release that is
//! healthy but wrong (2 % of 500s, 300 ms more per request) is reverted in its first
//! instance's window, with its measured figures against the old instances' in the
//! report; a good one passes with every figure; a Prometheus query gate reverts and
//! passes; too little traffic is said plainly and reverts nothing.

use std::time::{Duration, Instant};

use crate::support::edit;
use crate::support::prometheus::Prometheus;
use crate::support::{App, AppOptions, LoadStats, Run};
use crate::{sandbox, shared};
use serde_json::{json, Value};

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{run}"))
}

/// The app's config with `gates` on `web` and without its own traffic check (the 20
/// requests it sends must all be below 500, which a release serving 2 % of 500s may miss).
fn config(app: &App, gates: Value) -> String {
    edit(&app.default_config()).remove("services.web.traffic").set("services.web.gates", gates).text()
}

/// The gates every release below is judged by: the runbook's error rate, p95 against the old instances.
fn traffic_gates(app: &App) -> Value {
    json!({
        "window": "6s",
        "traffic": {
            "access_log": app.access_log().display().to_string(),
            "min_requests": 100,
            "max_error_rate": "1%",
            "max_error_rate_increase": "0.5%",
            "max_p95": "500ms",
            "max_p95_ratio": 20,
        },
        "resources": { "max_cpu": "80%" },
    })
}

/// Deploys `version` under `rps` req/s through nginx; the run, the load's figures, the time it took.
fn deploy(app: &App, version: &str, rps: u32) -> (Run, LoadStats, Duration) {
    let load = app.load(rps);
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let run = app.capstan(&["deploy", "--version", version, "--json"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    (run, load.stop(), took)
}

/// The report's gates named `name`.
fn gates<'a>(report: &'a Value, name: &str) -> Vec<&'a Value> {
    report["gates"].as_array().map(|g| g.iter().filter(|g| g["gate"] == name).collect()).unwrap_or_default()
}

/// The access log's lines whose status is not 200, as (status, upstream statuses).
fn not_ok(app: &App) -> Vec<(String, String)> {
    let log = std::fs::read_to_string(app.access_log()).expect("nginx's access log");
    log.lines()
        .filter_map(|l| {
            let status = l.split("\" ").nth(1)?.split(' ').next()?.to_string();
            let upstream_status = l.split('"').nth(5)?.to_string();
            (status != "200").then_some((status, upstream_status))
        })
        .collect()
}

#[test]
fn a_release_serving_two_percent_of_500s_is_reverted_in_its_first_window() {
    let _turn = shared();
    let app = App::new(sandbox(), "tgerr", AppOptions::default());
    app.write_config(&config(&app, traffic_gates(&app)));
    let (run, stats, took) = deploy(&app, "err2", 100);
    run.assert_status(1);
    assert_eq!(app.versions(), vec!["v1", "v1"], "every instance is back on v1");
    let report = json(&run);
    let first = &app.instances()[0];
    let g = gates(&report, "window traffic");
    assert_eq!(g.len(), 1, "one window, the first instance's: {}", report["gates"]);
    assert_eq!(g[0]["ok"], false, "{}", g[0]);
    let v = &g[0]["verdict"];
    assert_eq!(v["instance"], first.as_str());
    let rate = v["checks"].as_array().unwrap().iter().find(|c| c["metric"] == "error_rate").expect("an error-rate check");
    let measured = rate["measured"]["value"].as_f64().unwrap();
    assert!((0.01..0.04).contains(&measured), "about 2 %: {rate}");
    assert_eq!(rate["old"]["value"].as_f64(), Some(0.0), "the old instances served no 500: {rate}");
    assert!(v["requests"].as_u64().unwrap() >= 100 && v["old_requests"].as_u64().unwrap() >= 100, "{v}");
    assert!(run.stderr.contains(&format!("on {first} (old instances: ")) && run.stderr.contains("error rate"), "{run}");
    assert!(!run.stderr.contains(&format!("{} gates", app.instances()[1])), "the second instance was never touched:\n{run}");
    // No request failed but the 500s the bad instance itself served.
    let bad = not_ok(&app);
    assert!(bad.iter().all(|(s, u)| s == "500" && u == "500"), "only the app's own 500s: {bad:?}");
    assert!(stats.failed <= bad.len() as u64 && stats.samples.iter().all(|s| s.contains("status 500")), "{stats}; log: {bad:?}");
    eprintln!("reverted in {took:?}: {}", g[0]["measured"]);
}

#[test]
fn a_release_three_hundred_ms_slower_is_reverted_by_the_relative_latency_gate() {
    let _turn = shared();
    let app = App::new(sandbox(), "tgslow", AppOptions::default());
    let mut gates_cfg = traffic_gates(&app);
    // Only the relative gate can see it: 300 ms is below the absolute 500 ms.
    gates_cfg["traffic"]["max_p95"] = json!("1s");
    app.write_config(&config(&app, gates_cfg));
    let (run, stats, _) = deploy(&app, "slow", 100);
    run.assert_status(1);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(stats.failed, 0, "{stats}");
    let report = json(&run);
    let g = gates(&report, "window traffic");
    assert_eq!(g.len(), 1, "{}", report["gates"]);
    let p95 = g[0]["verdict"]["checks"].as_array().unwrap().iter().find(|c| c["limit"]["kind"] == "max_ratio").expect("the ratio check").clone();
    assert_eq!(p95["ok"], false, "{p95}");
    assert!(p95["measured"]["value"].as_f64().unwrap() >= 300.0, "{p95}");
    assert!(p95["old"]["value"].as_f64().unwrap() < 100.0, "{p95}");
    assert!(run.stderr.contains("× old on"), "{run}");
}

#[test]
fn a_healthy_release_passes_the_same_gates_with_every_figure_in_the_report() {
    let _turn = shared();
    let app = App::new(sandbox(), "tgok", AppOptions::default());
    app.write_config(&config(&app, traffic_gates(&app)));
    let (run, stats, took) = deploy(&app, "v2", 200);
    run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert_eq!(stats.failed, 0, "{stats}");
    let report = json(&run);
    let traffic = gates(&report, "window traffic");
    let resources = gates(&report, "window resources");
    let validate = gates(&report, "validate traffic");
    assert_eq!((traffic.len(), resources.len(), validate.len()), (2, 2, 2), "{}", report["gates"]);
    for g in traffic.iter().chain(&resources) {
        assert_eq!(g["ok"], true, "{g}");
        assert_eq!(g["verdict"]["outcome"]["is"], "pass", "{g}");
        for c in g["verdict"]["checks"].as_array().unwrap() {
            assert!(c["measured"]["value"].is_number() && c["limit"].is_object() && c["ok"] == true, "{c}");
        }
    }
    let metrics: Vec<&str> = traffic[0]["verdict"]["checks"].as_array().unwrap().iter().map(|c| c["metric"].as_str().unwrap()).collect();
    assert_eq!(metrics, ["error_rate", "error_rate", "p95", "p95"], "{}", traffic[0]);
    assert!(resources[0]["verdict"]["checks"][0]["metric"] == "cpu", "{}", resources[0]);
    // How long the gates took at 200 req/s, and what reading the log cost (the steps' details).
    let mut details = Vec::new();
    for i in report["hosts"][0]["instances"].as_array().unwrap() {
        for s in i["steps"].as_array().unwrap().iter().filter(|s| s["step"] == "gates") {
            details.push(format!("{} {} ms: {}", i["name"], s["duration_ms"], s["detail"]));
        }
    }
    eprintln!("deploy at 200 req/s took {took:?}; gate steps: {details:#?}");
}

#[test]
fn too_little_traffic_is_said_plainly_and_reverts_nothing() {
    let _turn = shared();
    let app = App::new(sandbox(), "tgquiet", AppOptions::default());
    let mut g = traffic_gates(&app);
    g["window"] = json!("3s");
    g["traffic"]["min_requests"] = json!(100_000);
    app.write_config(&config(&app, g));
    let (run, stats, _) = deploy(&app, "err2", 20);
    run.assert_success();
    assert_eq!(app.versions(), vec!["err2", "err2"], "no revert on noise");
    let _ = stats;
    assert!(run.stderr.contains("not enough traffic on") && run.stderr.contains("for a verdict") && run.stderr.contains("not reverted"), "{run}");
    let report = json(&run);
    let w = gates(&report, "window traffic");
    assert!(w.iter().all(|g| g["ok"] == true && g["verdict"]["outcome"]["is"] == "undecided"), "{w:?}");
}

#[test]
fn a_prometheus_query_gate_reverts_a_breach_and_passes_a_good_release() {
    let _turn = shared();
    let app = App::new(sandbox(), "tgprom", AppOptions::default());
    let addresses: Vec<String> = app.instances().iter().map(|i| format!("127.0.0.1:{}", app.instance_port(i).expect("published"))).collect();
    let prom = Prometheus::start(&addresses, Duration::from_secs(1));
    let gates_cfg = json!({
        "window": "6s",
        "prometheus": {
            "url": prom.url(),
            "queries": [{
                "name": "5xx served",
                "query": r#"sum(demo_requests_total{instance="{address}",status=~"5.."}) or vector(0)"#,
                "expect": "< 1",
            }],
        },
    });
    app.write_config(&config(&app, gates_cfg));
    let (run, stats, _) = deploy(&app, "err2", 100);
    run.assert_status(1);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    let report = json(&run);
    let g = gates(&report, "window 5xx served");
    assert_eq!(g.len(), 1, "{}", report["gates"]);
    assert_eq!(g[0]["ok"], false, "{}", g[0]);
    assert!(g[0]["verdict"]["checks"][0]["measured"]["value"].as_f64().unwrap() >= 1.0, "{}", g[0]);
    assert!(run.stderr.contains("5xx served") && run.stderr.contains("expected < 1"), "{run}");
    assert!(stats.samples.iter().all(|s| s.contains("status 500")), "{stats}");

    let (run, stats, _) = deploy(&app, "v2", 100);
    run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert_eq!(stats.failed, 0, "{stats}");
    let report = json(&run);
    let g = gates(&report, "window 5xx served");
    assert_eq!(g.len(), 2, "{}", report["gates"]);
    assert!(g.iter().all(|g| g["ok"] == true && g["verdict"]["checks"][0]["measured"]["value"] == 0.0), "{g:?}");
}
