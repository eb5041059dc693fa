//! `capstan status`: per host, each instance's state, image, version (from the
//! log, else its tag) and health (one look, judged as the health gate judges it:
//! `rollout::checks::look`); the lock and its lease; containers an interrupted
//! replace left. Changes nothing.

use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::Targets;
use crate::commands::prepare::observe;
use crate::commands::Ctx;
use crate::core::config::Service;
use crate::core::image;
use crate::core::names::HostAddr;
use crate::core::plan;
use crate::core::record::{Lease, RunCommand};
use crate::core::release;
use crate::core::time::fmt_time;
use crate::error::Error;
use crate::host::state;
use crate::rollout::checks::{self, Health};

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub app: String,
    pub command: RunCommand,
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
                        let image = image::best_reference(&svc.image, &digests, &c.image_id);
                        let version = release::version_of_image(&records, &image).or_else(|| {
                            img.as_ref()
                                .and_then(|i| i.repo_tags.iter().find(|t| image::repo_of(t) == svc.image).and_then(|t| image::tag_of(t).map(String::from)))
                        });
                        // Judged as the health gate judges it; unknown for a running container with nothing to judge it by.
                        let judged = !c.running || svc.health.http.is_some() || c.docker_health.is_some();
                        let healthy = match judged {
                            true => Some(checks::look(h, svc, c).await == Health::Healthy),
                            false => None,
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
    Ok(StatusReport { app: ctx.config.app.clone(), command: RunCommand::Status, hosts: out })
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
                i.image.as_deref().map(crate::core::image::short).unwrap_or_default()
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
