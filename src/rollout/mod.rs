//! The rolling update on one host: per service in config order, per instance
//! in the listed order: pull, drain, stop (keep the old container), start the
//! new one, health gate, undrain, traffic check, pause, remove the old one.
//!
//! Any failure undoes the instance in flight (the kept old container comes
//! back) and then reverts every instance this run already replaced, in reverse
//! order, through the same replace procedure and the same discipline.
//! Drives only the [`Host`] traits, so tests run it against `fake::FakeHost`.
//!
//! Here: [`Rollout::run`] (the services in order, each instance's result, the
//! revert's order) and [`Rollout::revert_finished`]. The parts: one instance's
//! state machine in `replace.rs`; health and traffic in `checks.rs`; migrations,
//! validation and the bake window in `safety.rs`; preflight and hooks in
//! `gates.rs`; Compose's view of what runs in `compose.rs`; a Swarm service in
//! `swarm.rs`, which sees only [`steps::Steps`]; signals in `cancel.rs`.

pub mod cancel;
pub mod checks;
mod compose;
pub mod gates;
mod guard;
mod replace;
pub mod safety;
pub mod steps;
mod swarm;
#[cfg(test)]
mod tests;
mod watch;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use time::OffsetDateTime;

use crate::core::config::{DrainMethod, Service};
use crate::core::observed::{ContainerInfo, ContainerSpec};
use crate::core::plan::{HostPlan, InstancePlan};
use crate::core::record::{InstanceOutcome, Lease, RunOutcome};
use crate::core::secret::Credentials;
use crate::host::drain;
use crate::host::state;
use crate::host::Host;
use crate::output::events::{Event, Sink};
use crate::rollout::cancel::Cancel;
use crate::rollout::replace::{Direction, Handover, Replaced};
use crate::rollout::safety::Safety;
use crate::rollout::steps::{Failure, StepError, StepResult, Steps};
use crate::rollout::swarm::SwarmRollout;

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

pub struct LeaseKeeper {
    pub dir: String,
    pub lease: tokio::sync::Mutex<Lease>,
    pub duration: Duration,
    /// The guard on the host, as the run sees it (the heartbeat renews it).
    pub fence: std::sync::Arc<crate::host::guard::Fence>,
    /// What the guard needs to know besides: the app's name for its record, the Docker socket.
    pub app: String,
    pub docker_socket: String,
}

#[derive(Debug, Clone)]
pub struct InstanceResult {
    pub service: String,
    pub plan: InstancePlan,
    pub outcome: InstanceOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct HostResult {
    /// As the host's log records it.
    pub outcome: RunOutcome,
    pub instances: Vec<InstanceResult>,
    pub error: Option<String>,
    /// The Compose `.env` variables this rollout set, as they were: what a revert puts back.
    pub compose_env: Vec<crate::host::compose::EnvChange>,
    /// Per replaced instance, the spec of the container it replaced: what a revert recreates.
    pub replaced_specs: HashMap<String, ContainerSpec>,
}

/// An instance (or a Swarm service) this run replaced, and what it ran before.
struct Done<'s> {
    service: &'s Service,
    name: String,
    spec: ContainerSpec,
    from_image: String,
    to_image: String,
}

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
        // Old containers kept (stopped) until the host is done, for the guard to put back.
        let mut kept: Vec<(String, String)> = Vec::new();
        // The new images of each service the guard watches are pulled beside its arming (a
        // pull changes nothing that serves): their round trips overlap over a slow link.
        let pulls = guard::guarded(plan, services).map(|(svc, to_replace)| {
            let first = to_replace[0].name.clone();
            let images: BTreeSet<String> = to_replace.iter().map(|i| i.to_image.clone()).collect();
            async move {
                let pulled = match self.cancel.reason() {
                    Some(why) => Err(StepError::Cancelled(why)),
                    None => self.step(&svc.name, &first, "pull", self.pull(&images)).await,
                };
                (svc.name.clone(), (first, pulled))
            }
        });
        let (armed, pulled) = tokio::join!(self.arm_guard(plan, services), futures_util::future::join_all(pulls));
        let mut pulled: HashMap<String, (String, Result<(), StepError>)> = pulled.into_iter().collect();
        // What arming looked at, moments ago: where the first service's first replace starts.
        let mut armed_looks: HashMap<String, Option<ContainerInfo>> = HashMap::new();
        match armed {
            Ok(looks) => armed_looks = looks.into_iter().collect(),
            Err(e) => failure = Some(("guard".into(), Failure { error: StepError::failed(e), restored: true })),
        }

        'services: for sp in plan.services.iter().filter(|_| failure.is_none()) {
            let Some(svc) = services.iter().find(|s| s.name == sp.service) else { continue };
            // A Swarm service: one update that Swarm rolls, watched to its end (swarm.rs).
            if let (Some(sw), Some(ip)) = (&svc.swarm, sp.instances.iter().find(|i| i.replace)) {
                match self.swarm().roll(svc, sw, ip).await {
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
                if let Some((at, Err(error))) = pulled.remove(&svc.name) {
                    failure = Some((format!("{at} pull"), Failure { error, restored: true }));
                    break 'services;
                }
                // The migration runs once, before the service's first instance, from the new image.
                if let (true, Some(m)) = (self.safety.migrate.contains(&svc.name), &svc.migrate) {
                    if let Err(error) = self.migrate(svc, m, &first.name, &first.to_image).await {
                        failure = Some((format!("migrate {}", svc.name), Failure { error, restored: true }));
                        break 'services;
                    }
                }
            }
            // A Compose service whose tag comes from a variable: the hashes Compose will expect.
            let mut relabel: HashMap<String, (String, String)> = HashMap::new();
            if let (Some(first), Some(c)) = (to_replace.first(), svc.compose.as_ref().filter(|c| c.variable.is_some())) {
                match self.step(&svc.name, &first.name, "compose", self.compose_hashes(svc, c, &first.name, &first.to_image)).await {
                    Ok(h) => relabel = h,
                    Err(error) => {
                        failure = Some((format!("{} compose", svc.name), Failure { error, restored: true }));
                        break 'services;
                    }
                }
            }
            let lb = svc.drain.method != DrainMethod::None;
            // The instance drained together with the previous one's undrain, if any.
            let mut pre_drained: Option<drain::Target> = None;
            // The instances the last replace looked at beside its pause: not asked again.
            let mut looked: HashMap<String, Option<ContainerInfo>> = std::mem::take(&mut armed_looks);
            for (k, ip) in to_replace.iter().enumerate() {
                // The container as it is now, and its successor's spec (with Compose's hash where it
                // takes one); beside it, the next instance, which goes out of the load balancer with
                // this one's undrain (asked at once: a round trip less over a slow link).
                let next_name = to_replace.get(k + 1).filter(|_| lb).map(|n| n.name.as_str());
                let (this_looked, next_looked) = (looked.remove(&ip.name), next_name.and_then(|n| looked.remove(n)));
                looked.clear();
                let (seen, next_seen) = tokio::join!(
                    async {
                        match this_looked {
                            Some(c) => Ok(c),
                            None => self.host.engine.inspect_container(&ip.name).await,
                        }
                    },
                    async {
                        match (next_name, next_looked) {
                            (_, Some(c)) => c,
                            (Some(n), None) => self.host.engine.inspect_container(n).await.ok().flatten(),
                            (None, None) => None,
                        }
                    }
                );
                let found = match seen {
                    Ok(Some(c)) => match (c.compose_service.as_ref().and_then(|s| relabel.get(s)), relabel.is_empty()) {
                        (Some((hash, image_id)), _) => Ok((crate::host::compose::relabel(&c.spec, hash, image_id), c)),
                        (None, true) => Ok((c.spec.clone(), c)),
                        (None, false) => Err(StepError::Failed(format!("Compose computed no config hash for {}'s service {:?}", ip.name, c.compose_service))),
                    },
                    Err(e) => Err(StepError::failed(e)),
                    Ok(None) => Err(StepError::Failed(format!("container {} disappeared", ip.name))),
                };
                let (spec, current) = match found {
                    Ok(f) => f,
                    Err(error) => {
                        // Drained ahead of its turn, which never comes: back in.
                        if let Some(t) = pre_drained.take() {
                            self.undrain_alone(svc, &t).await;
                        }
                        failure = Some((ip.name.clone(), Failure { error, restored: true }));
                        break 'services;
                    }
                };
                let next = next_seen.map(|c| drain::Target::of(svc, &c));
                let then: Vec<&str> = to_replace.iter().skip(k + 1).take(2).map(|n| n.name.as_str()).collect();
                let handover = Handover { drained: pre_drained.take().is_some(), next: next.as_ref(), then: &then };
                match self.replace(svc, &ip.name, &current, &spec, &ip.to_image, Direction::Forward, handover).await {
                    Ok(Replaced { next_drained, looked: seen_after }) => {
                        looked = seen_after.into_iter().collect();
                        set(&svc.name, &ip.name, InstanceOutcome::Replaced);
                        if self.guarded() {
                            kept.push((svc.name.clone(), ip.name.clone()));
                        }
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
            if let Err((at, error)) = self.validate_and_bake(&done).await {
                failure = Some((at, Failure { error, restored: true }));
            }
        }
        let mut compose_env = Vec::new();
        if failure.is_none() {
            match self.set_compose_env(&done).await {
                Ok(changes) => compose_env = changes,
                Err((at, error)) => failure = Some((at, Failure { error, restored: true })),
            }
        }
        let replaced: Vec<(String, String, String, String)> =
            done.iter().map(|d| (d.service.name.clone(), d.name.clone(), d.from_image.clone(), d.to_image.clone())).collect();
        let Some((at, f)) = failure else {
            self.guard_done(RunOutcome::Succeeded, &replaced, &kept).await;
            self.emit_reloads();
            self.emit_instances(&results);
            let replaced_specs = done.iter().map(|d| (d.name.clone(), d.spec.clone())).collect();
            return HostResult { outcome: RunOutcome::Succeeded, instances: results, error: None, compose_env, replaced_specs };
        };
        // The link is gone: the run can touch the host no more, the guard puts it back.
        if let Some(why) = self.link_lost().await {
            return self.left_to_guard(results, format!("{at}: {}; lost the link to the host: {why}", f.error));
        }
        match done.len() {
            0 => self.info(format!("{at} failed: {}", f.error)),
            n => self.info(format!("{at} failed: {}; reverting {n} replaced instance(s)", f.error)),
        }
        let mut all_restored = f.restored;
        // Newest first, except that instances serving nothing now (one that crashed while
        // baking, say) go back before any that serves: draining a healthy instance while
        // another is down would leave the load balancer with none.
        let mut order = Vec::new();
        for d in done.iter().rev() {
            let serving = match self.host.engine.inspect_container(&d.name).await {
                _ if d.service.swarm.is_some() => true,
                Ok(Some(c)) => checks::look(self.host, d.service, &c).await.serving(),
                _ => false,
            };
            order.push((serving, d));
        }
        order.sort_by_key(|(serving, _)| *serving);
        for (_, d) in order {
            let ok = match self.host.engine.inspect_container(&d.name).await {
                _ if d.service.swarm.is_some() => self.swarm().revert(d.service, &d.name, &d.from_image, &d.to_image).await,
                Ok(Some(current)) => self.replace(d.service, &d.name, &current, &d.spec, &d.from_image, Direction::Revert, Handover::default()).await.is_ok(),
                _ => false,
            };
            set(&d.service.name, &d.name, if ok { InstanceOutcome::Reverted } else { InstanceOutcome::Failed });
            all_restored &= ok;
            // The link died during the revert: the rest is the guard's (it puts back what
            // the run has not), and the run says so and touches the host no more.
            if !ok {
                if let Some(why) = self.link_lost().await {
                    return self.left_to_guard(results, format!("{at}: {}; while reverting {}: lost the link to the host: {why}", f.error, d.name));
                }
            }
        }
        if all_restored {
            self.guard_done(RunOutcome::RolledBack, &replaced, &[]).await;
        }
        self.emit_instances(&results);
        self.emit_reloads();
        let outcome = if all_restored { RunOutcome::RolledBack } else { RunOutcome::Failed };
        let error = if all_restored && results.iter().all(|r| r.outcome == InstanceOutcome::Unchanged) {
            format!("{at}: {}; nothing was replaced", f.error)
        } else if all_restored {
            format!("{at}: {}; every replaced instance was reverted", f.error)
        } else {
            format!("{at}: {}; some instances could not be restored, see the steps above", f.error)
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
                crate::host::compose::restore_env(self.host.shell.as_ref(), &finished.compose_env).await.map_err(StepError::failed)?;
                Ok(((), format!("{} put back", finished.compose_env.iter().map(|c| c.variable.as_str()).collect::<Vec<_>>().join(", "))))
            };
            all_restored &= self.step(&last.0, &last.1, "revert compose env", put_back).await.is_ok();
        }
        for r in instances.iter_mut().rev().filter(|r| r.outcome == InstanceOutcome::Replaced) {
            let Some(svc) = services.iter().find(|s| s.name == r.service) else { continue };
            let ok = match self.host.engine.inspect_container(&r.plan.name).await {
                _ if svc.swarm.is_some() => self.swarm().revert(svc, &r.plan.name, &r.plan.from_image, &r.plan.to_image).await,
                Ok(Some(current)) => {
                    let spec = finished.replaced_specs.get(&r.plan.name).unwrap_or(&current.spec);
                    self.replace(svc, &r.plan.name, &current, spec, &r.plan.from_image, Direction::Revert, Handover::default()).await.is_ok()
                }
                _ => false,
            };
            r.outcome = if ok { InstanceOutcome::Reverted } else { InstanceOutcome::Failed };
            all_restored &= ok;
        }
        self.emit_instances(&instances);
        self.emit_reloads();
        let outcome = if all_restored { RunOutcome::RolledBack } else { RunOutcome::Failed };
        HostResult { outcome, instances, error: None, ..Default::default() }
    }

    /// The host, timed steps, events and cancellation, for the parts of the rollout
    /// that are not the instance's state machine (a Swarm service's rollout).
    pub fn steps(&self) -> Steps<'a> {
        Steps { host: self.host, events: self.events, creds: self.creds, t0: self.t0, cancel: self.cancel }
    }

    fn swarm(&self) -> SwarmRollout<'a> {
        SwarmRollout::new(self.steps())
    }

    /// The host left to its guard: what was done so far, and why the run stopped there.
    fn left_to_guard(&self, results: Vec<InstanceResult>, error: String) -> HostResult {
        self.emit_instances(&results);
        self.emit_reloads();
        HostResult { outcome: RunOutcome::Failed, instances: results, error: Some(error), ..Default::default() }
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

    fn info(&self, message: String) {
        self.steps().info(message)
    }

    fn warn(&self, message: String) {
        self.steps().warn(message)
    }

    /// Runs one step, timing it and reporting it as an event.
    /// Once the guard acts (or is about to), no step touches the host: it fails at once.
    async fn step<T>(&self, service: &str, instance: &str, name: &str, fut: impl Future<Output = StepResult<T>>) -> Result<T, StepError> {
        match self.fenced() {
            Some(why) => self.steps().step(service, instance, name, async { Err(StepError::Failed(why)) }).await,
            None => self.steps().step(service, instance, name, fut).await,
        }
    }

    /// Err once the run is cancelled: no new step starts.
    fn go_on(&self, cancellable: bool) -> Result<(), StepError> {
        self.steps().go_on(cancellable)
    }

    /// Sleeps, unless the run is cancelled first.
    async fn wait(&self, d: Duration, cancellable: bool) -> Result<(), StepError> {
        self.steps().wait(d, cancellable).await
    }

    async fn pull(&self, images: &BTreeSet<String>) -> StepResult<()> {
        let mut details = Vec::new();
        for image in images {
            if self.host.engine.inspect_image(image).await.map_err(StepError::failed)?.is_some() {
                details.push(format!("{} present", crate::core::image::short(image)));
                continue;
            }
            self.host.engine.pull(image, self.creds).await.map_err(StepError::failed)?;
            details.push(format!("pulled {}", crate::core::image::short(image)));
        }
        Ok(((), details.join(", ")))
    }

    /// How many times the load balancer was reloaded, per service.
    fn emit_reloads(&self) {
        let mut reloads: Vec<(String, u32)> = self.drainer.reloads().into_iter().collect();
        reloads.sort();
        for (service, count) in reloads {
            self.events.emit(Event::Reloads { host: self.host.name.clone(), service, count });
        }
    }

    /// Extends the lease once less than half of it is left: a short deploy
    /// spends no round trip on it, a long one never lets it lapse.
    async fn renew_lease(&self) {
        let Some(k) = &self.lease else { return };
        let mut lease = k.lease.lock().await;
        let now = OffsetDateTime::now_utc();
        if lease.expires_at - now > k.duration / 2 {
            return;
        }
        lease.expires_at = now + k.duration;
        match state::renew(self.host.shell.as_ref(), &k.dir, &lease).await {
            // A renewal is a renewal, whichever path made it: the fence counts from it.
            Ok(()) => k.fence.renewed(),
            Err(e) => self.warn(format!("could not renew the deploy lock: {e}")),
        }
    }
}
