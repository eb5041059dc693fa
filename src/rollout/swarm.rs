//! A `target: swarm` service's rollout. Swarm is the orchestrator here: capstan
//! updates the service's image (pinned by the release's digest) with the config's
//! rolling-update settings, watches Swarm roll the tasks to the end (`UpdateStatus`
//! and the tasks), then runs its own health and traffic checks like for any
//! service. Steps and outcomes are the executor's events, one row per Swarm
//! service, so the printer, the report, the job summary and the host's log record
//! it like any rollout.
//!
//! Putting it back: when Swarm rolled the update back itself, it only has to be
//! seen settled and healthy; when the service still runs what this run put there,
//! Swarm's own rollback restores the spec before (`rollback=previous`); otherwise
//! (someone changed it since) it is updated to the recorded image. A revert is
//! never cancelled and never rolled forward again (its failure action is pause).

use std::time::Duration;

use tokio::time::Instant;

use crate::core::config::{Service, SwarmFailureAction, SwarmTarget};
use crate::core::image::{short, without_tag};
use crate::core::observed::{SwarmService, UpdateState};
use crate::core::plan::InstancePlan;
use crate::host::SwarmUpdate;
use crate::rollout::checks::{rx_bytes, swarm_now, MIN_TRAFFIC_BYTES};
use crate::rollout::steps::{round, Failure, StepError, StepResult, Steps};

/// How often a Swarm update is looked at while it runs.
const POLL: Duration = Duration::from_millis(500);

/// What a Swarm update came to.
#[derive(Debug, PartialEq)]
enum Settled {
    /// It runs the image it was asked to, every task up.
    Done(String),
    /// Swarm rolled it back, paused it, or it did not end in time: why.
    Failed(String),
}

fn settings(sw: &SwarmTarget) -> SwarmUpdate {
    SwarmUpdate {
        parallelism: sw.parallelism,
        delay: sw.delay,
        order: sw.order,
        failure_action: sw.failure_action,
        monitor: sw.monitor,
        max_failure_ratio: sw.max_failure_ratio,
    }
}

fn describe(u: &SwarmUpdate) -> String {
    format!(
        "parallelism {}, delay {}, {}, failure_action {}, monitor {}",
        u.parallelism,
        humantime::format_duration(u.delay),
        u.order.as_str(),
        u.failure_action.as_str(),
        humantime::format_duration(u.monitor)
    )
}

/// A Swarm service's rollout on one host, driven through the executor's [`Steps`]
/// (timed steps, cancellation, the host): it knows nothing else of `Rollout`.
pub(super) struct SwarmRollout<'a> {
    steps: Steps<'a>,
}

impl<'a> SwarmRollout<'a> {
    pub(super) fn new(steps: Steps<'a>) -> Self {
        SwarmRollout { steps }
    }

    /// Updates the Swarm service of `svc` to `ip.to_image` and proves it. On failure the
    /// service is put back before returning (`Failure::restored` says whether that worked).
    pub(super) async fn roll(&self, svc: &Service, sw: &SwarmTarget, ip: &InstancePlan) -> Result<(), Failure> {
        let (s, name) = (&svc.name, &ip.name);
        self.steps.go_on(true).map_err(|error| Failure { error, restored: true })?;
        let sent = self
            .steps
            .step(s, name, "update", async {
                let current = self.swarm_service(sw).await?;
                if let Some(u) = current.update.filter(|u| u.busy()) {
                    return Err(format!("Swarm's {} of {} is under way ({}); try again once it is done", u.as_str(), sw.service, current.update_message).into());
                }
                let u = settings(sw);
                let warnings = self.steps.host.swarm.update_service(&current, &ip.to_image, &u, self.steps.creds).await.map_err(StepError::failed)?;
                for w in &warnings {
                    self.steps.warn(format!("{}: Swarm: {w}", sw.service));
                }
                Ok(((), format!("{} → {}: {}", short(&ip.from_image), short(&ip.to_image), describe(&u))))
            })
            .await;
        // A refused update changed nothing.
        sent.map_err(|error| Failure { error, restored: true })?;
        let forward = async {
            self.steps
                .step(s, name, "converge", async {
                    match self.watch_swarm(sw, &ip.to_image, true).await? {
                        Settled::Done(d) => Ok(((), d)),
                        Settled::Failed(why) => Err(why.into()),
                    }
                })
                .await?;
            self.steps.go_on(true)?;
            self.steps.step(s, name, "health", self.swarm_health(svc, sw, &ip.to_image, true)).await?;
            self.steps.go_on(true)?;
            self.steps.step(s, name, "traffic", self.swarm_traffic(svc, sw, &ip.to_image)).await?;
            Ok::<(), StepError>(())
        };
        match forward.await {
            Ok(()) => Ok(()),
            Err(error) => {
                let restored = self.revert(svc, name, &ip.from_image, &ip.to_image).await;
                Err(Failure { error, restored })
            }
        }
    }

    /// Puts a Swarm service back on `from` (see the module's doc); whether it is back and healthy.
    pub(super) async fn revert(&self, svc: &Service, name: &str, from: &str, to: &str) -> bool {
        let Some(sw) = &svc.swarm else { return false };
        let s = &svc.name;
        // Swarm's own rollback, if one is under way, ends first; an update under way is rolled back at once.
        let current = match self.settle(sw).await {
            Ok(c) => c,
            Err(e) => {
                self.steps.warn(format!("{}: cannot put it back: {e}", sw.service));
                return false;
            }
        };
        let now = without_tag(&current.image);
        if now != from {
            let step = if now == to { "revert rollback" } else { "revert update" };
            let sent = self
                .steps
                .step(s, name, step, async {
                    if now == to {
                        // This run's update is the last one: Swarm's previous spec is the one it replaced.
                        self.steps.host.swarm.rollback_service(&current).await.map_err(StepError::failed)?;
                        Ok(((), format!("Swarm's rollback to the spec before ({})", short(from))))
                    } else {
                        // Changed since: back to the recorded image, and a failure pauses rather than going forward.
                        let u = SwarmUpdate { failure_action: SwarmFailureAction::Pause, ..settings(sw) };
                        self.steps.host.swarm.update_service(&current, from, &u, self.steps.creds).await.map_err(StepError::failed)?;
                        Ok(((), format!("{} runs {}; updated to the recorded {}", sw.service, short(&now), short(from))))
                    }
                })
                .await;
            if sent.is_err() {
                return false;
            }
        }
        let converged = self
            .steps
            .step(s, name, "revert converge", async {
                match self.watch_swarm(sw, from, false).await? {
                    Settled::Done(d) => Ok(((), d)),
                    Settled::Failed(why) => Err(why.into()),
                }
            })
            .await;
        converged.is_ok() && self.steps.step(s, name, "revert health", self.swarm_health(svc, sw, from, false)).await.is_ok()
    }

    async fn swarm_service(&self, sw: &SwarmTarget) -> Result<SwarmService, StepError> {
        match self.steps.host.swarm.inspect_service(&sw.service).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(StepError::Failed(format!("the Swarm service {} is gone", sw.service))),
            Err(e) => Err(StepError::failed(e)),
        }
    }

    /// Waits (up to `swarm.timeout`, never cancelled) until no rollback is under way.
    async fn settle(&self, sw: &SwarmTarget) -> Result<SwarmService, StepError> {
        let deadline = Instant::now() + sw.timeout;
        loop {
            let current = self.swarm_service(sw).await?;
            if current.update != Some(UpdateState::RollbackStarted) {
                return Ok(current);
            }
            if Instant::now() >= deadline {
                return Err(StepError::Failed(format!(
                    "Swarm's {} did not end within {}",
                    current.update.map(|u| u.as_str()).unwrap_or("update"),
                    humantime::format_duration(sw.timeout)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Watches Swarm roll the service to `image`: `UpdateStatus` (updating → completed, or
    /// rollback_started → rollback_completed, or paused) and the tasks, until it settles
    /// or `swarm.timeout` passes. Err only when cancelled (or the service is gone).
    async fn watch_swarm(&self, sw: &SwarmTarget, image: &str, cancellable: bool) -> Result<Settled, StepError> {
        let start = Instant::now();
        // Swarm's reason for a rollback or a pause, and the tasks' errors, as first seen:
        // once the rollback completes, its message says only that.
        let mut reason: Option<String> = None;
        let mut errors: Vec<String> = Vec::new();
        loop {
            let current = self.swarm_service(sw).await?;
            let tasks = self.steps.host.swarm.tasks(&current.id).await.map_err(StepError::failed)?;
            let wanted: Vec<_> = tasks.iter().filter(|t| t.desired == "running").collect();
            let want = current.replicas.unwrap_or(wanted.len() as u64) as usize;
            let up = wanted.iter().filter(|t| t.state == "running" && without_tag(&t.image) == image).count();
            // Tasks of another image still running: Swarm marks a start-first update completed
            // before the old tasks it told to stop have stopped, and they may still answer.
            let stopping = tasks.iter().filter(|t| t.state == "running" && without_tag(&t.image) != image).count();
            // The errors of tasks that ran the image, for the message.
            for t in tasks.iter().filter(|t| without_tag(&t.image) == image && matches!(t.state.as_str(), "failed" | "rejected") && !t.message.is_empty()) {
                if !errors.contains(&t.message) {
                    errors.push(t.message.clone());
                }
            }
            if matches!(current.update, Some(UpdateState::RollbackStarted | UpdateState::Paused | UpdateState::RollbackPaused))
                && !current.update_message.is_empty()
            {
                reason.get_or_insert_with(|| current.update_message.clone());
            }
            let mut tasks_text = format!("{up}/{want} tasks running {}", short(image));
            if stopping > 0 {
                tasks_text.push_str(&format!(", {stopping} of another image still stopping"));
            }
            if let Some(e) = errors.first() {
                tasks_text.push_str(&format!("; a task: {e}"));
            }
            let took = humantime::format_duration(round(start.elapsed()));
            let on_image = without_tag(&current.image) == image;
            let message = match reason.as_deref().or(Some(current.update_message.as_str())).filter(|m| !m.is_empty()) {
                Some(m) => format!(" ({m})"),
                None => String::new(),
            };
            match current.update {
                // Swarm rolled this update back (the rollback of a revert is the revert).
                Some(UpdateState::RollbackCompleted) if !on_image => {
                    return Ok(Settled::Failed(format!("Swarm rolled the update back{message} after {took}; {tasks_text}")));
                }
                Some(UpdateState::Paused) => return Ok(Settled::Failed(format!("Swarm paused the update{message} after {took}; {tasks_text}"))),
                Some(UpdateState::RollbackPaused) => return Ok(Settled::Failed(format!("Swarm paused the rollback{message} after {took}; {tasks_text}"))),
                Some(UpdateState::Completed) | Some(UpdateState::RollbackCompleted) if !on_image => {
                    return Ok(Settled::Failed(format!("the service runs {} now, not {}: changed by someone else?", short(&current.image), short(image))));
                }
                // Completed, or no update recorded (an update that needed no task changed): done once the tasks are.
                Some(UpdateState::Completed) | Some(UpdateState::RollbackCompleted) | None if on_image && up >= want && stopping == 0 => {
                    let how = current.update.map(|u| u.as_str()).unwrap_or("settled");
                    return Ok(Settled::Done(format!("{how} in {took}: {tasks_text}")));
                }
                _ => {}
            }
            let last = format!("{}: {tasks_text}", current.update.map(|u| u.as_str()).unwrap_or("not started"));
            if start.elapsed() >= sw.timeout {
                return Ok(Settled::Failed(format!("Swarm did not finish within {} ({last})", humantime::format_duration(sw.timeout))));
            }
            self.steps.wait(POLL, cancellable).await.map_err(|e| e.map(|why| format!("{why} ({last})")))?;
        }
    }

    /// capstan's own health gate over the Swarm service: `health.healthy_after` good looks
    /// in a row (every task up on `image`, those on this host healthy) within `health.timeout`.
    async fn swarm_health(&self, svc: &Service, sw: &SwarmTarget, image: &str, cancellable: bool) -> StepResult<()> {
        let h = &svc.health;
        let deadline = Instant::now() + h.timeout;
        let (mut good, mut looks) = (0u32, 0u32);
        loop {
            looks += 1;
            let (ok, measured) = swarm_now(self.steps.host, svc, sw, Some(image)).await;
            good = if ok { good + 1 } else { 0 };
            if good >= h.healthy_after {
                return Ok(((), format!("{good} good looks in a row ({looks} looks): {measured}")));
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy after {}: {measured}", humantime::format_duration(h.timeout)).into());
            }
            let nap = h.interval.min(deadline.saturating_duration_since(Instant::now()));
            self.steps.wait(nap, cancellable).await?;
        }
    }

    /// The containers of the service's tasks running `image` on this host (short IDs).
    pub(super) async fn containers(&self, sw: &SwarmTarget, image: &str) -> Vec<String> {
        let Ok(current) = self.swarm_service(sw).await else { return vec![] };
        let Ok(tasks) = self.steps.host.swarm.tasks(&current.id).await else { return vec![] };
        let mut out = Vec::new();
        for t in tasks.iter().filter(|t| t.desired == "running" && t.state == "running" && without_tag(&t.image) == image) {
            let Some(id) = &t.container else { continue };
            if let Ok(Some(_)) = self.steps.host.engine.inspect_container(id).await {
                out.push(id.chars().take(12).collect());
            }
        }
        out
    }

    /// Requests through `traffic.url` must all be answered; the new tasks on this host must
    /// receive them (unless they share the host's network, whose counters prove nothing).
    async fn swarm_traffic(&self, svc: &Service, sw: &SwarmTarget, image: &str) -> StepResult<()> {
        let Some(t) = &svc.traffic else {
            return Ok(((), "skipped: no traffic.url".into()));
        };
        let (addr, port, path) = crate::host::probe_target(&t.url).map_err(|e| StepError::Failed(format!("traffic.url {e}")))?;
        let mut counted = Vec::new();
        let mut host_network = 0;
        for id in self.containers(sw, image).await {
            let Ok(Some(c)) = self.steps.host.engine.inspect_container(&id).await else { continue };
            let mode = c.spec.0.host_config.as_ref().and_then(|h| h.network_mode.clone()).unwrap_or_default();
            if mode == "host" {
                host_network += 1;
            } else {
                counted.push(id);
            }
        }
        let mut before = 0;
        for id in &counted {
            before += rx_bytes(self.steps.host, id).await?;
        }
        let mut failed = Vec::new();
        for _ in 0..t.requests {
            match self.steps.host.probe.http_get(&addr, port, &path, Duration::from_secs(5)).await {
                Ok(a) if a.status < 500 => {}
                Ok(a) => failed.push(format!("HTTP {}", a.status)),
                Err(e) => failed.push(e.to_string()),
            }
        }
        if let Some(last) = failed.last() {
            return Err(format!("{}/{} requests through {} failed (last: {last})", failed.len(), t.requests, t.url).into());
        }
        let mut after = 0;
        for id in &counted {
            after += rx_bytes(self.steps.host, id).await?;
        }
        let delta = after.saturating_sub(before);
        if !counted.is_empty() && delta < MIN_TRAFFIC_BYTES {
            return Err(format!("no new task of {} received traffic through {} ({} requests, +{delta} bytes)", sw.service, t.url, t.requests).into());
        }
        let proof = match (counted.len(), host_network) {
            (0, 0) => "no task on this host to count bytes on".to_string(),
            (0, n) => format!("{n} new task(s) here on the host's network, whose counters are the host's: not counted"),
            (n, _) => format!("{n} new task(s) here received +{delta} bytes"),
        };
        Ok(((), format!("{}/{} ok through {}; {proof}", t.requests, t.requests, t.url)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use async_trait::async_trait;

    use crate::cli::Targets;
    use crate::commands::deploy::{roll, RollOpts, RunOutput};
    use crate::commands::prepare::Want;
    use crate::commands::Ctx;
    use crate::core::config::{self, Config, SwarmOrder};
    use crate::core::names::HostAddr;
    use crate::core::record::{InstanceOutcome, RunOutcome};
    use crate::core::release::RollbackTo;
    use crate::error::Error;
    use crate::host::connect::Connector;
    use crate::host::fake::{world, FakeHost, V1, V2};
    use crate::host::state;
    use crate::host::Host;
    use crate::output::events::{Event, Fanout, Recorder};
    use crate::output::report::Collector;
    use crate::rollout::cancel::Cancel;

    const A1: &str = "r/api@sha256:a1";
    const A2: &str = "r/api@sha256:a2";

    struct One(Arc<FakeHost>);

    #[async_trait]
    impl Connector for One {
        async fn connect(&self, _addr: &HostAddr, _config: &Config) -> Result<Host, Error> {
            Ok(self.0.host())
        }
        async fn close(&self) {}
    }

    /// The fake world (web-1, web-2 on V1) plus a Swarm service `shop_api` of 3 tasks on A1,
    /// rolled before web; `swarm` is appended to its `swarm:` block.
    fn swarm_world(swarm: &str) -> (Arc<FakeHost>, Config) {
        let w = world("");
        let api = format!(
            "services:\n  api:\n    image: r/api\n    target: swarm\n    swarm: {{ monitor: 1s, timeout: 30s{swarm} }}\n    health: {{ timeout: 5s, interval: 100ms, healthy_after: 2 }}\n"
        );
        let yaml = w.yaml.replacen("services:\n", &api, 1);
        let config = config::parse(std::path::Path::new("capstan.yml"), &yaml).unwrap();
        w.fake.add_swarm_service("shop_api", A1, 3);
        w.fake.state.lock().unwrap().registry.insert("r/api:v2".into(), "sha256:a2".into());
        (w.fake, config)
    }

    async fn run(fake: &Arc<FakeHost>, config: &Config, want: Want, cancel: &Cancel) -> (Result<RunOutput, Error>, Vec<Event>) {
        let rec = Arc::new(Recorder::default());
        let collector = Arc::new(Collector::default());
        let fan = Fanout(vec![rec.clone(), collector.clone()]);
        let connector = One(fake.clone());
        let ctx = Ctx { config, events: &fan, connector: &connector, cancel, env: &Default::default() };
        let out = roll(&ctx, want, &Targets::default(), RollOpts::default(), &collector).await;
        let events = rec.0.lock().unwrap().clone();
        (out, events)
    }

    fn deploy_v2() -> Want {
        Want::Deploy { version: "v2".into(), pinned: HashMap::new() }
    }

    /// `step` or `step FAILED` of the Swarm service's row, in order.
    fn swarm_steps(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Step(s) if s.instance == "shop_api" => Some(format!("{}{}", s.step, if s.ok { "" } else { " FAILED" })),
                _ => None,
            })
            .collect()
    }

    fn swarm_log(fake: &FakeHost) -> Vec<String> {
        fake.state.lock().unwrap().log.iter().filter(|l| l.starts_with("swarm-")).cloned().collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_is_sent_watched_to_its_end_checked_and_recorded() {
        let (fake, config) = swarm_world(", parallelism: 2, delay: 3s, order: stop-first");
        let (out, events) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let out = out.unwrap();
        assert!(out.error.is_none(), "{:?}", out.error);
        assert_eq!(out.report.outcome, RunOutcome::Succeeded);
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A2));
        assert_eq!(fake.image_of("web-1").as_deref(), Some(V2), "the container service rolled after it");
        let sent = fake.state.lock().unwrap().swarm["shop_api"].settings.clone().unwrap();
        assert_eq!((sent.parallelism, sent.delay.as_secs(), sent.order), (2, 3, SwarmOrder::StopFirst));
        assert_eq!(sent.failure_action, config::SwarmFailureAction::Rollback, "the default");
        assert_eq!(swarm_steps(&events), ["update", "converge", "health", "traffic"]);
        // One row in the plan and the report, named after the Swarm service.
        let row = out.report.plan.unwrap().hosts[0].services[0].instances[0].clone();
        assert_eq!((row.name.as_str(), row.from_image.as_str(), row.to_image.as_str(), row.replace), ("shop_api", A1, A2, true));
        let reported = out.report.hosts[0].instances.iter().find(|i| i.name == "shop_api").unwrap();
        assert_eq!(reported.outcome, Some(InstanceOutcome::Replaced));
        let (log, _) = state::read_log(fake.as_ref(), &config.state_dir).await.unwrap();
        let rec = log[0].instances.iter().find(|i| i.name == "shop_api").unwrap();
        assert_eq!((rec.service.as_str(), rec.from_image.as_str(), rec.to_image.as_str(), rec.outcome), ("api", A1, A2, InstanceOutcome::Replaced));

        // A rollback goes to the digest the log recorded, through the same path.
        let (out, events) = run(&fake, &config, Want::Rollback { to: RollbackTo::Previous }, &Cancel::default()).await;
        assert_eq!(out.unwrap().report.outcome, RunOutcome::Succeeded);
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A1));
        assert_eq!(fake.image_of("web-1").as_deref(), Some(V1));
        assert_eq!(swarm_steps(&events), ["update", "converge", "health", "traffic"]);
        assert_eq!(swarm_log(&fake), [format!("swarm-update shop_api {A2}"), format!("swarm-update shop_api {A1}")]);
    }

    #[tokio::test(start_paused = true)]
    async fn converge_waits_for_the_old_tasks_to_stop() {
        let (fake, config) = swarm_world("");
        fake.state.lock().unwrap().swarm.get_mut("shop_api").unwrap().linger_for = 6;
        let (out, events) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        assert_eq!(out.unwrap().report.outcome, RunOutcome::Succeeded);
        let converge = events
            .iter()
            .find_map(|e| match e {
                Event::Step(s) if s.instance == "shop_api" && s.step == "converge" => Some(s.clone()),
                _ => None,
            })
            .unwrap();
        // Six more looks, half a second apart, after Swarm said completed.
        assert!(converge.duration_ms >= 3000, "converge ended while an old task still ran: {converge:?}");
        assert_eq!(fake.state.lock().unwrap().swarm["shop_api"].lingering, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_that_swarm_rolls_back_is_rolled_back() {
        let (fake, config) = swarm_world("");
        fake.state.lock().unwrap().swarm_failing.insert(A2.into());
        let (out, events) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let out = out.unwrap();
        assert_eq!(out.report.outcome, RunOutcome::RolledBack);
        let error = out.report.error.unwrap();
        assert!(error.contains("shop_api: Swarm rolled the update back (update rolled back due to failure"), "{error}");
        assert!(error.contains("a task: task: non-zero exit (1)"), "the task's error is named: {error}");
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A1));
        assert_eq!(swarm_steps(&events), ["update", "converge FAILED", "revert converge", "revert health"]);
        assert_eq!(swarm_log(&fake), [format!("swarm-update shop_api {A2}")], "Swarm rolled back by itself");
        let row = out.report.hosts[0].instances.iter().find(|i| i.name == "shop_api").unwrap();
        assert_eq!(row.outcome, Some(InstanceOutcome::Reverted));
        assert_eq!(fake.image_of("web-1").as_deref(), Some(V1), "web, after it, was never touched");
        let (log, _) = state::read_log(fake.as_ref(), &config.state_dir).await.unwrap();
        assert_eq!(log[0].outcome, RunOutcome::RolledBack);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_update_is_rolled_back_by_capstan() {
        let (fake, config) = swarm_world(", failure_action: pause");
        fake.state.lock().unwrap().swarm_failing.insert(A2.into());
        let (out, events) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let out = out.unwrap();
        assert_eq!(out.report.outcome, RunOutcome::RolledBack);
        assert!(out.report.error.unwrap().contains("Swarm paused the update"));
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A1));
        assert_eq!(swarm_steps(&events), ["update", "converge FAILED", "revert rollback", "revert converge", "revert health"]);
        assert_eq!(swarm_log(&fake), [format!("swarm-update shop_api {A2}"), "swarm-rollback shop_api".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_service_failing_puts_the_swarm_service_back() {
        let (fake, config) = swarm_world("");
        fake.state.lock().unwrap().broken.insert(V2.into());
        let (out, events) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let out = out.unwrap();
        assert_eq!(out.report.outcome, RunOutcome::RolledBack);
        assert!(out.report.error.unwrap().contains("web-1"), "web-1 failed");
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A1), "put back by Swarm's rollback");
        assert_eq!(fake.image_of("web-1").as_deref(), Some(V1));
        assert_eq!(swarm_steps(&events), ["update", "converge", "health", "traffic", "revert rollback", "revert converge", "revert health"]);
        let row = out.report.hosts[0].instances.iter().find(|i| i.name == "shop_api").unwrap();
        assert_eq!(row.outcome, Some(InstanceOutcome::Reverted));
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_while_swarm_updates_rolls_it_back() {
        let (fake, config) = swarm_world("");
        let cancel = Arc::new(Cancel::default());
        let (f, c) = (fake.clone(), cancel.clone());
        let watcher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                if f.state.lock().unwrap().log.iter().any(|l| l.starts_with("swarm-update")) {
                    c.trigger("cancelled by SIGTERM");
                    return;
                }
            }
        });
        let (out, events) = run(&fake, &config, deploy_v2(), &cancel).await;
        watcher.abort();
        let out = out.unwrap();
        assert_eq!(out.report.outcome, RunOutcome::RolledBack);
        assert!(out.report.error.unwrap().contains("cancelled by SIGTERM"));
        assert_eq!(fake.swarm_image("shop_api").as_deref(), Some(A1));
        let steps = swarm_steps(&events);
        assert_eq!(steps[..2], ["update", "converge FAILED"], "{steps:?}");
        assert!(steps.contains(&"revert rollback".to_string()) && steps.ends_with(&["revert health".to_string()]), "{steps:?}");
        assert!(!steps.contains(&"health".to_string()), "no step starts after the signal");
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_service_or_a_host_that_is_no_manager_is_bad_input() {
        let (fake, config) = swarm_world("");
        fake.state.lock().unwrap().swarm.clear();
        let (out, _) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let err = out.err().expect("refused");
        assert_eq!(err.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(err.to_string().contains("Swarm service shop_api (services.api.swarm.service) does not exist"), "{err}");
        fake.state.lock().unwrap().swarm_error = Some("This node is not a swarm manager.".into());
        let (out, _) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let err = out.err().expect("refused");
        assert_eq!(err.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(err.to_string().contains("is it a Swarm manager?): This node is not a swarm manager."), "{err}");
        assert!(swarm_log(&fake).is_empty() && fake.image_of("web-1").as_deref() == Some(V1), "nothing changed");
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_under_way_is_refused_before_any_change() {
        let (fake, config) = swarm_world("");
        {
            let mut s = fake.state.lock().unwrap();
            let svc = s.swarm.get_mut("shop_api").unwrap();
            (svc.update, svc.ticks) = (Some(crate::core::observed::UpdateState::RollbackStarted), 1000);
        }
        let (out, _) = run(&fake, &config, deploy_v2(), &Cancel::default()).await;
        let out = out.unwrap();
        assert_eq!(out.report.outcome, RunOutcome::Refused);
        assert!(out.report.error.unwrap().contains("preflight swarm shop_api: Swarm's rollback_started is under way"));
        assert!(swarm_log(&fake).is_empty() && fake.image_of("web-1").as_deref() == Some(V1), "nothing changed");
    }
}
