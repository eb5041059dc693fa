use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::cli::Targets;
use crate::commands::deploy::{roll, RollOpts, RunOutput};
use crate::commands::prepare::Want;
use crate::core::record::{InstanceOutcome, RunCommand, RunOutcome};
use crate::core::release::RollbackTo;
use crate::host::fake::{world, FakeHost, V1, V2};
use crate::host::state;
use crate::host::Host;
use crate::output::events::{HostEvent, HostPhase, Recorder};
use crate::output::report::Collector;

/// The whole command flow (connect, observe, resolve, plan, lock, roll out,
/// record) against the fake host: the lock and log scripts run for real.
struct FakeConnector(Arc<FakeHost>);

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(&self, _addr: &HostAddr, _config: &Config) -> Result<Host, Error> {
        Ok(self.0.host())
    }
    async fn close(&self) {}
}

async fn roll_fake(w: &crate::host::fake::World, want: Want, dry_run: bool) -> (Result<RunOutput, Error>, Vec<Event>) {
    let rec = Recorder::default();
    let connector = FakeConnector(w.fake.clone());
    let cancel = Cancel::default();
    let ctx = Ctx { config: &w.config, events: &rec, connector: &connector, cancel: &cancel, env: &Default::default() };
    let out = roll(&ctx, want, &Targets::default(), RollOpts { dry_run, force: false }, &Collector::default()).await;
    let events = rec.0.lock().unwrap().clone();
    (out, events)
}

#[tokio::test(start_paused = true)]
async fn deploy_records_and_rollback_returns_to_the_recorded_images() {
    let w = world("");
    let (dry, _) = roll_fake(&w, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, true).await;
    assert_eq!(dry.unwrap().report.plan.unwrap().changes(), 2);
    assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1), "a dry run changes nothing");

    let (out, _) = roll_fake(&w, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, false).await;
    let out = out.unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.report.outcome, RunOutcome::Succeeded);
    assert_eq!((w.fake.image_of("web-1").unwrap(), w.fake.image_of("web-2").unwrap()), (V2.to_string(), V2.to_string()));
    let dir = &w.config.state_dir;
    let (log, _) = state::read_log(w.fake.as_ref(), dir).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].instances[0].to_image, V2);
    assert_eq!(state::read_lock(w.fake.as_ref(), dir).await.unwrap(), None, "released");

    let (out, _) = roll_fake(&w, Want::Rollback { to: RollbackTo::Previous }, false).await;
    assert_eq!(out.unwrap().report.outcome, RunOutcome::Succeeded);
    assert_eq!(w.fake.image_of("web-2").as_deref(), Some(V1));

    // An unknown tag is bad input, and nothing is taken or changed.
    let (out, _) = roll_fake(&w, Want::Deploy { version: "v9".into(), pinned: HashMap::new() }, false).await;
    let err = out.err().expect("v9 is refused");
    assert_eq!(err.exit_code(), crate::error::exit::BAD_INPUT);
    assert!(err.to_string().contains("r/demo:v9 does not exist"), "{err}");
    assert_eq!(state::read_log(w.fake.as_ref(), dir).await.unwrap().0.len(), 2);
}

/// Several fake hosts, found by name.
struct FleetConnector(Vec<Arc<FakeHost>>);

#[async_trait]
impl Connector for FleetConnector {
    async fn connect(&self, addr: &HostAddr, _config: &Config) -> Result<Host, Error> {
        Ok(self.0.iter().find(|h| h.name == addr.host).expect("a fake host by that name").host())
    }
    async fn close(&self) {}
}

async fn roll_fleet(f: &crate::host::fake::Fleet) -> (RunOutput, Vec<Event>) {
    let rec = Arc::new(Recorder::default());
    let collector = Arc::new(Collector::default());
    let fan = crate::output::events::Fanout(vec![rec.clone(), collector.clone()]);
    let connector = FleetConnector(f.hosts.clone());
    let cancel = Cancel::default();
    let ctx = Ctx { config: &f.config, events: &fan, connector: &connector, cancel: &cancel, env: &Default::default() };
    let out = roll(&ctx, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, &Targets::default(), RollOpts::default(), &collector).await;
    let events = rec.0.lock().unwrap().clone();
    (out.expect("the run starts"), events)
}

/// `(host, phase)` in the order they happened: `start`, `done <outcome>`, `skip`, `revert`.
fn host_phases(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Host(HostEvent { host, phase }) => match phase {
                HostPhase::Connected { .. } => None,
                HostPhase::Started { .. } => Some(format!("{host} start")),
                HostPhase::Finished { outcome, .. } => Some(format!("{host} done {outcome}")),
                HostPhase::Skipped { .. } => Some(format!("{host} skip")),
                HostPhase::Reverting { .. } => Some(format!("{host} revert")),
            },
            _ => None,
        })
        .collect()
}

async fn images(f: &crate::host::fake::Fleet) -> Vec<String> {
    f.hosts.iter().map(|h| format!("{} {}", h.name, h.image_of("web-1").unwrap_or_default() + "," + &h.image_of("web-2").unwrap_or_default())).collect()
}

async fn log_outcomes(f: &crate::host::fake::Fleet) -> Vec<String> {
    let mut out = Vec::new();
    for h in &f.hosts {
        let (records, _) = state::read_log(h.as_ref(), &f.config.state_dir).await.unwrap();
        assert_eq!(state::read_lock(h.as_ref(), &f.config.state_dir).await.unwrap(), None, "{}: lock released", h.name);
        out.push(format!("{} {}", h.name, records.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>().join(",")));
    }
    out
}

fn both(image: &str) -> String {
    format!("{image},{image}")
}

#[tokio::test(start_paused = true)]
async fn hosts_roll_at_most_parallel_at_once() {
    let f = crate::host::fake::fleet(3, "rollout: { parallel: 2 }\n");
    let (out, events) = roll_fleet(&f).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let phases = host_phases(&events);
    // Never more than two at once, and h3 only once one of the first two is done.
    let mut running = 0i32;
    let most = phases.iter().map(|p| {
        running += if p.ends_with("start") { 1 } else { -1 };
        running
    });
    assert_eq!(most.max(), Some(2), "{phases:?}");
    let h3 = phases.iter().position(|p| p == "h3 start").unwrap();
    assert!(phases[..h3].iter().any(|p| p.contains(" done ")), "{phases:?}");
    assert_eq!(images(&f).await, ["h1", "h2", "h3"].map(|h| format!("{h} {}", both(V2))));
    // The report times every host.
    for h in &out.report.hosts {
        assert!(h.timing.connect_ms.is_some() && h.timing.started_ms.is_some() && h.timing.duration_ms.is_some(), "{h:?}");
        assert_eq!(h.outcome, Some(RunOutcome::Succeeded));
    }
    assert_eq!(log_outcomes(&f).await, ["h1 succeeded", "h2 succeeded", "h3 succeeded"]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_canary_stops_the_rest() {
    let f = crate::host::fake::fleet(3, "rollout: { canary: 1 }\n");
    f.hosts[0].state.lock().unwrap().broken.insert(V2.into());
    let (out, events) = roll_fleet(&f).await;
    assert_eq!(out.report.outcome, RunOutcome::RolledBack);
    assert_eq!(host_phases(&events), ["h1 start", "h1 done rolled_back", "h2 skip", "h3 skip"]);
    assert_eq!(images(&f).await, ["h1", "h2", "h3"].map(|h| format!("{h} {}", both(V1))));
    assert_eq!(log_outcomes(&f).await, ["h1 rolled_back", "h2 skipped", "h3 skipped"]);
    let skipped = &out.report.hosts.iter().find(|h| h.host == "h2").unwrap();
    assert_eq!(skipped.outcome, Some(RunOutcome::Skipped));
    assert!(skipped.timing.note.as_deref().unwrap().contains("h1 rolled back"), "{skipped:?}");
    // A good canary lets the rest go, after it is done.
    let f = crate::host::fake::fleet(3, "rollout: { canary: 1 }\n");
    let (out, events) = roll_fleet(&f).await;
    assert!(out.error.is_none());
    assert_eq!(host_phases(&events)[..2], ["h1 start", "h1 done succeeded"]);
    assert!(out.report.hosts.iter().find(|h| h.host == "h1").unwrap().timing.canary);
}

#[tokio::test(start_paused = true)]
async fn one_failed_host_reverts_all_by_default() {
    let f = crate::host::fake::fleet(3, "rollout: { parallel: 1 }\n");
    f.hosts[2].state.lock().unwrap().broken.insert(V2.into());
    let (out, events) = roll_fleet(&f).await;
    assert_eq!(out.report.outcome, RunOutcome::RolledBack);
    let phases = host_phases(&events);
    assert_eq!(phases[..6], ["h1 start", "h1 done succeeded", "h2 start", "h2 done succeeded", "h3 start", "h3 done rolled_back"]);
    assert!(phases[6..].contains(&"h1 revert".to_string()) && phases[6..].contains(&"h2 done rolled_back".to_string()), "{phases:?}");
    assert_eq!(images(&f).await, ["h1", "h2", "h3"].map(|h| format!("{h} {}", both(V1))));
    assert_eq!(log_outcomes(&f).await, ["h1 rolled_back", "h2 rolled_back", "h3 rolled_back"]);
    let h1 = out.report.hosts.iter().find(|h| h.host == "h1").unwrap();
    assert!(h1.instances.iter().all(|i| i.outcome == Some(InstanceOutcome::Reverted)), "{h1:?}");
    assert!(out.error.unwrap().to_string().contains("h1: put back because h3 failed"));
}

#[tokio::test(start_paused = true)]
async fn revert_host_keeps_the_hosts_that_finished() {
    let f = crate::host::fake::fleet(3, "rollout: { parallel: 1, on_failure: revert_host }\n");
    f.hosts[1].state.lock().unwrap().broken.insert(V2.into());
    let (out, events) = roll_fleet(&f).await;
    assert_eq!(out.report.outcome, RunOutcome::RolledBack);
    assert_eq!(host_phases(&events), ["h1 start", "h1 done succeeded", "h2 start", "h2 done rolled_back", "h3 skip"]);
    assert_eq!(images(&f).await, [format!("h1 {}", both(V2)), format!("h2 {}", both(V1)), format!("h3 {}", both(V1))]);
    assert_eq!(log_outcomes(&f).await, ["h1 succeeded", "h2 rolled_back", "h3 skipped"]);
}

#[tokio::test(start_paused = true)]
async fn a_service_runs_only_on_its_hosts_and_migrates_once() {
    let extra = "    migrate: { command: [exit, \"0\"] }\n    hosts: [back]\nroles:\n  back: [h2, h3]\n";
    let f = crate::host::fake::fleet(3, extra);
    let (out, _) = roll_fleet(&f).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let planned: Vec<_> = out.report.plan.unwrap().hosts.iter().map(|h| h.host.clone()).collect();
    assert_eq!(planned, ["h2", "h3"], "h1 runs no service of this run and is not touched");
    assert_eq!(images(&f).await, [format!("h1 {}", both(V1)), format!("h2 {}", both(V2)), format!("h3 {}", both(V2))]);
    let migrations: Vec<usize> =
        f.hosts.iter().map(|h| h.state.lock().unwrap().log.iter().filter(|l| l.starts_with("run_once web-1-capstan-migrate")).count()).collect();
    assert_eq!(migrations, [0, 1, 0], "once, on the first host that runs the service");
}

/// The lease is renewed while the run lives, so a lease shorter than the run is safe:
/// a second deploy 2.5 s into a 1 s lease is still refused. (Real time: leases are wall-clock.)
#[tokio::test]
async fn a_live_run_keeps_its_short_lease() {
    let w = world("lock: { lease: 1s }\nbake: 4s\n");
    let first = roll_fake(&w, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, false);
    let second = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        roll_fake(&w, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, false).await
    };
    let ((a, _), (b, _)) = tokio::join!(first, second);
    assert!(a.unwrap().error.is_none());
    let refused = b.err().expect("the second run is refused while the first lives");
    assert_eq!(refused.exit_code(), crate::error::exit::LOCKED, "{refused}");
    assert_eq!(state::read_lock(w.fake.as_ref(), &w.config.state_dir).await.unwrap(), None, "released at the end");
}

#[tokio::test(start_paused = true)]
async fn a_single_instance_on_a_single_host_is_warned_about() {
    let w = world("  worker:\n    image: r/worker\n    instances: [worker-1]\n");
    w.fake.add_container("worker-1", "r/worker@sha256:w1", 8090);
    let (_, events) = roll_fake(&w, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, true).await;
    assert!(events.iter().any(|e| matches!(e, Event::Warn { message, .. } if message.contains("services.worker: one instance on one host"))), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Warn { message, .. } if message.contains("services.web"))));
}

/// `status` judges an instance as the health gate does: Docker's HEALTHCHECK saying
/// unhealthy makes it unhealthy even though its HTTP probe answers 200.
#[tokio::test(start_paused = true)]
async fn status_says_unhealthy_when_the_docker_healthcheck_fails_though_http_answers() {
    use crate::core::observed::DockerHealth;
    use crate::rollout::checks::{look, Health};
    let w = world("");
    w.fake.state.lock().unwrap().docker_health.extend([("web-1".to_string(), DockerHealth::Healthy), ("web-2".to_string(), DockerHealth::Unhealthy)]);
    // web-2's probe answers 200: only Docker's word is against it.
    let host = w.fake.host();
    let web2 = host.engine.inspect_container("web-2").await.unwrap().unwrap();
    let (addr, port) = web2.probe_addr(8080);
    assert_eq!(host.probe.http_get(&addr, port, "/health", Duration::from_secs(2)).await.unwrap().status, 200);
    assert_eq!(look(&host, &w.config.services[0], &web2).await, Health::DockerUnhealthy);

    let rec = Recorder::default();
    let connector = FakeConnector(w.fake.clone());
    let cancel = Cancel::default();
    let ctx = Ctx { config: &w.config, events: &rec, connector: &connector, cancel: &cancel, env: &Default::default() };
    let s = crate::commands::status::status(&ctx, &Targets::default()).await.unwrap();
    let health: Vec<_> = s.hosts[0].instances.iter().map(|i| (i.name.as_str(), i.state.as_str(), i.healthy)).collect();
    assert_eq!(health, [("web-1", "running", Some(true)), ("web-2", "running", Some(false))]);
    let text = crate::commands::status::render_status(&s);
    assert!(text.lines().any(|l| l.contains("web/web-2") && l.contains("UNHEALTHY")), "{text}");
    assert!(text.lines().any(|l| l.contains("web/web-1") && l.contains(" healthy ")), "{text}");
}

/// `check` with no version: every check that needs none runs, nothing is resolved in the
/// registry, nothing changes, and the summary says what a version would add. An instance
/// whose upstream line is missing, or an unhealthy one, fails it.
#[tokio::test(start_paused = true)]
async fn a_check_without_a_version_runs_what_needs_none() {
    let w = world("preflight: { min_free_disk: 1KB }\n");
    // The registry knows no tag at all: a version's lookup would fail, this check makes none.
    w.fake.state.lock().unwrap().registry.clear();
    let (out, events) = roll_fake(&w, Want::Ready, false).await;
    let out = out.unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!((out.report.command, out.report.version.as_deref(), out.report.plan.as_ref()), (RunCommand::Check, None, None));
    let gates: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Gate(g) => Some((g.gate.as_str(), g.ok)),
            _ => None,
        })
        .collect();
    for want in ["preflight engine", "preflight lock", "preflight disk", "preflight health web-1", "preflight health web-2"] {
        assert!(gates.contains(&(want, true)), "{want} in {gates:?}");
    }
    let infos: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Info { message, .. } => Some(message.as_str()),
            _ => None,
        })
        .collect();
    assert!(infos.iter().any(|m| m.starts_with("running now:") && m.contains("web/web-1")), "{infos:?}");
    let summary = infos.iter().find(|m| m.starts_with("ready:")).expect("a summary");
    assert!(summary.contains("disk") && summary.contains("drains") && summary.contains("1 host(s), 2 instance(s)"), "{summary}");
    assert!(summary.contains("a version (--version V) would add: its image in the registry"), "{summary}");
    assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1), "nothing changed");
    assert_eq!(state::read_lock(w.fake.as_ref(), &w.config.state_dir).await.unwrap(), None, "no lock taken");

    // An unhealthy instance: refused, as a deploy would be.
    w.fake.state.lock().unwrap().docker_health.insert("web-2".into(), crate::core::observed::DockerHealth::Unhealthy);
    let (out, _) = roll_fake(&w, Want::Ready, false).await;
    let e = out.unwrap().error.expect("refused");
    assert_eq!(e.exit_code(), crate::error::exit::REFUSED, "{e}");
    assert!(e.to_string().contains("preflight health web-2"), "{e}");
    w.fake.state.lock().unwrap().docker_health.clear();

    // web-2's upstream line gone: bad input naming the host and the file.
    let up = w.fake.dir.path().join("upstream.conf");
    std::fs::write(&up, crate::host::fake::UPSTREAM.replace("    server 127.0.0.1:8082;\n", "")).unwrap();
    let (out, _) = roll_fake(&w, Want::Ready, false).await;
    let e = out.err().expect("the drain check refuses");
    assert_eq!(e.exit_code(), crate::error::exit::BAD_INPUT, "{e}");
    assert!(e.to_string().starts_with("fake: ") && e.to_string().contains("upstream.conf") && e.to_string().contains("web-2"), "{e}");
}
