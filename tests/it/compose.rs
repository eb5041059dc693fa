//! The payment system of issue #14 against real parts: a Docker Compose project
//! (Compose v2, and Debian's 1.29) whose nginx runs as a container of the
//! project and routes to the instances by their Compose service names, no
//! instance publishing a port; service B records every charge in a ledger.
//! Every test runs under GET and POST load through nginx over keep-alive
//! connections, and checks the POSTs against the ledger.
//!
//! `support/compose.rs` makes the system; `PaymentSystem::config` is the
//! capstan.yml of the contract. The first tests check the harness
//! itself.

use std::fs;
use std::time::Duration;

use crate::support::{
    edit, registry_digest, replace_once, ComposeCli, KeepAliveStats, LedgerCheck, PaymentSystem, PostOutcome, Run, INSTANCES, NGINX_SERVICE, START_TAG,
};
use crate::{alone, assert_turn, sandbox};
use serde_json::{json, Value};

fn system(hint: &str, compose: ComposeCli) -> PaymentSystem {
    assert_turn();
    PaymentSystem::new(hint, compose)
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{run}"))
}

/// What no deploy may cost, whatever its outcome: no failed GET, no 5xx from
/// nginx, every POST answered 2xx recorded exactly once, no charge recorded
/// twice; the POSTs that got no answer (the keep-alive race at nginx reloads,
/// which no client retries for a POST) are printed and bounded by 1%.
#[track_caller]
fn assert_nothing_lost(what: &str, stats: &KeepAliveStats, check: &LedgerCheck) {
    assert!(stats.get_sent > 0 && stats.post_sent > 0, "{what}: the load ran: {stats}");
    assert_eq!(stats.get_failed, 0, "{what}: failed GETs: {stats}");
    assert_eq!(stats.total_5xx(), 0, "{what}: nginx answered 5xx: {stats}");
    assert_eq!(stats.post_other, 0, "{what}: POSTs answered neither 2xx nor 5xx: {stats}");
    assert!(check.is_exact(), "{what}: {check}\n{stats}");
    assert_eq!(check.answered_and_recorded, stats.post_2xx, "{what}: {check}");
    eprintln!(
        "[figures] {what}: GET {} sent, {} failed, {} retried once; POST {} sent, {} 2xx, {} failed (no answer), {} 5xx; \
         duplicates {}, missing {}, recorded though unanswered {}",
        stats.get_sent,
        stats.get_failed,
        stats.get_retried,
        stats.post_sent,
        stats.post_2xx,
        stats.post_failed,
        stats.post_5xx,
        check.duplicates.len(),
        check.missing.len(),
        check.recorded_unanswered.len()
    );
    assert!(stats.post_failed * 100 <= stats.post_sent, "{what}: more than 1% of the POSTs failed: {stats}");
}

/// The reloads a run cost: the report's count (`hosts[].reloads`, when capstan
/// gives it: a number, or one per service) and nginx's own (SIGHUPs in its
/// log since `before`). At most n+1 per service of n instances.
#[track_caller]
fn assert_reloads(what: &str, sys: &PaymentSystem, report: &Value, before: usize) {
    let seen = sys.nginx_reloads() - before;
    let reported = &report["hosts"][0]["reloads"];
    eprintln!("[figures] {what}: nginx reloads seen in its log: {seen}; in the report (hosts[0].reloads): {reported}");
    // Two services of two instances: 3 each.
    assert!(seen <= 6, "{what}: nginx reloaded {seen} times, more than n+1 per service");
    match reported {
        Value::Number(n) => assert!(n.as_u64().is_some_and(|n| n <= 6), "{what}: the report counts {n} reloads"),
        Value::Object(per) => {
            for (service, n) in per {
                assert!(n.as_u64().is_some_and(|n| n <= 3), "{what}: the report counts {n} reloads for {service}");
            }
        }
        _ => eprintln!("[figures] {what}: the report has no hosts[0].reloads yet"),
    }
}

/// Both services' images in the registry and in the engine: the tags that look
/// like versions still name what was pushed under them.
#[track_caller]
fn assert_version_tags_unmoved(sys: &PaymentSystem) {
    let sb = sandbox();
    let images = sys.images();
    for service in ["service-a", "service-b"] {
        for tag in ["v1.0.0", "v1.1.0"] {
            let pushed = images.image(service, tag);
            let now = registry_digest(sb, &format!("payment/{service}"), tag).expect("the registry answers");
            assert_eq!(now, pushed.digest, "the registry's {service}:{tag} moved");
        }
        let v1 = images.image(service, START_TAG);
        assert_eq!(sys.local_image_id(&v1.reference), v1.id, "the host's {} moved", v1.reference);
    }
}

#[track_caller]
fn assert_env(sys: &PaymentSystem, tag: &str) {
    let env = sys.env();
    for var in ["SERVICE_A_TAG", "SERVICE_B_TAG"] {
        assert_eq!(env.get(var).map(String::as_str), Some(tag), ".env's {var}: {env:?}");
    }
}

/// `up -d` as an operator would run it next: nothing recreated, the versions stay.
#[track_caller]
fn assert_compose_agrees(sys: &PaymentSystem, compose: ComposeCli, a: &str, b: &str) {
    let up = sys.compose_up(compose);
    assert!(up.changed.is_empty(), "{compose:?} up -d changed containers: {:?}\n{}", up.changed, up.output.stderr);
    sys.assert_versions(a, b);
}

fn container_ids(sys: &PaymentSystem) -> Vec<(String, String)> {
    sys.containers().into_iter().map(|c| (c.name, c.id)).collect()
}

/// The steps of the report's instances, for failure messages and the log.
fn steps(report: &Value) -> String {
    let mut s = String::new();
    for i in report["hosts"][0]["instances"].as_array().into_iter().flatten() {
        let steps: Vec<String> = i["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|st| format!("{}{}", st["step"].as_str().unwrap_or("?"), if st["ok"] == false { "(failed)" } else { "" }))
            .collect();
        s.push_str(&format!("{} {} [{}]\n", i["name"].as_str().unwrap_or("?"), i["outcome"].as_str().unwrap_or("?"), steps.join(" ")));
    }
    s
}

/// Did some instance fail its drain step?
fn failed_at_drain(report: &Value) -> bool {
    report["hosts"][0]["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["steps"].as_array().into_iter().flatten())
        .any(|st| st["ok"] == false && st["step"].as_str().is_some_and(|s| s.contains("drain")))
}

// ---------------------------------------------------------------- the harness itself

#[test]
fn harness_the_system_comes_up_carries_load_and_goes_away() {
    let _turn = alone();
    let sys = system("harness", ComposeCli::V2);
    sys.assert_versions(START_TAG, START_TAG);
    // Only nginx publishes a port.
    for c in sys.containers() {
        let ports = sys.docker_out(&["inspect", "-f", "{{json .HostConfig.PortBindings}}", &c.id]);
        if c.service == NGINX_SERVICE {
            assert!(ports.contains(&sys.port().to_string()), "nginx publishes its port: {ports}");
        } else {
            assert!(matches!(ports.trim(), "{}" | "null"), "{} publishes {ports}", c.name);
        }
    }
    // nginx reads the bind-mounted file, upstreams by name.
    let dump = sys.nginx_dump();
    assert!(dump.contains("server service-a-1:3001;") && dump.contains("server service-b-2:3002;"), "{dump}");
    assert_env(&sys, START_TAG);

    // Load over keep-alive connections, with two bare reloads of nginx in the
    // middle: GETs survive them (retried once, as clients do); POSTs may not.
    let nginx = sys.container_of(NGINX_SERVICE).expect("nginx runs").id;
    let reloads = sys.nginx_reloads();
    let ((), stats, check) = sys.under_load("harness, two bare nginx reloads", || {
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(1500));
            let out = sys.docker_out(&["exec", &nginx, "/usr/sbin/nginx", "-s", "reload"]);
            eprintln!("reload: {out}");
        }
        std::thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(sys.nginx_reloads() - reloads, 2, "the reloads are counted from nginx's log");
    assert!(stats.post_2xx > 50 && stats.get_ok > 300, "{stats}");
    assert!(stats.connections_opened < 40, "connections are kept alive: {stats}");
    assert_nothing_lost("harness", &stats, &check);
    assert!(stats.by_version.keys().any(|k| k.starts_with("GET /auth/ v1.0.0")) && stats.by_version.contains_key("POST /pay v1.0.0"), "{stats}");
    let ledger = sys.ledger();
    assert_eq!(ledger.len() as u64, check.recorded, "the ledger holds this load's charges only");
    assert!(ledger.iter().all(|l| l.ends_with(" v1.0.0")), "charges carry the version: {:?}", &ledger[..3.min(ledger.len())]);

    assert_compose_agrees(&sys, ComposeCli::V2, START_TAG, START_TAG);
    assert_version_tags_unmoved(&sys);

    let project = sys.project().to_string();
    drop(sys);
    let left = sandbox().docker_ok(&["ps", "-aq", "--filter", &format!("label=com.docker.compose.project={project}")]);
    assert!(left.trim().is_empty(), "containers left after the teardown: {left}");
    let nets = sandbox().docker_ok(&["network", "ls", "-q", "--filter", &format!("label=com.docker.compose.project={project}")]);
    assert!(nets.trim().is_empty(), "networks left after the teardown: {nets}");
}

#[test]
fn harness_compose_1_29_brings_up_the_same_system() {
    let _turn = alone();
    let sys = system("harness1", ComposeCli::V1);
    sys.assert_versions(START_TAG, START_TAG);
    let names: Vec<String> = sys.containers().into_iter().map(|c| c.name).collect();
    assert!(names.contains(&format!("{}_service-a-1_1", sys.project())), "Compose 1.29 names: {names:?}");
    let ((), stats, check) = sys.under_load("harness 1.29", || std::thread::sleep(Duration::from_secs(2)));
    assert_nothing_lost("harness 1.29", &stats, &check);
    assert_eq!(stats.post_failed, 0, "no reload, no failed POST: {stats}");
    assert_compose_agrees(&sys, ComposeCli::V1, START_TAG, START_TAG);
}

#[test]
fn harness_compose_up_reports_what_it_recreates() {
    let _turn = alone();
    let sys = system("harnessup", ComposeCli::V2);
    fs::write(sys.env_file(), "SERVICE_A_TAG=v1.0.0\nSERVICE_B_TAG=v1.1.0\n").unwrap();
    let up = sys.compose_up(ComposeCli::V2);
    let changed: Vec<&str> = up.changed.iter().map(|c| c.split(':').next().unwrap()).collect();
    assert_eq!(changed.len(), 2, "{:?}", up.changed);
    assert!(changed.iter().all(|c| c.contains("service-b")), "{:?}", up.changed);
    sys.assert_versions("v1.0.0", "v1.1.0");
}

#[test]
fn harness_ledger_check_counts_missing_and_duplicate_charges() {
    let _turn = alone();
    let stats = KeepAliveStats {
        posts: vec![
            ("a".into(), PostOutcome::Answered(201)),
            ("b".into(), PostOutcome::Answered(201)),
            ("c".into(), PostOutcome::Answered(201)),
            ("d".into(), PostOutcome::Failed("EOF".into())),
            ("e".into(), PostOutcome::Answered(502)),
            ("f".into(), PostOutcome::Failed("EOF".into())),
        ],
        ..Default::default()
    };
    let check = stats.check_ledger(&["a v1", "c v1", "c v2", "d v1", "e v1", "e v1", "zz v1"]);
    assert_eq!(check.answered_and_recorded, 1);
    assert_eq!(check.missing, vec!["b".to_string()]);
    assert_eq!(check.duplicates, vec![("c".to_string(), 2), ("e".to_string(), 2)]);
    assert_eq!(check.recorded_unanswered, vec!["d".to_string(), "e".to_string()]);
    assert_eq!(check.recorded, 6);
    assert!(!check.is_exact());
}

// ---------------------------------------------------------------- capstan on the payment system

fn deploy_and_check(sys: &PaymentSystem, compose: ComposeCli, what: &str) {
    let before = sys.nginx_reloads();
    let (run, stats, check) = sys.under_load(what, || sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"]));
    run.assert_success();
    let report = json(&run);
    eprintln!("{what}:\n{}", steps(&report));
    sys.assert_versions("v1.1.0", "v1.1.0");
    assert_nothing_lost(what, &stats, &check);
    assert_reloads(what, sys, &report, before);
    assert_env(sys, "v1.1.0");
    assert_compose_agrees(sys, compose, "v1.1.0", "v1.1.0");
    assert_version_tags_unmoved(sys);
}

#[test]
fn deploy_both_services_under_load_loses_nothing_and_compose_agrees() {
    let _turn = alone();
    let sys = system("deploy", ComposeCli::V2);
    sys.write_config(&sys.render_config(&sys.config()));
    deploy_and_check(&sys, ComposeCli::V2, "deploy v1.1.0 (Compose v2)");
}

#[test]
fn deploy_a_project_of_compose_1_29() {
    let _turn = alone();
    let sys = system("deploy129", ComposeCli::V1);
    let mut config = sys.config();
    config.compose_command = Some(ComposeCli::V1.command());
    sys.write_config(&sys.render_config(&config));
    deploy_and_check(&sys, ComposeCli::V1, "deploy v1.1.0 (Compose 1.29)");
}

#[test]
fn a_release_of_service_b_that_never_gets_healthy_puts_both_back() {
    let _turn = alone();
    let sys = system("badb", ComposeCli::V2);
    let mut config = sys.config();
    config.health_timeout = "8s".into();
    sys.write_config(&sys.render_config(&config));
    let (run, stats, check) = sys.under_load("v1.2.0, service B never healthy", || sys.capstan(&["deploy", "--version", "v1.2.0", "--skip-build", "--json"]));
    run.assert_status(1);
    let report = json(&run);
    eprintln!("v1.2.0:\n{}", steps(&report));
    assert_eq!(report["outcome"], "rolled_back", "{run}");
    sys.assert_versions(START_TAG, START_TAG);
    assert_nothing_lost("v1.2.0, reverted", &stats, &check);
    assert_env(&sys, START_TAG);
    assert_compose_agrees(&sys, ComposeCli::V2, START_TAG, START_TAG);
    assert_version_tags_unmoved(&sys);
}

#[test]
fn rollback_history_and_status_of_the_payment_system() {
    let _turn = alone();
    let sys = system("rollback", ComposeCli::V2);
    let mut config = sys.config();
    config.pause = "500ms".into();
    sys.write_config(&sys.render_config(&config));
    let (runs, stats, check) = sys.under_load("deploy v1.1.0, then rollback", || {
        let deploy = sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"]);
        let versions = sys.versions();
        let rollback = sys.capstan(&["rollback", "--to", "previous", "--json"]);
        (deploy, versions, rollback)
    });
    let (deploy, after_deploy, rollback) = runs;
    deploy.assert_success();
    assert!(after_deploy.values().all(|v| v == "v1.1.0"), "after the deploy: {after_deploy:?}");
    rollback.assert_success();
    let report = json(&rollback);
    eprintln!("rollback:\n{}", steps(&report));
    assert_eq!(report["outcome"], "succeeded", "{rollback}");
    sys.assert_versions(START_TAG, START_TAG);
    assert_nothing_lost("deploy and rollback", &stats, &check);
    assert_env(&sys, START_TAG);
    assert_compose_agrees(&sys, ComposeCli::V2, START_TAG, START_TAG);
    assert_version_tags_unmoved(&sys);

    let history = sys.capstan(&["history", "--json"]);
    history.assert_success();
    let records = json(&history)["hosts"][0]["records"].as_array().cloned().unwrap_or_default();
    let commands: Vec<&str> = records.iter().map(|r| r["command"].as_str().unwrap_or("?")).collect();
    assert_eq!(commands, ["deploy", "rollback"], "history: {}", history.stdout);
    assert_eq!(records[0]["version"], "v1.1.0", "history: {}", history.stdout);

    let status = sys.capstan(&["status", "--json"]);
    status.assert_success();
    let status_json = json(&status);
    let instances = status_json["hosts"][0]["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(instances.len(), INSTANCES.len(), "status names every instance: {}", status.stdout);
    for i in &instances {
        assert_eq!(i["state"], "running", "{i}");
        assert_eq!(i["version"], START_TAG, "status names the version each instance really runs: {i}");
    }
    eprintln!("status:\n{}", status.stderr);
}

#[test]
fn a_drain_that_cannot_take_effect_fails_its_step_and_puts_the_instance_back() {
    let _turn = alone();
    let sys = system("nodrain", ComposeCli::V2);
    // The config names a copy of nginx.conf: nginx never reads it.
    let copy = sys.dir().join("nginx-elsewhere/nginx.conf");
    fs::create_dir_all(copy.parent().unwrap()).unwrap();
    fs::copy(sys.nginx_conf(), &copy).unwrap();
    let mut config = sys.config();
    config.upstream_conf = copy.clone();
    sys.write_config(&sys.render_config(&config));
    let real = fs::read_to_string(sys.nginx_conf()).unwrap();
    let copy_before = fs::read_to_string(&copy).unwrap();
    let (run, stats, check) = sys.under_load("a drain nginx never sees", || sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"]));
    run.assert_status(1);
    let report = json(&run);
    eprintln!("drain elsewhere:\n{}", steps(&report));
    assert!(failed_at_drain(&report), "the drain step fails:\n{}\n{run}", steps(&report));
    sys.assert_versions(START_TAG, START_TAG);
    assert_nothing_lost("a drain nginx never sees", &stats, &check);
    assert_eq!(fs::read_to_string(sys.nginx_conf()).unwrap(), real, "nginx's own file is untouched");
    assert_eq!(fs::read_to_string(&copy).unwrap(), copy_before, "the configured file is put back");
    assert_env(&sys, START_TAG);
    assert_compose_agrees(&sys, ComposeCli::V2, START_TAG, START_TAG);
}

/// `check` (and `deploy --dry-run`) on a config whose drain cannot tell the
/// instance's server line: exit 2, naming the instance, nothing touched.
fn refused_by_check(sys: &PaymentSystem, what: &str, instance: &str) {
    let ids = container_ids(sys);
    let conf = fs::read_to_string(sys.nginx_conf()).unwrap();
    let env = sys.env();
    let (runs, stats, check) =
        sys.under_load(what, || (sys.capstan(&["check", "--version", "v1.1.0"]), sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--dry-run"])));
    let file = sys.nginx_conf().display().to_string();
    for run in [&runs.0, &runs.1] {
        run.assert_status(2);
        assert!(run.stderr.contains(instance) && run.stderr.contains(&file), "{what}: the message names {instance} and {file}:\n{run}");
    }
    eprintln!("{what}: check says:\n{}", runs.0.stderr);
    assert_eq!(container_ids(sys), ids, "{what}: containers untouched");
    assert_eq!(fs::read_to_string(sys.nginx_conf()).unwrap(), conf, "{what}: nginx.conf untouched");
    assert_eq!(sys.env(), env, "{what}: .env untouched");
    assert_nothing_lost(what, &stats, &check);
    assert_eq!(stats.post_failed, 0, "{what}: no reload, no failed POST: {stats}");
}

/// Rewrite nginx.conf in place (a single-file bind mount keeps its inode) and reload nginx.
fn rewrite_nginx_conf(sys: &PaymentSystem, text: &str) {
    fs::write(sys.nginx_conf(), text).unwrap();
    let nginx = sys.container_of(NGINX_SERVICE).expect("nginx runs").id;
    let out = sys.docker(&["exec", &nginx, "/usr/sbin/nginx", "-s", "reload"]).output().unwrap();
    assert!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(500));
}

#[test]
fn check_refuses_a_drain_that_finds_no_server_line_or_two() {
    let _turn = alone();
    let sys = system("check", ComposeCli::V2);
    sys.write_config(&sys.render_config(&sys.config()));
    let conf = fs::read_to_string(sys.nginx_conf()).unwrap();
    // The control: the system as it is passes.
    sys.capstan(&["check", "--version", "v1.1.0"]).assert_success();

    // No upstream line names service-a-2 (nginx sends it nothing).
    rewrite_nginx_conf(&sys, &replace_once(&conf, "        server service-a-2:3001;\n", ""));
    refused_by_check(&sys, "no server line for service-a-2", "service-a-2");

    // Two lines name service-a-2: by its service name and by its container name.
    let container = sys.container_of("service-a-2").unwrap().name;
    rewrite_nginx_conf(
        &sys,
        &replace_once(&conf, "        server service-a-2:3001;\n", &format!("        server service-a-2:3001;\n        server {container}:3001;\n")),
    );
    refused_by_check(&sys, "two server lines for service-a-2", "service-a-2");
}

#[test]
fn a_broken_nginx_config_stops_the_drain_with_the_instance_untouched() {
    let _turn = alone();
    let sys = system("brokenngx", ComposeCli::V2);
    let config = sys.render_config(&sys.config());
    sys.write_config(&config);
    let good = fs::read_to_string(sys.nginx_conf()).unwrap();
    let ids = container_ids(&sys);
    // Broken before the run: `check` refuses it (nginx -T fails), nothing touched.
    let broken = replace_once(&good, "    keepalive_timeout 65s;\n", "    keepalive_timeout 65s;\n    this_is_not_a_directive on;\n");
    fs::write(sys.nginx_conf(), &broken).unwrap();
    let run = sys.capstan(&["check", "--version", "v1.1.0"]);
    assert_eq!(run.status, 2, "check refuses a config nginx -T rejects\n{run}");
    assert!(run.stderr.contains("this_is_not_a_directive"), "nginx's complaint is shown:\n{run}");
    assert_eq!(fs::read_to_string(sys.nginx_conf()).unwrap(), broken, "the file is as it was");
    // Broken during the run, after every check passed (a pre_deploy hook appends to the file in
    // place): the drain's own `nginx -t` stops the step, the file goes back as it was, and the
    // instance is never touched.
    fs::write(sys.nginx_conf(), &good).unwrap();
    let conf = sys.nginx_conf();
    sys.write_config(&edit(&config).set("hooks", json!({ "pre_deploy": format!("printf 'this_is_not_a_directive on;\\n' >> {}", conf.display()) })).text());
    let (run, stats, check) = sys.under_load("a broken nginx.conf", || sys.capstan(&["deploy", "--version", "v1.1.0", "--skip-build", "--json"]));
    eprintln!("broken nginx.conf: exit {}\n{}", run.status, run.stderr);
    assert_eq!(run.status, 1, "the drain fails, nothing was replaced\n{run}");
    let report: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{run}"));
    assert_eq!(report["outcome"], "rolled_back", "{run}");
    let steps: Vec<String> = report["hosts"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| {
            i["steps"].as_array().unwrap().iter().map(|s| format!("{} {} {}", s["step"].as_str().unwrap(), s["ok"], s["detail"].as_str().unwrap_or("")))
        })
        .collect();
    assert!(steps.iter().any(|s| s.starts_with("drain false") && s.contains("nginx -t") && s.contains("this_is_not_a_directive")), "{steps:#?}");
    assert_eq!(container_ids(&sys), ids, "no instance touched");
    sys.assert_versions(START_TAG, START_TAG);
    assert_eq!(fs::read_to_string(sys.nginx_conf()).unwrap(), format!("{good}this_is_not_a_directive on;\n"), "the file is as the hook left it");
    assert_nothing_lost("a broken nginx.conf", &stats, &check);
    assert_env(&sys, START_TAG);
}
