//! The commands: each one connects, observes, plans and (for deploy and
//! rollback) applies through the same path. Hosts are reached through a
//! [`Connector`], so the whole flow also runs against fakes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cancel::Cancel;
use crate::cli::Targets;
use crate::config::{Config, HostAddr, OnFailure, Service};
use crate::env;
use crate::error::{Error, Secret};
use crate::events::{Event, HostEvent, HostPhase, InstanceOutcome, Sink};
use crate::gates;
use crate::host::{Credentials, EngineError, Host};
use crate::plan::{self, HostPlan, Observed, Plan};
use crate::release::{self, RollbackTo};
use crate::report::{Collector, Report};
use crate::rollout::{HostOutcome, HostResult, LeaseKeeper, Rollout, Safety};
use crate::state::{self, Lease, Record, RecordInstance, StateError};

/// Opens hosts. The real one is SSH; tests use fakes.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, addr: &HostAddr, config: &Config) -> Result<Host, Error>;
    async fn close(&self);
}

pub struct SshConnector {
    open: tokio::sync::Mutex<Vec<Arc<crate::ssh::SshHost>>>,
}

impl SshConnector {
    pub fn new() -> Self {
        SshConnector { open: tokio::sync::Mutex::new(Vec::new()) }
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn connect(&self, addr: &HostAddr, config: &Config) -> Result<Host, Error> {
        let (host, ssh) = crate::ssh::connect(addr, &config.ssh, &config.docker_socket).await.map_err(|e| Error::Unreachable {
            host: addr.to_string(),
            message: e.message,
            hint: e.hint,
        })?;
        self.open.lock().await.push(ssh);
        Ok(host)
    }

    async fn close(&self) {
        for s in self.open.lock().await.drain(..) {
            s.close().await;
        }
        crate::ssh::remove_socket_dir();
    }
}

/// What a command needs besides its arguments.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub events: &'a dyn Sink,
    pub connector: &'a dyn Connector,
    pub cancel: &'a Cancel,
}

impl Ctx<'_> {
    fn info(&self, host: Option<&str>, message: impl Into<String>) {
        self.events.emit(Event::Info { host: host.map(String::from), message: message.into() });
    }

    fn warn(&self, host: Option<&str>, message: impl Into<String>) {
        self.events.emit(Event::Warn { host: host.map(String::from), message: message.into() });
    }

    pub fn services(&self, names: &[String]) -> Result<Vec<&Service>, Error> {
        for n in names {
            if self.config.service(n).is_none() {
                return Err(Error::input(format!(
                    "--service {n}: no such service in {} (services: {})",
                    self.config.file.display(),
                    self.config.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(self.config.services.iter().filter(|s| names.is_empty() || names.contains(&s.name)).collect())
    }

    pub fn hosts(&self, names: &[String]) -> Result<Vec<HostAddr>, Error> {
        for n in names {
            if !self.config.hosts.iter().any(|h| &h.to_string() == n || &h.host == n) {
                return Err(Error::input(format!("--host {n}: not a host of {}", self.config.file.display())));
            }
        }
        Ok(self.config.hosts.iter().filter(|h| names.is_empty() || names.iter().any(|n| *n == h.to_string() || *n == h.host)).cloned().collect())
    }

    /// Registry credentials from the environment, when the config names a registry.
    pub fn credentials(&self) -> Result<Option<Credentials>, Error> {
        let Some(r) = &self.config.registry else { return Ok(None) };
        let password = env::var(&r.password_env).ok_or_else(|| {
            Error::input_hint(
                format!("{}: registry.password_env: the environment variable {} is not set", self.config.file.display(), r.password_env),
                format!("export {} with the password or token for {}", r.password_env, r.server),
            )
        })?;
        Ok(Some(Credentials { server: r.server.clone(), username: r.username.clone(), password: Secret::new(password) }))
    }

    /// Opens every host at once: the SSH master and the engine's first answer.
    async fn connect_all(&self, addrs: &[HostAddr]) -> Result<Vec<Host>, Error> {
        let results = join_all(addrs.iter().map(|a| async move {
            let t = Instant::now();
            let h = self.connector.connect(a, self.config).await?;
            let v = h.engine.version().await.map_err(|e| Error::Unreachable { host: h.name.clone(), message: e.to_string(), hint: None })?;
            Ok::<_, Error>((h, v, t.elapsed()))
        }))
        .await;
        let mut hosts = Vec::new();
        for r in results {
            let (h, v, took) = r?;
            self.info(Some(&h.name), format!("connected in {} ms, Docker {v}", took.as_millis()));
            self.events.emit(Event::Host(HostEvent { host: h.name.clone(), phase: HostPhase::Connected { ms: took.as_millis() as u64 } }));
            hosts.push(h);
        }
        Ok(hosts)
    }
}

async fn observe(host: &Host, services: &[&Service]) -> Result<Observed, Error> {
    let unreachable = |e: EngineError| Error::Unreachable { host: host.name.clone(), message: e.to_string(), hint: None };
    let listed = host.engine.list_containers().await.map_err(unreachable)?;
    let mut o = Observed { all_names: listed.iter().map(|c| c.name.clone()).collect(), ..Default::default() };
    for svc in services {
        if let Some(sw) = &svc.swarm {
            // A host that is no manager is a planning problem (exit 2), not an unreachable host.
            o.swarm.insert(svc.name.clone(), host.swarm.inspect_service(&sw.service).await.map_err(|e| e.to_string()));
            continue;
        }
        let names = plan::resolve_instances(svc, &listed);
        o.instances.insert(svc.name.clone(), names.clone());
        for name in &names {
            if let Some(c) = host.engine.inspect_container(name).await.map_err(unreachable)? {
                let image = host.engine.inspect_image(&c.image_id).await.map_err(unreachable)?;
                o.containers.insert(name.clone(), (c, image));
            }
        }
    }
    Ok(o)
}

/// Puts back, under the lock, the instances a killed run left half-replaced
/// (a `<name>.capstan-old` beside or instead of `<name>`). Returns whether it did anything.
async fn recover(ctx: &Ctx<'_>, h: &Host, services: &[&Service], o: &Observed) -> Result<bool, Error> {
    let leftovers: Vec<(&Service, &String)> = services
        .iter()
        .flat_map(|s| o.instances_of(s).iter().map(move |i| (*s, i)))
        .filter(|(_, i)| o.all_names.contains(&format!("{i}{}", plan::OLD_SUFFIX)))
        .collect();
    if leftovers.is_empty() {
        return Ok(false);
    }
    ctx.warn(Some(&h.name), format!("an interrupted run left {} instance(s) half-replaced; putting the kept containers back first", leftovers.len()));
    let now = OffsetDateTime::now_utc();
    let lease = Lease {
        id: state::new_id(),
        holder: env::actor(),
        command: "recover".into(),
        version: None,
        run_url: env::run_url(),
        acquired_at: now,
        expires_at: now + ctx.config.lock_lease,
    };
    let dir = &ctx.config.state_dir;
    state::acquire(h.shell.as_ref(), dir, &lease, now).await.map_err(|e| match e {
        StateError::Held(l) => locked(&h.name, l),
        StateError::Host(m) => Error::Unreachable { host: h.name.clone(), message: format!("cannot take the deploy lock: {m}"), hint: None },
    })?;
    let r = Rollout {
        host: h,
        events: ctx.events,
        creds: None,
        t0: Instant::now(),
        lease: None,
        cancel: ctx.cancel,
        drainer: Default::default(),
        safety: Safety::default(),
        version: None,
    };
    let mut instances = Vec::new();
    let mut failed = Vec::new();
    for (svc, name) in &leftovers {
        let kept = format!("{name}{}", plan::OLD_SUFFIX);
        let image_of = |n: &str| o.containers.get(n).map(|(c, _)| c.image_id.clone());
        let from_image = image_of(name).unwrap_or_default();
        let to_image = h.engine.inspect_container(&kept).await.ok().flatten().map(|c| c.image_id).unwrap_or_default();
        let outcome = match r.recover(svc, name).await {
            Ok(()) => "reverted",
            Err(e) => {
                failed.push(format!("{name}: {e}"));
                "failed"
            }
        };
        instances.push(RecordInstance { service: svc.name.clone(), name: (*name).clone(), from_image, to_image, outcome: outcome.into() });
    }
    let record = Record {
        time: now,
        app: ctx.config.app.clone(),
        host: h.name.clone(),
        command: "recover".into(),
        version: None,
        outcome: if failed.is_empty() { "succeeded" } else { "failed" }.into(),
        actor: Some(lease.holder.clone()),
        run_url: lease.run_url.clone(),
        duration_ms: (OffsetDateTime::now_utc() - now).whole_milliseconds().max(0) as u64,
        instances,
        error: (!failed.is_empty()).then(|| failed.join("; ")),
    };
    if let Err(e) = state::append_and_release(h.shell.as_ref(), dir, &record, &lease.id).await {
        ctx.warn(Some(&h.name), format!("could not record the recovery or release the lock: {e}"));
    }
    if !failed.is_empty() {
        return Err(Error::NeedsAttention(format!("{}: could not put back {}", h.name, failed.join("; "))));
    }
    Ok(true)
}

/// Resolves `repo:version` to `repo@sha256:…` once, through the first host's engine.
async fn resolve(host: &Host, svc: &Service, version: &str, creds: Option<&Credentials>) -> Result<String, Error> {
    let reference = release::tag_ref(&svc.image, version);
    match host.engine.registry_digest(&reference, creds).await {
        Ok(d) if d.starts_with("sha256:") => Ok(release::digest_ref(&svc.image, &d)),
        Ok(d) => {
            Err(Error::Unreachable { host: host.name.clone(), message: format!("{reference}: the registry answered an unexpected digest {d:?}"), hint: None })
        }
        Err(EngineError::NotFound(m)) => Err(Error::input_hint(
            format!("services.{}: image {reference} does not exist: {m}", svc.name),
            "build and push it first (capstan build --push), or check --version",
        )),
        Err(EngineError::Auth(m)) => {
            Err(Error::input_hint(format!("services.{}: {m}", svc.name), "check registry.username and the variable named by registry.password_env"))
        }
        Err(EngineError::Other(m)) => {
            Err(Error::Unreachable { host: host.name.clone(), message: format!("cannot ask the registry about {reference}: {m}"), hint: None })
        }
    }
}

/// The image every instance of every service runs for `version`: each service's
/// tag resolved once to its digest, unless `pinned` already names its image
/// (the digest this run's build pushed).
async fn resolve_release(
    ctx: &Ctx<'_>,
    host: &Host,
    services: &[&Service],
    version: &str,
    pinned: &HashMap<String, String>,
    creds: Option<&Credentials>,
) -> Result<HashMap<String, String>, Error> {
    let mut images = HashMap::new();
    for svc in services {
        let image = match pinned.get(&svc.name) {
            Some(i) => i.clone(),
            None => resolve(host, svc, version, creds).await?,
        };
        ctx.info(None, format!("{}: {version} is {}", svc.name, crate::printer::short(&image)));
        images.insert(svc.name.clone(), image);
    }
    Ok(images)
}

/// Per (service, instance) on one host: the service's image for every instance found there.
fn per_instance(services: &[&Service], observed: &Observed, images: &HashMap<String, String>) -> Images {
    let mut out = Images::new();
    for svc in services {
        let Some(image) = images.get(&svc.name) else { continue };
        let names = match &svc.swarm {
            Some(_) => svc.plan_names(),
            None => observed.instances_of(svc).to_vec(),
        };
        for i in names {
            out.insert((svc.name.clone(), i), image.clone());
        }
    }
    out
}

/// What a deploy or a rollback asks for.
pub enum Want {
    /// `pinned`: per service, the image this run built and pushed (its digest reference).
    Deploy {
        version: String,
        pinned: HashMap<String, String>,
    },
    Rollback {
        to: RollbackTo,
    },
}

struct Roll<'a> {
    command: &'static str,
    version: Option<String>,
    hosts: Vec<Host>,
    services: Vec<&'a Service>,
    plan: Plan,
    /// What the first host's log says runs now.
    previous: Option<String>,
}

/// Connects, observes, resolves and plans. Changes nothing.
/// Per (service, instance): the exact image it must run.
type Images = HashMap<(String, String), String>;

async fn prepare<'a>(ctx: &'a Ctx<'a>, want: &Want, targets: &Targets, creds: Option<&Credentials>, dry_run: bool) -> Result<Roll<'a>, Error> {
    let services = ctx.services(&targets.services)?;
    // Only the hosts that run one of these services (`services.*.hosts`, roles).
    let addrs: Vec<HostAddr> = ctx.hosts(&targets.hosts)?.into_iter().filter(|a| services.iter().any(|s| s.runs_on(a))).collect();
    if addrs.is_empty() {
        return Err(Error::input(format!(
            "{}: no host runs {} (see services.*.hosts and --host)",
            ctx.config.file.display(),
            services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    let on_host = |i: usize| -> Vec<&Service> { services.iter().filter(|s| s.runs_on(&addrs[i])).copied().collect() };
    if ctx.config.hosts.len() == 1 {
        for s in services.iter().filter(|s| s.instances.len() == 1) {
            ctx.warn(None, format!(
                "services.{}: one instance on one host cannot be replaced without a gap: while it is drained, nothing serves (list two instances for zero downtime)",
                s.name
            ));
        }
    }
    let hosts = ctx.connect_all(&addrs).await?;
    // A deploy in progress explains whatever half-done state the hosts are in: say so first.
    let now = OffsetDateTime::now_utc();
    // Every host at once here and below: one round trip of wall time, not one per host.
    let leases = join_all(hosts.iter().map(|h| state::read_lock(h.shell.as_ref(), &ctx.config.state_dir))).await;
    for (h, lease) in hosts.iter().zip(leases) {
        let lease = lease.map_err(|e| Error::Unreachable { host: h.name.clone(), message: e.to_string(), hint: None })?;
        match lease {
            Some(l) if !l.expired(now) && !dry_run => return Err(locked(&h.name, l)),
            Some(l) if !l.expired(now) => {
                ctx.warn(Some(&h.name), format!("deploy lock held by {} ({}) since {}", l.holder, l.command, fmt_time(l.acquired_at)))
            }
            _ => {}
        }
    }
    let observed = join_all(hosts.iter().enumerate().map(|(i, h)| async move {
        let services = on_host(i);
        let mut o = observe(h, &services).await?;
        if !dry_run && recover(ctx, h, &services, &o).await? {
            o = observe(h, &services).await?;
        }
        Ok::<_, Error>(o)
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, Error>>()?;
    let (command, version, per_host): (&str, Option<String>, Vec<Images>) = match want {
        Want::Deploy { version, pinned } => {
            let images = resolve_release(ctx, &hosts[0], &services, version, pinned, creds).await?;
            ("deploy", Some(version.clone()), observed.iter().map(|o| per_instance(&services, o, &images)).collect())
        }
        Want::Rollback { to } => {
            let mut per_host = Vec::new();
            let mut label = None;
            // Asked of the registry once, for every host whose log does not know the version.
            let mut from_registry = None;
            let logs = join_all(hosts.iter().map(|h| state::read_log(h.shell.as_ref(), &ctx.config.state_dir))).await;
            for (i, (h, log)) in hosts.iter().zip(logs).enumerate() {
                let (records, _) = log.map_err(|e| Error::Unreachable { host: h.name.clone(), message: e.to_string(), hint: None })?;
                let target = release::rollback_target(&records, to).map_err(|e| Error::input(format!("{}: {e}", h.name)))?;
                let target = match (target, to) {
                    (Some(t), _) => t,
                    (None, RollbackTo::Version(v)) => {
                        ctx.warn(Some(&h.name), format!("{v} is not in the deployment log; using the registry's current {v} tag"));
                        if from_registry.is_none() {
                            from_registry = Some(resolve_release(ctx, &hosts[0], &services, v, &HashMap::new(), creds).await?);
                        }
                        let images = per_instance(&services, &observed[i], from_registry.as_ref().expect("resolved above"));
                        release::RollbackTarget { version: Some(v.clone()), images }
                    }
                    (None, RollbackTo::Previous) => unreachable!("previous always has a target or an error"),
                };
                let version = match &target.version {
                    Some(v) => Some(v.clone()),
                    None => version_from_tags(h, &services, &target.images).await,
                };
                label = label.or(version);
                per_host.push(target.images);
            }
            ("rollback", label, per_host)
        }
    };
    let mut host_plans: Vec<HostPlan> = Vec::new();
    let mut problems = Vec::new();
    for (i, ((h, obs), images)) in hosts.iter().zip(&observed).zip(&per_host).enumerate() {
        match plan::plan_host(&h.name, &on_host(i), obs, &|s, i| images.get(&(s.to_string(), i.to_string())).cloned()) {
            Ok(p) => host_plans.push(p),
            Err(mut e) => problems.append(&mut e),
        }
    }
    // Whatever a drain would refuse, refuse now, before any change.
    let drains = hosts.iter().zip(&observed).enumerate().map(|(i, (h, obs))| {
        let services = on_host(i);
        async move {
            let with: Vec<(&Service, Vec<&crate::host::ContainerInfo>)> = services
                .iter()
                .filter(|s| s.swarm.is_none())
                .map(|s| (*s, obs.instances_of(s).iter().filter_map(|n| obs.containers.get(n).map(|(c, _)| c)).collect()))
                .collect();
            crate::drain::check(h, &with).await
        }
    });
    problems.extend(join_all(drains).await.into_iter().flatten());
    if !problems.is_empty() {
        return Err(Error::input(problems.join("\n")));
    }
    let previous = match state::read_log(hosts[0].shell.as_ref(), &ctx.config.state_dir).await {
        Ok((records, _)) => release::current_version(&records),
        Err(_) => None,
    };
    Ok(Roll { command, version, hosts, services, plan: Plan { hosts: host_plans }, previous })
}

/// A version name for images the log does not know: the tag they carry on the host, if any.
async fn version_from_tags(h: &Host, services: &[&Service], images: &HashMap<(String, String), String>) -> Option<String> {
    for svc in services {
        let Some(image) = images.iter().find(|((s, _), _)| *s == svc.name).map(|(_, i)| i) else { continue };
        let info = h.engine.inspect_image(image).await.ok().flatten()?;
        if let Some(tag) = info.repo_tags.iter().filter(|t| release::repo_of(t) == svc.image).filter_map(|t| release::tag_of(t)).find(|t| *t != "latest") {
            return Some(tag.to_string());
        }
    }
    None
}

pub struct RunOutput {
    pub report: Report,
    pub error: Option<Error>,
}

/// A host's rollout (or its putting back), begun `started` after `t0`, ended with `outcome`.
fn emit_finished(ctx: &Ctx, h: &Host, t0: Instant, started: Duration, outcome: HostOutcome) {
    let phase =
        HostPhase::Finished { at_ms: started.as_millis() as u64, duration_ms: (t0.elapsed() - started).as_millis() as u64, outcome: outcome.as_str().into() };
    ctx.events.emit(Event::Host(HostEvent { host: h.name.clone(), phase }));
}

/// `deploy`, `rollback` and `check`: plan, then (unless `dry_run`) apply.
/// How a deploy or rollback runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollOpts {
    /// Plan and run the read-only checks; change nothing.
    pub dry_run: bool,
    /// Deploy over instances that are not healthy now.
    pub force: bool,
}

pub async fn roll<'a>(ctx: &'a Ctx<'a>, want: Want, targets: &Targets, opts: RollOpts, collector: &Collector) -> Result<RunOutput, Error> {
    let t0 = Instant::now();
    let dry_run = opts.dry_run;
    let creds = ctx.credentials()?;
    let roll = prepare(ctx, &want, targets, creds.as_ref(), dry_run).await?;
    let mut report = Report {
        app: ctx.config.app.clone(),
        command: roll.command.to_string(),
        version: roll.version.clone(),
        outcome: "succeeded".into(),
        duration_ms: 0,
        hosts: vec![],
        build: collector.builds(),
        gates: vec![],
        plan: Some(roll.plan.clone()),
        error: None,
        previous: roll.previous.clone(),
    };
    ctx.info(None, crate::printer::render_plan(&roll.plan));
    let deploying = roll.command == "deploy";
    if dry_run {
        // The read-only part of the safety net: the lock as it is now, and every preflight check.
        let services = &roll.services;
        let checks = roll.hosts.iter().zip(&roll.plan.hosts).map(|(h, hp)| async move {
            let lock = match state::read_lock(h.shell.as_ref(), &ctx.config.state_dir).await {
                Ok(Some(l)) if !l.expired(OffsetDateTime::now_utc()) => {
                    gates::LockSeen::Held(format!("{} ({}) since {}", l.holder, l.command, fmt_time(l.acquired_at)))
                }
                _ => gates::LockSeen::Free,
            };
            gates::preflight(ctx.config, h, services, hp, lock, deploying, opts.force).await
        });
        let failed = emit_gates(ctx, join_all(checks).await);
        report.gates = collector.gates();
        report.duration_ms = t0.elapsed().as_millis() as u64;
        if !failed.is_empty() {
            report.outcome = "refused".into();
            let e = refused("preflight", &failed);
            report.error = Some(e.to_string());
            return Ok(RunOutput { report, error: Some(e) });
        }
        ctx.info(None, "dry run: nothing was changed");
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
        holder: env::actor(),
        command: roll.command.into(),
        version: roll.version.clone(),
        run_url: env::run_url(),
        acquired_at: now,
        expires_at: now + ctx.config.lock_lease,
    };
    let dir = &ctx.config.state_dir;
    // The first host's lock alone, then the others' at once: of two runs started together for
    // the same hosts, the one that took the first host takes the rest, and the other is refused
    // at the first without holding anything.
    let (first, rest) = roll.hosts.split_first().expect("prepare refuses a run with no host");
    let mut results = vec![state::acquire(first.shell.as_ref(), dir, &lease, now).await];
    if results[0].is_ok() {
        results.extend(join_all(rest.iter().map(|h| state::acquire(h.shell.as_ref(), dir, &lease, now))).await);
    }
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
    let heartbeat = Heartbeat::start(roll.hosts.clone(), dir.clone(), lease.clone(), ctx.config.lock_lease);
    let started_at = OffsetDateTime::now_utc();
    // Under the lock, before any change: every preflight check on every host, reported together.
    let checks = roll
        .hosts
        .iter()
        .zip(&roll.plan.hosts)
        .map(|(h, hp)| gates::preflight(ctx.config, h, &roll.services, hp, gates::LockSeen::Ours, deploying, opts.force));
    let failed = emit_gates(ctx, join_all(checks).await);
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
        let previous = records.iter().rev().find(|r| r.outcome == "succeeded" && r.version.is_some()).and_then(|r| r.version.clone());
        hook_envs.push(gates::HookEnv {
            app: ctx.config.app.clone(),
            version: roll.version.clone().unwrap_or_default(),
            previous_version: previous.unwrap_or_default(),
            command: roll.command.into(),
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

    let results = roll_hosts(ctx, &roll, creds.as_ref(), &lease, t0).await;
    // No renewal may land after a release (it would put the lock back).
    heartbeat.stop().await;
    // Every host that was locked: its hook, its record, its lock released.
    let finish = roll.hosts.iter().zip(&results).zip(&hook_envs).map(|((h, result), env)| {
        let lease = lease.clone();
        let version = roll.version.clone();
        let command = roll.command;
        async move {
            let which = match result.outcome {
                HostOutcome::Succeeded => Some(("post_deploy", &ctx.config.hooks.post_deploy)),
                HostOutcome::Skipped => None,
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
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.outcome == HostOutcome::Failed).collect();
    let rolled: Vec<_> = results.iter().filter(|(_, r)| r.outcome == HostOutcome::RolledBack).collect();
    let error = if !failed.is_empty() {
        report.outcome = "failed".into();
        let msg = failed.iter().map(|(h, r)| format!("{h}: {}", r.error.clone().unwrap_or_default())).collect::<Vec<_>>().join("; ");
        Some(Error::NeedsAttention(msg))
    } else if !rolled.is_empty() {
        report.outcome = "rolled_back".into();
        let msg = rolled.iter().map(|(h, r)| format!("{h}: {}", r.error.clone().unwrap_or_default())).collect::<Vec<_>>().join("; ");
        Some(Error::RolledBack(format!("{} {} was rolled back: {msg}", roll.command, roll.version.as_deref().unwrap_or(""))))
    } else {
        ctx.info(None, format!("{} {} succeeded in {:.1}s", roll.command, roll.version.as_deref().unwrap_or(""), t0.elapsed().as_secs_f64()));
        None
    };
    report.error = error.as_ref().map(|e| e.to_string());
    Ok(RunOutput { report, error })
}

/// Rolls the hosts: the first `rollout.canary` ones alone and to the end (validated and
/// baked), then the rest, at most `rollout.parallel` at once. A failed host stops every
/// host not yet started; with `on_failure: revert_all` it also stops the ones in flight
/// (they revert what they changed) and puts back the ones that finished, so that every
/// host runs one release. One result per host of `roll.hosts`, in that order.
async fn roll_hosts(ctx: &Ctx<'_>, roll: &Roll<'_>, creds: Option<&Credentials>, lease: &Lease, t0: Instant) -> Vec<HostResult> {
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
    let deploying = roll.command == "deploy";
    let dir = &ctx.config.state_dir;
    let keeper = || Some(LeaseKeeper { dir: dir.clone(), lease: tokio::sync::Mutex::new(lease.clone()), duration: ctx.config.lock_lease });
    let run_one = |i: usize| {
        let (h, hp) = (&roll.hosts[i], &roll.plan.hosts[i]);
        let (abort, no_new, migrate) = (&abort, &no_new, &migrate_on[i]);
        async move {
            let stopped = abort.reason().or_else(|| no_new.lock().unwrap().clone());
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
                lease: keeper(),
                cancel: abort,
                drainer: Default::default(),
                safety: Safety { migrate: if deploying { migrate } else { &[] }, validate: Some(&ctx.config.validate), bake: ctx.config.bake },
                version: roll.version.as_deref(),
            };
            let result = r.run(hp, &roll.services).await;
            emit_finished(ctx, h, t0, started, result.outcome);
            if result.outcome != HostOutcome::Succeeded {
                let why = format!("{} {}", h.name, result.outcome.as_str().replace('_', " "));
                no_new.lock().unwrap().get_or_insert(why.clone());
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
        .filter(|(_, r)| !matches!(r.outcome, HostOutcome::Succeeded | HostOutcome::Skipped))
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
    let reverts = roll.hosts.iter().zip(results.iter_mut()).filter(|(_, r)| r.outcome == HostOutcome::Succeeded).map(|(h, r)| {
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
                lease: keeper(),
                cancel: &never,
                drainer: Default::default(),
                safety: Safety::default(),
                version: None,
            };
            let mut undone = rollout.revert_finished(r, &roll.services).await;
            undone.error = Some(match undone.outcome {
                HostOutcome::RolledBack => format!("put back because {why}"),
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
    HostResult { outcome: HostOutcome::Skipped, instances, error: Some(format!("not started: {reason}")), ..Default::default() }
}

/// Renews a run's lease on every locked host, every quarter of the lease, for as long as it
/// is alive (dropping it stops it). The lease can then be short (`lock.lease`, 2 min by
/// default) without a long step outliving it, and a dead run's lock expires soon.
struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    /// Held during each round of renewals; `true` once stopped.
    stopped: Arc<tokio::sync::Mutex<bool>>,
}

impl Heartbeat {
    fn start(hosts: Vec<Host>, dir: String, lease: Lease, duration: Duration) -> Heartbeat {
        let every = (duration / 4).max(Duration::from_millis(250));
        let stopped = Arc::new(tokio::sync::Mutex::new(false));
        let flag = stopped.clone();
        let task = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::time::sleep(every).await;
                let stopped = flag.lock().await;
                if *stopped {
                    return;
                }
                lease.expires_at = OffsetDateTime::now_utc() + duration;
                for h in &hosts {
                    if let Err(e) = state::renew(h.shell.as_ref(), &dir, &lease).await {
                        tracing::warn!(host = %h.name, "could not renew the deploy lock: {e}");
                    }
                }
            }
        });
        Heartbeat { task, stopped }
    }

    /// Stops renewing; returns once no renewal is under way.
    async fn stop(&self) {
        *self.stopped.lock().await = true;
        self.task.abort();
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Emits every gate; returns the ones that failed.
fn emit_gates(ctx: &Ctx<'_>, per_host: Vec<Vec<gates::Gate>>) -> Vec<gates::Gate> {
    let mut failed = Vec::new();
    for g in per_host.into_iter().flatten() {
        if !g.ok {
            failed.push(g.clone());
        }
        ctx.events.emit(Event::Gate(g));
    }
    failed
}

fn refused(what: &str, failed: &[gates::Gate]) -> Error {
    let list: Vec<String> = failed.iter().map(|g| g.describe()).collect();
    Error::Refused(format!("{what} refused the deploy; nothing was changed: {}", list.join("; ")))
}

/// Ends a run that a gate refused before any change: a `refused` record on
/// every host, the lock released.
async fn refuse(ctx: &Ctx<'_>, roll: &Roll<'_>, lease: &Lease, started: OffsetDateTime, mut report: Report, collector: &Collector, error: Error) -> RunOutput {
    let message = error.to_string();
    for h in &roll.hosts {
        let r = HostResult { outcome: HostOutcome::Refused, instances: vec![], error: Some(message.clone()), ..Default::default() };
        let rec = record(ctx.config, h, roll.command, roll.version.clone(), started, &r, lease);
        if let Err(e) = state::append_and_release(h.shell.as_ref(), &ctx.config.state_dir, &rec, &lease.id).await {
            ctx.warn(Some(&h.name), format!("could not record the refusal or release the lock ({e})"));
            let _ = state::release(h.shell.as_ref(), &ctx.config.state_dir, &lease.id).await;
        }
    }
    report.outcome = "refused".into();
    report.gates = collector.gates();
    report.error = Some(message);
    RunOutput { report, error: Some(error) }
}

fn locked(host: &str, l: Lease) -> Error {
    Error::Locked {
        host: host.to_string(),
        holder: format!("{} ({} {})", l.holder, l.command, l.version.unwrap_or_default()),
        since: fmt_time(l.acquired_at),
        run_url: l.run_url,
        expires: fmt_time(l.expires_at),
    }
}

fn record(config: &Config, h: &Host, command: &str, version: Option<String>, started: OffsetDateTime, r: &HostResult, lease: &Lease) -> Record {
    Record {
        time: started,
        app: config.app.clone(),
        host: h.name.clone(),
        command: command.into(),
        version,
        outcome: r.outcome.as_str().into(),
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
                outcome: serde_json::to_value(i.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            })
            .collect(),
        error: r.error.clone(),
    }
}

pub fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

// ---------------------------------------------------------------------------
// status, history, lock
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub app: String,
    pub command: &'static str,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Serialize)]
pub struct HostStatus {
    pub host: String,
    pub lock: Option<Lease>,
    pub instances: Vec<InstanceStatus>,
    pub leftovers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub service: String,
    pub name: String,
    pub state: String,
    pub image: Option<String>,
    pub version: Option<String>,
    pub healthy: Option<bool>,
}

pub async fn status(ctx: &Ctx<'_>, targets: &Targets) -> Result<StatusReport, Error> {
    let all = ctx.services(&targets.services)?;
    let addrs: Vec<HostAddr> = ctx.hosts(&targets.hosts)?.into_iter().filter(|a| all.iter().any(|s| s.runs_on(a))).collect();
    let hosts = ctx.connect_all(&addrs).await?;
    let mut out = Vec::new();
    for (h, addr) in hosts.iter().zip(&addrs) {
        let services: Vec<&Service> = all.iter().filter(|s| s.runs_on(addr)).copied().collect();
        let host_err = |m: String| Error::Unreachable { host: h.name.clone(), message: m, hint: None };
        let (records, _) = state::read_log(h.shell.as_ref(), &ctx.config.state_dir).await.map_err(|e| host_err(e.to_string()))?;
        let lock = state::read_lock(h.shell.as_ref(), &ctx.config.state_dir).await.map_err(|e| host_err(e.to_string()))?;
        let obs = observe(h, &services).await?;
        let mut instances = Vec::new();
        for svc in &services {
            for name in obs.instances_of(svc) {
                let st = match obs.containers.get(name) {
                    None => {
                        InstanceStatus { service: svc.name.clone(), name: name.clone(), state: "missing".into(), image: None, version: None, healthy: None }
                    }
                    Some((c, img)) => {
                        let digests = img.as_ref().map(|i| i.repo_digests.clone()).unwrap_or_default();
                        let image = release::best_reference(&svc.image, &digests, &c.image_id);
                        let version = release::version_of_image(&records, &image).or_else(|| {
                            img.as_ref()
                                .and_then(|i| i.repo_tags.iter().find(|t| release::repo_of(t) == svc.image).and_then(|t| release::tag_of(t).map(String::from)))
                        });
                        let healthy = match (&svc.health.http, c.running) {
                            (_, false) => Some(false),
                            (Some(http), true) => {
                                let (addr, port) = c.probe_addr(http.port);
                                Some(matches!(h.probe.http_get(&addr, port, &http.path, Duration::from_secs(2)).await, Ok(a) if (200..400).contains(&a.status)))
                            }
                            (None, true) => c.docker_health.map(|d| d == crate::host::DockerHealth::Healthy),
                        };
                        InstanceStatus {
                            service: svc.name.clone(),
                            name: name.clone(),
                            state: if c.running { "running".into() } else { "stopped".into() },
                            image: Some(image),
                            version,
                            healthy,
                        }
                    }
                };
                instances.push(st);
            }
        }
        let leftovers = obs.all_names.iter().filter(|n| n.ends_with(plan::OLD_SUFFIX)).cloned().collect();
        out.push(HostStatus { host: h.name.clone(), lock, instances, leftovers });
    }
    Ok(StatusReport { app: ctx.config.app.clone(), command: "status", hosts: out })
}

pub fn render_status(s: &StatusReport) -> String {
    let mut out = String::new();
    for h in &s.hosts {
        out.push_str(&format!("{}\n", h.host));
        for i in &h.instances {
            let health = match i.healthy {
                Some(true) => "healthy",
                Some(false) => "UNHEALTHY",
                None => "-",
            };
            out.push_str(&format!(
                "  {}/{:<14} {:<8} {:<9} {:<10} {}\n",
                i.service,
                i.name,
                i.state,
                health,
                i.version.as_deref().unwrap_or("-"),
                i.image.as_deref().map(crate::printer::short).unwrap_or_default()
            ));
        }
        match &h.lock {
            Some(l) if l.expired(OffsetDateTime::now_utc()) => out.push_str(&format!(
                "  lock: left by {} ({} {}) since {}, expired {}: that run died; the next deploy or rollback takes the lock over and finishes what it left\n",
                l.holder,
                l.command,
                l.version.as_deref().unwrap_or(""),
                fmt_time(l.acquired_at),
                fmt_time(l.expires_at)
            )),
            Some(l) => out.push_str(&format!(
                "  lock: held by {} ({} {}) since {}, lease until {}\n",
                l.holder,
                l.command,
                l.version.as_deref().unwrap_or(""),
                fmt_time(l.acquired_at),
                fmt_time(l.expires_at)
            )),
            None => {}
        }
        for l in &h.leftovers {
            out.push_str(&format!("  leftover container: {l} (an interrupted replace kept it; `capstan deploy` or `capstan rollback` puts it back first)\n"));
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub app: String,
    pub command: &'static str,
    pub hosts: Vec<HostHistory>,
}

#[derive(Debug, Serialize)]
pub struct HostHistory {
    pub host: String,
    pub records: Vec<Record>,
    pub unreadable_lines: usize,
}

pub async fn history(ctx: &Ctx<'_>, targets: &Targets, limit: usize) -> Result<HistoryReport, Error> {
    let hosts = ctx.connect_all(&ctx.hosts(&targets.hosts)?).await?;
    let mut out = Vec::new();
    for h in &hosts {
        let (mut records, bad) = state::read_log(h.shell.as_ref(), &ctx.config.state_dir).await.map_err(|e| Error::Unreachable {
            host: h.name.clone(),
            message: e.to_string(),
            hint: None,
        })?;
        if !targets.services.is_empty() {
            records.retain(|r| r.instances.iter().any(|i| targets.services.contains(&i.service)));
        }
        let skip = records.len().saturating_sub(limit);
        out.push(HostHistory { host: h.name.clone(), records: records.split_off(skip), unreadable_lines: bad });
    }
    Ok(HistoryReport { app: ctx.config.app.clone(), command: "history", hosts: out })
}

pub fn render_history(r: &HistoryReport) -> String {
    let mut out = String::new();
    for h in &r.hosts {
        out.push_str(&format!("{}\n", h.host));
        if h.records.is_empty() {
            out.push_str("  no deployments recorded\n");
        }
        for rec in h.records.iter().rev() {
            out.push_str(&format!(
                "  {}  {:<8} {:<10} {:<11} {:>7}  {}\n",
                fmt_time(rec.time),
                rec.command,
                rec.version.as_deref().unwrap_or("-"),
                rec.outcome,
                format!("{:.1}s", rec.duration_ms as f64 / 1000.0),
                rec.actor.as_deref().unwrap_or("")
            ));
        }
        if h.unreadable_lines > 0 {
            out.push_str(&format!("  ({} unreadable line(s) skipped)\n", h.unreadable_lines));
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct LockReport {
    pub app: String,
    pub command: &'static str,
    pub hosts: Vec<HostLock>,
}

#[derive(Debug, Serialize)]
pub struct HostLock {
    pub host: String,
    pub lock: Option<Lease>,
    pub expired: Option<bool>,
    pub released: bool,
}

pub async fn lock(ctx: &Ctx<'_>, targets: &Targets, release: Option<bool>) -> Result<LockReport, Error> {
    let hosts = ctx.connect_all(&ctx.hosts(&targets.hosts)?).await?;
    let dir = &ctx.config.state_dir;
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for h in &hosts {
        let err = |e: StateError| Error::Unreachable { host: h.name.clone(), message: e.to_string(), hint: None };
        let current = state::read_lock(h.shell.as_ref(), dir).await.map_err(err)?;
        let expired = current.as_ref().map(|l| l.expired(now));
        let released = match (release, &current) {
            (Some(true), Some(_)) => state::force_release(h.shell.as_ref(), dir).await.map_err(err)?.is_some(),
            (Some(false), Some(l)) if l.expired(now) => state::release(h.shell.as_ref(), dir, &l.id).await.map_err(err)?,
            (Some(false), Some(l)) => {
                return Err(Error::input_hint(
                    format!(
                        "{}: the lock is held by {} ({}) since {} and its lease runs until {}",
                        h.name,
                        l.holder,
                        l.command,
                        fmt_time(l.acquired_at),
                        fmt_time(l.expires_at)
                    ),
                    "if that deploy is dead, release it with `capstan lock release --force`",
                ))
            }
            _ => false,
        };
        out.push(HostLock { host: h.name.clone(), lock: current, expired, released });
    }
    Ok(LockReport { app: ctx.config.app.clone(), command: "lock", hosts: out })
}

pub fn render_lock(r: &LockReport) -> String {
    let mut out = String::new();
    for h in &r.hosts {
        match (&h.lock, h.released) {
            (None, _) => out.push_str(&format!("{}: unlocked\n", h.host)),
            (Some(l), true) => out.push_str(&format!("{}: released the lock held by {} since {}\n", h.host, l.holder, fmt_time(l.acquired_at))),
            (Some(l), false) => out.push_str(&format!(
                "{}: locked by {} ({} {}) since {}, lease until {}{}{}\n",
                h.host,
                l.holder,
                l.command,
                l.version.as_deref().unwrap_or(""),
                fmt_time(l.acquired_at),
                fmt_time(l.expires_at),
                if h.expired == Some(true) { " (expired)" } else { "" },
                l.run_url.as_deref().map(|u| format!(", {u}")).unwrap_or_default()
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorder;
    use crate::fake::{world, FakeHost, V1, V2};

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

    async fn roll_fake(w: &crate::fake::World, want: Want, dry_run: bool) -> (Result<RunOutput, Error>, Vec<Event>) {
        let rec = Recorder::default();
        let connector = FakeConnector(w.fake.clone());
        let cancel = Cancel::default();
        let ctx = Ctx { config: &w.config, events: &rec, connector: &connector, cancel: &cancel };
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
        assert_eq!(out.report.outcome, "succeeded");
        assert_eq!((w.fake.image_of("web-1").unwrap(), w.fake.image_of("web-2").unwrap()), (V2.to_string(), V2.to_string()));
        let dir = &w.config.state_dir;
        let (log, _) = state::read_log(w.fake.as_ref(), dir).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].instances[0].to_image, V2);
        assert_eq!(state::read_lock(w.fake.as_ref(), dir).await.unwrap(), None, "released");

        let (out, _) = roll_fake(&w, Want::Rollback { to: RollbackTo::Previous }, false).await;
        assert_eq!(out.unwrap().report.outcome, "succeeded");
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

    async fn roll_fleet(f: &crate::fake::Fleet) -> (RunOutput, Vec<Event>) {
        let rec = Arc::new(Recorder::default());
        let collector = Arc::new(Collector::default());
        let fan = crate::events::Fanout(vec![rec.clone(), collector.clone()]);
        let connector = FleetConnector(f.hosts.clone());
        let cancel = Cancel::default();
        let ctx = Ctx { config: &f.config, events: &fan, connector: &connector, cancel: &cancel };
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

    async fn images(f: &crate::fake::Fleet) -> Vec<String> {
        f.hosts.iter().map(|h| format!("{} {}", h.name, h.image_of("web-1").unwrap_or_default() + "," + &h.image_of("web-2").unwrap_or_default())).collect()
    }

    async fn log_outcomes(f: &crate::fake::Fleet) -> Vec<String> {
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
        let f = crate::fake::fleet(3, "rollout: { parallel: 2 }\n");
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
            assert_eq!(h.outcome.as_deref(), Some("succeeded"));
        }
        assert_eq!(log_outcomes(&f).await, ["h1 succeeded", "h2 succeeded", "h3 succeeded"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_canary_stops_the_rest() {
        let f = crate::fake::fleet(3, "rollout: { canary: 1 }\n");
        f.hosts[0].state.lock().unwrap().broken.insert(V2.into());
        let (out, events) = roll_fleet(&f).await;
        assert_eq!(out.report.outcome, "rolled_back");
        assert_eq!(host_phases(&events), ["h1 start", "h1 done rolled_back", "h2 skip", "h3 skip"]);
        assert_eq!(images(&f).await, ["h1", "h2", "h3"].map(|h| format!("{h} {}", both(V1))));
        assert_eq!(log_outcomes(&f).await, ["h1 rolled_back", "h2 skipped", "h3 skipped"]);
        let skipped = &out.report.hosts.iter().find(|h| h.host == "h2").unwrap();
        assert_eq!(skipped.outcome.as_deref(), Some("skipped"));
        assert!(skipped.timing.note.as_deref().unwrap().contains("h1 rolled back"), "{skipped:?}");
        // A good canary lets the rest go, after it is done.
        let f = crate::fake::fleet(3, "rollout: { canary: 1 }\n");
        let (out, events) = roll_fleet(&f).await;
        assert!(out.error.is_none());
        assert_eq!(host_phases(&events)[..2], ["h1 start", "h1 done succeeded"]);
        assert!(out.report.hosts.iter().find(|h| h.host == "h1").unwrap().timing.canary);
    }

    #[tokio::test(start_paused = true)]
    async fn one_failed_host_reverts_all_by_default() {
        let f = crate::fake::fleet(3, "rollout: { parallel: 1 }\n");
        f.hosts[2].state.lock().unwrap().broken.insert(V2.into());
        let (out, events) = roll_fleet(&f).await;
        assert_eq!(out.report.outcome, "rolled_back");
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
        let f = crate::fake::fleet(3, "rollout: { parallel: 1, on_failure: revert_host }\n");
        f.hosts[1].state.lock().unwrap().broken.insert(V2.into());
        let (out, events) = roll_fleet(&f).await;
        assert_eq!(out.report.outcome, "rolled_back");
        assert_eq!(host_phases(&events), ["h1 start", "h1 done succeeded", "h2 start", "h2 done rolled_back", "h3 skip"]);
        assert_eq!(images(&f).await, [format!("h1 {}", both(V2)), format!("h2 {}", both(V1)), format!("h3 {}", both(V1))]);
        assert_eq!(log_outcomes(&f).await, ["h1 succeeded", "h2 rolled_back", "h3 skipped"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_runs_only_on_its_hosts_and_migrates_once() {
        let extra = "    migrate: { command: [exit, \"0\"] }\n    hosts: [back]\nroles:\n  back: [h2, h3]\n";
        let f = crate::fake::fleet(3, extra);
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
}
