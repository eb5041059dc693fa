//! Faults injected in the middle of real rollouts, each under 200 requests/s
//! through nginx (#6). Each must end with every instance serving, no request
//! lost that could have been kept, the lock released or explained, and the
//! host's log telling the truth. Each test adds a row to the table that
//! `bash scripts/faults` prints (and the README shows): the fault, what capstan
//! did, requests lost, time to recover.
//!
//! Each has the machine alone (`crate::alone`, whatever `--test-threads`
//! says): cutting SSH cuts every session of the sandbox's sshd.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::edit;
use crate::support::{record_fault, App, AppOptions, Run, Sandbox};
use crate::{alone, sandbox};
use serde_json::{json, Value};

fn log_records(app: &App) -> Vec<Value> {
    let text = std::fs::read_to_string(app.state_dir().join("deploys.jsonl")).unwrap_or_default();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a broken log line ({e}): {l:?}"))).collect()
}

fn spawn(app: &App, args: &[&str]) -> std::process::Child {
    app.spawn(args)
}

/// The child, for [`finish`], leaving a finished placeholder behind.
fn child_take(child: &mut std::process::Child) -> std::process::Child {
    std::mem::replace(child, Command::new("true").spawn().unwrap())
}

fn finish(child: std::process::Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run { status: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into(), stderr: String::from_utf8_lossy(&out.stderr).into() }
}

/// Waits until `f` holds, or panics after a minute.
fn until(what: &str, mut f: impl FnMut() -> bool) {
    support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || f().then_some(())).unwrap_or_else(|| panic!("never: {what}"));
}

/// A deploy v1 → v2 under 200 requests/s whose SSH sessions are all cut (capstan's master
/// connection dies with them) while the first instance is replaced, the old container kept.
struct SshCut {
    app: App,
    load: support::LoadGen,
    /// When the sessions were cut.
    cut: Instant,
    /// The run that lost its host (it failed).
    first: Run,
    /// The kept old container's name.
    kept: String,
}

fn cut_ssh_mid_replace(sb: &Sandbox, hint: &str) -> SshCut {
    let app = App::new(sb, hint, AppOptions::default());
    // A short lease: a run that lost its hosts renews it no more and holds the lock only that long.
    app.write_config(&edit(&app.default_config()).set("lock", json!({ "lease": "3s" })).text());
    let load = app.load(200);
    let child = spawn(&app, &["deploy", "--version", "v2"]);
    let kept = format!("{}.capstan-old", app.instances()[0]);
    until("the deploy replaces the first instance", || app.containers().contains(&kept));
    let cut = Instant::now();
    let killed = Command::new("pkill").args(["-KILL", "-P", &sb.sshd_pid().to_string()]).status().unwrap();
    assert!(killed.success(), "pkill found the sessions");
    let first = finish(child);
    assert_ne!(first.status, 0, "the run that lost its host fails:\n{first}");
    SshCut { app, load, cut, first, kept }
}

#[test]
fn ssh_cut_mid_rollout_is_finished_by_the_next_run() {
    let _turn = alone();
    let sb = sandbox();
    let SshCut { app, load, cut, first, .. } = cut_ssh_mid_replace(sb, "fssh");
    assert!(first.stderr.contains(&sb.ssh_host()) || first.stderr.contains("127.0.0.1"), "the error names the host:\n{first}");
    // The next run: waits out the lease, finds the half-replaced instance, finishes it, deploys.
    std::thread::sleep(Duration::from_secs(3));
    let next = app.capstan(&["deploy", "--version", "v2"]);
    let recovered = cut.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    next.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")), "{:?}", app.containers());
    assert!(!app.state_dir().join("lock.json").exists(), "the lock is released");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    let outcomes: Vec<String> = log_records(&app).iter().map(|r| format!("{} {}", r["command"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert_eq!(outcomes.last().map(String::as_str), Some("deploy succeeded"), "{outcomes:?}");
    record_fault(
        "SSH sessions cut while the first instance is replaced",
        &format!("run fails (exit {}); the next deploy takes over the expired lease, finishes the half-done instance, deploys", first.status),
        Some(&stats),
        Some(recovered),
    );
}

#[test]
fn a_crash_while_baking_reverts_every_instance() {
    let _turn = alone();
    let sb = sandbox();
    let app = App::new(sb, "fbake", AppOptions::default());
    app.write_config(&edit(&app.default_config()).set("bake", "20s").text());
    let load = app.load(200);
    let mut child = spawn(&app, &["--json", "deploy", "--version", "v2"]);
    // Both replaced (their old containers kept, stopped, until the host is done, for the
    // guard on the host): past the second one's pause, the rollout is in its bake window.
    let kept: Vec<String> = app.instances().iter().map(|n| format!("{n}.capstan-old")).collect();
    until("both instances run v2 and the rollout is baking", || {
        if child.try_wait().unwrap().is_some() {
            panic!("the deploy ended before its bake window:\n{}", finish(child_take(&mut child)));
        }
        let containers = app.containers();
        app.versions() == ["v2", "v2"] && kept.iter().all(|k| containers.contains(k))
    });
    std::thread::sleep(Duration::from_secs(2));
    // The new release crashes after it passed every gate.
    let crash = Instant::now();
    app.docker_ok(&["kill", &app.instances()[0]]);
    let run = finish(child);
    let recovered = crash.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    run.assert_status(1);
    assert!(run.stderr.contains("of baking"), "the bake caught it:\n{run}");
    assert_eq!(app.versions(), vec!["v1", "v1"], "reverted to what ran before");
    assert!(!app.state_dir().join("lock.json").exists());
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["outcome"], "rolled_back");
    let last = log_records(&app).pop().unwrap();
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    // A crashed container loses the requests it held; nginx retries idempotent ones on the other.
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    record_fault(
        "the new release crashes while baking, after every gate passed",
        "both instances reverted to v1 (exit 1, `rolled_back` in the log)",
        Some(&stats),
        Some(recovered),
    );
}

#[test]
fn a_refused_registry_password_replaces_nothing() {
    let _turn = alone();
    let sb = sandbox();
    let app = App::new(sb, "freg", AppOptions::default());
    app.write_config(&app.default_config());
    let load = app.load(200);
    let run = app.capstan_env(&["deploy", "--version", "v2"], &[("REGISTRY_PASSWORD", "wrong-password")]);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert!(run.status == 2 || run.status == 4, "refused before any change:\n{run}");
    assert!(!run.stderr.contains("wrong-password"), "the password is not printed");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(!app.state_dir().join("lock.json").exists());
    assert!(log_records(&app).is_empty(), "nothing was done, nothing is recorded");
    assert_eq!(stats.failed, 0);
    record_fault(
        "the registry refuses the password when the host resolves the release",
        &format!("refused before any change (exit {})", run.status),
        Some(&stats),
        None,
    );
}

#[test]
fn two_deploys_at_once_one_is_refused_and_the_log_stays_whole() {
    let _turn = alone();
    let sb = sandbox();
    let app = App::new(sb, "ftwo", AppOptions::default());
    app.write_config(&app.default_config());
    let load = app.load(200);
    let a = spawn(&app, &["deploy", "--version", "v2"]);
    let b = spawn(&app, &["deploy", "--version", "v3"]);
    let (a, b) = (finish(a), finish(b));
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    let mut codes = [a.status, b.status];
    codes.sort();
    assert_eq!(codes, [0, 3], "one deploys, the other is refused by the lock:\n{a}\n{b}");
    let winner = if a.status == 0 { "v2" } else { "v3" };
    assert_eq!(app.versions(), vec![winner, winner]);
    let records = log_records(&app);
    assert_eq!(records.len(), 1, "one record, whole: {records:?}");
    assert!(!app.state_dir().join("lock.json").exists());
    assert_eq!(stats.failed, 0);
    record_fault(
        "two deploys started at the same moment from two processes",
        "one deploys; the other is refused by the lock (exit 3); one whole log line",
        Some(&stats),
        None,
    );
}

#[test]
fn ssh_cut_then_status_explains_and_rollback_recovers() {
    let _turn = alone();
    let SshCut { app, load, cut, kept, .. } = cut_ssh_mid_replace(sandbox(), "fsshrb");
    // The dead run renews its lease no more: once it expires, `status` says what was left and by whom.
    std::thread::sleep(Duration::from_secs(3));
    let status = app.capstan(&["status"]);
    status.assert_success();
    assert!(status.stdout.contains(&format!("leftover container: {kept}")) || status.stderr.contains(&format!("leftover container: {kept}")), "{status}");
    let text = format!("{}{}", status.stdout, status.stderr);
    assert!(text.contains("that run died"), "status explains the expired lock:\n{status}");
    // `rollback` finishes the interrupted replace (the kept v1 goes back) and leaves every instance on v1.
    let back = app.capstan(&["rollback", "--to", "v1"]);
    let recovered = cut.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    back.assert_success();
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")), "{:?}", app.containers());
    assert!(!app.state_dir().join("lock.json").exists(), "the lock is released");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    let commands: Vec<String> = log_records(&app).iter().map(|r| format!("{} {}", r["command"].as_str().unwrap(), r["outcome"].as_str().unwrap())).collect();
    assert!(commands.iter().any(|c| c.starts_with("recover")), "the recovery is in the log: {commands:?}");
    record_fault(
        "SSH sessions cut mid-replace, then `status` and `rollback`",
        "status names the leftover and the dead run's lock; rollback takes over the expired lease, puts the kept container back",
        Some(&stats),
        Some(recovered),
    );
}

/// A TCP proxy to the registry that goes down (drops every connection, refuses new
/// ones) once `flag` exists: the registry dies between resolving the release and the pull.
struct RegistryProxy {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RegistryProxy {
    fn start(target: &str, flag: std::path::PathBuf) -> RegistryProxy {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (target, halt) = (target.to_string(), stop.clone());
        std::thread::spawn(move || {
            let live: Arc<Mutex<Vec<TcpStream>>> = Default::default();
            let mut down = false;
            while !halt.load(Ordering::SeqCst) {
                if !down && flag.exists() {
                    down = true;
                    for s in live.lock().unwrap().drain(..) {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
                match listener.accept() {
                    Ok((client, _)) if down => drop(client),
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = TcpStream::connect(&target) else { continue };
                        live.lock().unwrap().extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                        for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(Shutdown::Write);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        RegistryProxy { addr, stop }
    }
}

impl Drop for RegistryProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn the_registry_going_down_before_the_pull_replaces_nothing() {
    let _turn = alone();
    let sb = sandbox();
    let app = App::new(sb, "fregdown", AppOptions::default());
    let flag = app.dir().join("registry-down");
    let proxy = RegistryProxy::start(sb.registry(), flag.clone());
    // The release is resolved through the proxy; the pre-deploy hook (on the host, under
    // the lock, after the release was resolved) takes the registry down before the pull.
    let config = edit(&app.default_config())
        .set("registry.server", &proxy.addr)
        .set("services.web.image", format!("{}/capstan-demo", proxy.addr))
        .set("hooks", json!({ "pre_deploy": format!("touch {}", flag.display()) }));
    app.write_config(&config.text());
    let before = app.images();
    let load = app.load(200);
    let run = app.capstan(&["--json", "deploy", "--version", "v2"]);
    std::thread::sleep(Duration::from_millis(300));
    let stats = load.stop();
    assert!(flag.exists(), "the hook ran:\n{run}");
    run.assert_status(1);
    assert!(run.stderr.lines().any(|l| l.contains(" pull ") && l.contains("FAILED")), "the pull is what failed:\n{run}");
    assert!(run.stderr.contains("nothing was replaced"), "{run}");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(app.images(), before, "nothing was replaced");
    assert!(!app.containers().iter().any(|c| c.ends_with(".capstan-old")));
    assert!(!app.state_dir().join("lock.json").exists(), "the lock is released");
    let last = log_records(&app).pop().expect("the failed run is recorded");
    assert_eq!(last["outcome"], "rolled_back", "{last}");
    assert!(last["error"].as_str().unwrap_or_default().contains("pull"), "{last}");
    assert_eq!(stats.failed, 0, "failed requests: {:?}", stats.samples);
    record_fault(
        "the registry goes down after the release was resolved, before the host pulls",
        "pull fails, nothing replaced (exit 1, `rolled_back` with the pull's error in the log)",
        Some(&stats),
        None,
    );
}
