//! Simulated hosts for `bench/hosts-simulated` (an ignored test, run by that script):
//! `fake::FakeHost`s behind the latencies a real host has, so that how capstan's own
//! orchestration scales to 20 hosts can be measured where the machine cannot run 20
//! real engines without running out of CPU. Everything above the effect traits (the
//! planner, the lock and its heartbeat, the executor, `roll_hosts`, events, the
//! report) is the real code; only the host's answers are simulated. The latencies are
//! fitted to real namespace hosts (`bench/hosts`, one host): one simulated host deploys
//! in about the time one real host does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::core::config::Config;
use crate::core::names::HostAddr;
use crate::core::observed::*;
use crate::core::secret::Credentials;
use crate::error::Error;
use crate::host::fake::FakeHost;
use crate::host::*;

/// What one host's answers cost, in wall time (an SSH round trip for every command and
/// Docker API call, plus what the engine itself takes for the slow ones).
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub connect: Duration,
    pub rtt: Duration,
    pub pull: Duration,
    pub create: Duration,
    pub start: Duration,
    pub stop: Duration,
    pub probe: Duration,
}

impl Latency {
    /// Estimates for a real namespace host of `tests/support/fleet.rs` on loopback (a plain
    /// shell for the deploy user), fitted to `bench/hosts`' one-host run (2026-11-23: 5.2 s;
    /// per host, both instances summed: pull 0.2 s, start 0.8 s, stop 0.3 s, drain 0.6 s of
    /// which 0.6 s is the configured wait, traffic 0.1 s): master connection and forwards
    /// 250 ms; a host command or API call through the master 15 ms; the demo's 1.4 MiB layer
    /// pulled 200 ms; create 100 ms; start to listening 300 ms; stop (SIGTERM, the demo
    /// drains) 150 ms. One simulated host then deploys in 4.7–4.9 s.
    pub const REAL_HOST: Latency = Latency {
        connect: Duration::from_millis(250),
        rtt: Duration::from_millis(15),
        pull: Duration::from_millis(200),
        create: Duration::from_millis(100),
        start: Duration::from_millis(300),
        stop: Duration::from_millis(150),
        probe: Duration::from_millis(3),
    };
}

/// A fake host whose every answer takes its latency.
pub struct Slow {
    inner: Arc<FakeHost>,
    lat: Latency,
}

impl Slow {
    pub fn host(inner: Arc<FakeHost>, lat: Latency) -> Host {
        let slow = Arc::new(Slow { inner, lat });
        Host { name: slow.inner.name.clone(), engine: slow.clone(), swarm: slow.clone(), shell: slow.clone(), probe: slow }
    }

    async fn call(&self, extra: Duration) {
        tokio::time::sleep(self.lat.rtt + extra).await;
    }
}

#[async_trait]
impl Engine for Slow {
    async fn version(&self) -> Result<String, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.version().await
    }
    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.inspect_container(name).await
    }
    async fn list_containers(&self) -> Result<Vec<Listed>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.list_containers().await
    }
    async fn exec(&self, container: &str, argv: &[&str]) -> Result<(i64, String), EngineError> {
        self.call(self.lat.rtt).await;
        self.inner.exec(container, argv).await
    }
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.inspect_image(reference).await
    }
    async fn registry_digest(&self, reference: &str, creds: Option<&Credentials>) -> Result<String, EngineError> {
        self.call(self.lat.rtt).await;
        self.inner.registry_digest(reference, creds).await
    }
    async fn pull(&self, reference: &str, creds: Option<&Credentials>) -> Result<(), EngineError> {
        self.call(self.lat.pull).await;
        self.inner.pull(reference, creds).await
    }
    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.tag(image, repo, tag).await
    }
    async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.rename(name, new_name).await
    }
    async fn stop(&self, name: &str) -> Result<(), EngineError> {
        self.call(self.lat.stop).await;
        self.inner.stop(name).await
    }
    async fn start(&self, name: &str) -> Result<(), EngineError> {
        self.call(self.lat.start).await;
        self.inner.start(name).await
    }
    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.remove(name).await
    }
    async fn create(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String, EngineError> {
        self.call(self.lat.create).await;
        self.inner.create(name, spec, image).await
    }
    async fn rx_bytes(&self, name: &str) -> Result<u64, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.rx_bytes(name).await
    }
    async fn data_root(&self) -> Result<String, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.data_root().await
    }
    async fn run_once(&self, name: &str, spec: &ContainerSpec, image: &str, timeout: Duration) -> Result<(i64, String), EngineError> {
        self.call(self.lat.create + self.lat.start).await;
        self.inner.run_once(name, spec, image, timeout).await
    }
    async fn logs(&self, name: &str) -> Result<String, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.logs(name).await
    }
}

#[async_trait]
impl Swarm for Slow {
    async fn inspect_service(&self, name: &str) -> Result<Option<SwarmService>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.inspect_service(name).await
    }
    async fn update_service(
        &self,
        service: &SwarmService,
        image: &str,
        settings: &SwarmUpdate,
        creds: Option<&Credentials>,
    ) -> Result<Vec<String>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.update_service(service, image, settings, creds).await
    }
    async fn rollback_service(&self, service: &SwarmService) -> Result<(), EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.rollback_service(service).await
    }
    async fn tasks(&self, service_id: &str) -> Result<Vec<SwarmTask>, EngineError> {
        self.call(Duration::ZERO).await;
        self.inner.tasks(service_id).await
    }
}

#[async_trait]
impl Shell for Slow {
    async fn run(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        self.call(Duration::ZERO).await;
        self.inner.run(argv, stdin).await
    }
    fn round_trip(&self) -> Duration {
        self.lat.rtt
    }
}

#[async_trait]
impl Probe for Slow {
    async fn http_get(&self, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
        tokio::time::sleep(self.lat.probe).await;
        self.inner.http_get(addr, port, path, timeout).await
    }
}

/// Connects to the fleet's fake hosts by name, taking `connect` to do it.
pub struct SlowConnector {
    hosts: Vec<Arc<FakeHost>>,
    lat: Latency,
}

#[async_trait]
impl crate::host::connect::Connector for SlowConnector {
    async fn connect(&self, addr: &HostAddr, _config: &Config) -> Result<Host, Error> {
        tokio::time::sleep(self.lat.connect).await;
        let h = self.hosts.iter().find(|h| h.name == addr.host).expect("a fake host by that name");
        Ok(Slow::host(h.clone(), self.lat))
    }
    async fn close(&self) {}
}

/// The benchmark's service settings (those of `tests/support/app.rs`'s config).
fn bench_yaml(fleet_yaml: &str, hosts: usize) -> String {
    let y = fleet_yaml
        .replace("timeout: 5s, interval: 100ms, healthy_after: 2", "timeout: 20s, interval: 200ms, healthy_after: 3")
        .replace("wait: 10ms", "wait: 300ms")
        .replace("requests: 3", "requests: 20")
        .replace("pause: 50ms", "pause: 500ms");
    format!("{y}rollout: {{ parallel: {hosts} }}\n")
}

/// Where a simulated deploy's wall time went.
#[derive(Clone, Copy, Debug)]
pub struct Took {
    pub wall: Duration,
    /// From the run's start to the first host starting its rollout (connect, resolve,
    /// plan, lock, preflight on every host).
    pub before: Duration,
    /// The slowest host's rollout.
    pub slowest: Duration,
}

/// One deploy v1 → v2 to `hosts` simulated hosts, every host at once.
pub async fn deploy_once(hosts: usize, lat: Latency) -> Took {
    use crate::cli::Targets;
    use crate::commands::deploy::{roll, RollOpts};
    use crate::commands::prepare::Want;
    use crate::commands::Ctx;
    use crate::output::report::Collector;
    use crate::rollout::cancel::Cancel;

    let fleet = crate::host::fake::fleet(hosts, "");
    let yaml = bench_yaml(&fleet.yaml, hosts);
    let config = crate::core::config::parse(std::path::Path::new("capstan.yml"), &yaml).expect("the bench config parses");
    let collector = Collector::default();
    let connector = SlowConnector { hosts: fleet.hosts.clone(), lat };
    let cancel = Cancel::default();
    let ctx = Ctx { config: &config, events: &collector, connector: &connector, cancel: &cancel, env: &Default::default() };
    let t = tokio::time::Instant::now();
    let out = roll(&ctx, Want::Deploy { version: "v2".into(), pinned: HashMap::new() }, &Targets::default(), RollOpts::default(), &collector)
        .await
        .expect("the run starts");
    let wall = t.elapsed();
    assert!(out.error.is_none(), "{hosts} simulated hosts: {:?}", out.error);
    let timings = out.report.hosts.iter().map(|h| &h.timing);
    let before = timings.clone().filter_map(|t| t.started_ms).min().unwrap_or(0);
    let slowest = timings.filter_map(|t| t.duration_ms).max().unwrap_or(0);
    let took = Took { wall, before: Duration::from_millis(before), slowest: Duration::from_millis(slowest) };
    for h in &fleet.hosts {
        assert_eq!(h.image_of("web-1").as_deref(), Some(crate::host::fake::V2), "{} took the release", h.name);
        assert_eq!(h.image_of("web-2").as_deref(), Some(crate::host::fake::V2), "{} took the release", h.name);
    }
    took
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's path works: every host takes the release through the slow wrappers
    /// (with small latencies; real time, since the hosts' scripts are real processes).
    #[tokio::test(flavor = "multi_thread")]
    async fn simulated_hosts_take_the_release() {
        let ms = Duration::from_millis(1);
        let lat = Latency { connect: ms, rtt: ms, pull: ms, create: ms, start: ms, stop: ms, probe: ms };
        let took = deploy_once(3, lat).await;
        assert!(took.before < took.wall && took.slowest < took.wall, "{took:?}");
    }

    /// `bench/hosts-simulated`: real time, every size, a table.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a benchmark: bash bench/hosts-simulated"]
    async fn bench_simulated_hosts() {
        let sizes: Vec<usize> =
            std::env::var("BENCH_HOSTS").unwrap_or_else(|_| "1 5 10 20".into()).split_whitespace().map(|s| s.parse().expect("BENCH_HOSTS: numbers")).collect();
        let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
        let mut rows = Vec::new();
        for &n in &sizes {
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(deploy_once(n, Latency::REAL_HOST).await);
            }
            times.sort_by_key(|t| t.wall);
            eprintln!("[bench] {n} simulated hosts: {:?}", times.iter().map(|t| t.wall).collect::<Vec<_>>());
            rows.push((n, times[times.len() / 2]));
        }
        let base = rows[0].1.wall.as_secs_f64();
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        println!("\nsimulated hosts (real capstan code above the host traits; each host's answers delayed as a real host's: {:?}); median of {runs} run(s) per size, every host at once\n", Latency::REAL_HOST);
        println!("| hosts | `capstan deploy` wall time | ratio to {} host(s) | before the first host starts | slowest host's rollout | after it |", rows[0].0);
        println!("|---|---|---|---|---|---|");
        for (n, t) in &rows {
            let after = t.wall.saturating_sub(t.before + t.slowest);
            println!("| {n} | {} | {:.2} | {} | {} | {} |", s(t.wall), t.wall.as_secs_f64() / base, s(t.before), s(t.slowest), s(after));
        }
    }
}
