//! Is an instance healthy, does it get traffic: one look at an instance ([`look`],
//! judged as a [`Health`]) or a Swarm service ([`swarm_now`]), the health gate (looks
//! until `healthy_after` good ones in a row), and the traffic check through the load
//! balancer, proved by the instances' network counters ([`rx_bytes`]). Preflight, the
//! bake window, the revert's order and `capstan status` judge an instance by [`look`] too.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::core::config::{Service, SwarmTarget};
use crate::core::image;
use crate::core::observed::{ContainerInfo, DockerHealth, SwarmTask};
use crate::host::{lb_batch, Host, ProbeError};
use crate::rollout::steps::{StepError, StepResult};
use crate::rollout::Rollout;

/// Bytes an instance must receive during the traffic check to count as reached.
/// A single proxied HTTP request is several hundred bytes; ARP noise is 42.
pub const MIN_TRAFFIC_BYTES: u64 = 100;

/// The longest one health probe waits for its answer (never longer than `health.timeout`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What one look at an instance found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Running; its `health.http` probe (if any) answered below 400; Docker's HEALTHCHECK
    /// (if its image has one) says healthy.
    Healthy,
    /// Running and answering, but Docker's HEALTHCHECK has not passed yet.
    Starting,
    NotRunning,
    /// The `health.http` probe failed: what it got (`GET /health answered 500`).
    Probe(String),
    /// Docker's HEALTHCHECK says unhealthy (the probe, if any, answered).
    DockerUnhealthy,
}

impl Health {
    /// Fit to serve as it is: healthy, or answering while Docker's HEALTHCHECK is still
    /// starting. What preflight, the bake window and the revert's order ask; the health
    /// gate and `status` want [`Health::Healthy`] itself.
    pub fn serving(&self) -> bool {
        matches!(self, Health::Healthy | Health::Starting)
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Healthy => f.pad("healthy"),
            Health::Starting => f.pad("Docker HEALTHCHECK still starting"),
            Health::NotRunning => f.pad("not running"),
            Health::Probe(what) => f.pad(what),
            Health::DockerUnhealthy => f.pad("Docker HEALTHCHECK reports unhealthy"),
        }
    }
}

/// One look at an instance: running, then one `health.http` probe (if configured), then
/// Docker's HEALTHCHECK (if its image has one). A failed probe is named before Docker's
/// word: it says more.
pub async fn look(host: &Host, svc: &Service, c: &ContainerInfo) -> Health {
    judge(svc, c, probe_if_running(host, svc, c, false).await)
}

/// One look at the instance `name` now, its probe sent beside the inspect to where
/// `known` (an earlier look) says it listens: one round trip over a slow link, not two.
/// A probe sent to an address the instance no longer has is sent again. None: no such
/// container.
pub async fn look_again(host: &Host, svc: &Service, name: &str, known: Option<&ContainerInfo>) -> Result<Option<Health>, crate::host::EngineError> {
    Ok(inspect_and_probe(host, svc, name, known, false).await?.map(|(c, answer)| judge(svc, &c, answer)))
}

/// The container `name` and its probe's answer, the probe sent beside the inspect to
/// where `known` says it listens (and sent again where it no longer does); `reusing`:
/// on the connection the last probe kept. None: no such container.
async fn inspect_and_probe(
    host: &Host,
    svc: &Service,
    name: &str,
    known: Option<&ContainerInfo>,
    reusing: bool,
) -> Result<Option<(ContainerInfo, Option<Result<u16, ProbeError>>)>, crate::host::EngineError> {
    let early = async {
        match known.filter(|k| k.running) {
            Some(k) => Some(probe(host, svc, k, reusing).await),
            None => None,
        }
    };
    let (c, early) = tokio::join!(host.engine.inspect_container(name), early);
    let Some(c) = c? else { return Ok(None) };
    let same = known.is_some_and(|k| k.addresses == c.addresses && k.ports == c.ports);
    let answer = match (early, same && c.running) {
        (Some(a), true) => Some(a),
        _ => probe_if_running(host, svc, &c, reusing).await,
    };
    Ok(Some((c, answer)))
}

/// The probe's answer when `c` runs (None when it does not: nothing to ask).
async fn probe_if_running(host: &Host, svc: &Service, c: &ContainerInfo, reusing: bool) -> Option<Result<u16, ProbeError>> {
    match c.running {
        true => Some(probe(host, svc, c, reusing).await),
        false => None,
    }
}

/// The `health.http` probe of `c` (`reusing`: on a connection kept from the last probe);
/// a service without one answers 200.
async fn probe(host: &Host, svc: &Service, c: &ContainerInfo, reusing: bool) -> Result<u16, ProbeError> {
    let Some(http) = &svc.health.http else { return Ok(200) };
    let (addr, port) = c.probe_addr(http.port);
    let timeout = PROBE_TIMEOUT.min(svc.health.timeout);
    let answer = match reusing {
        true => host.probe.http_get_reusing(&addr, port, &http.path, timeout).await,
        false => host.probe.http_get(&addr, port, &http.path, timeout).await,
    };
    answer.map(|a| a.status)
}

/// What a look comes to: `c` as inspected, and its probe's answer (None: not asked).
fn judge(svc: &Service, c: &ContainerInfo, answer: Option<Result<u16, ProbeError>>) -> Health {
    if !c.running {
        return Health::NotRunning;
    }
    match (answer, &svc.health.http) {
        (Some(Ok(status)), Some(http)) if !(200..400).contains(&status) => return Health::Probe(format!("GET {} answered {status}", http.path)),
        (Some(Err(e)), Some(http)) => return Health::Probe(format!("GET {}: {e}", http.path)),
        _ => {}
    }
    match c.docker_health {
        None | Some(DockerHealth::Healthy) => Health::Healthy,
        Some(DockerHealth::Starting) => Health::Starting,
        Some(DockerHealth::Unhealthy) => Health::DockerUnhealthy,
    }
}

/// One look at a Swarm service: as many tasks as Swarm wants are running `image` (any
/// image when `None`), and those whose container is on this host are fit to serve
/// ([`look`]). Tasks on other nodes count by Swarm's word, which includes their image's
/// HEALTHCHECK.
pub async fn swarm_now(host: &Host, svc: &Service, sw: &SwarmTarget, image: Option<&str>) -> (bool, String) {
    let current = match host.swarm.inspect_service(&sw.service).await {
        Ok(Some(s)) => s,
        Ok(None) => return (false, format!("the Swarm service {} is gone", sw.service)),
        Err(e) => return (false, e.to_string()),
    };
    let tasks = match host.swarm.tasks(&current.id).await {
        Ok(t) => t,
        Err(e) => return (false, e.to_string()),
    };
    let wanted: Vec<_> = tasks.iter().filter(|t| t.desired == "running").collect();
    let want = current.replicas.unwrap_or(wanted.len() as u64) as usize;
    let on_image = |t: &SwarmTask| image.is_none_or(|i| image::without_tag(&t.image) == i);
    let running: Vec<_> = wanted.iter().filter(|t| t.state == "running" && on_image(t)).collect();
    let what = image.map(|i| format!(" {}", image::short(i))).unwrap_or_default();
    if running.len() < want {
        let why: Vec<String> = wanted.iter().filter(|t| t.state != "running").map(|t| format!("{} {}", t.state, t.message).trim().to_string()).collect();
        let why = match why.first() {
            Some(w) => format!(" (a task is {w})"),
            None => String::new(),
        };
        return (false, format!("{}/{want} tasks running{what}{why}", running.len()));
    }
    let mut local = 0;
    for t in &running {
        let Some(id) = &t.container else { continue };
        let Ok(Some(c)) = host.engine.inspect_container(id).await else { continue };
        local += 1;
        let health = look(host, svc, &c).await;
        if !health.serving() {
            return (false, format!("task {}: {health}", t.slot.map(|s| s.to_string()).unwrap_or_else(|| t.id.chars().take(12).collect())));
        }
    }
    (true, format!("{}/{want} tasks running{what}, {local} on this host healthy", running.len()))
}

impl Rollout<'_> {
    /// Waits for `healthy_after` healthy looks in a row (Docker's HEALTHCHECK still
    /// starting is not one). A forward gate gives up when the run is cancelled; an
    /// undo's gate does not. `seen`: the container as the command that started it saw
    /// it, if one did (the first look). The container as the last look saw it.
    pub(super) async fn health_gate(&self, svc: &Service, name: &str, cancellable: bool, seen: Option<ContainerInfo>) -> StepResult<ContainerInfo> {
        let h = &svc.health;
        let started = Instant::now();
        let deadline = started + h.timeout;
        let (mut good, mut probes) = (0u32, 0u32);
        let mut last = String::from("no probe answered yet");
        // After the first look (or `seen`), the probe goes out beside the inspect (to the address the
        // last inspect gave, on the connection the last probe kept): one round trip a
        // look over a slow link, not three. A probe sent to an address the container no
        // longer has is sent again.
        let mut known: Option<ContainerInfo> = seen;
        loop {
            probes += 1;
            // Probes leave `interval` apart, whatever their answers took: over a slow link the
            // host sees them as often as over loopback, not a round trip further apart each.
            let sent = Instant::now();
            let (c, answer) = inspect_and_probe(self.host, svc, name, known.take().as_ref(), true)
                .await
                .map_err(StepError::failed)?
                .ok_or_else(|| StepError::from(format!("{name} disappeared")))?;
            let health = judge(svc, &c, answer);
            match health {
                Health::Healthy => {
                    good += 1;
                    if good >= h.healthy_after {
                        return Ok((c, format!("{good} good probes in a row ({probes} probes)")));
                    }
                }
                Health::NotRunning => {
                    good = 0;
                    last = "the container is not running".into();
                }
                other => {
                    good = 0;
                    last = other.to_string();
                }
            }
            known = Some(c);
            if Instant::now() >= deadline {
                return Err(format!("not healthy after {}: {last}", humantime::format_duration(h.timeout)).into());
            }
            let nap = h.interval.saturating_sub(sent.elapsed()).min(deadline.saturating_duration_since(Instant::now()));
            self.wait(nap, cancellable).await?;
        }
    }

    /// Requests through the load balancer reach the new instance `name` (whose main
    /// process the health gate's last look saw as `pid`).
    pub(super) async fn traffic_check(&self, svc: &Service, name: &str, pid: Option<i64>) -> StepResult<()> {
        let Some(t) = &svc.traffic else {
            return Ok(((), "skipped: no traffic.url".into()));
        };
        Ok(((), self.through_lb(t, name, pid).await?))
    }

    /// Sends `traffic.requests` requests through the load balancer: every one must be
    /// answered below 500 and `active` must receive them (its network counters grow).
    /// nginx's reload is asynchronous (its old workers serve on with the old upstreams
    /// for a moment), so a batch that did not reach it is sent again, up to three batches.
    /// (Counters cannot prove a drain the other way round: whatever else calls an instance
    /// directly, monitoring or another service, shows in them too.)
    async fn through_lb(&self, t: &crate::core::config::Traffic, active: &str, pid: Option<i64>) -> Result<String, StepError> {
        let mut last = String::new();
        for attempt in 0..LB_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // The first batch counts on the pid the health gate saw; a later one looks again.
            match self.lb_batch(t, active, pid.filter(|_| attempt == 0)).await? {
                Batch::Reached(said) => return Ok(if attempt > 0 { format!("{said} (batch {})", attempt + 1) } else { said }),
                Batch::Missed(why) => last = why,
            }
        }
        Err(format!("{last} ({LB_ATTEMPTS} batches)").into())
    }

    /// One batch: `Err` when a request failed, else whether `active` received them.
    /// Sent from the host in one `sh` where it can ([`lb_batch`]), else from the runner.
    /// `known`: `active`'s main process as just seen (a round trip less), else it is inspected.
    async fn lb_batch(&self, t: &crate::core::config::Traffic, active: &str, known: Option<i64>) -> Result<Batch, StepError> {
        let inspect = || async {
            let c = self.host.engine.inspect_container(active).await.map_err(StepError::failed)?;
            Ok::<_, StepError>(c.map(|c| c.pid).filter(|p| *p > 0))
        };
        let pid = match known.filter(|p| *p > 0) {
            Some(p) => Some(p),
            None => inspect().await?,
        };
        let on_host = match pid {
            Some(pid) => lb_batch::send(self.host, pid, &t.url, t.requests).await.ok().flatten(),
            None => None,
        };
        // A process gone since it was seen has no counters: the runner's way looks again.
        let pid = match (&on_host, known) {
            (None, Some(_)) => inspect().await?,
            _ => pid,
        };
        let (failed, delta) = match on_host {
            Some(seen) => {
                let failed: Vec<String> = seen
                    .statuses
                    .iter()
                    .filter(|s| **s == 0 || **s >= 500)
                    .map(|s| match s {
                        0 => seen.error.clone().unwrap_or_else(|| "no answer".into()),
                        s => format!("HTTP {s}"),
                    })
                    .collect();
                (failed, seen.received)
            }
            None => self.lb_batch_from_runner(t, active, pid).await?,
        };
        if let Some(last) = failed.last() {
            return Err(format!("{}/{} requests through {} failed (last: {last})", failed.len(), t.requests, t.url).into());
        }
        if delta < MIN_TRAFFIC_BYTES {
            return Ok(Batch::Missed(format!("{active} received no traffic through {} ({} requests, +{delta} bytes)", t.url, t.requests)));
        }
        Ok(Batch::Reached(format!("{}/{} ok through {}, {active} received +{delta} bytes", t.requests, t.requests, t.url)))
    }

    /// The batch sent from the runner through a tunnel: what failed, and what `active`
    /// (whose main process is `pid`, as just inspected) received.
    async fn lb_batch_from_runner(&self, t: &crate::core::config::Traffic, active: &str, pid: Option<i64>) -> Result<(Vec<String>, u64), StepError> {
        let (addr, port, path) = crate::host::probe_target(&t.url).map_err(|e| StepError::Failed(format!("traffic.url {e}")))?;
        let before = received(self.host, active, pid).await?;
        // Sent at once (at most 32 in flight): one round trip over a slow link instead of one
        // per few requests, enough to reach every upstream, not enough to be a load test.
        let answers: Vec<_> = futures_util::stream::iter(0..t.requests)
            .map(|_| self.host.probe.http_get(&addr, port, &path, Duration::from_secs(5)))
            .buffer_unordered(32)
            .collect()
            .await;
        let failed: Vec<String> = answers
            .into_iter()
            .filter_map(|a| match a {
                Ok(a) if a.status < 500 => None,
                Ok(a) => Some(format!("HTTP {}", a.status)),
                Err(e) => Some(e.to_string()),
            })
            .collect();
        let delta = received(self.host, active, pid).await?.saturating_sub(before);
        Ok((failed, delta))
    }
}

/// What one batch of the traffic check came to, every request answered.
enum Batch {
    /// The instance received them: what was seen.
    Reached(String),
    /// It did not (yet): what was seen.
    Missed(String),
}

/// Batches of requests a traffic check sends before it gives up.
const LB_ATTEMPTS: u32 = 3;

/// Bytes the container has received: from its network namespace's
/// `/proc/<pid>/net/dev` on the host (instant), else from the engine's stats
/// (which answers at most once a second).
pub async fn rx_bytes(host: &Host, name: &str) -> Result<u64, StepError> {
    let c = host.engine.inspect_container(name).await.map_err(StepError::failed)?;
    received(host, name, c.map(|c| c.pid)).await
}

/// [`rx_bytes`] of a container whose main process is `pid`, when known and running.
async fn received(host: &Host, name: &str, pid: Option<i64>) -> Result<u64, StepError> {
    if let Some(pid) = pid.filter(|p| *p > 0) {
        let path = format!("/proc/{pid}/net/dev");
        if let Ok(out) = host.shell.run(&["cat", &path], None).await {
            if let Some(rx) = out.ok().then(|| lb_batch::net_dev_rx(&out.stdout)).flatten() {
                return Ok(rx);
            }
        }
    }
    host.engine.rx_bytes(name).await.map_err(StepError::failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{world, V1};

    /// One look at web-1 of the fake world (`health.http` on /health), as the fake host is set.
    #[tokio::test(start_paused = true)]
    async fn one_look_judges_running_the_probe_then_docker() {
        type Setup = fn(&mut crate::host::fake::State);
        let cases: &[(&str, Setup, Health, bool)] = &[
            ("running, probe 200, no HEALTHCHECK", |_| {}, Health::Healthy, true),
            ("HEALTHCHECK healthy", |s| _ = s.docker_health.insert("web-1".into(), DockerHealth::Healthy), Health::Healthy, true),
            ("HEALTHCHECK starting", |s| _ = s.docker_health.insert("web-1".into(), DockerHealth::Starting), Health::Starting, true),
            ("HEALTHCHECK unhealthy, probe 200", |s| _ = s.docker_health.insert("web-1".into(), DockerHealth::Unhealthy), Health::DockerUnhealthy, false),
            ("probe 500", |s| _ = s.broken.insert(V1.into()), Health::Probe("GET /health answered 500".into()), false),
            (
                "probe 500 and HEALTHCHECK unhealthy: the probe is named",
                |s| {
                    s.broken.insert(V1.into());
                    s.docker_health.insert("web-1".into(), DockerHealth::Unhealthy);
                },
                Health::Probe("GET /health answered 500".into()),
                false,
            ),
            ("stopped", |s| s.containers.get_mut("web-1").unwrap().running = false, Health::NotRunning, false),
        ];
        for (what, setup, want, serving) in cases {
            let w = world("");
            setup(&mut w.fake.state.lock().unwrap());
            let host = w.fake.host();
            let c = host.engine.inspect_container("web-1").await.unwrap().unwrap();
            let got = look(&host, &w.config.services[0], &c).await;
            assert_eq!((&got, got.serving()), (want, *serving), "{what}");
        }
        assert_eq!(Health::DockerUnhealthy.to_string(), "Docker HEALTHCHECK reports unhealthy");
        assert_eq!(Health::Starting.to_string(), "Docker HEALTHCHECK still starting");
    }
}
