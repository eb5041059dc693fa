//! Many hosts: the canaries first, alone and to the end, then the rest, at most
//! `rollout.parallel` at once; a failed host stops the hosts not yet started, and
//! with `on_failure: revert_all` also stops the ones in flight and puts back the
//! ones that finished. The [`Heartbeat`] renews the lease on every locked host
//! while the run lives.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::commands::prepare::Roll;
use crate::commands::Ctx;
use crate::core::config::OnFailure;
use crate::core::plan::HostPlan;
use crate::core::record::{InstanceOutcome, Lease, RunCommand, RunOutcome};
use crate::core::secret::Credentials;
use crate::host::guard::Fence;
use crate::host::state;
use crate::host::Host;
use crate::output::events::{Event, HostEvent, HostPhase};
use crate::rollout::cancel::Cancel;
use crate::rollout::safety::Safety;
use crate::rollout::{HostResult, LeaseKeeper, Rollout};

/// Rolls the hosts: the first `rollout.canary` ones alone and to the end (validated and
/// baked), then the rest, at most `rollout.parallel` at once. A failed host stops every
/// host not yet started; with `on_failure: revert_all` it also stops the ones in flight
/// (they revert what they changed) and puts back the ones that finished, so that every
/// host runs one release. One result per host of `roll.hosts`, in that order.
pub(super) async fn roll_hosts(
    ctx: &Ctx<'_>,
    roll: &Roll<'_>,
    creds: Option<&Credentials>,
    lease: &Lease,
    fences: &[Arc<Fence>],
    t0: Instant,
) -> Vec<HostResult> {
    let rollout = &ctx.config.rollout;
    let n = roll.hosts.len();
    let canary = rollout.canary.min(n);
    let revert_all = rollout.on_failure == OnFailure::RevertAll;
    // In-flight rollouts stop on this (a signal, or another host's failure under revert_all).
    let abort = Cancel::default();
    // No host starts once this is set (any failure).
    let no_new: std::sync::Mutex<Option<String>> = Default::default();
    // Each service migrates once: on the first host (in roll order) that runs it.
    let migrate_on: Vec<Vec<String>> = (0..n)
        .map(|i| {
            roll.plan.hosts[i]
                .services
                .iter()
                .filter(|sp| roll.plan.hosts[..i].iter().all(|earlier| earlier.services.iter().all(|e| e.service != sp.service)))
                .map(|sp| sp.service.clone())
                .collect()
        })
        .collect();
    let deploying = roll.command == RunCommand::Deploy;
    let dir = &ctx.config.state_dir;
    let keeper = |fence: Arc<Fence>| {
        Some(LeaseKeeper {
            dir: dir.clone(),
            lease: tokio::sync::Mutex::new(lease.clone()),
            duration: ctx.config.lock_lease,
            fence,
            app: ctx.config.app.clone(),
            docker_socket: ctx.config.docker_socket.clone(),
        })
    };
    let run_one = |i: usize| {
        let (h, hp) = (&roll.hosts[i], &roll.plan.hosts[i]);
        let (abort, no_new, migrate) = (&abort, &no_new, &migrate_on[i]);
        async move {
            let stopped = abort.reason().or_else(|| no_new.lock().unwrap_or_else(PoisonError::into_inner).clone());
            if let Some(reason) = stopped {
                ctx.events.emit(Event::Host(HostEvent { host: h.name.clone(), phase: HostPhase::Skipped { reason: reason.clone() } }));
                return (i, skipped(hp, reason));
            }
            let started = t0.elapsed();
            ctx.events
                .emit(Event::Host(HostEvent { host: h.name.clone(), phase: HostPhase::Started { at_ms: started.as_millis() as u64, canary: i < canary } }));
            let r = Rollout {
                host: h,
                events: ctx.events,
                creds,
                t0,
                lease: keeper(fences[i].clone()),
                cancel: abort,
                drainer: Default::default(),
                safety: Safety { migrate: if deploying { migrate } else { &[] }, validate: Some(&ctx.config.validate), bake: ctx.config.bake },
                version: roll.version.as_deref(),
            };
            let result = r.run(hp, &roll.services).await;
            emit_finished(ctx, h, t0, started, result.outcome);
            if result.outcome != RunOutcome::Succeeded {
                let why = format!("{} {}", h.name, result.outcome.in_words());
                no_new.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(why.clone());
                if revert_all {
                    abort.trigger(&format!("{why}; on_failure: revert_all stops every host"));
                }
            }
            (i, result)
        }
    };
    let parallel = rollout.parallel.max(1);
    let waves = async {
        let mut out: Vec<Option<HostResult>> = vec![None; n];
        for wave in [0..canary, canary..n] {
            let mut runs = futures_util::stream::iter(wave).map(run_one).buffer_unordered(parallel);
            while let Some((i, r)) = runs.next().await {
                out[i] = Some(r);
            }
        }
        out.into_iter().map(|r| r.expect("every host ran or was skipped")).collect::<Vec<_>>()
    };
    // A signal stops the hosts the same way another host's failure does.
    let mut results = {
        let waves = std::pin::pin!(waves);
        let signalled = std::pin::pin!(ctx.cancel.cancelled());
        match futures_util::future::select(waves, signalled).await {
            futures_util::future::Either::Left((results, _)) => results,
            futures_util::future::Either::Right(((), waves)) => {
                abort.trigger(&ctx.cancel.reason().unwrap_or_else(|| "cancelled".into()));
                waves.await
            }
        }
    };
    let failed: Vec<&str> = roll
        .hosts
        .iter()
        .zip(&results)
        .filter(|(_, r)| !matches!(r.outcome, RunOutcome::Succeeded | RunOutcome::Skipped))
        .map(|(h, _)| h.name.as_str())
        .collect();
    let signalled = ctx.cancel.reason();
    if failed.is_empty() && signalled.is_none() || !revert_all && signalled.is_none() {
        return results;
    }
    // revert_all (or a signal): the hosts that finished go back too, through the same replace.
    let why = match (failed.as_slice(), signalled) {
        ([], Some(s)) => s,
        (f, _) => format!("{} failed (on_failure: revert_all)", f.join(", ")),
    };
    let reverts = roll.hosts.iter().zip(results.iter_mut()).filter(|(_, r)| r.outcome == RunOutcome::Succeeded).map(|(h, r)| {
        let why = why.clone();
        let never = Cancel::default();
        async move {
            ctx.events.emit(Event::Host(HostEvent { host: h.name.clone(), phase: HostPhase::Reverting { reason: why.clone() } }));
            let started = t0.elapsed();
            // An undo is never cancelled.
            let rollout = Rollout {
                host: h,
                events: ctx.events,
                creds,
                t0,
                lease: keeper(Arc::new(Fence::new(ctx.config.lock_guard))),
                cancel: &never,
                drainer: Default::default(),
                safety: Safety::default(),
                version: None,
            };
            let mut undone = rollout.revert_finished(r, &roll.services).await;
            undone.error = Some(match undone.outcome {
                RunOutcome::RolledBack => format!("put back because {why}"),
                _ => format!("{why}; putting this host back failed, see the steps above"),
            });
            emit_finished(ctx, h, t0, started, undone.outcome);
            *r = undone;
        }
    });
    futures_util::stream::iter(reverts).buffer_unordered(parallel).collect::<Vec<()>>().await;
    results
}

/// The result of a host that never started: nothing changed.
fn skipped(hp: &HostPlan, reason: String) -> HostResult {
    let instances = hp
        .services
        .iter()
        .flat_map(|sp| {
            sp.instances.iter().map(|i| crate::rollout::InstanceResult { service: sp.service.clone(), plan: i.clone(), outcome: InstanceOutcome::Unchanged })
        })
        .collect();
    HostResult { outcome: RunOutcome::Skipped, instances, error: Some(format!("not started: {reason}")), ..Default::default() }
}

/// A host's rollout (or its putting back), begun `started` after `t0`, ended with `outcome`.
fn emit_finished(ctx: &Ctx, h: &Host, t0: Instant, started: Duration, outcome: RunOutcome) {
    let phase = HostPhase::Finished { at_ms: started.as_millis() as u64, duration_ms: (t0.elapsed() - started).as_millis() as u64, outcome };
    ctx.events.emit(Event::Host(HostEvent { host: h.name.clone(), phase }));
}

/// Renews a run's lease on every locked host, every quarter of the lease, for as long as it
/// is alive (dropping it stops it). The lease can then be short (`lock.lease`, 2 min by
/// default) without a long step outliving it, and a dead run's lock expires soon.
pub(super) struct Heartbeat {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Read-held during each renewal (hosts renew at once); `true` once stopped.
    stopped: Arc<tokio::sync::RwLock<bool>>,
}

impl Heartbeat {
    /// Renews the lease on each host, every quarter of the lease and every third of
    /// the guard's bound, whichever is shorter, each host on its own (a host that does
    /// not answer holds back no other); each host's fence learns of each renewal, or
    /// that the guard on the host took the lock over.
    pub(super) fn start(hosts: Vec<Host>, fences: Vec<Arc<Fence>>, dir: String, lease: Lease, duration: Duration, guard: Duration) -> Heartbeat {
        let every = (duration / 4).min(guard / 3).max(Duration::from_millis(250));
        let stopped = Arc::new(tokio::sync::RwLock::new(false));
        let tasks = hosts
            .into_iter()
            .zip(fences)
            .map(|(h, fence)| {
                let (flag, dir, mut lease) = (stopped.clone(), dir.clone(), lease.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        let stopped = flag.read().await;
                        if *stopped {
                            return;
                        }
                        lease.expires_at = OffsetDateTime::now_utc() + duration;
                        match state::renew(h.shell.as_ref(), &dir, &lease).await {
                            Ok(()) => fence.renewed(),
                            Err(_) if fence.is_armed() && lost_lock(&h, &dir, &lease.id).await => {
                                fence.taken_over();
                                tracing::warn!(host = %h.name, "the deploy lock is no longer this run's: the guard on the host took it over");
                                return;
                            }
                            Err(e) => tracing::warn!(host = %h.name, "could not renew the deploy lock: {e}"),
                        }
                    }
                })
            })
            .collect();
        Heartbeat { tasks, stopped }
    }

    /// Stops renewing; returns once no renewal is under way.
    pub(super) async fn stop(&self) {
        *self.stopped.write().await = true;
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether the lock on `h` now holds another lease than `id` (or none).
async fn lost_lock(h: &Host, dir: &str, id: &str) -> bool {
    matches!(state::read_lock(h.shell.as_ref(), dir).await, Ok(l) if l.as_ref().is_none_or(|l| l.id != id))
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
