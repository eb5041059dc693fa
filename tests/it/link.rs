//! The link between the runner and the host: capstan's SSH connection goes
//! through a proxy on loopback (`support::wan`) that can close connections,
//! delay them or black-hole them, in front of the sandbox's real sshd.

use std::time::{Duration, Instant};

use crate::support::{self, wan, App, AppOptions, KeepAliveLoad, KeepAliveOptions};
use crate::{sandbox, shared};

fn app(hint: &str) -> App {
    App::new(sandbox(), hint, AppOptions::default())
}

/// A host whose first connections are closed at once (sshd restarting, a
/// flapping link) is tried again before anything changes, and the deploy goes on.
#[test]
fn a_connection_closed_at_once_is_tried_again_before_any_change() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("retry");
    let proxy = wan::to_sandbox(sb, Duration::ZERO);
    app.write_config(&wan::through(&app, sb, &proxy).text());
    proxy.drop_next(2);
    let run = app.capstan(&["deploy", "--version", "v2"]);
    run.assert_success();
    assert!(run.stderr.contains("trying again"), "the retries are said:\n{}", run.stderr);
    assert_eq!(app.versions(), ["v2", "v2"]);
    assert_eq!(proxy.connections(), 1, "two closed connections, then one that stayed up for the whole run");
}

/// A host that keeps closing the connection: given up after three tries, exit 4,
/// the message says why and how many tries; nothing changed.
#[test]
fn a_host_that_keeps_closing_the_connection_is_given_up_after_three_tries() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("giveup");
    let proxy = wan::to_sandbox(sb, Duration::ZERO);
    app.write_config(&wan::through(&app, sb, &proxy).text());
    proxy.drop_next(100);
    let before = app.containers();
    let run = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(run.status, 4, "{}", run.stderr);
    assert!(run.stderr.contains("tried 3 times"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("127.0.0.1:{}", proxy.port())), "the host is named:\n{}", run.stderr);
    assert_eq!(app.containers(), before, "nothing changed");
    assert_eq!(app.versions(), ["v1", "v1"]);
}

/// Where a partition hits a deploy.
#[derive(Clone, Copy, Debug)]
enum Stage {
    /// web-1 is out of the load balancer, not yet stopped.
    Drain,
    /// web-1's old container is stopped and kept; the new one starts or is being checked.
    Replacing,
    /// web-1 is replaced and serves the release; web-2 is being replaced.
    SecondInstance,
    /// The host is done: its record is staged with the guard, the run is about to write it.
    Finished,
    /// Both instances serve the release, which failed its validation: the run is reverting.
    Reverting,
}

const GUARD: Duration = Duration::from_secs(6);

/// A deploy under load whose link to the host dies at `stage` (`kill`: the runner is
/// killed outright instead, at the same stage). Within the guard's bound and a few
/// seconds, the host is back on the release it ran, undrained, with no request
/// lost; the log has the guard's `recover`; the lock is free; the next deploy
/// starts cleanly. Returns how long the host took to come back after the cut.
fn partition(hint: &str, stage: Stage, kill: bool) -> (Duration, support::LoadStats) {
    let sb = sandbox();
    let app = app(hint);
    // A slow link for the last stage, so that the moment between the staged record and the
    // written one is long enough to cut the link in.
    let rtt = if matches!(stage, Stage::Finished) { Duration::from_millis(200) } else { Duration::ZERO };
    let proxy = wan::to_sandbox(sb, rtt);
    let mut config = wan::through(&app, sb, &proxy).set("lock", serde_json::json!({ "guard": format!("{}s", GUARD.as_secs()) }));
    let passing = config.text();
    if matches!(stage, Stage::Reverting) {
        // A release that serves but fails its validation once every instance runs it.
        config = config.set("validate", serde_json::json!({ "endpoints": [{ "url": format!("{}version", app.lb_url()), "status": 418 }] }));
    }
    let config = config.text();
    app.write_config(&config);
    let upstream_before = std::fs::read_to_string(app.upstream_conf()).expect("upstream file");
    let load = app.load(100);
    // Payments too: POSTs, which nginx never retries on another instance.
    let posts = KeepAliveLoad::start(
        &app.lb_url(),
        KeepAliveOptions { get_rps: 0, get_paths: Vec::new(), post_rps: 25, post_path: "/pay".into(), connections: 4, max_run: Duration::from_secs(300) },
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut child = app.spawn(&["deploy", "--version", "v2"]);
    let names = app.instances();
    // For the revert: every instance was seen serving the release, none drained.
    let mut all_served = false;
    let reached = support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || {
        let containers = app.containers();
        let upstream = std::fs::read_to_string(app.upstream_conf()).unwrap_or_default();
        let there = match stage {
            Stage::Drain => upstream.contains(" down"),
            Stage::Replacing => containers.contains(&format!("{}.capstan-old", names[0])),
            Stage::SecondInstance => containers.contains(&format!("{}.capstan-old", names[1])),
            Stage::Finished => staged(&app),
            // Every instance served the release, and then one went out of the load balancer
            // again: the revert's first drain.
            Stage::Reverting => {
                let released = app.versions() == ["v2", "v2"];
                let drained = upstream.contains(" down");
                let reverting = all_served && released && drained;
                all_served |= released && !drained;
                reverting
            }
        };
        there.then_some(())
    });
    assert!(reached.is_some(), "the deploy never reached {stage:?}");
    let cut = Instant::now();
    if kill {
        child.kill().expect("kill capstan");
    } else {
        proxy.black_hole(true);
    }
    // Back: every instance on the release it ran (v2 once the host was done), running,
    // nothing kept, the upstream file as it was, the lock free.
    let want = if matches!(stage, Stage::Finished) { ["v2", "v2"] } else { ["v1", "v1"] };
    let back = support::wait_for(GUARD + Duration::from_secs(40), Duration::from_millis(100), || {
        let ok = app.versions() == want
            && !app.containers().iter().any(|c| c.ends_with(".capstan-old"))
            && std::fs::read_to_string(app.upstream_conf()).unwrap_or_default() == upstream_before
            && !app.state_dir().join("lock.json").exists();
        ok.then(|| cut.elapsed())
    });
    let out = child.wait_with_output().expect("capstan ends");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    std::thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    let paid = posts.stop();
    let guard_log = std::fs::read_dir(app.state_dir())
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("guard-"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<String>()
        })
        .unwrap_or_default();
    let Some(took) = back else {
        panic!(
            "{stage:?}: the host did not come back: versions {:?}, containers {:?}, lock {}\ncapstan:\n{stderr}\nguard:\n{guard_log}",
            app.versions(),
            app.containers(),
            app.state_dir().join("lock.json").exists()
        )
    };
    assert_eq!(stats.failed, 0, "{stage:?}: requests failed while the link was cut and the guard acted: {:?}\nguard:\n{guard_log}", stats.samples);
    assert!(paid.post_2xx > 0, "{stage:?}: POSTs were sent: {paid:?}");
    // Every POST answered 2xx, but for the keep-alive race at nginx's reloads (no byte back on
    // a reused connection), bounded by 1% as in the Compose tests.
    assert_eq!(
        (paid.post_failed - paid.post_reload_race, paid.post_5xx, paid.post_other),
        (0, 0, 0),
        "{stage:?}: every POST answered 2xx while the link was cut and the guard acted: {:?}",
        paid.post_samples
    );
    assert!(paid.post_reload_race * 100 <= paid.post_sent, "{stage:?}: more than 1% of the POSTs lost to nginx's reloads: {:?}", paid.post_samples);
    if !kill && !matches!(stage, Stage::Finished) {
        assert_eq!(out.status.code(), Some(5), "{stage:?}: the run says the host needs the guard:\n{stderr}");
        assert!(
            stderr.contains("lost the link to the host") && stderr.contains("guard on the host"),
            "{stage:?}: the message says what the guard does:\n{stderr}"
        );
    }
    let log = std::fs::read_to_string(app.state_dir().join("deploys.jsonl")).unwrap_or_default();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().expect("a log line")).expect("a JSON log line");
    let want = if matches!(stage, Stage::Finished) { (Some("deploy"), Some("succeeded")) } else { (Some("recover"), Some("succeeded")) };
    assert_eq!((last["command"].as_str(), last["outcome"].as_str()), want, "{log}\nguard:\n{guard_log}");
    assert_eq!(
        log.lines().filter(|l| l.contains("\"command\":\"deploy\"")).count(),
        usize::from(matches!(stage, Stage::Finished)),
        "one record of the deploy, not two, none lost:\n{log}"
    );
    // The link heals: the next deploy (of a release that passes) starts without --force.
    proxy.black_hole(false);
    app.write_config(&passing);
    let next = app.capstan(&["deploy", "--version", "v2"]);
    next.assert_success();
    assert_eq!(app.versions(), ["v2", "v2"]);
    (took, stats)
}

/// Whether a guard on the app's host holds the host's staged final record.
fn staged(app: &App) -> bool {
    std::fs::read_dir(app.state_dir().join("guard")).map(|d| d.flatten().any(|g| g.path().join("done").exists())).unwrap_or(false)
}

#[test]
fn a_link_cut_during_the_drain_is_put_back_by_the_guard() {
    let _turn = shared();
    let (took, stats) = partition("cutdrain", Stage::Drain, false);
    support::record_fault("link black-holed during a drain", "the guard undrains, records `recover`, frees the lock", Some(&stats), Some(took));
}

#[test]
fn a_link_cut_while_an_instance_is_replaced_is_put_back_by_the_guard() {
    let _turn = shared();
    let (took, stats) = partition("cutrepl", Stage::Replacing, false);
    support::record_fault("link black-holed between stop and health", "the guard puts the kept container back", Some(&stats), Some(took));
}

#[test]
fn a_link_cut_after_an_instance_was_replaced_puts_both_back() {
    let _turn = shared();
    let (took, stats) = partition("cutsecond", Stage::SecondInstance, false);
    support::record_fault("link black-holed on the second instance", "the guard puts both kept containers back", Some(&stats), Some(took));
}

#[test]
fn a_link_cut_while_the_run_reverts_is_finished_by_the_guard() {
    let _turn = shared();
    let (took, stats) = partition("cutrev", Stage::Reverting, false);
    support::record_fault("link black-holed while the run reverts a release", "the guard puts back what the run had not", Some(&stats), Some(took));
}

#[test]
fn a_runner_killed_mid_rollout_is_put_back_by_the_guard() {
    let _turn = shared();
    let (took, stats) = partition("cutkill", Stage::Replacing, true);
    support::record_fault(
        "the runner killed (SIGKILL) mid-rollout",
        "the guard puts the kept container back without waiting for a next run",
        Some(&stats),
        Some(took),
    );
}

#[test]
fn a_link_cut_while_the_host_finishes_loses_no_log_line() {
    let _turn = shared();
    let (took, stats) = partition("cutdone", Stage::Finished, false);
    support::record_fault(
        "link black-holed as the host finishes",
        "the guard writes the run's staged record and frees the lock; nothing is put back",
        Some(&stats),
        Some(took),
    );
}

/// A link that stalls for less than the guard's bound: the run goes on and
/// finishes; the guard never acts (no `recover` in the log).
#[test]
fn a_link_that_heals_within_the_bound_lets_the_run_finish() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("heal");
    let proxy = wan::to_sandbox(sb, Duration::ZERO);
    // A bound long enough that a 3 s stall (plus up to a renewal interval before it) stays under it.
    app.write_config(&wan::through(&app, sb, &proxy).set("lock", serde_json::json!({ "guard": "15s" })).text());
    let load = app.load(100);
    let child = app.spawn(&["deploy", "--version", "v2"]);
    let kept = format!("{}.capstan-old", app.instances()[0]);
    support::wait_for(Duration::from_secs(60), Duration::from_millis(5), || app.containers().contains(&kept).then_some(())).expect("the deploy reaches web-1");
    proxy.black_hole(true);
    std::thread::sleep(Duration::from_secs(3));
    proxy.black_hole(false);
    let out = child.wait_with_output().expect("capstan ends");
    let stats = load.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the run goes on once the link is back:\n{stderr}");
    assert_eq!(app.versions(), ["v2", "v2"]);
    assert_eq!(stats.failed, 0, "{:?}", stats.samples);
    let log = std::fs::read_to_string(app.state_dir().join("deploys.jsonl")).unwrap_or_default();
    assert!(!log.contains("\"recover\""), "the guard never acted:\n{log}");
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(!app.state_dir().join("guard").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false), "no guard left behind");
    support::record_fault("link stalled 3 s (under the guard's bound)", "the run goes on and finishes; the guard never acts", Some(&stats), None);
}
