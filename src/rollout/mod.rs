//! The rolling update on one host: per service in config order, per instance
//! in the listed order: pull, drain, stop (keep the old container), start the
//! new one, health gate, undrain, traffic check, pause, remove the old one.
//!
//! Any failure undoes the instance in flight (the kept old container comes
//! back) and then reverts every instance this run already replaced, in reverse
//! order, through the same replace procedure and the same discipline.
//! Drives only the [`Host`] traits, so tests run it against `fake::FakeHost`.

pub mod cancel;
pub mod gates;
mod swarm;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use time::OffsetDateTime;

use crate::core::config::{DrainMethod, Service};
use crate::core::image;
use crate::core::observed::{ContainerInfo, ContainerSpec, DockerHealth};
use crate::core::plan::{HostPlan, InstancePlan, OLD_SUFFIX};
use crate::core::record::Lease;
use crate::core::secret::Credentials;
use crate::host::drain;
use crate::host::state;
use crate::host::Host;
use crate::output::events::{Event, Gate, InstanceOutcome, Sink, StepEvent};
use crate::rollout::cancel::Cancel;

/// Bytes an instance must receive during the traffic check to count as reached.
/// A single proxied HTTP request is several hundred bytes; ARP noise is 42.
pub(crate) const MIN_TRAFFIC_BYTES: u64 = 100;

pub struct Rollout<'a> {
    pub host: &'a Host,
    pub events: &'a dyn Sink,
    pub creds: Option<&'a Credentials>,
    /// The run's start, so that step times line up across hosts.
    pub t0: Instant,
    /// Our lease on the host's deploy lock, renewed after each instance.
    pub lease: Option<LeaseKeeper>,
    /// Once triggered, no new step starts; what was changed is reverted.
    pub cancel: &'a Cancel,
    pub drainer: drain::Drainer,
    pub safety: Safety<'a>,
    /// The release's version, which a Compose service's `.env` variable is set to.
    pub version: Option<&'a str>,
}

/// The gates around the instances: migrations before a service's first
/// instance, validation after the last one, then the bake window.
#[derive(Default, Clone, Copy)]
pub struct Safety<'a> {
    /// The services whose `migrate:` command this host runs (each runs on one host per deploy).
    pub migrate: &'a [String],
    pub validate: Option<&'a crate::core::config::Validate>,
    pub bake: Duration,
}

pub struct LeaseKeeper {
    pub dir: String,
    pub lease: tokio::sync::Mutex<Lease>,
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostOutcome {
    #[default]
    Succeeded,
    RolledBack,
    /// A gate said no before anything changed.
    Refused,
    /// Something could not be put back: the host needs attention.
    Failed,
    /// Never started (an earlier host failed, or the run was cancelled): nothing changed.
    Skipped,
}

impl HostOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            HostOutcome::Succeeded => "succeeded",
            HostOutcome::RolledBack => "rolled_back",
            HostOutcome::Refused => "refused",
            HostOutcome::Failed => "failed",
            HostOutcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct InstanceResult {
    pub service: String,
    pub plan: InstancePlan,
    pub outcome: InstanceOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct HostResult {
    pub outcome: HostOutcome,
    pub instances: Vec<InstanceResult>,
    pub error: Option<String>,
    /// The Compose `.env` variables this rollout set, as they were: what a revert puts back.
    pub compose_env: Vec<crate::host::compose::EnvChange>,
    /// Per replaced instance, the spec of the container it replaced: what a revert recreates.
    pub replaced_specs: HashMap<String, ContainerSpec>,
}

#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) restored: bool,
}

/// What a replace has done so far, so that an undo knows what to put back.
#[derive(Default, Debug)]
struct Progress {
    drained: bool,
    renamed: bool,
    stopped: bool,
    created: bool,
    /// The next instance was drained with this one's undrain (one reload for both).
    next_drained: bool,
}

/// How one forward replace meets its neighbours in the load balancer.
#[derive(Default, Clone, Copy)]
struct Handover<'t> {
    /// This instance was drained already, with the previous one's undrain.
    drained: bool,
    /// The next instance to replace: drained with this one's undrain.
    next: Option<&'t drain::Target>,
}

/// An instance (or a Swarm service) this run replaced, and what it ran before.
struct Done<'s> {
    service: &'s Service,
    name: String,
    spec: ContainerSpec,
    from_image: String,
    to_image: String,
}

pub(crate) type StepResult<T> = Result<(T, String), String>;

impl<'a> Rollout<'a> {
    pub async fn run(&self, plan: &HostPlan, services: &[&Service]) -> HostResult {
        let mut done: Vec<Done> = Vec::new();
        // Every instance starts as unchanged; the loop records what happened to each.
        let mut results: Vec<InstanceResult> = plan
            .services
            .iter()
            .flat_map(|sp| sp.instances.iter().map(|i| InstanceResult { service: sp.service.clone(), plan: i.clone(), outcome: InstanceOutcome::Unchanged }))
            .collect();
        let mut set = |service: &str, name: &str, outcome| {
            if let Some(r) = results.iter_mut().find(|r| r.service == service && r.plan.name == name) {
                r.outcome = outcome;
            }
        };
        let mut failure: Option<(String, Failure)> = None;

        'services: for sp in &plan.services {
            let Some(svc) = services.iter().find(|s| s.name == sp.service) else { continue };
            // A Swarm service: one update that Swarm rolls, watched to its end (swarm.rs).
            if let (Some(sw), Some(ip)) = (&svc.swarm, sp.instances.iter().find(|i| i.replace)) {
                match self.roll_swarm(svc, sw, ip).await {
                    Ok(()) => {
                        set(&svc.name, &ip.name, InstanceOutcome::Replaced);
                        let (from_image, to_image) = (ip.from_image.clone(), ip.to_image.clone());
                        done.push(Done { service: svc, name: ip.name.clone(), spec: ContainerSpec::default(), from_image, to_image });
                        self.renew_lease().await;
                    }
                    Err(f) => {
                        set(&svc.name, &ip.name, if f.restored { InstanceOutcome::Reverted } else { InstanceOutcome::Failed });
                        failure = Some((ip.name.clone(), f));
                        break 'services;
                    }
                }
                continue;
            }
            let to_replace: Vec<&InstancePlan> = sp.instances.iter().filter(|i| i.replace).collect();
            if let Some(first) = to_replace.first() {
                let images: BTreeSet<&str> = to_replace.iter().map(|i| i.to_image.as_str()).collect();
                let pulled = match self.cancel.reason() {
                    Some(why) => Err(why),
                    None => self.step(&svc.name, &first.name, "pull", self.pull(&images)).await,
                };
                if let Err(message) = pulled {
                    failure = Some((format!("{} pull", first.name), Failure { message, restored: true }));
                    break 'services;
                }
                // The migration runs once, before the service's first instance, from the new image.
                if let (true, Some(m)) = (self.safety.migrate.contains(&svc.name), &svc.migrate) {
                    if let Err(message) = self.migrate(svc, m, &first.name, &first.to_image).await {
                        failure = Some((format!("migrate {}", svc.name), Failure { message, restored: true }));
                        break 'services;
                    }
                }
            }
            // A Compose service whose tag comes from a variable: the hashes Compose will expect.
            let mut relabel: HashMap<String, (String, String)> = HashMap::new();
            if let (Some(first), Some(c)) = (to_replace.first(), svc.compose.as_ref().filter(|c| c.variable.is_some())) {
                match self.step(&svc.name, &first.name, "compose", self.compose_hashes(svc, c, &first.name, &first.to_image)).await {
                    Ok(h) => relabel = h,
                    Err(message) => {
                        failure = Some((format!("{} compose", svc.name), Failure { message, restored: true }));
                        break 'services;
                    }
                }
            }
            let lb = svc.drain.method != DrainMethod::None;
            // The instance drained together with the previous one's undrain, if any.
            let mut pre_drained: Option<drain::Target> = None;
            for (k, ip) in to_replace.iter().enumerate() {
                let current = match self.host.engine.inspect_container(&ip.name).await {
                    Ok(Some(c)) => c,
                    found => {
                        let message = found.err().map(|e| e.to_string()).unwrap_or_else(|| format!("container {} disappeared", ip.name));
                        if let Some(t) = pre_drained.take() {
                            self.undrain_alone(svc, &t).await;
                        }
                        failure = Some((ip.name.clone(), Failure { message, restored: true }));
                        break 'services;
                    }
                };
                // The next instance goes out of the load balancer with this one's undrain.
                let next = match to_replace.get(k + 1) {
                    Some(n) if lb => self.host.engine.inspect_container(&n.name).await.ok().flatten().map(|c| drain::Target::of(svc, &c)),
                    _ => None,
                };
                let spec = match (current.compose_service.as_ref().and_then(|s| relabel.get(s)), relabel.is_empty()) {
                    (Some((hash, image_id)), _) => crate::host::compose::relabel(&current.spec, hash, image_id),
                    (None, true) => current.spec.clone(),
                    (None, false) => {
                        if let Some(t) = pre_drained.take() {
                            self.undrain_alone(svc, &t).await;
                        }
                        let message = format!("Compose computed no config hash for {}'s service {:?}", ip.name, current.compose_service);
                        failure = Some((ip.name.clone(), Failure { message, restored: true }));
                        break 'services;
                    }
                };
                let handover = Handover { drained: pre_drained.take().is_some(), next: next.as_ref() };
                match self.replace(svc, &ip.name, &current, &spec, &ip.to_image, "", handover).await {
                    Ok(next_drained) => {
                        set(&svc.name, &ip.name, InstanceOutcome::Replaced);
                        let (from_image, to_image) = (ip.from_image.clone(), ip.to_image.clone());
                        done.push(Done { service: svc, name: ip.name.clone(), spec: current.spec.clone(), from_image, to_image });
                        if next_drained {
                            pre_drained = next;
                        }
                        self.renew_lease().await;
                    }
                    Err(f) => {
                        set(&svc.name, &ip.name, if f.restored { InstanceOutcome::Reverted } else { InstanceOutcome::Failed });
                        failure = Some((ip.name.clone(), f));
                        break 'services;
                    }
                }
            }
        }

        if failure.is_none() && !done.is_empty() {
            if let Err((at, message)) = self.validate_and_bake(&done).await {
                failure = Some((at, Failure { message, restored: true }));
            }
        }
        let mut compose_env = Vec::new();
        if failure.is_none() {
            match self.set_compose_env(&done).await {
                Ok(changes) => compose_env = changes,
                Err((at, message)) => failure = Some((at, Failure { message, restored: true })),
            }
        }
        let Some((at, f)) = failure else {
            self.emit_reloads();
            self.emit_instances(&results);
            let replaced_specs = done.iter().map(|d| (d.name.clone(), d.spec.clone())).collect();
            return HostResult { outcome: HostOutcome::Succeeded, instances: results, error: None, compose_env, replaced_specs };
        };
        match done.len() {
            0 => self.info(format!("{at} failed: {}", f.message)),
            n => self.info(format!("{at} failed: {}; reverting {n} replaced instance(s)", f.message)),
        }
        let mut all_restored = f.restored;
        // Newest first, except that instances serving nothing now (one that crashed while
        // baking, say) go back before any that serves: draining a healthy instance while
        // another is down would leave the load balancer with none.
        let mut order = Vec::new();
        for d in done.iter().rev() {
            let serving = match self.host.engine.inspect_container(&d.name).await {
                _ if d.service.swarm.is_some() => true,
                Ok(Some(c)) => crate::rollout::gates::healthy_now(self.host, d.service, &c).await.0,
                _ => false,
            };
            order.push((serving, d));
        }
        order.sort_by_key(|(serving, _)| *serving);
        for (_, d) in order {
            let ok = match self.host.engine.inspect_container(&d.name).await {
                _ if d.service.swarm.is_some() => self.revert_swarm(d.service, &d.name, &d.from_image, &d.to_image).await,
                Ok(Some(current)) => self.replace(d.service, &d.name, &current, &d.spec, &d.from_image, "revert ", Handover::default()).await.is_ok(),
                _ => false,
            };
            set(&d.service.name, &d.name, if ok { InstanceOutcome::Reverted } else { InstanceOutcome::Failed });
            all_restored &= ok;
        }
        self.emit_instances(&results);
        self.emit_reloads();
        let outcome = if all_restored { HostOutcome::RolledBack } else { HostOutcome::Failed };
        let error = if all_restored && results.iter().all(|r| r.outcome == InstanceOutcome::Unchanged) {
            format!("{at}: {}; nothing was replaced", f.message)
        } else if all_restored {
            format!("{at}: {}; every replaced instance was reverted", f.message)
        } else {
            format!("{at}: {}; some instances could not be restored, see the steps above", f.message)
        };
        HostResult { outcome, instances: results, error: Some(error), ..Default::default() }
    }

    /// Puts back a host whose rollout succeeded (another host failed, `on_failure:
    /// revert_all`): each instance it replaced goes back to what it ran, newest
    /// first, through the same replace procedure and discipline as a failure's revert.
    pub async fn revert_finished(&self, finished: &HostResult, services: &[&Service]) -> HostResult {
        let mut instances = finished.instances.clone();
        let mut all_restored = true;
        if !finished.compose_env.is_empty() {
            let last = finished.instances.last().map(|r| (r.service.clone(), r.plan.name.clone())).unwrap_or_default();
            let put_back = async {
                crate::host::compose::restore_env(self.host.shell.as_ref(), &finished.compose_env).await?;
                Ok(((), format!("{} put back", finished.compose_env.iter().map(|c| c.variable.as_str()).collect::<Vec<_>>().join(", "))))
            };
            all_restored &= self.step(&last.0, &last.1, "revert compose env", put_back).await.is_ok();
        }
        for r in instances.iter_mut().rev().filter(|r| r.outcome == InstanceOutcome::Replaced) {
            let Some(svc) = services.iter().find(|s| s.name == r.service) else { continue };
            let ok = match self.host.engine.inspect_container(&r.plan.name).await {
                _ if svc.swarm.is_some() => self.revert_swarm(svc, &r.plan.name, &r.plan.from_image, &r.plan.to_image).await,
                Ok(Some(current)) => {
                    let spec = finished.replaced_specs.get(&r.plan.name).unwrap_or(&current.spec);
                    self.replace(svc, &r.plan.name, &current, spec, &r.plan.from_image, "revert ", Handover::default()).await.is_ok()
                }
                _ => false,
            };
            r.outcome = if ok { InstanceOutcome::Reverted } else { InstanceOutcome::Failed };
            all_restored &= ok;
        }
        self.emit_instances(&instances);
        self.emit_reloads();
        let outcome = if all_restored { HostOutcome::RolledBack } else { HostOutcome::Failed };
        HostResult { outcome, instances, error: None, ..Default::default() }
    }

    fn gate(&self, g: Gate) -> Gate {
        self.events.emit(Event::Gate(g.clone()));
        g
    }

    /// Runs `migrate.command` as a one-off container of the new image, beside `instance`.
    async fn migrate(&self, svc: &Service, m: &crate::core::config::Migrate, instance: &str, image: &str) -> Result<(), String> {
        self.go_on(true)?;
        let engine = &self.host.engine;
        let current = engine.inspect_container(instance).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{instance} disappeared"))?;
        let spec = crate::host::spec::one_off_spec(&current.spec, &m.command);
        let name = format!("{instance}-capstan-migrate");
        // A killed run may have left one behind.
        let _ = engine.remove(&name).await;
        let gate = format!("migrate {}", svc.name);
        let limit = format!("exit 0 within {}", humantime::format_duration(m.timeout));
        let g = match engine.run_once(&name, &spec, image, m.timeout).await {
            Ok((code, output)) => Gate {
                host: self.host.name.clone(),
                gate,
                ok: code == 0,
                measured: format!("`{}` exited {code}", m.command.join(" ")),
                limit,
                output: output.trim_end().to_string(),
            },
            Err(e) => Gate::new(&self.host.name, gate, false, e.to_string(), limit),
        };
        let g = self.gate(g);
        if g.ok {
            Ok(())
        } else {
            Err(g.describe())
        }
    }

    /// After the last instance: the endpoints and the error lines, then the
    /// bake window. An error names the gate that failed.
    async fn validate_and_bake(&self, done: &[Done<'_>]) -> Result<(), (String, String)> {
        // Containers whose output is checked: the replaced ones, and the new tasks of a Swarm service on this host.
        let mut names: Vec<String> = Vec::new();
        for d in done {
            match &d.service.swarm {
                Some(sw) => names.extend(self.swarm_containers(sw, &d.to_image).await),
                None => names.push(d.name.clone()),
            }
        }
        let fail = |at: &str, g: &Gate| Err((at.to_string(), g.describe()));
        if let Some(v) = self.safety.validate {
            for e in &v.endpoints {
                let g = self.gate(crate::rollout::gates::endpoint(self.host, e).await);
                if !g.ok {
                    return fail("validate", &g);
                }
            }
            if let Some(e) = &v.errors {
                let g = self.gate(crate::rollout::gates::errors(self.host, &names, &e.pattern, e.max, "validate errors").await);
                if !g.ok {
                    return fail("validate", &g);
                }
            }
        }
        let bake = self.safety.bake;
        if bake.is_zero() {
            return Ok(());
        }
        let watched: Vec<&str> = done.iter().map(|d| d.name.as_str()).collect();
        self.info(format!("baking for {}: watching {} for health and errors", humantime::format_duration(bake), watched.join(", ")));
        let start = Instant::now();
        let every = (bake / 20).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let errors = self.safety.validate.and_then(|v| v.errors.as_ref());
        loop {
            for d in done {
                let (ok, measured) = match &d.service.swarm {
                    Some(sw) => crate::rollout::gates::swarm_now(self.host, d.service, sw, Some(&d.to_image)).await,
                    None => match self.host.engine.inspect_container(&d.name).await.ok().flatten() {
                        Some(c) => crate::rollout::gates::healthy_now(self.host, d.service, &c).await,
                        None => (false, "gone".into()),
                    },
                };
                if !ok {
                    let g = self.gate(Gate::new(
                        &self.host.name,
                        "bake",
                        false,
                        format!("{}: {measured} after {} of baking", d.name, humantime::format_duration(round(start.elapsed()))),
                        format!("healthy for {}", humantime::format_duration(bake)),
                    ));
                    return fail("bake", &g);
                }
            }
            if let Some(e) = errors {
                let g = crate::rollout::gates::errors(self.host, &names, &e.pattern, e.max, "bake errors").await;
                if !g.ok {
                    let mut g = self.gate(g);
                    g.measured = format!("{} after {} of baking", g.measured, humantime::format_duration(round(start.elapsed())));
                    return fail("bake", &g);
                }
            }
            if start.elapsed() >= bake {
                break;
            }
            if let Err(why) = self.wait(every.min(bake.saturating_sub(start.elapsed())), true).await {
                return Err(("bake".into(), why));
            }
        }
        self.gate(Gate::new(
            &self.host.name,
            "bake",
            true,
            format!("{} healthy for {}", watched.join(", "), humantime::format_duration(round(start.elapsed()))),
            format!("healthy for {}", humantime::format_duration(bake)),
        ));
        Ok(())
    }

    fn emit_instances(&self, results: &[InstanceResult]) {
        for r in results {
            self.events.emit(Event::Instance {
                host: self.host.name.clone(),
                service: r.service.clone(),
                instance: r.plan.name.clone(),
                from_image: r.plan.from_image.clone(),
                to_image: r.plan.to_image.clone(),
                outcome: r.outcome,
            });
        }
    }

    pub(crate) fn info(&self, message: String) {
        self.events.emit(Event::Info { host: Some(self.host.name.clone()), message });
    }

    pub(crate) fn warn(&self, message: String) {
        self.events.emit(Event::Warn { host: Some(self.host.name.clone()), message });
    }

    /// Runs one step, timing it and reporting it as an event.
    pub(crate) async fn step<T>(&self, service: &str, instance: &str, name: &str, fut: impl Future<Output = StepResult<T>>) -> Result<T, String> {
        let start = Instant::now();
        let r = fut.await;
        self.events.emit(Event::Step(StepEvent {
            host: self.host.name.clone(),
            service: service.into(),
            instance: instance.into(),
            step: name.into(),
            started_ms: start.duration_since(self.t0).as_millis() as u64,
            duration_ms: start.elapsed().as_millis() as u64,
            ok: r.is_ok(),
            detail: match &r {
                Ok((_, d)) => d.clone(),
                Err(e) => e.clone(),
            },
        }));
        r.map(|(t, _)| t)
    }

    async fn pull(&self, images: &BTreeSet<&str>) -> StepResult<()> {
        let mut details = Vec::new();
        for image in images {
            if self.host.engine.inspect_image(image).await.map_err(|e| e.to_string())?.is_some() {
                details.push(format!("{} present", crate::core::image::short(image)));
                continue;
            }
            self.host.engine.pull(image, self.creds).await.map_err(|e| e.to_string())?;
            details.push(format!("pulled {}", crate::core::image::short(image)));
        }
        Ok(((), details.join(", ")))
    }

    /// Replaces container `name` by a new one from `spec` running `to_image`.
    /// On failure the old container is put back before returning. Returns whether
    /// `handover.next` was drained with this instance's undrain (it then stays drained).
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        svc: &Service,
        name: &str,
        current: &ContainerInfo,
        spec: &ContainerSpec,
        to_image: &str,
        prefix: &str,
        handover: Handover<'_>,
    ) -> Result<bool, Failure> {
        let target = drain::Target::of(svc, current);
        let old = format!("{name}{OLD_SUFFIX}");
        // Only a moving tag (`:production`) follows the release; a version tag is never moved.
        let by_variable = svc.compose.as_ref().is_some_and(|c| c.variable.is_some());
        let compose = compose_reference(current, spec).filter(|_| !by_variable);
        if let Some(r) = compose.as_ref().filter(|r| !moving(r) && prefix.is_empty()) {
            self.warn(format!(
                "{name}: its compose file names {r}; capstan never moves a version tag, so `docker compose up --force-recreate` would bring {r} back: take the tag from a variable (image: repo:${{TAG}}) and set services.{}.compose.variable",
                svc.name
            ));
        }
        let compose = compose.filter(|r| moving(r));
        let spec = match &compose {
            Some(r) => with_label(spec, COMPOSE_IMAGE_LABEL, r),
            None => spec.clone(),
        };
        let mut p = Progress { drained: handover.drained, ..Default::default() };
        let forward = self.forward(svc, name, &spec, to_image, &target, handover.next, &old, &mut p, prefix).await;
        match forward {
            Ok(()) => {
                if let Some(r) = compose {
                    self.point_tag(name, &r, to_image).await;
                }
                Ok(p.next_drained)
            }
            Err(message) => {
                let restored = self.undo(svc, name, &old, &target, handover.next, &mut p, prefix).await;
                Err(Failure { message, restored })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        svc: &Service,
        name: &str,
        spec: &ContainerSpec,
        to_image: &str,
        target: &drain::Target,
        next: Option<&drain::Target>,
        old: &str,
        p: &mut Progress,
        prefix: &str,
    ) -> Result<(), String> {
        let s = &svc.name;
        let engine = &self.host.engine;
        let step = |n: &str| format!("{prefix}{n}");
        // A revert runs to the end even when the run is cancelled.
        let cancellable = prefix.is_empty();
        let lb = svc.drain.method != DrainMethod::None;
        self.go_on(cancellable)?;
        if lb && p.drained {
            // Taken out with the previous instance's undrain, and proved idle by its traffic check.
            self.step(s, name, &step("drain"), async { Ok(((), "drained with the previous instance's undrain (one reload for both)".to_string())) }).await?;
        } else if lb {
            self.step(s, name, &step("drain"), async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(target, true)]).await.map_err(|e| e.to_string())?;
                p.drained = true;
                self.wait(svc.drain.wait, cancellable).await?;
                // Prove it: requests through the load balancer must no longer reach it.
                let proof = match (&svc.traffic, cancellable) {
                    (Some(t), true) => format!("; {}", self.through_lb(t, None, Some(name)).await?),
                    _ => String::new(),
                };
                Ok(((), format!("{d}; waited {}{proof}", humantime::format_duration(svc.drain.wait))))
            })
            .await?;
        }
        self.go_on(cancellable)?;
        self.step(s, name, &step("stop"), async {
            engine.rename(name, old).await.map_err(|e| e.to_string())?;
            p.renamed = true;
            engine.stop(old).await.map_err(|e| e.to_string())?;
            p.stopped = true;
            Ok(((), format!("kept as {old}")))
        })
        .await?;
        self.go_on(cancellable)?;
        self.step(s, name, &step("start"), async {
            p.created = true;
            engine.create(name, spec, to_image).await.map_err(|e| e.to_string())?;
            engine.start(name).await.map_err(|e| e.to_string())?;
            Ok(((), crate::core::image::short(to_image)))
        })
        .await?;
        self.go_on(cancellable)?;
        self.step(s, name, &step("health"), self.health_gate(svc, name, cancellable)).await?;
        // With a next instance: one edit and one reload put this one back and take the next out.
        let next = next.filter(|_| lb && cancellable);
        if lb {
            self.step(s, name, &step("undrain"), async {
                let mut edits = vec![(target, false)];
                edits.extend(next.map(|n| (n, true)));
                let d = self.drainer.apply(self.host, &svc.drain.method, &edits).await.map_err(|e| e.to_string())?;
                p.drained = false;
                p.next_drained = next.is_some();
                if next.is_some() {
                    // In-flight requests of the next instance finish before its drain is proved.
                    self.wait(svc.drain.wait, cancellable).await?;
                }
                Ok(((), d))
            })
            .await?;
        }
        self.go_on(cancellable)?;
        self.step(s, name, &step("traffic"), self.traffic_check(svc, name, next.map(|n| n.instance.as_str()))).await?;
        self.step(s, name, &step("pause"), async {
            self.wait(svc.pause, cancellable).await?;
            let c = engine.inspect_container(name).await.map_err(|e| e.to_string())?;
            match c {
                Some(c) if c.running => Ok(((), format!("still running after {}", humantime::format_duration(svc.pause)))),
                _ => Err(format!("{name} stopped during the pause")),
            }
        })
        .await?;
        // The new container has proved itself: the old one can go.
        if let Err(e) = self
            .step(s, name, &step("cleanup"), async {
                engine.remove(old).await.map_err(|e| e.to_string())?;
                Ok(((), format!("removed {old}")))
            })
            .await
        {
            self.warn(format!("could not remove {old}: {e}"));
        }
        Ok(())
    }

    /// Puts an instance drained ahead of its turn back in the load balancer (its turn never came).
    async fn undrain_alone(&self, svc: &Service, t: &drain::Target) {
        let r = self
            .step(&svc.name, &t.instance, "undrain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(t, false)]).await.map_err(|e| e.to_string())?;
                Ok(((), d))
            })
            .await;
        if let Err(e) = r {
            self.warn(format!("{} stays drained: {e}", t.instance));
        }
    }

    /// Finishes the revert of an instance that a killed run left half-replaced:
    /// the kept `<name>.capstan-old` comes back as `<name>`, drained while it
    /// happens, health-checked, then undrained.
    pub async fn recover(&self, svc: &Service, name: &str) -> Result<(), String> {
        let old = format!("{name}{OLD_SUFFIX}");
        let engine = &self.host.engine;
        let kept = engine.inspect_container(&old).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{old} is gone"))?;
        let mut target = drain::Target::of(svc, &kept);
        // The kept container is named after the instance in nginx, not after its temporary name.
        target.instance = name.to_string();
        target.id.hosts.retain(|h| h != &old);
        target.id.hosts.insert(0, name.to_string());
        target.id.instance = name.to_string();
        let (s, lb) = (&svc.name, svc.drain.method != DrainMethod::None);
        if lb {
            self.step(s, name, "recover drain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(&target, true)]).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(svc.drain.wait).await;
                Ok(((), d))
            })
            .await?;
        }
        self.step(s, name, "recover old back", async {
            if engine.inspect_container(name).await.map_err(|e| e.to_string())?.is_some() {
                engine.remove(name).await.map_err(|e| e.to_string())?;
            }
            engine.rename(&old, name).await.map_err(|e| e.to_string())?;
            engine.start(name).await.map_err(|e| e.to_string())?;
            Ok(((), format!("{old} is {name} again")))
        })
        .await?;
        self.step(s, name, "recover health", self.health_gate(svc, name, false)).await?;
        if lb {
            self.step(s, name, "recover undrain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(&target, false)]).await.map_err(|e| e.to_string())?;
                Ok(((), d))
            })
            .await?;
        }
        Ok(())
    }

    /// Puts the kept old container back in place of a failed new one. A next
    /// instance drained with this one's undrain goes back in with this one's drain.
    #[allow(clippy::too_many_arguments)]
    async fn undo(&self, svc: &Service, name: &str, old: &str, target: &drain::Target, next: Option<&drain::Target>, p: &mut Progress, prefix: &str) -> bool {
        let s = &svc.name;
        let engine = &self.host.engine;
        let step = |n: &str| format!("{prefix}restore {n}");
        let lb = svc.drain.method != DrainMethod::None;
        let mut ok = true;
        if p.created {
            if !p.drained && lb {
                let mut edits = vec![(target, true)];
                edits.extend(next.filter(|_| p.next_drained).map(|n| (n, false)));
                let drained = self
                    .step(s, name, &step("drain"), async {
                        let d = self.drainer.apply(self.host, &svc.drain.method, &edits).await.map_err(|e| e.to_string())?;
                        tokio::time::sleep(svc.drain.wait).await;
                        Ok(((), d))
                    })
                    .await
                    .is_ok();
                if drained {
                    p.drained = true;
                    p.next_drained = false;
                }
            }
            ok &= self
                .step(s, name, &step("remove new"), async {
                    // Drained (and waited on) by now: no request is lost by removing it at once.
                    engine.remove(name).await.map_err(|e| e.to_string())?;
                    Ok(((), format!("removed the new {name}")))
                })
                .await
                .is_ok();
        }
        if p.renamed {
            ok &= self
                .step(s, name, &step("old back"), async {
                    engine.rename(old, name).await.map_err(|e| e.to_string())?;
                    if p.stopped {
                        engine.start(name).await.map_err(|e| e.to_string())?;
                    }
                    Ok(((), format!("{old} is {name} again")))
                })
                .await
                .is_ok();
            if ok && p.stopped {
                ok &= self.step(s, name, &step("health"), self.health_gate(svc, name, false)).await.is_ok();
            }
        }
        if p.drained && ok {
            ok &= self
                .step(s, name, &step("undrain"), async {
                    let d = self.drainer.apply(self.host, &svc.drain.method, &[(target, false)]).await.map_err(|e| e.to_string())?;
                    Ok(((), d))
                })
                .await
                .is_ok();
        }
        if let (true, Some(n)) = (p.next_drained, next) {
            self.undrain_alone(svc, n).await;
        }
        ok
    }

    /// Err once the run is cancelled: no new step starts.
    pub(crate) fn go_on(&self, cancellable: bool) -> Result<(), String> {
        match self.cancel.reason() {
            Some(why) if cancellable => Err(why),
            _ => Ok(()),
        }
    }

    /// Sleeps, unless the run is cancelled first.
    pub(crate) async fn wait(&self, d: Duration, cancellable: bool) -> Result<(), String> {
        if !cancellable {
            tokio::time::sleep(d).await;
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(self.cancel.reason().unwrap_or_default()),
        }
    }

    /// Waits for `healthy_after` good probes in a row. A forward gate gives up
    /// when the run is cancelled; an undo's gate does not.
    async fn health_gate(&self, svc: &Service, name: &str, cancellable: bool) -> StepResult<()> {
        let h = &svc.health;
        let started = Instant::now();
        let deadline = started + h.timeout;
        let probe_timeout = Duration::from_secs(2).min(h.timeout);
        let (mut good, mut probes) = (0u32, 0u32);
        let mut last = String::from("no probe answered yet");
        loop {
            probes += 1;
            let c = self.host.engine.inspect_container(name).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{name} disappeared"))?;
            let mut ok = c.running;
            if !c.running {
                last = "the container is not running".into();
            }
            if let (true, Some(http)) = (ok, &h.http) {
                let (addr, port) = c.probe_addr(http.port);
                match self.host.probe.http_get(&addr, port, &http.path, probe_timeout).await {
                    Ok(a) if (200..400).contains(&a.status) => {}
                    Ok(a) => {
                        ok = false;
                        last = format!("GET {} answered {}", http.path, a.status);
                    }
                    Err(e) => {
                        ok = false;
                        last = format!("GET {}: {e}", http.path);
                    }
                }
            }
            match c.docker_health {
                None | Some(DockerHealth::Healthy) => {}
                Some(DockerHealth::Starting) if ok => {
                    ok = false;
                    last = "Docker HEALTHCHECK still starting".into();
                }
                Some(DockerHealth::Unhealthy) if ok => {
                    ok = false;
                    last = "Docker HEALTHCHECK reports unhealthy".into();
                }
                _ => {}
            }
            if ok {
                good += 1;
                if good >= h.healthy_after {
                    return Ok(((), format!("{good} good probes in a row ({probes} probes)")));
                }
            } else {
                good = 0;
            }
            if Instant::now() >= deadline {
                return Err(format!("not healthy after {}: {last}", humantime::format_duration(h.timeout)));
            }
            let nap = h.interval.min(deadline.saturating_duration_since(Instant::now()));
            self.wait(nap, cancellable).await?;
        }
    }

    /// Requests through the load balancer reach the new instance `name`; with `idle`, the
    /// instance drained with its undrain receives none of them (its drain took effect).
    async fn traffic_check(&self, svc: &Service, name: &str, idle: Option<&str>) -> StepResult<()> {
        let Some(t) = &svc.traffic else {
            return Ok(((), "skipped: no traffic.url".into()));
        };
        Ok(((), self.through_lb(t, Some(name), idle).await?))
    }

    /// Sends `traffic.requests` requests through the load balancer: every one must be
    /// answered below 500, `active` must receive them (its network counters grow) and
    /// `idle` must not (it gets less than one request's worth of bytes).
    async fn through_lb(&self, t: &crate::core::config::Traffic, active: Option<&str>, idle: Option<&str>) -> Result<String, String> {
        let (addr, port, path) = crate::host::probe_target(&t.url).map_err(|e| format!("traffic.url {e}"))?;
        let watched: Vec<&str> = active.into_iter().chain(idle).collect();
        let before = futures_util::future::try_join_all(watched.iter().map(|n| self.rx_bytes(n))).await?;
        // Sent a few at a time: enough concurrency to reach every upstream, not enough to be a load test.
        let answers: Vec<_> = futures_util::stream::iter(0..t.requests)
            .map(|_| self.host.probe.http_get(&addr, port, &path, Duration::from_secs(5)))
            .buffer_unordered(4)
            .collect()
            .await;
        let failed: Vec<String> = answers
            .into_iter()
            .filter_map(|a| match a {
                Ok(a) if a.status < 500 => None,
                Ok(a) => Some(format!("HTTP {}", a.status)),
                Err(e) => Some(e),
            })
            .collect();
        let after = futures_util::future::try_join_all(watched.iter().map(|n| self.rx_bytes(n))).await?;
        if let Some(last) = failed.last() {
            return Err(format!("{}/{} requests through {} failed (last: {last})", failed.len(), t.requests, t.url));
        }
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect();
        let mut said = vec![format!("{}/{} ok through {}", t.requests, t.requests, t.url)];
        if let Some(name) = active {
            if delta[0] < MIN_TRAFFIC_BYTES {
                return Err(format!("{name} received no traffic through {} ({} requests, +{} bytes)", t.url, t.requests, delta[0]));
            }
            said.push(format!("{name} received +{} bytes", delta[0]));
        }
        if let Some(name) = idle {
            let got = delta[watched.len() - 1];
            // Less than one request's worth: what the active instance got per request sent, at least MIN_TRAFFIC_BYTES.
            let one_request = active.map(|_| delta[0] / u64::from(t.requests.max(1))).unwrap_or(0).max(MIN_TRAFFIC_BYTES);
            if got >= one_request {
                return Err(format!("{name} is drained but still received +{got} bytes through {}: the load balancer did not take the drain", t.url));
            }
            said.push(format!("drained {name} received none (+{got} bytes)"));
        }
        Ok(said.join(", "))
    }

    /// Bytes the container has received: from its network namespace's
    /// `/proc/<pid>/net/dev` on the host (instant), else from the engine's stats
    /// (which answers at most once a second).
    pub(crate) async fn rx_bytes(&self, name: &str) -> Result<u64, String> {
        let c = self.host.engine.inspect_container(name).await.map_err(|e| e.to_string())?;
        if let Some(pid) = c.map(|c| c.pid).filter(|p| *p > 0) {
            let path = format!("/proc/{pid}/net/dev");
            if let Ok(out) = self.host.shell.run(&["cat", &path], None).await {
                if let Some(rx) = out.ok().then(|| parse_net_dev(&out.stdout)).flatten() {
                    return Ok(rx);
                }
            }
        }
        self.host.engine.rx_bytes(name).await.map_err(|e| e.to_string())
    }

    /// Before a Compose service's first instance: the release tagged on the host as
    /// `repo:<version>` (never moving a tag that names another image), and the config
    /// hash Compose computes for each of the project's services with the service's
    /// variable set to the version. Per Compose service: (hash, image ID).
    async fn compose_hashes(&self, svc: &Service, c: &crate::core::config::Compose, first: &str, image: &str) -> StepResult<HashMap<String, (String, String)>> {
        let (Some(variable), Some(version)) = (&c.variable, self.version) else {
            return Err(format!("services.{}.compose.variable is set, but this run has no version to set it to", svc.name));
        };
        let engine = &self.host.engine;
        let current = engine.inspect_container(first).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{first} disappeared"))?;
        let project = crate::host::compose::Project::of(&current.spec, c)
            .ok_or_else(|| format!("{first} carries no Compose project labels: is it a container of Compose project {}?", c.project))?;
        let new =
            engine.inspect_image(image).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{} is not on the host", crate::core::image::short(image)))?;
        let tagged = image::tag_ref(&svc.image, version);
        match engine.inspect_image(&tagged).await.map_err(|e| e.to_string())? {
            Some(i) if i.id != new.id => {
                return Err(format!(
                    "{tagged} on this host is another image ({}); capstan never moves a version tag: remove that tag, or deploy a new version",
                    i.id
                ))
            }
            Some(_) => {}
            None => engine.tag(image, &svc.image, version).await.map_err(|e| e.to_string())?,
        }
        let hashes = crate::host::compose::hashes(self.host.shell.as_ref(), &project, variable, version).await?;
        let out: HashMap<String, (String, String)> = hashes.into_iter().map(|(s, h)| (s, (h, new.id.clone()))).collect();
        Ok((out, format!("{tagged} is {}; {} config --hash with {variable}={version}", crate::core::image::short(image), project.command.join(" "))))
    }

    /// After the host's rollout succeeded: each replaced Compose service's `.env` variable
    /// set to the release, so that Compose's own view names what runs.
    async fn set_compose_env(&self, done: &[Done<'_>]) -> Result<Vec<crate::host::compose::EnvChange>, (String, String)> {
        let Some(version) = self.version else { return Ok(Vec::new()) };
        // Per env file: its variables to set, and the instance whose step reports it.
        type EnvFile<'d, 's> = (String, Vec<(String, String)>, &'d Done<'s>);
        let mut files: Vec<EnvFile> = Vec::new();
        for d in done {
            let Some(c) = d.service.compose.as_ref() else { continue };
            let Some(variable) = &c.variable else { continue };
            let Some(project) = crate::host::compose::Project::of(&d.spec, c) else { continue };
            let var = (variable.clone(), version.to_string());
            match files.iter_mut().find(|(f, _, _)| *f == project.env_file) {
                Some((_, vars, _)) if vars.contains(&var) => {}
                Some((_, vars, _)) => vars.push(var),
                None => files.push((project.env_file.clone(), vec![var], d)),
            }
        }
        let mut changes = Vec::new();
        for (file, vars, d) in files {
            let set = async {
                let c = crate::host::compose::set_env(self.host.shell.as_ref(), &file, &vars).await?;
                let said = c.iter().map(|c| format!("{}={} (was {})", c.variable, c.after, c.before.as_deref().unwrap_or("unset"))).collect::<Vec<_>>();
                Ok((c, format!("{file}: {}", said.join(", "))))
            };
            match self.step(&d.service.name, &d.name, "compose env", set).await {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    // What was set already goes back with the instances.
                    let _ = crate::host::compose::restore_env(self.host.shell.as_ref(), &changes).await;
                    return Err((format!("{} compose env", d.service.name), e));
                }
            }
        }
        Ok(changes)
    }

    /// How many times the load balancer was reloaded, per service.
    fn emit_reloads(&self) {
        let mut reloads: Vec<(String, u32)> = self.drainer.reloads().into_iter().collect();
        reloads.sort();
        for (service, count) in reloads {
            self.events.emit(Event::Reloads { host: self.host.name.clone(), service, count });
        }
    }

    /// Compose decides what to run from the tag its file names: point that tag
    /// at what now runs, so that a later `docker compose up -d` keeps it.
    async fn point_tag(&self, name: &str, reference: &str, image: &str) {
        let (Some(tag), repo) = (image::tag_of(reference), image::repo_of(reference)) else { return };
        match self.host.engine.tag(image, repo, tag).await {
            Ok(()) => self.info(format!("{name}: compose tag {repo}:{tag} now points at {}", crate::core::image::short(image))),
            Err(e) => self.warn(format!("{name}: could not move the compose tag {repo}:{tag}: {e}")),
        }
    }

    /// Extends the lease once less than half of it is left: a short deploy
    /// spends no round trip on it, a long one never lets it lapse.
    pub(crate) async fn renew_lease(&self) {
        let Some(k) = &self.lease else { return };
        let mut lease = k.lease.lock().await;
        let now = OffsetDateTime::now_utc();
        if lease.expires_at - now > k.duration / 2 {
            return;
        }
        lease.expires_at = now + k.duration;
        if let Err(e) = state::renew(self.host.shell.as_ref(), &k.dir, &lease).await {
            self.warn(format!("could not renew the deploy lock: {e}"));
        }
    }
}

/// Received bytes summed over every interface but loopback, from `/proc/net/dev` text.
fn parse_net_dev(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines().skip(2) {
        let (iface, counters) = line.split_once(':')?;
        if iface.trim() == "lo" {
            continue;
        }
        let rx: u64 = counters.split_whitespace().next()?.parse().ok()?;
        total = Some(total.unwrap_or(0) + rx);
    }
    total
}

/// Where capstan remembers the `repo:tag` a Compose file names, once the
/// container itself runs a digest.
pub const COMPOSE_IMAGE_LABEL: &str = "dev.capstan.compose-image";

/// For a Compose-managed container: the tag reference its compose file uses.
fn compose_reference(current: &ContainerInfo, spec: &ContainerSpec) -> Option<String> {
    current.compose_project.as_ref()?;
    if let Some(r) = spec.0.labels.as_ref().and_then(|l| l.get(COMPOSE_IMAGE_LABEL)) {
        return Some(r.clone());
    }
    image::tag_of(&current.image_ref).map(|_| current.image_ref.clone())
}

/// A compose reference whose tag moves with releases (`:production`), as opposed to a version.
fn moving(reference: &str) -> bool {
    image::tag_of(reference).is_some_and(|t| !crate::host::compose::is_version_tag(t))
}

fn with_label(spec: &ContainerSpec, key: &str, value: &str) -> ContainerSpec {
    let mut s = spec.clone();
    s.0.labels.get_or_insert_with(Default::default).insert(key.to_string(), value.to_string());
    s
}

/// A duration to the tenth of a second, for messages.
pub(crate) fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}

#[cfg(test)]
mod tests {
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

    async fn run(w: &World, to: &str) -> (HostResult, Vec<Event>) {
        let (host, services, plan) = prepared(w, to).await;
        let rec = Recorder::default();
        let cancel = Cancel::default();
        let r = Rollout {
            host: &host,
            events: &rec,
            creds: None,
            t0: Instant::now(),
            lease: None,
            cancel: &cancel,
            drainer: Default::default(),
            safety: Default::default(),
            version: None,
        };
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
        let r = Rollout {
            host: &host,
            events: &rec,
            creds: None,
            t0: Instant::now(),
            lease: None,
            cancel: &cancel,
            drainer: Default::default(),
            safety,
            version: None,
        };
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
        assert_eq!(result.outcome, HostOutcome::RolledBack);
        assert_eq!(gates(&events), vec!["migrate web FAILED"]);
        assert!(result.error.unwrap().contains("`exit 3` exited 3"));
        assert!(steps(&events).iter().all(|s| s.ends_with("pull")), "no instance was touched: {:?}", steps(&events));
        assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1));
        // A good migration runs once, from the new image, then the rollout goes on.
        let w = world("    migrate: { command: [exit, \"0\"] }\n");
        let (result, events) = run_safe(&w, V2).await;
        assert_eq!(result.outcome, HostOutcome::Succeeded);
        assert_eq!(gates(&events), vec!["migrate web ok"]);
        assert!(w.fake.state.lock().unwrap().log.contains(&format!("run_once web-1-capstan-migrate {V2}")));
    }

    #[tokio::test(start_paused = true)]
    async fn failed_validation_reverts_every_instance() {
        // An endpoint that does not answer as expected.
        let w = world("validate:\n  endpoints: [{ url: \"http://127.0.0.1:80/health\", status: 200, body: \"all good\" }]\n");
        let (result, events) = run_safe(&w, V2).await;
        assert_eq!(result.outcome, HostOutcome::RolledBack, "{:?}", result.error);
        assert_eq!(gates(&events), vec!["validate http://127.0.0.1:80/health FAILED"]);
        assert_eq!((w.fake.image_of("web-1").unwrap(), w.fake.image_of("web-2").unwrap()), (V1.to_string(), V1.to_string()));
        // Error lines in the new containers' output.
        let w = world("validate:\n  errors: { pattern: \"ERROR\", max: 1 }\n");
        w.fake.state.lock().unwrap().logs.insert("web-2".into(), "ERROR a\nfine\nERROR b\n".into());
        let (result, events) = run_safe(&w, V2).await;
        assert_eq!(result.outcome, HostOutcome::RolledBack);
        assert_eq!(gates(&events), vec!["validate errors FAILED"]);
        // All gates passing.
        let w = world("validate:\n  endpoints: [{ url: \"http://127.0.0.1:80/\", body: ok }]\n  errors: { pattern: \"ERROR\" }\nbake: 2s\n");
        let (result, events) = run_safe(&w, V2).await;
        assert_eq!(result.outcome, HostOutcome::Succeeded, "{:?}", result.error);
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
        assert_eq!(r.outcome, HostOutcome::Succeeded, "{:?}", r.error);
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

    #[test]
    fn net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    7942     103    0    0    0     0          0         0     9117      89    0    0    0     0       0          0\n  eth1:      58       1    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n";
        assert_eq!(parse_net_dev(text), Some(8000));
        assert_eq!(parse_net_dev("garbage"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn unchanged_instances_are_left_alone() {
        let w = world("");
        let (r, events) = run(&w, V1).await;
        assert_eq!(r.outcome, HostOutcome::Succeeded);
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
            // The drain's proof reads the network counters first.
            ("rx", "web-1 drain FAILED"),
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
            let r = Rollout {
                host: &host,
                events: &rec,
                creds: None,
                t0: Instant::now(),
                lease: None,
                cancel: &cancel,
                drainer: Default::default(),
                safety: Default::default(),
                version: None,
            };
            let result = r.run(&plan, &services).await;
            watcher.abort();
            // Injected faults stop after the run so that checks see the real state.
            w.fake.state.lock().unwrap().fail.clear();
            let events = rec.0.lock().unwrap().clone();
            let s = steps(&events);
            assert!(s.contains(&failed_step.to_string()), "{inject}: expected {failed_step} in {s:#?}");
            assert_eq!(result.outcome, HostOutcome::RolledBack, "{inject}: {:?}\n{s:#?}", result.error);
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
        let r = Rollout {
            host: &host,
            events: &rec,
            creds: None,
            t0: Instant::now(),
            lease: None,
            cancel: &cancel,
            drainer: Default::default(),
            safety: Default::default(),
            version: None,
        };
        let result = r.run(&plan, &services).await;
        watcher.abort();
        let s = steps(&rec.0.lock().unwrap());
        assert_eq!(result.outcome, HostOutcome::RolledBack, "{s:#?}");
        assert!(result.error.unwrap().contains("cancelled by SIGTERM"));
        assert_eq!(w.fake.image_of("web-1").as_deref(), Some(V1));
        assert_eq!(w.fake.image_of("web-2").as_deref(), Some(V1));
        assert_eq!(w.fake.names(), vec!["web-1", "web-2"]);
        assert_eq!(upstream(&w), UPSTREAM);
        assert!(!s.iter().any(|x| x == "web-2 traffic"), "no step starts after the signal: {s:#?}");
    }
}
