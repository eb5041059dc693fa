use super::*;
use crate::core::plan::{plan_host, Observed};
use crate::host::fake::{world, World, UPSTREAM, V1, V2};
use crate::output::events::{Event, Recorder};
use std::sync::Arc;

/// Observes the fake host and plans every instance onto `to`.
async fn prepared<'w>(w: &'w World, to: &str) -> (Host, Vec<&'w Service>, HostPlan) {
    let host = w.fake.host();
    let services: Vec<&Service> = w.config.services.iter().collect();
    let mut obs = Observed { all_names: w.fake.names(), ..Default::default() };
    for n in ["web-1", "web-2"] {
        let c = host.engine.inspect_container(n).await.unwrap().unwrap();
        let i = host.engine.inspect_image(&c.image_id).await.unwrap();
        obs.containers.insert(n.into(), (c, i));
    }
    let plan = plan_host("fake", &services, &obs, &|_, _| Some(to.to_string())).unwrap();
    (host, services, plan)
}

/// An executor on the fake host, with no lease, credentials or version.
fn rollout<'a>(host: &'a Host, events: &'a Recorder, cancel: &'a Cancel, safety: Safety<'a>) -> Rollout<'a> {
    Rollout { host, events, creds: None, t0: Instant::now(), lease: None, cancel, drainer: Default::default(), safety, version: None }
}

async fn run(w: &World, to: &str) -> (HostResult, Vec<Event>) {
    let (host, services, plan) = prepared(w, to).await;
    let rec = Recorder::default();
    let cancel = Cancel::default();
    let r = rollout(&host, &rec, &cancel, Safety::default());
    let result = r.run(&plan, &services).await;
    let events = rec.0.lock().unwrap().clone();
    (result, events)
}

/// Like [`run`], with the safety gates of the world's config on.
async fn run_safe(w: &World, to: &str) -> (HostResult, Vec<Event>) {
    let (host, services, plan) = prepared(w, to).await;
    let rec = Recorder::default();
    let cancel = Cancel::default();
    let all: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    let safety = Safety { migrate: &all, validate: Some(&w.config.validate), bake: w.config.bake };
    let r = rollout(&host, &rec, &cancel, safety);
    let result = r.run(&plan, &services).await;
    let events = rec.0.lock().unwrap().clone();
    (result, events)
}

fn gates(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Gate(g) => Some(format!("{} {}", g.gate, if g.ok { "ok" } else { "FAILED" })),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_failing_migration_stops_before_the_first_instance() {
    let w = world("    migrate: { command: [exit, \"3\"] }\n");
    let (result, events) = run_safe(&w, V2).await;
    assert_eq!(result.outcome, RunOutcome::RolledBack);
    assert_eq!(gates(&events), vec!["migrate web FAILED"]);
    assert!(result.error.unwrap().contains("`exit 3` exited 3"));
    assert!(steps(&events).iter().all(|s| s.ends_with("pull")), "no instance was touched: {:?}", steps(&events));
    assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1));
    // A good migration runs once, from the new image, then the rollout goes on.
    let w = world("    migrate: { command: [exit, \"0\"] }\n");
    let (result, events) = run_safe(&w, V2).await;
    assert_eq!(result.outcome, RunOutcome::Succeeded);
    assert_eq!(gates(&events), vec!["migrate web ok"]);
    assert!(w.fake.state.lock().unwrap().log.contains(&format!("run_once web-1-capstan-migrate {V2}")));
}

#[tokio::test(start_paused = true)]
async fn failed_validation_reverts_every_instance() {
    // An endpoint that does not answer as expected.
    let w = world("validate:\n  endpoints: [{ url: \"http://127.0.0.1:80/health\", status: 200, body: \"all good\" }]\n");
    let (result, events) = run_safe(&w, V2).await;
    assert_eq!(result.outcome, RunOutcome::RolledBack, "{:?}", result.error);
    assert_eq!(gates(&events), vec!["validate http://127.0.0.1:80/health FAILED"]);
    assert_eq!((w.fake.image_of("web-1").unwrap(), w.fake.image_of("web-2").unwrap()), (V1.to_string(), V1.to_string()));
    // Error lines in the new containers' output.
    let w = world("validate:\n  errors: { pattern: \"ERROR\", max: 1 }\n");
    w.fake.state.lock().unwrap().logs.insert("web-2".into(), "ERROR a\nfine\nERROR b\n".into());
    let (result, events) = run_safe(&w, V2).await;
    assert_eq!(result.outcome, RunOutcome::RolledBack);
    assert_eq!(gates(&events), vec!["validate errors FAILED"]);
    // All gates passing.
    let w = world("validate:\n  endpoints: [{ url: \"http://127.0.0.1:80/\", body: ok }]\n  errors: { pattern: \"ERROR\" }\nbake: 2s\n");
    let (result, events) = run_safe(&w, V2).await;
    assert_eq!(result.outcome, RunOutcome::Succeeded, "{:?}", result.error);
    assert_eq!(gates(&events), vec!["validate http://127.0.0.1:80/ ok", "validate errors ok", "bake ok"]);
}

fn steps(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) => Some(format!("{} {}{}", s.instance, s.step, if s.ok { "" } else { " FAILED" })),
            _ => None,
        })
        .collect()
}

fn upstream(w: &World) -> String {
    std::fs::read_to_string(w.fake.dir.path().join("upstream.conf")).unwrap()
}

#[tokio::test(start_paused = true)]
async fn replaces_every_instance_in_order_through_every_step() {
    let w = world("");
    let (r, events) = run(&w, V2).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V2));
    assert_eq!(w.fake.image_of("web-2").as_deref(), Some(V2));
    assert_eq!(w.fake.names(), vec!["web-1", "web-2"], "old containers removed");
    assert_eq!(upstream(&w), UPSTREAM, "every server is back up");
    let want: Vec<String> = ["pull", "drain", "stop", "start", "health", "undrain", "traffic", "pause", "cleanup"]
        .iter()
        .map(|s| format!("web-1 {s}"))
        .chain(["drain", "stop", "start", "health", "undrain", "traffic", "pause", "cleanup"].iter().map(|s| format!("web-2 {s}")))
        .collect();
    assert_eq!(steps(&events), want);
    // The new container has what the old one had, but the image.
    let env = w.fake.state.lock().unwrap().containers["web-1"].spec.0.env.clone();
    assert_eq!(env, Some(vec!["APP_SETTING=kept".to_string()]));
}

#[tokio::test(start_paused = true)]
async fn unchanged_instances_are_left_alone() {
    let w = world("");
    let (r, events) = run(&w, V1).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded);
    assert!(steps(&events).is_empty());
    assert!(r.instances.iter().all(|i| i.outcome == InstanceOutcome::Unchanged));
}

/// A failure injected at each step of the second instance: every instance
/// ends on its old image, nothing is left drained, no container is left over.
#[tokio::test(start_paused = true)]
async fn a_failure_at_any_step_puts_every_instance_back() {
    let cases: &[(&str, &str)] = &[
        ("pull", "web-1 pull FAILED"),
        ("reload", "web-1 drain FAILED"),
        ("rename", "web-1 stop FAILED"),
        ("create", "web-1 start FAILED"),
        ("broken", "web-1 health FAILED"),
        ("rx", "web-1 traffic FAILED"),
        ("crash", "web-1 pause FAILED"),
        ("start-second", "web-2 start FAILED"),
        ("broken-second", "web-2 health FAILED"),
    ];
    for (inject, failed_step) in cases {
        let w = world("");
        match *inject {
            "broken" => {
                w.fake.state.lock().unwrap().broken.insert(V2.into());
            }
            "crash" => {
                w.fake.state.lock().unwrap().crash_after_healthy.insert(V2.into());
            }
            "start-second" | "broken-second" => {}
            "pull" => {
                w.fake.state.lock().unwrap().images.remove(V2);
                w.fake.fail("pull");
            }
            op => w.fake.fail(op),
        }
        let (host, services, plan) = prepared(&w, V2).await;
        let rec = Recorder::default();
        // Second-instance failures are injected once the first instance is done.
        let fake = w.fake.clone();
        let inject2 = inject.to_string();
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                // Once web-1's undrain ran (after its health gate), the next start and health gate are web-2's.
                let done = {
                    let s = fake.state.lock().unwrap();
                    s.log.iter().position(|l| l == "start web-1").is_some_and(|i| s.log[i..].iter().any(|l| l.starts_with("run ")))
                };
                if done {
                    match inject2.as_str() {
                        "start-second" => fake.fail("start"),
                        "broken-second" => {
                            fake.state.lock().unwrap().broken.insert(V2.into());
                        }
                        _ => {}
                    }
                    return;
                }
            }
        });
        let cancel = Cancel::default();
        let r = rollout(&host, &rec, &cancel, Safety::default());
        let result = r.run(&plan, &services).await;
        watcher.abort();
        // Injected faults stop after the run so that checks see the real state.
        w.fake.state.lock().unwrap().fail.clear();
        let events = rec.0.lock().unwrap().clone();
        let s = steps(&events);
        assert!(s.contains(&failed_step.to_string()), "{inject}: expected {failed_step} in {s:#?}");
        assert_eq!(result.outcome, RunOutcome::RolledBack, "{inject}: {:?}\n{s:#?}", result.error);
        assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1), "{inject}: web-1\n{s:#?}");
        assert_eq!(w.fake.image_of("web-2").as_deref(), Some(V1), "{inject}: web-2\n{s:#?}");
        assert_eq!(w.fake.names(), vec!["web-1", "web-2"], "{inject}: no leftovers");
        assert!(w.fake.state.lock().unwrap().containers.values().all(|c| c.running), "{inject}: all running");
        assert_eq!(upstream(&w), UPSTREAM, "{inject}: nothing left drained");
        let error = result.error.unwrap();
        assert!(error.contains("reverted") || (*inject == "pull" && error.contains("nothing was replaced")), "{inject}: {error}");
    }
}

/// SIGTERM after the first instance: nothing new starts, everything changed is reverted.
#[tokio::test(start_paused = true)]
async fn a_cancelled_run_reverts_what_it_changed() {
    let w = world("");
    let (host, services, plan) = prepared(&w, V2).await;
    let rec = Recorder::default();
    let cancel = Arc::new(Cancel::default());
    let (fake, c2) = (w.fake.clone(), cancel.clone());
    let watcher = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if fake.state.lock().unwrap().log.iter().any(|l| l == "start web-2") {
                c2.trigger("cancelled by SIGTERM");
                return;
            }
        }
    });
    let r = rollout(&host, &rec, &cancel, Safety::default());
    let result = r.run(&plan, &services).await;
    watcher.abort();
    let s = steps(&rec.0.lock().unwrap());
    assert_eq!(result.outcome, RunOutcome::RolledBack, "{s:#?}");
    assert!(result.error.unwrap().contains("cancelled by SIGTERM"));
    assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1));
    assert_eq!(w.fake.image_of("web-2").as_deref(), Some(V1));
    assert_eq!(w.fake.names(), vec!["web-1", "web-2"]);
    assert_eq!(upstream(&w), UPSTREAM);
    assert!(!s.iter().any(|x| x == "web-2 traffic"), "no step starts after the signal: {s:#?}");
}

/// The health gate counts only healthy looks: while Docker's HEALTHCHECK is still
/// starting, the instance waits, though its HTTP probe answers.
#[tokio::test(start_paused = true)]
async fn the_health_gate_waits_until_docker_says_healthy() {
    use crate::core::observed::DockerHealth;
    let w = world("");
    w.fake.state.lock().unwrap().docker_health.insert("web-1".into(), DockerHealth::Starting);
    let fake = w.fake.clone();
    // Docker says healthy a second after the new web-1 started.
    let healthy_later = tokio::spawn(async move {
        while !fake.state.lock().unwrap().log.iter().any(|l| l == "start web-1") {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        fake.state.lock().unwrap().docker_health.insert("web-1".into(), DockerHealth::Healthy);
    });
    let (r, events) = run(&w, V2).await;
    healthy_later.abort();
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    let health: Vec<(String, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step(s) if s.step == "health" => Some((s.instance.clone(), s.duration_ms)),
            _ => None,
        })
        .collect();
    assert!(health[0].0 == "web-1" && health[0].1 >= 1000, "web-1 waited for Docker: {health:?}");
    assert!(health[1].0 == "web-2" && health[1].1 < 500, "web-2 has no HEALTHCHECK: {health:?}");
}
