//! End-to-end: the capstan binary against real parts on loopback (an sshd, a
//! Docker engine, a registry with a password, nginx in front of two demo
//! instances), started by `support`. Nothing here is mocked.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::edit;
use crate::support::{App, AppOptions, Run};
use crate::{sandbox, shared};
use serde_json::Value;

fn app(hint: &str) -> App {
    App::new(sandbox(), hint, AppOptions::default())
}

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}\nstderr:\n{}", run.stdout, run.stderr))
}

fn container_ids(app: &App) -> Vec<String> {
    app.instances().iter().map(|n| docker(&["inspect", "-f", "{{.Id}}", n])).collect()
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn log_records(app: &App) -> Vec<Value> {
    let path = app.state_dir().join("deploys.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).expect("every log line is JSON")).collect()
}

/// Starts `capstan deploy --version V` in the background; its output is piped.
fn spawn_deploy(app: &App, version: &str) -> std::process::Child {
    app.spawn(&["deploy", "--version", version])
}

/// Starts a v2 deploy in the background under 200 req/s, and returns once it is
/// replacing instance `i` (its old container is kept as `<name>.capstan-old`).
fn deploy_under_load_until_replacing(app: &App, i: usize) -> (support::LoadGen, std::process::Child) {
    app.write_config(&app.default_config());
    let load = app.load(200);
    let child = spawn_deploy(app, "v2");
    let kept = format!("{}.capstan-old", app.instances()[i]);
    support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || app.containers().contains(&kept).then_some(()))
        .unwrap_or_else(|| panic!("the deploy never reached instance {i}"));
    (load, child)
}

fn ok(run: &Run) {
    assert_eq!(run.status, 0, "capstan failed:\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
}

#[test]
fn rolling_deploy_under_load_loses_no_request() {
    let _turn = shared();
    let app = app("deploy");
    app.write_config(&app.default_config());
    let load = app.load(200);
    std::thread::sleep(Duration::from_millis(500));
    let run = app.capstan(&["deploy", "--version", "v2", "--json"]);
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    ok(&run);

    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert_eq!(stats.failed, 0, "failed requests during the deploy: {:?}", stats.samples);
    assert!(stats.sent >= 1000, "the load generator sent only {} requests", stats.sent);
    assert!(stats.by_version.get("v2").copied().unwrap_or(0) > 0, "no request reached v2: {:?}", stats.by_version);

    let report = json(&run);
    assert_eq!(report["outcome"], "succeeded");
    assert_eq!(report["command"], "deploy");
    assert_eq!(report["version"], "v2");
    let instances = report["hosts"][0]["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2);
    for i in instances {
        assert_eq!(i["outcome"], "replaced");
        assert!(i["to_image"].as_str().unwrap().contains("/capstan-demo@sha256:"), "{i}");
        let steps: Vec<&str> = i["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
        for s in ["drain", "stop", "start", "health", "undrain", "traffic", "pause", "cleanup"] {
            assert!(steps.contains(&s), "{} misses step {s}: {steps:?}", i["name"]);
        }
    }
    // The traffic check proved the new instance got requests through nginx.
    let traffic = &instances[0]["steps"].as_array().unwrap().iter().find(|s| s["step"] == "traffic").unwrap()["detail"];
    assert!(traffic.as_str().unwrap().contains("received +"), "{traffic}");

    // Everything of the old container but the image; the new image's own ENV applies.
    let name = &app.instances()[0];
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", name]);
    assert!(env.contains("APP_SETTING=kept") && env.contains("DEMO_VERSION=v2"), "{env}");
    let restart = docker(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", name]);
    assert_eq!(restart, "unless-stopped");
    let aliases = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", name]);
    assert!(aliases.contains("\"web\""), "network alias kept: {aliases}");
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")), "{:?}", app.containers());

    let log = log_records(&app);
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["version"], "v2");
    assert_eq!(log[0]["outcome"], "succeeded");
    assert_eq!(log[0]["instances"][0]["to_image"], instances_to_image(&report, 0));
    assert!(!app.state_dir().join("lock.json").exists(), "lock released");
}

/// A host without `curl` (nor `wget`): the health probes go through SSH tunnels and the
/// traffic check's requests from the runner, and the release goes out as on any host.
#[test]
fn a_host_without_curl_is_probed_from_the_runner() {
    let _turn = shared();
    let app = app("nocurl");
    let key = sandbox().identity_without_curl();
    app.write_config(&edit(&app.default_config()).set("ssh.identity_file", key.display().to_string()).text());
    let load = app.load(100);
    std::thread::sleep(Duration::from_millis(500));
    let run = app.capstan_env(&["deploy", "--version", "v2", "--json"], &[("CAPSTAN_LOG", "capstan=debug")]);
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    ok(&run);
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert_eq!(stats.failed, 0, "failed requests during the deploy: {:?}", stats.samples);
    // The first probes find no curl; from then on every probe and request goes from the
    // runner through a tunnel, and the kept shell still serves the rest.
    let after_arming = run.stderr.split_once("guard armed").map(|(_, rest)| rest).unwrap_or_default();
    let probes: Vec<&str> = after_arming.lines().filter(|l| l.contains("DEBUG http GET")).collect();
    assert!(probes.len() >= 6 && probes.iter().all(|l| !l.contains("(curl on the host)")), "{}", run.stderr);
    assert!(run.stderr.contains("(kept shell) sh capstan-swap"), "{}", run.stderr);
    let report = json(&run);
    for i in report["hosts"][0]["instances"].as_array().expect("instances") {
        let traffic = i["steps"].as_array().expect("steps").iter().find(|s| s["step"] == "traffic").expect("a traffic step")["detail"].clone();
        assert!(traffic.as_str().unwrap_or("").contains("received +"), "{traffic}");
    }
}

fn instances_to_image(report: &Value, i: usize) -> Value {
    report["hosts"][0]["instances"][i]["to_image"].clone()
}

#[test]
fn a_release_that_never_turns_healthy_is_reverted() {
    let _turn = shared();
    let app = app("broken");
    app.write_config(&edit(&app.default_config()).set("services.web.health.timeout", "3s").text());
    let before = app.images();
    let load = app.load(200);
    std::thread::sleep(Duration::from_millis(300));
    let run = app.capstan(&["deploy", "--version", "broken", "--json"]);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();

    assert_eq!(run.status, 1, "exit 1 for a reverted deploy\n{}", run.stderr);
    let report = json(&run);
    assert_eq!(report["outcome"], "rolled_back");
    assert!(report["error"].as_str().unwrap().contains("not healthy"), "{}", report["error"]);
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(app.images(), before, "every instance on its previous image");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")));
    let log = log_records(&app);
    assert_eq!(log.last().unwrap()["outcome"], "rolled_back");
    assert_eq!(log.last().unwrap()["instances"][0]["outcome"], "reverted");
    assert!(!app.state_dir().join("lock.json").exists(), "lock released");
}

#[test]
fn rollback_history_and_status() {
    let _turn = shared();
    let app = app("rollback");
    app.write_config(&edit(&app.default_config()).set("services.web.pause", "100ms").text());
    ok(&app.capstan(&["deploy", "--version", "v2"]));
    ok(&app.capstan(&["deploy", "--version", "v3"]));
    assert_eq!(app.versions(), vec!["v3", "v3"]);

    let run = app.capstan(&["rollback", "--to", "previous", "--json"]);
    ok(&run);
    assert_eq!(json(&run)["version"], "v2");
    assert_eq!(app.versions(), vec!["v2", "v2"]);

    let run = app.capstan(&["rollback", "--to", "v1", "--json"]);
    ok(&run);
    assert_eq!(app.versions(), vec!["v1", "v1"]);

    let run = app.capstan(&["history", "--json"]);
    ok(&run);
    let records = json(&run)["hosts"][0]["records"].as_array().unwrap().clone();
    let seen: Vec<(String, String)> =
        records.iter().map(|r| (r["command"].as_str().unwrap().to_string(), r["version"].as_str().unwrap_or("-").to_string())).collect();
    let want: Vec<(String, String)> =
        [("deploy", "v2"), ("deploy", "v3"), ("rollback", "v2"), ("rollback", "v1")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(seen, want);
    assert!(run.stderr.contains("rollback") && run.stderr.contains("succeeded"), "human history on stderr:\n{}", run.stderr);

    let run = app.capstan(&["status", "--json"]);
    ok(&run);
    let status = json(&run);
    for i in status["hosts"][0]["instances"].as_array().unwrap() {
        assert_eq!(i["state"], "running");
        assert_eq!(i["healthy"], true);
        assert_eq!(i["version"], "v1", "{i}");
    }
}

#[test]
fn a_second_deploy_is_refused_by_the_lock() {
    let _turn = shared();
    let app = app("lock");
    app.write_config(&edit(&app.default_config()).set("services.web.pause", "2s").text());
    let mut first = spawn_deploy(&app, "v2");
    let lock = app.state_dir().join("lock.json");
    let t = Instant::now();
    while !lock.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "the first deploy never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = app.capstan(&["deploy", "--version", "v3"]);
    assert_eq!(second.status, 3, "refused with exit 3:\n{}", second.stderr);
    assert!(second.stderr.contains("lock is held by") && second.stderr.contains("since"), "{}", second.stderr);
    assert!(second.stderr.contains("lock release --force"), "says how to clear a dead lock: {}", second.stderr);
    assert!(first.wait().unwrap().success());
    assert_eq!(app.versions(), vec!["v2", "v2"], "the refused deploy changed nothing");
    assert_eq!(log_records(&app).len(), 1, "the refused deploy wrote no record");

    // A lease left by a dead run that has expired is taken over; a live one is refused until forced.
    let lease = |expires: &str| {
        format!(
            r#"{{"id":"00000000000000aa","holder":"ci@cancelled-job","command":"deploy","version":"v9","run_url":"https://github.com/acme/shop/actions/runs/1","acquired_at":"2026-01-01T00:00:00Z","expires_at":"{expires}"}}"#
        )
    };
    std::fs::write(&lock, lease("2026-01-01T00:15:00Z")).unwrap();
    ok(&app.capstan(&["deploy", "--version", "v3"]));
    assert_eq!(app.versions(), vec!["v3", "v3"]);
    std::fs::write(&lock, lease("2999-01-01T00:00:00Z")).unwrap();
    let refused = app.capstan(&["deploy", "--version", "v1"]);
    assert_eq!(refused.status, 3, "{}", refused.stderr);
    assert!(refused.stderr.contains("ci@cancelled-job") && refused.stderr.contains("actions/runs/1"), "{}", refused.stderr);
    let status = app.capstan(&["lock", "status"]);
    assert!(status.stderr.contains("locked by ci@cancelled-job"), "{}", status.stderr);
    assert_eq!(app.capstan(&["lock", "release"]).status, 2, "a live lease is not released without --force");
    ok(&app.capstan(&["lock", "release", "--force"]));
    assert!(!lock.exists());
    ok(&app.capstan(&["deploy", "--version", "v1"]));
}

#[test]
fn bad_input_changes_nothing() {
    let _turn = shared();
    let app = app("badinput");
    let ids = container_ids(&app);

    // An unknown key, with the file and the key path in the message.
    let config = edit(&app.default_config()).set("services.web.pasue", "1s").text();
    let line = config.lines().position(|l| l.trim_start().starts_with("\"pasue\"")).expect("the key is in the config") + 1;
    app.write_config(&config);
    let run = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains(&format!("error: capstan.yml:{line}: services.web.pasue: unknown field `pasue`")), "file, line, key path: {}", run.stderr);

    // A bad duration.
    app.write_config(&edit(&app.default_config()).set("services.web.health.timeout", "soon").text());
    let run = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(run.status, 2);
    assert!(run.stderr.contains("services.web.health.timeout") && run.stderr.contains("expected a duration"), "{}", run.stderr);

    // A tag the registry does not have.
    app.write_config(&app.default_config());
    let run = app.capstan(&["deploy", "--version", "v9", "--json"]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("capstan-demo:v9") && run.stderr.contains("does not exist"), "{}", run.stderr);
    assert_eq!(json(&run)["outcome"], "failed");

    // A version that cannot be a tag never reaches a host.
    let run = app.capstan(&["deploy", "--version", "v1;touch /tmp/pwned"]);
    assert_eq!(run.status, 2);
    assert!(!Path::new("/tmp/pwned").exists());

    // A missing password variable.
    let run = app.capstan_env(&["deploy", "--version", "v2"], &[("REGISTRY_PASSWORD", "")]);
    assert_eq!(run.status, 2, "{}", run.stderr);
    assert!(run.stderr.contains("registry.password_env") && run.stderr.contains("REGISTRY_PASSWORD"), "{}", run.stderr);

    assert_eq!(container_ids(&app), ids, "no container was touched");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(!app.state_dir().join("deploys.jsonl").exists(), "no record");
    assert!(!app.state_dir().join("lock.json").exists(), "no lock");
}

#[test]
fn check_and_dry_run_print_the_plan_and_change_nothing() {
    let _turn = shared();
    let app = app("check");
    app.write_config(&app.default_config());
    let ids = container_ids(&app);
    for args in [&["check", "--version", "v2", "--json"][..], &["deploy", "--dry-run", "--version", "v2", "--json"][..]] {
        let run = app.capstan(args);
        ok(&run);
        let report = json(&run);
        let plan = &report["plan"]["hosts"][0]["services"][0]["instances"];
        assert_eq!(plan.as_array().unwrap().len(), 2, "{report}");
        assert_eq!(plan[0]["replace"], true);
        assert!(plan[0]["to_image"].as_str().unwrap().contains("@sha256:"));
        assert!(run.stderr.contains("2 instance(s) to replace"), "{}", run.stderr);
    }
    assert_eq!(container_ids(&app), ids);
    assert!(!app.state_dir().join("deploys.jsonl").exists());
}

/// `capstan check` with no version: "is everything ready?". Every check that needs no
/// release runs against the real host; a missing upstream line fails it, naming the
/// host and the file.
#[test]
fn check_without_a_version_says_whether_everything_is_ready() {
    let _turn = shared();
    let app = app("ready");
    app.write_config(&edit(&app.default_config()).set("preflight", serde_json::json!({ "min_free_disk": "1MB" })).text());
    let ids = container_ids(&app);
    // Not a tag: no version comes from GitHub's ref either.
    let no_tag = [("GITHUB_REF", "refs/heads/main")];
    let run = app.capstan_env(&["check", "--json"], &no_tag);
    ok(&run);
    let report = json(&run);
    assert_eq!((report["command"].as_str(), report["outcome"].as_str()), (Some("check"), Some("succeeded")), "{report}");
    assert!(report["version"].is_null() && report["plan"].is_null(), "{report}");
    for gate in ["preflight engine", "preflight lock", "preflight disk", "preflight health"] {
        assert!(run.stderr.lines().any(|l| l.contains(gate) && l.contains(" ok ")), "{gate}:\n{}", run.stderr);
    }
    let summary = run.stderr.lines().find(|l| l.starts_with("ready:")).unwrap_or_else(|| panic!("no summary:\n{}", run.stderr));
    assert!(["config", "connection", "lock", "disk", "health", "drains"].iter().all(|c| summary.contains(c)), "{summary}");
    assert!(run.stderr.contains("a version (--version V) would add: its image in the registry"), "{}", run.stderr);

    // An instance nginx does not know: exit 2, the host and the upstream file named.
    let upstream = std::fs::read_to_string(app.upstream_conf()).unwrap();
    let port = app.instance_port(&app.instances()[1]).expect("published");
    let without: String = upstream.lines().filter(|l| !(l.contains("server ") && l.contains(&format!(":{port}")))).map(|l| format!("{l}\n")).collect();
    assert_ne!(without, upstream, "the second instance's line is in {}:\n{upstream}", app.upstream_conf().display());
    std::fs::write(app.upstream_conf(), &without).unwrap();
    let run = app.capstan_env(&["check"], &no_tag);
    std::fs::write(app.upstream_conf(), &upstream).unwrap();
    assert_eq!(run.status, 2, "{}", run.stderr);
    let file = app.upstream_conf().display().to_string();
    assert!(
        run.stderr.lines().any(|l| l.contains("127.0.0.1") && l.contains(&file) && l.contains(&app.instances()[1])),
        "host, file, instance:\n{}",
        run.stderr
    );

    assert_eq!(container_ids(&app), ids, "nothing was touched");
    assert!(!app.state_dir().join("deploys.jsonl").exists() && !app.state_dir().join("lock.json").exists());
}

#[test]
fn a_changed_host_key_is_refused_before_any_command() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("hostkey");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("other");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let port = sb.ssh_host().rsplit(':').next().unwrap().to_string();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("[127.0.0.1]:{port} {}\n", pubkey.split_whitespace().take(2).collect::<Vec<_>>().join(" "))).unwrap();
    app.write_config(&edit(&app.default_config()).set("ssh.known_hosts", &kh).text());
    let run = app.capstan(&["status"]);
    assert_eq!(run.status, 4, "{}", run.stderr);
    assert!(run.stderr.contains("host's key is not the one in known_hosts"), "{}", run.stderr);
    support::record_fault("the host's key changes", "refused before any command runs, exit 4, the message says so", None, None);
}

/// Containers created by Compose from a moving tag: after the deploy, that tag on
/// the host points at what runs, so `docker compose up -d` would keep it.
#[test]
fn compose_tags_follow_what_runs() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("compose");
    let moving = format!("{}:production", sb.image_repo());
    docker(&["tag", &sb.image("v1"), &moving]);
    // Recreate the instances the way Compose does: from the tag its file names, with its labels.
    for (i, name) in app.instances().iter().enumerate() {
        let port = docker(&["port", name, "8080/tcp"]);
        let port = port.lines().next().unwrap().rsplit(':').next().unwrap().to_string();
        docker(&["rm", "-f", name]);
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            "unless-stopped",
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            "-e",
            "APP_SETTING=kept",
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.service=web",
            "--label",
            &format!("com.docker.compose.container-number={}", i + 1),
            "--network",
            &format!("{}-net", app.name()),
            "--network-alias",
            "web",
            &moving,
        ]);
    }
    support::wait_for(Duration::from_secs(20), Duration::from_millis(100), || (app.versions() == ["v1", "v1"]).then_some(()))
        .expect("recreated instances serve");
    app.write_config(&edit(&app.default_config()).set("services.web.pause", "100ms").text());
    ok(&app.capstan(&["deploy", "--version", "v2"]));
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let tag_now = docker(&["image", "inspect", "-f", "{{.Id}}", &moving]);
    assert_eq!(app.images(), vec![tag_now.clone(), tag_now.clone()], "the compose tag points at the running image");
    let labels = docker(&["inspect", "-f", "{{json .Config.Labels}}", &app.instances()[0]]);
    assert!(labels.contains("com.docker.compose.project") && labels.contains(&moving), "{labels}");
    // A second deploy still knows the tag, though the container now runs a digest.
    ok(&app.capstan(&["rollback", "--to", "previous"]));
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    let tag_now = docker(&["image", "inspect", "-f", "{{.Id}}", &moving]);
    assert_eq!(app.images(), vec![tag_now.clone(), tag_now], "and follows a rollback too");
    docker(&["rmi", &moving]);
}

/// What a cancelled GitHub Actions run does: SIGTERM in the middle of the rollout.
#[test]
fn sigterm_mid_rollout_reverts_and_releases_the_lock() {
    let _turn = shared();
    let app = app("sigterm");
    // Once the second instance is being replaced, the first one already runs v2.
    let (load, mut child) = deploy_under_load_until_replacing(&app, 1);
    let signalled = Instant::now();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let took = signalled.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();

    assert_eq!(status.code(), Some(1), "exit 1 after reverting:\n{stderr}");
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(took < Duration::from_secs(60), "bounded: took {took:?}");
    assert_eq!(app.versions(), vec!["v1", "v1"], "{stderr}");
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")), "{:?}", app.containers());
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    assert!(!app.state_dir().join("lock.json").exists(), "lock released");
    let log = log_records(&app);
    let last = log.last().expect("the cancelled run is recorded");
    assert_eq!(last["outcome"], "rolled_back");
    assert!(last["error"].as_str().unwrap().contains("cancelled by SIGTERM"), "{last}");
    support::record_fault(
        "SIGTERM while the second instance is replaced (a cancelled GitHub run)",
        "stops starting work, reverts both instances, records `rolled_back`, releases the lock, exit 1",
        Some(&stats),
        Some(took),
    );
}

/// The user's ssh config is honoured: a host alias reached through a ProxyJump
/// (here the sandbox sshd jumps to itself), with strict host key checks on both hops.
#[test]
fn hosts_can_be_reached_through_an_ssh_config_proxyjump() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("jump");
    let port = sb.ssh_host().rsplit(':').next().unwrap().to_string();
    let cfg = app.dir().join("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host capstan-bastion\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n\
             Host capstan-target\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n  UserKnownHostsFile {kh}\n  ProxyJump capstan-bastion\n",
            user = sb.ssh_user(),
            key = sb.identity_file().display(),
            kh = sb.known_hosts().display(),
        ),
    )
    .unwrap();
    app.write_config(&edit(&app.default_config()).set("hosts.0", "capstan-target").set("ssh.config", &cfg).text());
    let run = app.capstan(&["status", "--json"]);
    ok(&run);
    let status = json(&run);
    assert_eq!(status["hosts"][0]["host"], "capstan-target");
    assert_eq!(status["hosts"][0]["instances"][0]["healthy"], true, "{status}");
}

/// A run killed outright (SIGKILL: no chance to revert) leaves a half-replaced
/// instance and a held lock. Once the lock is cleared, the next deploy puts the
/// kept container back first, records that, and deploys; nobody edits files.
#[test]
fn the_next_deploy_recovers_from_a_killed_run() {
    let _turn = shared();
    let app = app("killed");
    let (load, mut child) = deploy_under_load_until_replacing(&app, 0);
    let kept = format!("{}.capstan-old", app.instances()[0]);
    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(app.containers().contains(&kept), "the killed run left {kept}");

    let refused = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(refused.status, 3, "the dead run's lease still holds: {}", refused.stderr);
    ok(&app.capstan(&["lock", "release", "--force"]));
    let run = app.capstan(&["deploy", "--version", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    ok(&run);
    assert!(run.stderr.contains("half-replaced") && run.stderr.contains("recover old back"), "{}", run.stderr);
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")), "{:?}", app.containers());
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    let commands: Vec<String> = log_records(&app).iter().map(|r| format!("{} {}", r["command"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(commands, vec!["recover succeeded", "deploy succeeded"]);
    support::record_fault(
        "capstan killed (SIGKILL) mid-rollout",
        "the next deploy (after `lock release --force`, or the lease's expiry) puts the kept container back, records `recover`, deploys",
        Some(&stats),
        Some(killed.elapsed()),
    );
}

/// An image's own Docker HEALTHCHECK gates the rollout too: a release whose
/// HTTP health is fine but whose HEALTHCHECK fails is reverted; one whose
/// HEALTHCHECK passes goes through once Docker reports it healthy.
#[test]
fn the_image_healthcheck_gates_the_rollout() {
    let _turn = shared();
    let app = app("dockerhc");
    app.write_config(&edit(&app.default_config()).set("services.web.health.timeout", "6s").text());
    let run = app.capstan(&["deploy", "--version", "hc-bad", "--json"]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(json(&run)["error"].as_str().unwrap().contains("HEALTHCHECK"), "{}", run.stderr);
    assert_eq!(app.versions(), vec!["v1", "v1"]);

    let run = app.capstan(&["deploy", "--version", "hc-ok"]);
    ok(&run);
    assert_eq!(app.versions(), vec!["hc-ok", "hc-ok"]);
    let health = docker(&["inspect", "-f", "{{.State.Health.Status}}", &app.instances()[0]]);
    assert_eq!(health, "healthy");
}
