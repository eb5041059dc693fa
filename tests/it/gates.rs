//! End-to-end: the safety net around a rollout (preflight checks, hooks,
//! migrations, post-deploy validation, the bake window), one test per gate,
//! against the real sandbox host under load through nginx. Each failing gate
//! must leave every instance on its previous image, lose no request, name the
//! check, the host and the threshold, and leave the right record in the log.

use std::time::Duration;

use crate::support::edit;
use crate::support::http::get;
use crate::support::{App, AppOptions, LoadStats, Run};
use crate::{sandbox, shared};
use serde_json::{json, Value};

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{run}"))
}

/// The app's config with the keys of `web` set in `services.web` and those of `top` at the top level.
fn config(app: &App, web: Value, top: Value) -> String {
    let mut config = edit(&app.default_config());
    for (key, value) in web.as_object().expect("web is a map of keys") {
        config = config.set(&format!("services.web.{key}"), value);
    }
    for (key, value) in top.as_object().expect("top is a map of keys") {
        config = config.set(key, value);
    }
    config.text()
}

/// Deploys v2 under 100 req/s; returns the run and the load's statistics.
fn deploy(app: &App, args: &[&str]) -> (Run, LoadStats) {
    let load = app.load(100);
    std::thread::sleep(Duration::from_millis(300));
    let mut all = vec!["deploy", "--version", "v2", "--json"];
    all.extend_from_slice(args);
    let run = app.capstan(&all);
    std::thread::sleep(Duration::from_millis(300));
    (run, load.stop())
}

fn records(app: &App) -> Vec<Value> {
    let text = std::fs::read_to_string(app.state_dir().join("deploys.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn gate<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["gates"].as_array().and_then(|g| g.iter().find(|g| g["gate"] == name)).unwrap_or_else(|| panic!("no gate {name:?} in {}", report["gates"]))
}

/// The common end of a gate that said no: nothing changed, no request lost, the
/// message names the host and the check, one record with `outcome`.
#[track_caller]
fn nothing_changed(app: &App, run: &Run, stats: &LoadStats, status: i32, outcome: &str, says: &[&str]) {
    run.assert_status(status);
    assert_eq!(app.versions(), vec!["v1", "v1"], "every instance is on its previous image");
    assert_eq!(stats.failed, 0, "requests failed: {stats:?}");
    assert!(stats.ok > 0, "the load ran: {stats:?}");
    for s in says {
        assert!(run.stderr.contains(s), "stderr should say {s:?}:\n{run}");
    }
    let recs = records(app);
    assert_eq!(recs.len(), 1, "one record: {recs:?}");
    assert_eq!(recs[0]["outcome"], outcome, "{:?}", recs[0]);
    assert!(!app.state_dir().join("lock.json").exists(), "the lock is released");
    assert_eq!(json(run)["outcome"], outcome);
}

#[test]
fn preflight_free_disk_below_the_threshold_refuses() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "gdisk", AppOptions::default());
    app.write_config(&config(&app, json!({}), json!({ "preflight": { "min_free_disk": "1000TB" } })));
    let (run, stats) = deploy(&app, &[]);
    let host = sb.ssh_host();
    nothing_changed(&app, &run, &stats, 6, "refused", &[&format!("{host}: preflight disk: "), "needs at least 909.5 TiB", "nothing was changed"]);
    assert_eq!(gate(&json(&run), "preflight disk")["ok"], false);
}

#[test]
fn preflight_missing_or_stale_backup_refuses() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "gbackup", AppOptions::default());
    let dir = app.dir().join("backups");
    std::fs::create_dir_all(&dir).unwrap();
    let glob = format!("{}/*.sql.gz", dir.display());
    app.write_config(&config(&app, json!({}), json!({ "preflight": { "backup": { "path": glob, "max_age": "1h" } } })));
    let (run, stats) = deploy(&app, &[]);
    nothing_changed(&app, &run, &stats, 6, "refused", &[&format!("preflight backup: no file matches {glob}"), "newer than 1h"]);

    // A backup two hours old is too old.
    let file = dir.join("db.sql.gz");
    std::fs::write(&file, "x").unwrap();
    let status = std::process::Command::new("touch").args(["-d", "2 hours ago"]).arg(&file).status().unwrap();
    assert!(status.success());
    let run = app.capstan(&["deploy", "--version", "v2"]);
    run.assert_status(6);
    assert!(run.stderr.contains(&format!("preflight backup: {} is 2h", file.display())), "{run}");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
}

#[test]
fn preflight_unhealthy_instance_refuses_unless_forced() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "ghealth", AppOptions::default());
    app.write_config(&app.default_config());
    let second = app.instances()[1].clone();
    let port = app.instance_port(&second).unwrap();
    assert_eq!(get(&format!("http://127.0.0.1:{port}/admin/health/break")).unwrap().status, 200);
    let (run, stats) = deploy(&app, &[]);
    nothing_changed(
        &app,
        &run,
        &stats,
        6,
        "refused",
        &[&format!("preflight health {second}: GET /health answered 500 (deploy over it with --force), needs healthy")],
    );
    // --force deploys over it, and the report says so.
    let run = app.capstan(&["deploy", "--version", "v2", "--force", "--json"]);
    run.assert_success();
    let g = gate(&json(&run), &format!("preflight health {second}")).clone();
    assert_eq!(g["ok"], true);
    assert!(g["measured"].as_str().unwrap().contains("deployed over it with --force"), "{g}");
    assert_eq!(app.versions(), vec!["v2", "v2"]);
}

#[test]
fn preflight_held_lock_refuses() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "glock", AppOptions::default());
    app.write_config(&app.default_config());
    std::fs::create_dir_all(app.state_dir()).unwrap();
    let lock = r#"{"id":"other-run","holder":"alice@laptop","command":"deploy","version":"v9","run_url":null,"acquired_at":"2099-01-01T00:00:00Z","expires_at":"2099-01-01T01:00:00Z"}"#;
    std::fs::write(app.state_dir().join("lock.json"), lock).unwrap();
    // A deploy stops at the lock (exit 3); the check reports it as a failed preflight (exit 6).
    let run = app.capstan(&["deploy", "--version", "v2"]);
    run.assert_status(3);
    assert!(run.stderr.contains("deploy lock is held by alice@laptop"), "{run}");
    let run = app.capstan(&["check", "--version", "v2", "--json"]);
    run.assert_status(6);
    assert!(run.stderr.contains(&format!("{}: preflight lock: held by alice@laptop (deploy) since 2099-01-01T00:00:00Z, needs free", sb.ssh_host())), "{run}");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(records(&app).is_empty(), "the log is written only under the lock, which is not ours");
}

#[test]
fn a_failing_pre_deploy_hook_refuses() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "ghook", AppOptions::default());
    app.write_config(&config(&app, json!({}), json!({ "hooks": { "pre_deploy": "echo backing up before $CAPSTAN_VERSION; echo disk full >&2; exit 4" } })));
    let (run, stats) = deploy(&app, &[]);
    nothing_changed(
        &app,
        &run,
        &stats,
        6,
        "refused",
        &[&format!("{}: pre_deploy hook: exit 4, needs exit 0", sb.ssh_host()), "| backing up before v2", "| disk full"],
    );
    assert_eq!(gate(&json(&run), "pre_deploy hook")["output"], "backing up before v2\ndisk full");
}

#[test]
fn a_failing_migration_stops_the_rollout() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "gmigrate", AppOptions::default());
    let marker = app.dir().join("on-failure.txt");
    app.write_config(&config(
        &app,
        json!({ "migrate": { "command": ["exit", "3"] } }),
        json!({ "hooks": { "on_failure": format!("echo $CAPSTAN_COMMAND $CAPSTAN_VERSION failed on $CAPSTAN_HOST > {}", marker.display()) } }),
    ));
    let (run, stats) = deploy(&app, &[]);
    nothing_changed(&app, &run, &stats, 1, "rolled_back", &["migrate web: `exit 3` exited 3, needs exit 0", "| capstan-demo: migration failed: exiting 3"]);
    let on_failure = std::fs::read_to_string(&marker).expect("the on_failure hook ran");
    assert_eq!(on_failure.trim(), format!("deploy v2 failed on {}", sb.ssh_host()));
    // No one-off container is left behind.
    let names = app.docker_out(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("capstan-migrate"), "{names}");
}

#[test]
fn a_failing_endpoint_reverts_the_release() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "gendpoint", AppOptions::default());
    let url = format!("{}version", app.lb_url());
    app.write_config(&config(&app, json!({}), json!({ "validate": { "endpoints": [{ "url": url, "status": 200, "body": "v3" }] } })));
    let (run, stats) = deploy(&app, &[]);
    nothing_changed(
        &app,
        &run,
        &stats,
        1,
        "rolled_back",
        &[&format!("validate {url}: status 200, body without \"v3\", needs status 200 and a body with \"v3\""), "every replaced instance was reverted"],
    );
}

#[test]
fn an_error_breach_while_baking_reverts_the_release() {
    let _turn = shared();
    use std::io::{BufRead, BufReader, Read};
    let sb = sandbox();
    let app = App::new(sb, "gbake", AppOptions::default());
    app.write_config(&config(&app, json!({}), json!({ "validate": { "errors": { "pattern": "ERROR", "max": 0 } }, "bake": "10s" })));
    let load = app.load(100);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["deploy", "--version", "v2", "--json"])
        .current_dir(app.dir())
        .env("REGISTRY_PASSWORD", sb.registry_password())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    // Once capstan says it is baking (validation passed), one new instance logs an error.
    let mut stderr = String::new();
    let mut poked = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if !poked && line.contains("baking for") {
            let port = app.instance_port(&app.instances()[0]).unwrap();
            assert_eq!(get(&format!("http://127.0.0.1:{port}/admin/oops")).unwrap().status, 200);
            poked = true;
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().unwrap().code().unwrap_or(-1);
    let run = Run { status, stdout: out_thread.join().unwrap(), stderr };
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert!(poked, "capstan never started baking:\n{run}");
    nothing_changed(&app, &run, &stats, 1, "rolled_back", &["bake errors: 1 matching lines", "of baking, needs at most 0 lines matching /ERROR/"]);
    assert_eq!(gate(&json(&run), "validate errors")["ok"], true, "validation passed before the bake saw the error");
}

#[test]
fn every_gate_on_the_happy_path_is_reported_with_its_value() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "gall", AppOptions::default());
    let dir = app.dir().to_path_buf();
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups).unwrap();
    std::fs::write(backups.join("db.sql.gz"), "fresh").unwrap();
    let post = dir.join("post.txt");
    let url = format!("{}version", app.lb_url());
    app.write_config(&config(
        &app,
        json!({ "migrate": { "command": ["migrate"], "timeout": "1m" } }),
        json!({
            "preflight": { "min_free_disk": "1MB", "max_load_per_core": 1000, "backup": { "path": format!("{}/*.sql.gz", backups.display()), "max_age": "1h" } },
            "hooks": {
                "pre_deploy": "echo backup for $CAPSTAN_APP",
                "post_deploy": format!("echo $CAPSTAN_PREVIOUS_VERSION-$CAPSTAN_VERSION > {}", post.display()),
            },
            "validate": { "endpoints": [{ "url": url, "status": 200, "body": "v2" }], "errors": { "pattern": "ERROR", "max": 0 } },
            "bake": "2s",
        }),
    ));
    let (run, stats) = deploy(&app, &[]);
    run.assert_success();
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let report = json(&run);
    let [i1, i2] = [&app.instances()[0], &app.instances()[1]];
    for name in [
        "preflight engine",
        "preflight lock",
        "preflight disk",
        "preflight load",
        "preflight backup",
        "preflight guard",
        &format!("preflight health {i1}"),
        &format!("preflight health {i2}"),
        "pre_deploy hook",
        "migrate web",
        &format!("validate {url}"),
        "validate errors",
        "bake",
        "post_deploy hook",
    ] {
        let g = gate(&report, name);
        assert_eq!(g["ok"], true, "{g}");
        assert!(!g["measured"].as_str().unwrap().is_empty(), "{g}");
        assert_eq!(g["host"], sb.ssh_host().as_str());
    }
    assert!(gate(&report, "preflight disk")["measured"].as_str().unwrap().contains("free on /"), "{report}");
    assert!(gate(&report, "preflight load")["measured"].as_str().unwrap().contains("per core"));
    assert!(gate(&report, "preflight backup")["measured"].as_str().unwrap().contains("db.sql.gz is"));
    assert!(gate(&report, "migrate web")["output"].as_str().unwrap().contains("migrating to v2: done"), "the new image ran the migration");
    assert_eq!(gate(&report, "pre_deploy hook")["output"], format!("backup for {}", app.name()));
    assert_eq!(std::fs::read_to_string(&post).unwrap().trim(), "-v2", "the post-deploy hook saw the versions");
    assert_eq!(records(&app).last().unwrap()["outcome"], "succeeded");
    // The previous version reaches the next run's hooks.
    app.write_config(&config(
        &app,
        json!({}),
        json!({ "hooks": { "post_deploy": format!("echo $CAPSTAN_PREVIOUS_VERSION-$CAPSTAN_VERSION > {}", post.display()) } }),
    ));
    app.capstan(&["deploy", "--version", "v3"]).assert_success();
    assert_eq!(std::fs::read_to_string(&post).unwrap().trim(), "v2-v3");
}
