//! One instance's state machine: forward (drain, stop and keep the old container,
//! start the new one, health, undrain, traffic, pause, cleanup), undo (the kept
//! old container back, health-checked, undrained), and the recovery of a replace
//! a killed run left half-done. A revert is the same replace, to the recorded
//! image and original spec; it is never cancelled.

use futures_util::future::join_all;

use crate::core::config::{DrainMethod, Service};
use crate::core::observed::{ContainerInfo, ContainerSpec};
use crate::core::plan::{NEW_SUFFIX, OLD_SUFFIX};
use crate::host::{drain, swap};
use crate::rollout::compose::{compose_reference, moving, with_label, COMPOSE_IMAGE_LABEL};
use crate::rollout::steps::{Failure, StepError};
use crate::rollout::watch;
use crate::rollout::Rollout;

/// Which way a replace goes: forward to the release, or back to what ran before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Forward,
    /// A revert: its steps say so (`revert drain`), and it is never cancelled.
    Revert,
}

impl Direction {
    /// What its step names begin with.
    fn prefix(self) -> &'static str {
        match self {
            Direction::Forward => "",
            Direction::Revert => "revert ",
        }
    }

    /// A forward replace stops once the run is cancelled; a revert runs to the end.
    fn cancellable(self) -> bool {
        self == Direction::Forward
    }
}

/// What a replace has done so far, so that an undo knows what to put back.
#[derive(Default, Debug)]
struct Progress {
    drained: bool,
    renamed: bool,
    stopped: bool,
    /// The new container exists (created ahead as `<name>.capstan-new`).
    created: bool,
    /// The new container bears the instance's name.
    placed: bool,
    started: bool,
    /// The next instance was drained with this one's undrain (one reload for both).
    next_drained: bool,
    /// The new container's ID, once created: its undo removes that container, never
    /// whatever bears the name by then.
    new_id: Option<String>,
    /// The instances after this one as the pause's last look saw them (`Handover::then`).
    looked: Vec<(String, Option<ContainerInfo>)>,
    /// The new container as the swap's command saw it once started: the health gate's first look.
    started_as: Option<ContainerInfo>,
}

/// A forward replace that went through.
pub(super) struct Replaced {
    /// `Handover::next` was drained with this instance's undrain (it then stays drained).
    pub(super) next_drained: bool,
    /// The instances of `Handover::then`, inspected beside the pause's last look (one
    /// that did not answer is left out): the next replace starts from them.
    pub(super) looked: Vec<(String, Option<ContainerInfo>)>,
}

/// How one forward replace meets its neighbours in the load balancer.
#[derive(Default, Clone, Copy)]
pub(super) struct Handover<'t> {
    /// This instance was drained already, with the previous one's undrain.
    pub(super) drained: bool,
    /// The next instance to replace: drained with this one's undrain.
    pub(super) next: Option<&'t drain::Target>,
    /// The instances to replace after this one (the next two at most): looked at beside
    /// the pause's last look, a round trip less for the next replace over a slow link.
    pub(super) then: &'t [&'t str],
}

impl Rollout<'_> {
    /// Replaces container `name` by a new one from `spec` running `to_image`.
    /// On failure the old container is put back before returning.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn replace(
        &self,
        svc: &Service,
        name: &str,
        current: &ContainerInfo,
        spec: &ContainerSpec,
        to_image: &str,
        direction: Direction,
        handover: Handover<'_>,
    ) -> Result<Replaced, Failure> {
        let target = drain::Target::of(svc, current);
        let old = format!("{name}{OLD_SUFFIX}");
        // Only a moving tag (`:production`) follows the release; a version tag is never moved.
        let by_variable = svc.compose.as_ref().is_some_and(|c| c.variable.is_some());
        let compose = compose_reference(current, spec).filter(|_| !by_variable);
        if let Some(r) = compose.as_ref().filter(|r| !moving(r) && direction == Direction::Forward) {
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
        // A revert of an instance whose old container the guard kept: that very container
        // goes back (drained, the release's removed, the kept one renamed back, started,
        // health-checked, undrained), the way the guard on the host would put it back, so
        // that what the guard would do stays right at every moment of the revert.
        if direction == Direction::Revert && self.guarded() && self.host.engine.inspect_container(&old).await.ok().flatten().is_some() {
            let new_id = Some(current.id.clone()).filter(|id| !id.is_empty());
            let mut p = Progress { renamed: true, stopped: true, created: true, placed: true, started: true, new_id, ..Default::default() };
            return match self.undo(svc, name, &old, &target, None, &mut p, direction).await {
                true => Ok(Replaced { next_drained: false, looked: Vec::new() }),
                false => Err(Failure { error: StepError::Failed(format!("the kept {old} could not be put back")), restored: false }),
            };
        }
        let mut p = Progress { drained: handover.drained, ..Default::default() };
        let forward = self.forward(svc, name, &spec, to_image, &target, handover, &old, &mut p, direction).await;
        match forward {
            Ok(()) => {
                if let Some(r) = compose {
                    self.point_tag(name, &r, to_image).await;
                }
                Ok(Replaced { next_drained: p.next_drained, looked: std::mem::take(&mut p.looked) })
            }
            Err(error) => {
                let restored = self.undo(svc, name, &old, &target, handover.next, &mut p, direction).await;
                Err(Failure { error, restored })
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
        handover: Handover<'_>,
        old: &str,
        p: &mut Progress,
        direction: Direction,
    ) -> Result<(), StepError> {
        let next = handover.next;
        let s = &svc.name;
        let engine = &self.host.engine;
        let step = |n: &str| format!("{}{n}", direction.prefix());
        let cancellable = direction.cancellable();
        let lb = svc.drain.method != DrainMethod::None;
        let new = format!("{name}{NEW_SUFFIX}");
        // The new container is created ahead under a name of its own (it serves nothing
        // until the swap): beside the drain where this instance has one of its own.
        let create_new = || async {
            match engine.create(&new, spec, to_image).await {
                Ok(id) => Ok(id),
                // A `<name>.capstan-new` left by a run that died before its swap: it never served.
                Err(_) if engine.inspect_container(&new).await.ok().flatten().is_some_and(|c| !c.running) => {
                    engine.remove(&new).await.map_err(StepError::failed)?;
                    engine.create(&new, spec, to_image).await.map_err(StepError::failed)
                }
                Err(e) => Err(StepError::failed(e)),
            }
        };
        self.go_on(cancellable)?;
        // The drain (when this instance has one of its own) with the create beside it.
        let (drained, new_id) = if lb && p.drained {
            // Taken out with the previous instance's undrain (and proved by `nginx -T` where nginx runs in a container).
            self.step(s, name, &step("drain"), async { Ok(((), "drained with the previous instance's undrain (one reload for both)".to_string())) }).await?;
            (Ok(()), create_new().await)
        } else if lb {
            let mut drained = false;
            let label = step("drain");
            let drain = self.step(s, name, &label, async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(target, true)]).await.map_err(StepError::failed)?;
                drained = true;
                self.wait(svc.drain.wait, cancellable).await?;
                Ok(((), format!("{d}; waited {}", humantime::format_duration(svc.drain.wait))))
            });
            let (drain, new_id) = tokio::join!(drain, create_new());
            p.drained = drained;
            (drain, new_id)
        } else {
            (Ok(()), create_new().await)
        };
        // Known to exist before anything else is judged: the undo of a failed drain removes it.
        let create_failed = match new_id {
            Ok(id) => {
                p.created = true;
                p.new_id = Some(id).filter(|id| !id.is_empty());
                None
            }
            Err(e) => Some(e),
        };
        drained?;
        if let Some(e) = create_failed {
            // Nothing changed but the drain: the start is what failed.
            return self.step(s, name, &step("start"), async { Err::<((), String), _>(e) }).await;
        }
        self.go_on(cancellable)?;
        self.step(s, name, &step("stop"), async {
            match self.lease.as_ref().filter(|_| self.guarded()) {
                // Under the guard: the whole swap on the host, once the lock is seen to hold our lease.
                Some(k) => {
                    let id = k.lease.lock().await.id.clone();
                    let (done, result) = swap::swap(self.host.shell.as_ref(), &k.dir, &id, &k.docker_socket, name, old, &new).await;
                    (p.renamed, p.stopped, p.placed, p.started) = (done.renamed, done.stopped, done.placed, done.started);
                    match result {
                        Ok(printed) => p.started_as = engine.read_printed(&printed),
                        Err(e) => {
                            if matches!(e, swap::SwapError::LeaseLost { .. }) {
                                // The guard acts: no later step of this run touches the host.
                                k.fence.taken_over();
                            }
                            return Err(StepError::failed(e));
                        }
                    }
                }
                None => {
                    engine.rename(name, old).await.map_err(StepError::failed)?;
                    p.renamed = true;
                    engine.stop(old).await.map_err(StepError::failed)?;
                    p.stopped = true;
                }
            }
            Ok(((), format!("kept as {old}")))
        })
        .await?;
        self.go_on(cancellable)?;
        self.step(s, name, &step("start"), async {
            let short = crate::core::image::short(to_image);
            if p.started {
                return Ok(((), format!("{short} (started by the stop's command on the host)")));
            }
            if !p.placed {
                engine.rename(&new, name).await.map_err(StepError::failed)?;
                p.placed = true;
            }
            engine.start(name).await.map_err(StepError::failed)?;
            p.started = true;
            Ok(((), short))
        })
        .await?;
        self.go_on(cancellable)?;
        let healthy = self.step(s, name, &step("health"), self.health_gate(svc, name, cancellable, p.started_as.take())).await?;
        // The gates watch this instance beside the old ones: the next one is not taken out with this one's undrain.
        let gated = cancellable && watch::watched(&svc.gates);
        // With a next instance: one edit and one reload put this one back and take the next out.
        let next = next.filter(|_| lb && cancellable && !gated);
        if lb {
            self.step(s, name, &step("undrain"), async {
                let mut edits = vec![(target, false)];
                edits.extend(next.map(|n| (n, true)));
                let d = self.drainer.apply(self.host, &svc.drain.method, &edits).await.map_err(StepError::failed)?;
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
        // The gates' window opens once the instance serves.
        let mark = if gated { Some(self.mark(svc).await) } else { None };
        self.go_on(cancellable)?;
        self.step(s, name, &step("traffic"), self.traffic_check(svc, name, Some(healthy.pid))).await?;
        if let Some(mark) = mark {
            self.go_on(cancellable)?;
            self.step(s, name, &step("gates"), self.instance_window(svc, name, to_image, &mark)).await?;
        }
        self.step(s, name, &step("pause"), async {
            // The last look leaves a round trip before the pause ends: it reaches the host a
            // pause after the traffic check's answer left it (a round trip less over a slow link).
            let ahead = self.host.shell.round_trip().min(svc.pause);
            self.wait(svc.pause - ahead, cancellable).await?;
            let after = join_all(handover.then.iter().map(|n| async move { (n.to_string(), engine.inspect_container(n).await) }));
            let (c, after) = tokio::join!(engine.inspect_container(name), after);
            p.looked = after.into_iter().filter_map(|(n, r)| r.ok().map(|c| (n, c))).collect();
            let c = c.map_err(StepError::failed)?;
            match c {
                Some(c) if c.running => Ok(((), format!("still running after {}", humantime::format_duration(svc.pause)))),
                _ => Err(format!("{name} stopped during the pause").into()),
            }
        })
        .await?;
        // The new container has proved itself: the old one can go (once the host is
        // done, when the guard on the host may still have to put it back).
        if direction == Direction::Forward && self.guarded() {
            return Ok(());
        }
        if let Err(e) = self
            .step(s, name, &step("cleanup"), async {
                engine.remove(old).await.map_err(StepError::failed)?;
                Ok(((), format!("removed {old}")))
            })
            .await
        {
            self.warn(format!("could not remove {old}: {e}"));
        }
        Ok(())
    }

    /// Puts an instance drained ahead of its turn back in the load balancer (its turn never came).
    pub(super) async fn undrain_alone(&self, svc: &Service, t: &drain::Target) {
        let r = self
            .step(&svc.name, &t.instance, "undrain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(t, false)]).await.map_err(StepError::failed)?;
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
    pub async fn recover(&self, svc: &Service, name: &str) -> Result<(), StepError> {
        let old = format!("{name}{OLD_SUFFIX}");
        let engine = &self.host.engine;
        let kept = engine.inspect_container(&old).await.map_err(StepError::failed)?.ok_or_else(|| StepError::Failed(format!("{old} is gone")))?;
        let mut target = drain::Target::of(svc, &kept);
        // The kept container is named after the instance in nginx, not after its temporary name.
        target.instance = name.to_string();
        target.id.hosts.retain(|h| h != &old);
        target.id.hosts.insert(0, name.to_string());
        target.id.instance = name.to_string();
        let (s, lb) = (&svc.name, svc.drain.method != DrainMethod::None);
        if lb {
            self.step(s, name, "recover drain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(&target, true)]).await.map_err(StepError::failed)?;
                tokio::time::sleep(svc.drain.wait).await;
                Ok(((), d))
            })
            .await?;
        }
        self.step(s, name, "recover old back", async {
            if engine.inspect_container(name).await.map_err(StepError::failed)?.is_some() {
                engine.remove(name).await.map_err(StepError::failed)?;
            }
            engine.rename(&old, name).await.map_err(StepError::failed)?;
            engine.start(name).await.map_err(StepError::failed)?;
            Ok(((), format!("{old} is {name} again")))
        })
        .await?;
        self.step(s, name, "recover health", self.health_gate(svc, name, false, None)).await?;
        if lb {
            self.step(s, name, "recover undrain", async {
                let d = self.drainer.apply(self.host, &svc.drain.method, &[(&target, false)]).await.map_err(StepError::failed)?;
                Ok(((), d))
            })
            .await?;
        }
        Ok(())
    }

    /// Puts the kept old container back in place of a failed new one. A next
    /// instance drained with this one's undrain goes back in with this one's drain.
    #[allow(clippy::too_many_arguments)]
    async fn undo(
        &self,
        svc: &Service,
        name: &str,
        old: &str,
        target: &drain::Target,
        next: Option<&drain::Target>,
        p: &mut Progress,
        direction: Direction,
    ) -> bool {
        let s = &svc.name;
        let engine = &self.host.engine;
        let step = |n: &str| format!("{}restore {n}", direction.prefix());
        let lb = svc.drain.method != DrainMethod::None;
        let mut ok = true;
        if p.created {
            // A new container not yet in the name's place never served: it goes without a drain.
            if p.placed && !p.drained && lb {
                let mut edits = vec![(target, true)];
                edits.extend(next.filter(|_| p.next_drained).map(|n| (n, false)));
                let drained = self
                    .step(s, name, &step("drain"), async {
                        let d = self.drainer.apply(self.host, &svc.drain.method, &edits).await.map_err(StepError::failed)?;
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
                    let by_name = if p.placed { name.to_string() } else { format!("{name}{NEW_SUFFIX}") };
                    engine.remove(p.new_id.as_deref().unwrap_or(&by_name)).await.map_err(StepError::failed)?;
                    Ok(((), format!("removed the new {name}")))
                })
                .await
                .is_ok();
        }
        if p.renamed {
            ok &= self
                .step(s, name, &step("old back"), async {
                    engine.rename(old, name).await.map_err(StepError::failed)?;
                    if p.stopped {
                        engine.start(name).await.map_err(StepError::failed)?;
                    }
                    Ok(((), format!("{old} is {name} again")))
                })
                .await
                .is_ok();
            if ok && p.stopped {
                ok &= self.step(s, name, &step("health"), self.health_gate(svc, name, false, None)).await.is_ok();
            }
        }
        if p.drained && ok {
            ok &= self
                .step(s, name, &step("undrain"), async {
                    let d = self.drainer.apply(self.host, &svc.drain.method, &[(target, false)]).await.map_err(StepError::failed)?;
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
}
