//! `deploy`, `rollback` and `check` through one path: [`roll`] prepares (see
//! `prepare`), and then either runs the read-only checks (a dry run, `check`,
//! with or without a version) or
//! takes the lock on every host before any change, runs preflight and the
//! pre-deploy hook under it (a refusal writes a `refused` record and releases the
//! lock), rolls the hosts (`fleet`), runs the post-deploy or on-failure hook,
//! records the run in each host's log and releases the lock.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::time::Instant;

use futures_util::future::join_all;

use crate::cli::Targets;
use crate::commands::fleet::{roll_hosts, Heartbeat};
use crate::commands::prepare::{prepare, Roll, Want};
use crate::commands::{locked, Ctx};
use crate::core::config::{Config, DrainMethod};
use crate::core::record::{Lease, Record, RecordInstance, RunCommand, RunOutcome};
use crate::core::release;
use crate::core::time::fmt_time;
use crate::error::Error;
use crate::host::guard::Fence;
use crate::host::state::{self, StateError};
use crate::host::Host;
use crate::output::events::{Event, Gate};
use crate::output::printer;
use crate::output::report::{Collector, Report};
use crate::rollout::gates;
use crate::rollout::HostResult;

/// What `roll` ends with: the report, and the error that decides the exit code.
pub struct RunOutput {
    pub report: Report,
    pub error: Option<Error>,
}

/// How a deploy or rollback runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollOpts {
    /// Plan and run the read-only checks; change nothing.
    pub dry_run: bool,
    /// Deploy over instances that are not healthy now.
    pub force: bool,
}

/// `deploy`, `rollback` and `check`: plan, then (unless `dry_run`) apply.
pub async fn roll<'a>(ctx: &'a Ctx<'a>, want: Want, targets: &Targets, opts: RollOpts, collector: &Collector) -> Result<RunOutput, Error> {
    let t0 = Instant::now();
    // A check with no version only ever reads.
    let ready = matches!(want, Want::Ready);
    let dry_run = opts.dry_run || ready;
    let creds = ctx.credentials()?;
    let roll = prepare(ctx, &want, targets, creds.as_ref(), dry_run).await?;
    let mut report = Report {
        app: ctx.config.app.clone(),
        command: roll.command,
        version: roll.version.clone(),
        outcome: RunOutcome::Succeeded,
        duration_ms: 0,
        hosts: vec![],
        build: collector.builds(),
        gates: vec![],
        // With no version there is no plan, only what runs now.
        plan: (!ready).then(|| roll.plan.clone()),
        error: None,
        previous: roll.previous.clone(),
    };
    ctx.info(None, if ready { printer::render_running(&roll.plan) } else { printer::render_plan(&roll.plan) });
    // A rollback goes over a broken state on purpose; a deploy and a check look at its health.
    let check_health = roll.command != RunCommand::Rollback;
    if dry_run {
        // The read-only part of the safety net: the lock as it is now, and every preflight check.
        let services = &roll.services;
        let checks = roll.hosts.iter().zip(&roll.plan.hosts).zip(&roll.observed).map(|((h, hp), seen)| async move {
            let lock = match state::read_lock(h.shell.as_ref(), &ctx.config.state_dir).await {
                Ok(Some(l)) if !l.expired(OffsetDateTime::now_utc()) => {
                    gates::LockSeen::Held(format!("{} ({}) since {}", l.holder, l.command, fmt_time(l.acquired_at)))
                }
                _ => gates::LockSeen::Free,
            };
            gates::preflight(ctx.config, h, services, hp, seen, lock, check_health, opts.force).await
        });
        let failed = emit_gates(ctx, join_all(checks).await);
        report.gates = collector.gates();
        report.duration_ms = t0.elapsed().as_millis() as u64;
        if !failed.is_empty() {
            report.outcome = RunOutcome::Refused;
            let e = refused("preflight", &failed);
            report.error = Some(e.to_string());
            return Ok(RunOutput { report, error: Some(e) });
        }
        if ready {
            ctx.info(None, ready_summary(ctx.config, &roll));
        } else {
            ctx.info(None, "dry run: nothing was changed");
        }
        return Ok(RunOutput { report, error: None });
    }
    if roll.plan.changes() == 0 {
        ctx.info(None, format!("nothing to do: every instance already runs {}", roll.version.as_deref().unwrap_or("the target")));
        report.duration_ms = t0.elapsed().as_millis() as u64;
        return Ok(RunOutput { report, error: None });
    }

    if let Some(why) = ctx.cancel.reason() {
        return Err(Error::RolledBack(format!("{why} before any change; nothing was changed")));
    }
    // Take the lock on every host before changing anything on any.
    let now = OffsetDateTime::now_utc();
    let lease = Lease {
        id: state::new_id(),
        holder: ctx.env.actor.clone(),
        command: roll.command,
        version: roll.version.clone(),
        run_url: ctx.env.run_url.clone(),
        acquired_at: now,
        expires_at: now + ctx.config.lock_lease,
    };
    let dir = &ctx.config.state_dir;
    // The first host's lock alone, then the others' at once: of two runs started together for
    // the same hosts, the one that took the first host takes the rest, and the other is refused
    // at the first without holding anything.
    let (first, rest) = roll.hosts.split_first().expect("prepare refuses a run with no host");
    let acquire = async {
        let mut results = vec![state::acquire(first.shell.as_ref(), dir, &lease, now).await];
        if results[0].is_ok() {
            results.extend(join_all(rest.iter().map(|h| state::acquire(h.shell.as_ref(), dir, &lease, now))).await);
        }
        results
    };
    // Every preflight check on every host, beside the lock (they only read, and nothing
    // is changed before both answered): a round trip less over a slow link. Their
    // answers count only once the lock is ours.
    let checks = roll
        .hosts
        .iter()
        .zip(&roll.plan.hosts)
        .zip(&roll.observed)
        .map(|((h, hp), seen)| gates::preflight(ctx.config, h, &roll.services, hp, seen, gates::LockSeen::Ours, check_health, opts.force));
    let (mut results, checks) = tokio::join!(acquire, join_all(checks));
    if let Some(i) = results.iter().position(Result::is_err) {
        let taken = roll.hosts.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(h, _)| h);
        join_all(taken.map(|l| state::release(l.shell.as_ref(), dir, &lease.id))).await;
        let h = &roll.hosts[i];
        let Err(e) = results.swap_remove(i) else { unreachable!("position found an error") };
        return Err(match e {
            StateError::Held(l) => locked(&h.name, l),
            StateError::Host(m) => Error::Unreachable { host: h.name.clone(), message: format!("cannot take the deploy lock: {m}"), hint: None },
        });
    }

    // From here the lease is kept alive while the run lives: a run that dies (SSH cut, SIGKILL)
    // stops renewing it, and the next run takes the lock over once it has expired.
    let fences: Vec<Arc<Fence>> = roll.hosts.iter().map(|_| Arc::new(Fence::new(ctx.config.lock_guard))).collect();
    let heartbeat = Heartbeat::start(roll.hosts.clone(), fences.clone(), dir.clone(), lease.clone(), ctx.config.lock_lease, ctx.config.lock_guard);
    let started_at = OffsetDateTime::now_utc();
    // Under the lock, before any change: the preflight checks, reported together.
    let failed = emit_gates(ctx, checks);
    if !failed.is_empty() {
        heartbeat.stop().await;
        return Ok(refuse(ctx, &roll, &lease, started_at, report, collector, refused("preflight", &failed)).await);
    }
    // What the hooks are told: the version before, as each host's log knows it.
    let hooks = &ctx.config.hooks;
    let any_hook = hooks.pre_deploy.is_some() || hooks.post_deploy.is_some() || hooks.on_failure.is_some();
    let mut hook_envs = Vec::new();
    // (Only read when a hook will be told: it is a round trip per host.)
    let logs = join_all(roll.hosts.iter().map(|h| async move {
        match any_hook {
            true => state::read_log(h.shell.as_ref(), dir).await.map(|(r, _)| r).unwrap_or_default(),
            false => Vec::new(),
        }
    }))
    .await;
    for records in logs {
        hook_envs.push(gates::HookEnv {
            app: ctx.config.app.clone(),
            version: roll.version.clone().unwrap_or_default(),
            previous_version: release::previous_version(&records).unwrap_or_default(),
            command: roll.command,
        });
    }
    if let Some(cmd) = &ctx.config.hooks.pre_deploy {
        let runs = roll.hosts.iter().zip(&hook_envs).map(|(h, env)| gates::hook(h, "pre_deploy", cmd, env));
        let failed = emit_gates(ctx, join_all(runs).await.into_iter().map(|g| vec![g]).collect());
        if !failed.is_empty() {
            heartbeat.stop().await;
            return Ok(refuse(ctx, &roll, &lease, started_at, report, collector, refused("the pre-deploy hook", &failed)).await);
        }
    }

    let results = roll_hosts(ctx, &roll, creds.as_ref(), &lease, &fences, t0).await;
    // No renewal may land after a release (it would put the lock back).
    heartbeat.stop().await;
    // Every host that was locked: its hook, its record, its lock released.
    let finish = roll.hosts.iter().zip(&results).zip(&hook_envs).map(|((h, result), env)| {
        let lease = lease.clone();
        let version = roll.version.clone();
        let command = roll.command;
        async move {
            let which = match result.outcome {
                RunOutcome::Succeeded => Some(("post_deploy", &ctx.config.hooks.post_deploy)),
                RunOutcome::Skipped => None,
                _ => Some(("on_failure", &ctx.config.hooks.on_failure)),
            };
            if let Some((which, Some(cmd))) = which {
                let g = gates::hook(h, which, cmd, env).await;
                if !g.ok {
                    ctx.warn(Some(&h.name), format!("the {which} hook failed ({}); the rollout's outcome stands", g.measured));
                }
                ctx.events.emit(Event::Gate(g));
            }
            let record = record(ctx.config, h, command, version, started_at, result, &lease);
            match state::append_and_release(h.shell.as_ref(), dir, &record, &lease.id).await {
                Ok(true) => {}
                Ok(false) => ctx.warn(Some(&h.name), "the deploy lock was no longer ours at the end"),
                Err(e) => {
                    ctx.warn(Some(&h.name), format!("could not record the run and release the lock ({e}); trying the release alone"));
                    if let Err(e) = state::release(h.shell.as_ref(), dir, &lease.id).await {
                        ctx.warn(Some(&h.name), format!("could not release the deploy lock: {e}"));
                    }
                }
            }
        }
    });
    join_all(finish).await;
    let results: Vec<(String, HostResult)> = roll.hosts.iter().map(|h| h.name.clone()).zip(results).collect();

    report.hosts = collector.hosts();
    report.gates = collector.gates();
    report.duration_ms = t0.elapsed().as_millis() as u64;
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.outcome == RunOutcome::Failed).collect();
    let rolled: Vec<_> = results.iter().filter(|(_, r)| r.outcome == RunOutcome::RolledBack).collect();
    let error = if !failed.is_empty() {
        report.outcome = RunOutcome::Failed;
        let msg = failed.iter().map(|(h, r)| format!("{h}: {}", r.error.clone().unwrap_or_default())).collect::<Vec<_>>().join("; ");
        Some(Error::NeedsAttention(msg))
    } else if !rolled.is_empty() {
        report.outcome = RunOutcome::RolledBack;
        let msg = rolled.iter().map(|(h, r)| format!("{h}: {}", r.error.clone().unwrap_or_default())).collect::<Vec<_>>().join("; ");
        Some(Error::RolledBack(format!("{} {} was rolled back: {msg}", roll.command, roll.version.as_deref().unwrap_or(""))))
    } else {
        ctx.info(None, format!("{} {} succeeded in {:.1}s", roll.command, roll.version.as_deref().unwrap_or(""), t0.elapsed().as_secs_f64()));
        None
    };
    report.error = error.as_ref().map(|e| e.to_string());
    Ok(RunOutput { report, error })
}

/// What a check with no version checked, and what a version would add.
fn ready_summary(config: &Config, roll: &Roll<'_>) -> String {
    let p = &config.preflight;
    let mut checked = vec!["config", "connection", "lock"];
    checked.extend(p.min_free_disk.map(|_| "disk"));
    checked.extend(p.max_load_per_core.map(|_| "load"));
    checked.extend(p.backup.as_ref().map(|_| "backup"));
    checked.push("health of what runs now");
    if roll.services.iter().any(|s| s.swarm.is_none() && matches!(s.drain.method, DrainMethod::Nginx(_))) {
        checked.push("drains (every instance's upstream line found)");
    }
    let instances: usize = roll.plan.hosts.iter().flat_map(|h| &h.services).map(|s| s.instances.len()).sum();
    format!(
        "ready: {} on {} host(s), {instances} instance(s): all passed; nothing was changed\n\
         a version (--version V) would add: its image in the registry (the tag resolved to a digest) and the plan (which instances it replaces)",
        checked.join(", "),
        roll.hosts.len(),
    )
}

/// Emits every gate; returns the ones that failed.
fn emit_gates(ctx: &Ctx<'_>, per_host: Vec<Vec<Gate>>) -> Vec<Gate> {
    let mut failed = Vec::new();
    for g in per_host.into_iter().flatten() {
        if !g.ok {
            failed.push(g.clone());
        }
        ctx.events.emit(Event::Gate(g));
    }
    failed
}

fn refused(what: &str, failed: &[Gate]) -> Error {
    let list: Vec<String> = failed.iter().map(|g| g.describe()).collect();
    Error::Refused(format!("{what} refused the deploy; nothing was changed: {}", list.join("; ")))
}

/// Ends a run that a gate refused before any change: a `refused` record on
/// every host, the lock released.
async fn refuse(ctx: &Ctx<'_>, roll: &Roll<'_>, lease: &Lease, started: OffsetDateTime, mut report: Report, collector: &Collector, error: Error) -> RunOutput {
    let message = error.to_string();
    for h in &roll.hosts {
        let r = HostResult { outcome: RunOutcome::Refused, instances: vec![], error: Some(message.clone()), ..Default::default() };
        let rec = record(ctx.config, h, roll.command, roll.version.clone(), started, &r, lease);
        if let Err(e) = state::append_and_release(h.shell.as_ref(), &ctx.config.state_dir, &rec, &lease.id).await {
            ctx.warn(Some(&h.name), format!("could not record the refusal or release the lock ({e})"));
            let _ = state::release(h.shell.as_ref(), &ctx.config.state_dir, &lease.id).await;
        }
    }
    report.outcome = RunOutcome::Refused;
    report.gates = collector.gates();
    report.error = Some(message);
    RunOutput { report, error: Some(error) }
}

fn record(config: &Config, h: &Host, command: RunCommand, version: Option<String>, started: OffsetDateTime, r: &HostResult, lease: &Lease) -> Record {
    Record {
        time: started,
        app: config.app.clone(),
        host: h.name.clone(),
        command,
        version,
        outcome: r.outcome,
        actor: Some(lease.holder.clone()),
        run_url: lease.run_url.clone(),
        duration_ms: (OffsetDateTime::now_utc() - started).whole_milliseconds().max(0) as u64,
        instances: r
            .instances
            .iter()
            .map(|i| RecordInstance {
                service: i.service.clone(),
                name: i.plan.name.clone(),
                from_image: i.plan.from_image.clone(),
                to_image: i.plan.to_image.clone(),
                outcome: i.outcome,
            })
            .collect(),
        error: r.error.clone(),
    }
}
