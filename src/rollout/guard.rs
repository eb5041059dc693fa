//! The rollout's side of the guard on the host (`host::guard`): armed before
//! the host's first instance is touched, told when the host is done, and asked
//! whether the link is lost when a step fails.

use time::OffsetDateTime;

use crate::core::config::{DrainMethod, Service};
use crate::core::observed::ContainerInfo;
use crate::core::plan::{HostPlan, InstancePlan, OLD_SUFFIX};
use crate::core::record::{InstanceOutcome, Record, RecordInstance, RunCommand, RunOutcome};
use crate::host::drain;
use crate::host::guard::{self, GuardError, GuardInstance, GuardPlan};
use crate::rollout::Rollout;

/// Placeholders the guard fills in (`host::guard::GUARD`).
const TIME: &str = "@TIME@";

/// What the guard on a host watches: per service this host replaces instances of
/// (Swarm services aside, which Swarm puts back itself), the instances replaced.
pub(crate) fn guarded<'p, 's>(plan: &'p HostPlan, services: &'p [&'s Service]) -> impl Iterator<Item = (&'s Service, Vec<&'p InstancePlan>)> + 'p {
    plan.services.iter().filter_map(|sp| {
        let svc = services.iter().find(|s| s.name == sp.service).filter(|s| s.swarm.is_none())?;
        let replaced: Vec<_> = sp.instances.iter().filter(|i| i.replace).collect();
        (!replaced.is_empty()).then_some((*svc, replaced))
    })
}

impl Rollout<'_> {
    /// Whether the guard runs on this host (so old containers are kept until the host is done).
    pub(super) fn guarded(&self) -> bool {
        self.lease.as_ref().is_some_and(|k| k.fence.is_armed())
    }

    /// Why the run must not touch the host any more, once the guard acts or is about to.
    pub(super) fn fenced(&self) -> Option<String> {
        self.lease.as_ref().and_then(|k| k.fence.closed())
    }

    /// Arms the guard before the first instance is touched: every instance this host
    /// replaces (Swarm services aside, which Swarm puts back itself), its upstream
    /// file as it is and with it drained, in one round trip (plus one read per file).
    /// The instances as it looked at them: the first replace starts from them.
    pub(super) async fn arm_guard(&self, plan: &HostPlan, services: &[&Service]) -> Result<Vec<(String, Option<ContainerInfo>)>, GuardError> {
        let Some(k) = &self.lease else { return Ok(Vec::new()) };
        let mut instances = Vec::new();
        let mut looked = Vec::new();
        // Every instance of every service at once, and the upstream files read beside them:
        // one round trip over a slow link, not one per instance and one more per service.
        let guarded: Vec<_> = guarded(plan, services).collect();
        let looks = futures_util::future::join_all(guarded.iter().map(|(svc, replaced)| async move {
            tokio::join!(
                futures_util::future::join_all(replaced.iter().map(|ip| self.host.engine.inspect_container(&ip.name))),
                self.drainer.read_once(self.host, &svc.drain.method)
            )
        }))
        .await;
        for ((svc, replaced), (seen, read)) in guarded.into_iter().zip(looks) {
            read.map_err(|e| GuardError::Host(e.to_string()))?;
            let mut targets = Vec::new();
            for (ip, c) in replaced.iter().zip(seen) {
                let c = c.map_err(|e| GuardError::Host(e.to_string()))?.ok_or_else(|| GuardError::Host(format!("{} disappeared", ip.name)))?;
                targets.push(drain::Target::of(svc, &c));
                looked.push((ip.name.clone(), Some(c)));
            }
            let refs: Vec<&drain::Target> = targets.iter().collect();
            let views = match svc.drain.method {
                DrainMethod::None => refs.iter().map(|_| None).collect(),
                _ => self.drainer.guard_views(self.host, &svc.drain.method, &refs).await.map_err(|e| GuardError::Host(e.to_string()))?,
            };
            for (ip, lb) in replaced.iter().zip(views) {
                let entry = RecordInstance {
                    service: svc.name.clone(),
                    name: ip.name.clone(),
                    from_image: ip.to_image.clone(),
                    to_image: ip.from_image.clone(),
                    outcome: InstanceOutcome::Reverted,
                };
                let json = serde_json::to_string(&entry)
                    .map_err(|e| GuardError::Host(e.to_string()))?
                    .replace("\"outcome\":\"reverted\"", "\"outcome\":\"@OUTCOME@\"");
                instances.push(GuardInstance {
                    name: ip.name.clone(),
                    lb,
                    drain_wait: svc.drain.wait,
                    settle: svc.health.timeout,
                    probe: svc.health.http.as_ref().map(|h| (h.port, h.path.clone())),
                    record_json: json,
                });
            }
        }
        if instances.is_empty() {
            return Ok(looked);
        }
        let lease = k.lease.lock().await.clone();
        let record = Record {
            time: OffsetDateTime::UNIX_EPOCH,
            app: k.app.clone(),
            host: self.host.name.clone(),
            command: RunCommand::Recover,
            version: None,
            outcome: RunOutcome::Succeeded,
            actor: Some(format!("capstan guard (run of {})", lease.holder)),
            run_url: lease.run_url.clone(),
            duration_ms: 0,
            instances: Vec::new(),
            error: Some(format!("the run stopped renewing its lease for {}s: the guard on the host put the host back", k.fence.bound().as_secs())),
        };
        let record_json = with_placeholders(&record)?
            .replace("\"outcome\":\"succeeded\"", "\"outcome\":\"@OUTCOME@\"")
            .replace("\"instances\":[]", "\"instances\":[@INSTANCES@]");
        let plan = GuardPlan {
            dir: k.dir.clone(),
            lease_id: lease.id.clone(),
            bound: k.fence.bound(),
            docker_socket: k.docker_socket.clone(),
            instances,
            record_json,
        };
        guard::arm(self.host.shell.as_ref(), &plan).await?;
        k.fence.armed();
        self.drainer.hold(&k.dir, &lease.id, k.fence.clone(), &k.docker_socket);
        self.info(format!(
            "guard armed: if this run stops renewing its lease for {}s, the host puts back what it replaced by itself",
            k.fence.bound().as_secs()
        ));
        Ok(looked)
    }

    /// The host is done (replaced, or reverted): the guard only records the run
    /// from now on, and the old containers kept for it go.
    pub(super) async fn guard_done(&self, outcome: RunOutcome, replaced: &[(String, String, String, String)], kept: &[(String, String)]) {
        let Some(k) = self.lease.as_ref().filter(|k| k.fence.is_armed()) else { return };
        let lease = k.lease.lock().await.clone();
        let record = Record {
            time: OffsetDateTime::UNIX_EPOCH,
            app: k.app.clone(),
            host: self.host.name.clone(),
            command: lease.command,
            version: lease.version.clone(),
            outcome,
            actor: Some(lease.holder.clone()),
            run_url: lease.run_url.clone(),
            duration_ms: 0,
            instances: replaced
                .iter()
                .map(|(service, name, from, to)| RecordInstance {
                    service: service.clone(),
                    name: name.clone(),
                    from_image: from.clone(),
                    to_image: to.clone(),
                    outcome: if outcome == RunOutcome::Succeeded { InstanceOutcome::Replaced } else { InstanceOutcome::Reverted },
                })
                .collect(),
            error: Some("the run's link was lost after the host finished: the guard recorded it".into()),
        };
        // The kept containers go in the same command, once the record is staged: one round
        // trip in all over a slow link.
        let olds: Vec<String> = kept.iter().map(|(_, name)| format!("{name}{OLD_SUFFIX}")).collect();
        let staged = match with_placeholders(&record) {
            Ok(json) => guard::stage_done(self.host.shell.as_ref(), &k.dir, &lease.id, &k.docker_socket, &json, &olds).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let removals = match staged {
            Ok(r) => r,
            Err(e) => {
                self.warn(format!("could not tell the guard that the host is done: {e}"));
                return;
            }
        };
        for (((service, name), old), removed) in kept.iter().zip(&olds).zip(removals) {
            let removed = self
                .step(service, name, "cleanup", async {
                    removed.map_err(crate::rollout::steps::StepError::failed)?;
                    Ok(((), format!("removed {old}, kept until the host was done")))
                })
                .await;
            if let Err(e) = removed {
                self.warn(format!("could not remove {old}: {e}"));
            }
        }
    }

    /// After a failed step, with the guard armed: Some(what to say) when the link
    /// to the host is gone (the fence closed, or the host does not answer within
    /// SSH's keepalive bound), so that the run leaves the host to the guard.
    pub(super) async fn link_lost(&self) -> Option<String> {
        let k = self.lease.as_ref().filter(|k| k.fence.is_armed())?;
        if let Some(why) = k.fence.closed() {
            return Some(why);
        }
        // On a channel of its own (the kept shell may be busy). No timer of its own: over a
        // dead link, SSH's keepalives end the master (and this command) within 15 s; over a
        // live one it answers in a round trip.
        match self.host.shell.run_apart(&["true"], None).await {
            Ok(r) if r.ok() => None,
            _ => Some(k.fence.promise()),
        }
    }
}

/// The record as JSON, its time left for the guard to fill in.
fn with_placeholders(record: &Record) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(record)?;
    Ok(json.replace("\"1970-01-01T00:00:00Z\"", &format!("\"{TIME}\"")))
}
