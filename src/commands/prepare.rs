//! Everything before a change: connect every host at once, read their locks,
//! observe what runs, put back what a killed run left (`recover`), resolve the
//! release to digests (or, for a rollback, read the targets from each host's log),
//! plan each host, and refuse what a drain would refuse. Changes nothing but
//! a recovery; a dry run changes nothing at all.

use std::collections::HashMap;

use futures_util::future::join_all;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::cli::Targets;
use crate::commands::recover::recover;
use crate::commands::{locked, Ctx};
use crate::core::config::Service;
use crate::core::image;
use crate::core::names::HostAddr;
use crate::core::observed::SwarmSeen;
use crate::core::plan::{self, HostPlan, Observed, Plan};
use crate::core::record::RunCommand;
use crate::core::release::{self, RollbackTo};
use crate::core::secret::Credentials;
use crate::core::time::fmt_time;
use crate::error::Error;
use crate::host::state;
use crate::host::{EngineError, Host};
use crate::output::events::{Event, HostEvent, HostPhase};

/// What a deploy, a rollback or a check asks for.
pub enum Want {
    /// `pinned`: per service, the image this run built and pushed (its digest reference).
    Deploy {
        version: String,
        pinned: HashMap<String, String>,
    },
    Rollback {
        to: RollbackTo,
    },
    /// `check` with no version: is everything ready? Every check that needs no
    /// release (no registry lookup, no plan); always a dry run.
    Ready,
}

/// A prepared run: what `prepare` found and planned, and what `deploy` and `fleet` carry out.
pub(super) struct Roll<'a> {
    /// `deploy`, `rollback`, or `check` for [`Want::Ready`].
    pub(super) command: RunCommand,
    pub(super) version: Option<String>,
    pub(super) hosts: Vec<Host>,
    pub(super) services: Vec<&'a Service>,
    pub(super) plan: Plan,
    /// What the first host's log says runs now.
    pub(super) previous: Option<String>,
    /// Per host, its containers as planning saw them: the preflight's probes go out to
    /// their addresses beside its own look.
    pub(super) observed: Vec<Observed>,
}

/// Per (service, instance): the exact image it must run.
type Images = HashMap<(String, String), String>;

/// Per service: the image the release runs (a digest reference, or what the build pinned).
type ReleaseImages = HashMap<String, String>;

impl Ctx<'_> {
    /// Opens every host at once: the SSH master and the engine's first answer.
    pub(super) async fn connect_all(&self, addrs: &[HostAddr]) -> Result<Vec<Host>, Error> {
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

pub(super) async fn observe(host: &Host, services: &[&Service]) -> Result<Observed, Error> {
    let unreachable = |e: EngineError| Error::Unreachable { host: host.name.clone(), message: e.to_string(), hint: None };
    let listed = host.engine.list_containers().await.map_err(unreachable)?;
    let mut o = Observed { all_names: listed.iter().map(|c| c.name.clone()).collect(), listed: listed.clone(), ..Default::default() };
    let mut names: Vec<String> = Vec::new();
    for svc in services {
        if let Some(sw) = &svc.swarm {
            // A host that is no manager is a planning problem (exit 2), not an unreachable host.
            let seen = match host.swarm.inspect_service(&sw.service).await {
                Ok(Some(s)) => SwarmSeen::Exists(Box::new(s)),
                Ok(None) => SwarmSeen::Missing,
                Err(e) => SwarmSeen::Unanswered(e.to_string()),
            };
            o.swarm.insert(svc.name.clone(), seen);
            continue;
        }
        let of_service = plan::resolve_instances(svc, &listed);
        names.extend(of_service.iter().cloned());
        o.instances.insert(svc.name.clone(), of_service);
    }
    // Every instance of every service and the image each was listed with at once: one round
    // trip over a slow link, not two per instance.
    let wanted: Vec<(&str, Option<&str>)> =
        names.iter().map(|n| (n.as_str(), listed.iter().find(|l| &l.name == n).and_then(|l| l.image_id.as_deref()))).collect();
    let seen = host.engine.inspect_with_images(&wanted).await.map_err(unreachable)?;
    for (name, seen) in names.iter().zip(seen) {
        if let Some((c, image)) = seen {
            o.containers.insert(name.clone(), (c, image));
        }
    }
    Ok(o)
}

/// Resolves `repo:version` to `repo@sha256:…` once, through the first host's engine.
async fn resolve(host: &Host, svc: &Service, version: &str, creds: Option<&Credentials>) -> Result<String, Error> {
    let reference = image::tag_ref(&svc.image, version);
    match host.engine.registry_digest(&reference, creds).await {
        Ok(d) if d.starts_with("sha256:") => Ok(image::digest_ref(&svc.image, &d)),
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
) -> Result<ReleaseImages, Error> {
    // Every service's tag at once: one round trip over a slow link, not one per service.
    let resolved = join_all(services.iter().map(|svc| async move {
        match pinned.get(&svc.name) {
            Some(i) => Ok(i.clone()),
            None => resolve(host, svc, version, creds).await,
        }
    }))
    .await;
    let mut images = ReleaseImages::new();
    for (svc, image) in services.iter().zip(resolved) {
        let image = image?;
        ctx.info(None, format!("{}: {version} is {}", svc.name, crate::core::image::short(&image)));
        images.insert(svc.name.clone(), image);
    }
    Ok(images)
}

/// Per (service, instance) on one host: the service's image for every instance found there.
fn per_instance(services: &[&Service], observed: &Observed, images: &ReleaseImages) -> Images {
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

/// Connects, observes, resolves and plans. Changes nothing.
pub(super) async fn prepare<'a>(ctx: &'a Ctx<'a>, want: &Want, targets: &Targets, creds: Option<&Credentials>, dry_run: bool) -> Result<Roll<'a>, Error> {
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
    // The containers are looked at beside the lock (both only read), and a deploy's tags
    // resolved beside them (the registry's answer depends on neither): round trips less over
    // a slow link. A recovery, which changes things, waits for the lock's answer.
    // The upstream files the drains' check reads, and the first host's log, are read beside
    // them too.
    let looks = join_all(hosts.iter().enumerate().map(|(i, h)| async move {
        let services = on_host(i);
        tokio::join!(state::read_lock(h.shell.as_ref(), &ctx.config.state_dir), observe(h, &services), crate::host::drain_check::read_files(h, &services))
    }));
    let resolving = async {
        match want {
            Want::Deploy { version, pinned } => Some(resolve_release(ctx, &hosts[0], &services, version, pinned, creds).await),
            _ => None,
        }
    };
    let (seen, mut resolved, first_log) = tokio::join!(looks, resolving, state::read_log(hosts[0].shell.as_ref(), &ctx.config.state_dir));
    let mut leases = Vec::new();
    let mut first_looks = Vec::new();
    for (lease, look, files) in seen {
        leases.push(lease);
        first_looks.push((look, files));
    }
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
    // A host put back by the recovery is looked at again, its files read again.
    let looked = join_all(hosts.iter().zip(first_looks).enumerate().map(|(i, (h, (first_look, files)))| async move {
        let services = on_host(i);
        let o = first_look?;
        match !dry_run && recover(ctx, h, &services, &o).await? {
            true => Ok::<_, Error>((observe(h, &services).await?, crate::host::drain_check::read_files(h, &services).await, true)),
            false => Ok((o, files, false)),
        }
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, Error>>()?;
    let recovered_first = looked.first().is_some_and(|(_, _, r)| *r);
    let (observed, files): (Vec<Observed>, Vec<_>) = looked.into_iter().map(|(o, f, _)| (o, f)).unzip();
    let (command, version, per_host): (RunCommand, Option<String>, Vec<Images>) = match want {
        Want::Deploy { version, pinned } => {
            let images = match resolved.take() {
                Some(images) => images?,
                None => resolve_release(ctx, &hosts[0], &services, version, pinned, creds).await?,
            };
            (RunCommand::Deploy, Some(version.clone()), observed.iter().map(|o| per_instance(&services, o, &images)).collect())
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
            (RunCommand::Rollback, label, per_host)
        }
        Want::Ready => {
            // No release: every instance stands as one a release would replace, so that
            // the checks of what gets replaced (health, Swarm's state) look at all of them.
            let images: ReleaseImages = services.iter().map(|s| (s.name.clone(), plan::NO_VERSION.to_string())).collect();
            (RunCommand::Check, None, observed.iter().map(|o| per_instance(&services, o, &images)).collect())
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
    let drains = hosts.iter().zip(&observed).zip(&files).enumerate().map(|(i, ((h, obs), files))| {
        let services = on_host(i);
        async move {
            let with: Vec<(&Service, Vec<&crate::core::observed::ContainerInfo>)> = services
                .iter()
                .filter(|s| s.swarm.is_none())
                .map(|s| (*s, obs.instances_of(s).iter().filter_map(|n| obs.containers.get(n).map(|(c, _)| c)).collect()))
                .collect();
            crate::host::drain_check::check(h, &with, files, &obs.listed, &ctx.config.docker_socket).await
        }
    });
    // The version before, from the first host's log (asked again if the recovery wrote to it).
    let log = async {
        match recovered_first {
            true => state::read_log(hosts[0].shell.as_ref(), &ctx.config.state_dir).await,
            false => first_log,
        }
    };
    let (drain_problems, log) = tokio::join!(join_all(drains), log);
    problems.extend(drain_problems.into_iter().flatten());
    if !problems.is_empty() {
        return Err(Error::input(problems.join("\n")));
    }
    let previous = match log {
        Ok((records, _)) => release::previous_version(&records),
        Err(_) => None,
    };
    Ok(Roll { command, version, hosts, services, plan: Plan { hosts: host_plans }, previous, observed })
}

/// A version name for images the log does not know: the tag they carry on the host, if any.
async fn version_from_tags(h: &Host, services: &[&Service], images: &HashMap<(String, String), String>) -> Option<String> {
    for svc in services {
        let Some(image) = images.iter().find(|((s, _), _)| *s == svc.name).map(|(_, i)| i) else { continue };
        let info = h.engine.inspect_image(image).await.ok().flatten()?;
        if let Some(tag) = info.repo_tags.iter().filter(|t| image::repo_of(t) == svc.image).filter_map(|t| image::tag_of(t)).find(|t| *t != "latest") {
            return Some(tag.to_string());
        }
    }
    None
}
