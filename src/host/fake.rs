//! An in-memory host for the executor's tests: a fake Docker engine that keeps
//! containers and images like the real one, a shell that runs the real host
//! scripts locally in a temp dir, and a probe that answers from the fake
//! containers' state. Failures can be injected per operation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::core::config;
use crate::core::observed::*;
use crate::core::secret::Credentials;
use crate::host::*;

pub const V1: &str = "r/demo@sha256:v1";
pub const V2: &str = "r/demo@sha256:v2";
pub const UPSTREAM: &str = "upstream demo {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082;\n}\n";

/// A fake host running web-1 and web-2 on V1 behind an nginx upstream file, V2
/// in its image store and as `r/demo:v2` in the registry; and a config for it
/// (`extra` is appended to the YAML).
pub struct World {
    pub fake: Arc<FakeHost>,
    pub config: config::Config,
    /// The config's text.
    pub yaml: String,
}

pub fn world(extra: &str) -> World {
    let fake = FakeHost::new();
    let upstream = fake.dir.path().join("upstream.conf");
    std::fs::write(&upstream, UPSTREAM).unwrap();
    fake.add_container("web-1", V1, 8081);
    fake.add_container("web-2", V1, 8082);
    {
        let mut s = fake.state.lock().unwrap();
        s.images.insert(V2.into());
        s.registry.insert("r/demo:v2".into(), "sha256:v2".into());
    }
    let yaml = format!(
        "app: shop\nhosts: [h]\nstate_dir: {state}\nservices:\n  web:\n    image: r/demo\n    instances: [web-1, web-2]\n    health: {{ http: {{ port: 8080 }}, timeout: 5s, interval: 100ms, healthy_after: 2 }}\n    drain: {{ nginx: {{ upstream_conf: {up}, reload: \"true # reload\" }}, wait: 10ms }}\n    traffic: {{ url: \"http://127.0.0.1:80/\", requests: 3 }}\n    pause: 50ms\n{extra}",
        state = fake.dir.path().join("state").display(),
        up = upstream.display(),
    );
    let config = config::parse(std::path::Path::new("capstan.yml"), &yaml).unwrap();
    World { fake, config, yaml }
}

#[derive(Clone, Debug)]
pub struct FakeContainer {
    pub id: String,
    pub image: String,
    pub running: bool,
    pub spec: ContainerSpec,
    pub host_port: u16,
    pub address: String,
    pub rx: u64,
}

#[derive(Default)]
pub struct State {
    pub containers: HashMap<String, FakeContainer>,
    /// Images present on the host, by reference.
    pub images: HashSet<String>,
    /// Images in the registry.
    pub registry: HashMap<String, String>,
    /// Operations that fail once: "pull", "rename", "stop", "create", "start", "remove", "rx", "reload", "tag".
    pub fail: HashSet<String>,
    /// Images whose containers never turn healthy, or exit right after their health gate.
    pub broken: HashSet<String>,
    pub crash_after_healthy: HashSet<String>,
    pub log: Vec<String>,
    /// Container output, by name.
    pub logs: HashMap<String, String>,
    /// Swarm services, by name (the host is a manager).
    pub swarm: HashMap<String, FakeSwarmService>,
    /// Images whose Swarm tasks fail, so that Swarm applies the update's failure action.
    pub swarm_failing: HashSet<String>,
    /// `inspect_service` answers this error (a node that is no manager).
    pub swarm_error: Option<String>,
    /// What Docker's HEALTHCHECK says of a container, by name (none when not set).
    pub docker_health: HashMap<String, DockerHealth>,
    /// What the next `exec`s answer (exit code, output), in order; when none is left, (0, "").
    pub exec_answers: std::collections::VecDeque<(i64, String)>,
    next_id: u64,
    healthy_probes: HashMap<String, u32>,
}

/// A Swarm service as the fake manager keeps it. Each inspect moves an update under
/// way one tick on, as Swarm's updater would over time.
#[derive(Clone, Debug)]
pub struct FakeSwarmService {
    pub id: String,
    pub image: String,
    /// The image of `PreviousSpec`, what `rollback=previous` returns to.
    pub previous: Option<String>,
    pub replicas: u64,
    pub version: u64,
    pub update: Option<UpdateState>,
    pub message: String,
    /// The settings of the last update, as sent.
    pub settings: Option<SwarmUpdate>,
    /// Accepted but not started yet (UpdateStatus is reset by an update).
    pending: bool,
    /// Inspects left before the update or rollback under way moves on.
    pub ticks: u32,
    /// Inspects for which, once an update or rollback completed, a task of the image
    /// before still runs (desired shutdown), as Swarm's old tasks do while they stop.
    pub lingering: u32,
    /// What `lingering` is set to when an update or rollback completes (1 by default).
    pub linger_for: u32,
}

impl FakeSwarmService {
    fn tick(&mut self, failing: &HashSet<String>) {
        if self.pending {
            self.pending = false;
            self.update = Some(UpdateState::Updating);
            self.version += 1;
            return;
        }
        if !self.update.is_some_and(|u| u.busy()) {
            self.lingering = self.lingering.saturating_sub(1);
            return;
        }
        if self.ticks > 0 {
            self.ticks -= 1;
            return;
        }
        self.version += 1;
        match self.update {
            Some(UpdateState::Updating) if failing.contains(&self.image) => {
                use config::SwarmFailureAction as F;
                match self.settings.as_ref().map(|s| s.failure_action).unwrap_or(F::Pause) {
                    F::Rollback => {
                        std::mem::swap(&mut self.image, self.previous.get_or_insert_with(String::new));
                        self.update = Some(UpdateState::RollbackStarted);
                        self.message = "update rolled back due to failure or early termination of task fake1".into();
                        self.ticks = 2;
                    }
                    F::Pause => {
                        self.update = Some(UpdateState::Paused);
                        self.message = "update paused due to failure or early termination of task fake1".into();
                    }
                    F::Continue => {
                        self.update = Some(UpdateState::Completed);
                        self.message = "update completed".into();
                        self.lingering = self.linger_for;
                    }
                }
            }
            Some(UpdateState::Updating) => {
                self.update = Some(UpdateState::Completed);
                self.message = "update completed".into();
                self.lingering = self.linger_for;
            }
            _ => {
                self.update = Some(UpdateState::RollbackCompleted);
                self.message = "rollback completed".into();
                self.lingering = self.linger_for;
            }
        }
    }
}

pub struct FakeHost {
    pub state: Mutex<State>,
    pub dir: tempfile::TempDir,
    pub name: String,
    /// A path prefix this host sees as its own `dir` (each host of a fleet has its own
    /// disk, while the config names one path for all of them).
    view: Option<String>,
}

/// `hosts` fake hosts (`h1`, `h2`…), each running web-1 and web-2 on V1 with V2 in its
/// image store, and a config listing them all (`extra` appended). The config's paths
/// point into the first host's dir; each host sees its own copy there.
pub struct Fleet {
    pub hosts: Vec<Arc<FakeHost>>,
    pub config: config::Config,
    /// The config's text (paths in it are seen by each host as its own).
    pub yaml: String,
}

pub fn fleet(hosts: usize, extra: &str) -> Fleet {
    let first = world("");
    let names: Vec<String> = (1..=hosts).map(|i| format!("h{i}")).collect();
    let text = first.yaml.replacen("hosts: [h]", &format!("hosts: [{}]", names.join(", ")), 1) + extra;
    let config = config::parse(std::path::Path::new("capstan.yml"), &text).unwrap();
    let view = first.fake.dir.path().display().to_string();
    let hosts = names
        .iter()
        .map(|n| {
            let w = world("");
            let state = std::mem::take(&mut *w.fake.state.lock().unwrap());
            Arc::new(FakeHost { state: Mutex::new(state), dir: tempfile::tempdir().unwrap(), name: n.clone(), view: Some(view.clone()) })
        })
        .collect::<Vec<_>>();
    for h in &hosts {
        std::fs::write(h.dir.path().join("upstream.conf"), UPSTREAM).unwrap();
    }
    Fleet { hosts, config, yaml: text }
}

impl FakeHost {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeHost { state: Mutex::new(State::default()), dir: tempfile::tempdir().unwrap(), name: "fake".into(), view: None })
    }

    pub fn host(self: &Arc<Self>) -> Host {
        Host { name: self.name.clone(), engine: self.clone(), swarm: self.clone(), shell: self.clone(), probe: self.clone() }
    }

    /// A Swarm service `name` with `replicas` tasks running `image`, settled.
    pub fn add_swarm_service(&self, name: &str, image: &str, replicas: u64) {
        let mut s = self.state.lock().unwrap();
        let id = format!("svc-{name}");
        let svc = FakeSwarmService {
            id,
            image: image.into(),
            previous: None,
            replicas,
            version: 10,
            update: None,
            message: String::new(),
            settings: None,
            pending: false,
            ticks: 0,
            lingering: 0,
            linger_for: 1,
        };
        s.swarm.insert(name.into(), svc);
    }

    pub fn swarm_image(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().swarm.get(name).map(|s| s.image.clone())
    }

    pub fn add_container(&self, name: &str, image: &str, host_port: u16) {
        let mut s = self.state.lock().unwrap();
        s.next_id += 1;
        let address = format!("10.0.0.{}", s.next_id);
        s.images.insert(image.into());
        let mut spec = ContainerSpec::default();
        spec.0.env = Some(vec!["APP_SETTING=kept".into()]);
        let id = format!("{:012x}", s.next_id);
        s.containers.insert(name.into(), FakeContainer { id, image: image.into(), running: true, spec, host_port, address, rx: 0 });
    }

    pub fn fail(&self, op: &str) {
        self.state.lock().unwrap().fail.insert(op.into());
    }

    pub fn image_of(&self, name: &str) -> Option<String> {
        self.state.lock().unwrap().containers.get(name).map(|c| c.image.clone())
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.state.lock().unwrap().containers.keys().cloned().collect();
        v.sort();
        v
    }

    fn check(&self, op: &str, s: &mut State, what: &str) -> Result<(), EngineError> {
        s.log.push(format!("{op} {what}"));
        // An injected failure strikes once: the undo that follows meets a working engine.
        if s.fail.remove(op) {
            return Err(EngineError::Other(format!("injected failure: {op} {what}")));
        }
        Ok(())
    }
}

#[async_trait]
impl Engine for FakeHost {
    async fn version(&self) -> Result<String, EngineError> {
        Ok("fake".into())
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let mut s = self.state.lock().unwrap();
        let crash = s.crash_after_healthy.clone();
        let docker_health = s.docker_health.get(name).copied();
        let Some(c) = s.containers.get_mut(name) else { return Ok(None) };
        // A container of a "crash after healthy" image dies once it has been probed healthy a few times.
        if crash.contains(&c.image) && c.rx > 0 {
            c.running = false;
        }
        let c = c.clone();
        Ok(Some(ContainerInfo {
            name: name.into(),
            id: c.id.clone(),
            image_id: format!("id:{}", c.image),
            image_ref: c.image.clone(),
            running: c.running,
            pid: 0,
            docker_health,
            ports: vec![PublishedPort { container_port: 8080, host_ip: "127.0.0.1".into(), host_port: c.host_port }],
            addresses: vec![c.address.clone()],
            spec: c.spec.clone(),
            ..Default::default()
        }))
    }

    async fn list_containers(&self) -> Result<Vec<Listed>, EngineError> {
        Ok(self.names().into_iter().map(|name| Listed { name, ..Default::default() }).collect())
    }

    /// Runs nothing: records the call; `exec` fails once when injected.
    async fn exec(&self, container: &str, argv: &[&str]) -> Result<(i64, String), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("exec", &mut s, &format!("{container} {}", argv.join(" ")))?;
        Ok(s.exec_answers.pop_front().unwrap_or_default())
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        let s = self.state.lock().unwrap();
        let r = reference.strip_prefix("id:").unwrap_or(reference);
        Ok(s.images.contains(r).then(|| ImageInfo { id: format!("id:{r}"), repo_digests: vec![r.to_string()], repo_tags: vec![] }))
    }

    async fn registry_digest(&self, reference: &str, _c: Option<&Credentials>) -> Result<String, EngineError> {
        let s = self.state.lock().unwrap();
        s.registry.get(reference).cloned().ok_or_else(|| EngineError::NotFound(format!("{reference}: manifest unknown")))
    }

    async fn pull(&self, reference: &str, _c: Option<&Credentials>) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("pull", &mut s, reference)?;
        s.images.insert(reference.into());
        Ok(())
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("tag", &mut s, &format!("{image} {repo}:{tag}"))
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("rename", &mut s, &format!("{name} {new_name}"))?;
        if s.containers.contains_key(new_name) {
            return Err(EngineError::Other(format!("name {new_name} in use")));
        }
        let c = s.containers.remove(name).ok_or_else(|| EngineError::Other(format!("no container {name}")))?;
        s.containers.insert(new_name.into(), c);
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("stop", &mut s, name)?;
        s.containers.get_mut(name).ok_or_else(|| EngineError::Other(format!("no container {name}")))?.running = false;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("start", &mut s, name)?;
        // Published ports must be free: two running containers cannot share one.
        let port = s.containers.get(name).map(|c| c.host_port).ok_or_else(|| EngineError::Other(format!("no container {name}")))?;
        if s.containers.iter().any(|(n, c)| n != name && c.running && c.host_port == port) {
            return Err(EngineError::Other(format!("port {port} is already allocated")));
        }
        s.containers.get_mut(name).unwrap().running = true;
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        // By name, or by ID as the engine takes it (logged by the name it had).
        let name = match s.containers.contains_key(name) {
            true => name.to_string(),
            false => s.containers.iter().find(|(_, c)| c.id == name).map(|(n, _)| n.clone()).unwrap_or_else(|| name.to_string()),
        };
        self.check("remove", &mut s, &name)?;
        s.containers.remove(&name);
        Ok(())
    }

    async fn create(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String, EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("create", &mut s, &format!("{name} {image}"))?;
        if s.containers.contains_key(name) {
            return Err(EngineError::Other(format!("name {name} in use")));
        }
        if !s.images.contains(image) {
            return Err(EngineError::NotFound(format!("no such image {image}")));
        }
        // The fake keeps the published port as part of the spec: the old one's.
        // (A successor created ahead as `<name>.capstan-new` gets its instance's.)
        let base = name.strip_suffix(crate::core::plan::NEW_SUFFIX).unwrap_or(name);
        let port = [format!("{base}.capstan-old"), base.to_string()]
            .iter()
            .find_map(|n| s.containers.get(n).filter(|_| n != name))
            .map(|c| c.host_port)
            .unwrap_or(9999);
        s.next_id += 1;
        let id = format!("{:012x}", s.next_id);
        let address = format!("10.0.0.{}", s.next_id);
        s.containers
            .insert(name.into(), FakeContainer { id: id.clone(), image: image.into(), running: false, spec: spec.clone(), host_port: port, address, rx: 0 });
        Ok(id)
    }

    async fn rx_bytes(&self, name: &str) -> Result<u64, EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("rx", &mut s, name)?;
        s.containers.get(name).map(|c| c.rx).ok_or_else(|| EngineError::Other(format!("no container {name}")))
    }

    async fn data_root(&self) -> Result<String, EngineError> {
        Ok(self.dir.path().display().to_string())
    }

    /// A one-off exits with the number its command names (`[exit, N]`), else 0.
    async fn run_once(&self, name: &str, spec: &ContainerSpec, image: &str, _t: Duration) -> Result<(i64, String), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("run_once", &mut s, &format!("{name} {image}"))?;
        let cmd = spec.0.cmd.clone().unwrap_or_default();
        let code = match cmd.as_slice() {
            [first, n] if first == "exit" => n.parse().unwrap_or(1),
            _ => 0,
        };
        Ok((code, format!("ran {}", cmd.join(" "))))
    }

    async fn logs(&self, name: &str) -> Result<String, EngineError> {
        let s = self.state.lock().unwrap();
        Ok(s.logs.get(name).cloned().unwrap_or_default())
    }
}

#[async_trait]
impl Swarm for FakeHost {
    async fn inspect_service(&self, name: &str) -> Result<Option<SwarmService>, EngineError> {
        let mut s = self.state.lock().unwrap();
        if let Some(e) = &s.swarm_error {
            return Err(EngineError::Other(e.clone()));
        }
        let failing = s.swarm_failing.clone();
        let Some(svc) = s.swarm.get_mut(name) else { return Ok(None) };
        svc.tick(&failing);
        Ok(Some(SwarmService {
            id: svc.id.clone(),
            name: name.into(),
            version: svc.version,
            image: svc.image.clone(),
            replicas: Some(svc.replicas),
            update: svc.update,
            update_message: svc.message.clone(),
            spec: SwarmSpec::default(),
        }))
    }

    async fn update_service(&self, service: &SwarmService, image: &str, settings: &SwarmUpdate, _c: Option<&Credentials>) -> Result<Vec<String>, EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("swarm-update", &mut s, &format!("{} {image}", service.name))?;
        let svc = s.swarm.get_mut(&service.name).ok_or_else(|| EngineError::NotFound(format!("service {} not found", service.name)))?;
        if svc.version != service.version {
            return Err(EngineError::Other(format!("update out of sequence (version {} is not {})", service.version, svc.version)));
        }
        svc.previous = Some(std::mem::replace(&mut svc.image, image.into()));
        svc.settings = Some(settings.clone());
        svc.update = None;
        svc.message = String::new();
        svc.pending = true;
        svc.ticks = 3;
        svc.version += 1;
        Ok(vec![])
    }

    async fn rollback_service(&self, service: &SwarmService) -> Result<(), EngineError> {
        let mut s = self.state.lock().unwrap();
        self.check("swarm-rollback", &mut s, &service.name)?;
        let svc = s.swarm.get_mut(&service.name).ok_or_else(|| EngineError::NotFound(format!("service {} not found", service.name)))?;
        let Some(previous) = svc.previous.take() else { return Err(EngineError::Other("service has no previous spec to roll back to".into())) };
        svc.previous = Some(std::mem::replace(&mut svc.image, previous));
        svc.update = Some(UpdateState::RollbackStarted);
        svc.message = "manually requested rollback".into();
        svc.pending = false;
        svc.ticks = 2;
        svc.version += 1;
        Ok(())
    }

    /// While an update or rollback runs, the first task already runs the image the spec
    /// names and the others the one before; tasks of a failing image have failed.
    async fn tasks(&self, service_id: &str) -> Result<Vec<SwarmTask>, EngineError> {
        let s = self.state.lock().unwrap();
        let Some(svc) = s.swarm.values().find(|v| v.id == service_id) else { return Ok(vec![]) };
        let busy = svc.pending || svc.update.is_some_and(|u| u.busy());
        let stopping = match (&svc.previous, svc.lingering > 0 && !busy) {
            (Some(p), true) => Some(SwarmTask {
                id: "task-old".into(),
                slot: Some(1),
                image: p.clone(),
                desired: "shutdown".into(),
                state: "running".into(),
                message: "started".into(),
                container: None,
            }),
            _ => None,
        };
        let tasks = (1..=svc.replicas).map(|slot| {
            let image = match (&svc.previous, busy && slot > 1) {
                (Some(p), true) => p.clone(),
                _ => svc.image.clone(),
            };
            let failing = s.swarm_failing.contains(&image);
            SwarmTask {
                id: format!("task{slot}"),
                slot: Some(slot),
                desired: "running".into(),
                state: if failing { "failed" } else { "running" }.into(),
                message: if failing { "task: non-zero exit (1)".into() } else { "started".into() },
                container: None,
                image,
            }
        });
        Ok(tasks.chain(stopping).collect())
    }
}

#[async_trait]
impl Shell for FakeHost {
    /// Runs the command for real, locally: the state and drain scripts are exercised as written.
    async fn run(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        // The swap script's Docker CLI calls go to this fake's engine (the script's own
        // text runs under `sh` in `host::swap`'s tests): the lease, then each call in turn.
        if let ["sh", "-c", _, "capstan-swap", dir, id, _, name, old, new] = argv {
            let dir = match &self.view {
                Some(view) => dir.replace(view.as_str(), &self.dir.path().display().to_string()),
                None => dir.to_string(),
            };
            let lock = std::fs::read_to_string(format!("{dir}/lock.json")).unwrap_or_default();
            if !lock.contains(&format!("\"id\":\"{id}\"")) {
                return Ok(CmdOutput { status: 0, stdout: "lease-lost\n".into(), stderr: String::new() });
            }
            let mut said = String::new();
            let result = async {
                self.rename(name, old).await?;
                said.push_str("renamed\n");
                self.stop(old).await?;
                said.push_str("stopped\n");
                self.rename(new, name).await?;
                said.push_str("placed\n");
                self.start(name).await?;
                said.push_str("started\n");
                Ok::<_, EngineError>(())
            }
            .await;
            let stderr = result.err().map(|e| e.to_string()).unwrap_or_default();
            return Ok(CmdOutput { status: 0, stdout: said, stderr });
        }
        // The in-container reload's Docker CLI calls go to this fake's engine (the script's own
        // text runs under `sh` in `host::drain`'s tests): once the file holds what was written,
        // `nginx -T`, then the reload, as the script prints them.
        if let ["sh", "-c", _, "capstan-nginx", _, container, file, sha, nginx, reload @ ..] = argv {
            let file = match &self.view {
                Some(view) => file.replace(view.as_str(), &self.dir.path().display().to_string()),
                None => file.to_string(),
            };
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let said = |stdout: String| Ok(CmdOutput { status: 0, stdout, stderr: String::new() });
            if crate::host::drain::sha256_hex(&text) != *sha {
                return said("not-written\n".into());
            }
            let dump = match self.exec(container, &[nginx, "-T"]).await {
                Ok((0, dump)) => dump,
                Ok((_, out)) => return said(format!("test-failed\n{out}")),
                Err(e) => return said(format!("test-failed\n{e}")),
            };
            return match self.exec(container, reload).await {
                Ok((0, _)) => said(format!("reloaded\n{dump}")),
                Ok((code, out)) => said(format!("reload-failed {code}\n{out}")),
                Err(e) => said(format!("reload-failed 1\n{e}")),
            };
        }
        // The drain check's `nginx -T` through the Docker CLI: to this fake's engine.
        if let ["sh", "-c", _, "capstan-nginx-dump", _, container, nginx] = argv {
            let stdout = match self.exec(container, &[nginx, "-T"]).await {
                Ok((code, dump)) => format!("dumped {code}\n{dump}"),
                Err(e) => format!("dumped 1\n{e}"),
            };
            return Ok(CmdOutput { status: 0, stdout, stderr: String::new() });
        }
        // The done script stages the record as written; the kept containers it removes go
        // to this fake's engine.
        if let ["sh", "-c", script, "capstan-done", dir, id, sock, kept @ ..] = argv {
            let mut out = self.run_locally(&["sh", "-c", script, "capstan-done", dir, id, sock], stdin).await?;
            if out.ok() {
                for c in kept {
                    match self.remove(c).await {
                        Ok(()) => out.stdout.push_str(&format!("removed {c}\n")),
                        Err(e) => out.stdout.push_str(&format!("failed {c} {e}\n")),
                    }
                }
            }
            return Ok(out);
        }
        self.run_locally(argv, stdin).await
    }
}

impl FakeHost {
    async fn run_locally(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        if argv.iter().any(|a| a.contains("# reload")) && self.state.lock().unwrap().fail.remove("reload") {
            return Ok(CmdOutput { status: 1, stdout: String::new(), stderr: "injected reload failure".into() });
        }
        self.state.lock().unwrap().log.push(format!("run {}", argv.first().unwrap_or(&"")));
        let own = self.dir.path().display().to_string();
        let argv: Vec<String> = argv
            .iter()
            .map(|a| match &self.view {
                Some(view) => a.replace(view.as_str(), &own),
                None => a.to_string(),
            })
            .collect();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| ShellError(e.to_string()))?;
        {
            use tokio::io::AsyncWriteExt;
            let mut w = child.stdin.take().unwrap();
            if let Some(data) = stdin {
                w.write_all(data).await.map_err(|e| ShellError(e.to_string()))?;
            }
        }
        let out = child.wait_with_output().await.map_err(|e| ShellError(e.to_string()))?;
        Ok(CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        })
    }
}

#[async_trait]
impl Probe for FakeHost {
    /// A container address answers by its image's health; anything else is the
    /// load balancer, which spreads requests over the running containers whose
    /// `server` line is not `down` in the upstream file.
    async fn http_get(&self, addr: &str, _port: u16, _path: &str, _t: Duration) -> Result<HttpAnswer, ProbeError> {
        let upstream = std::fs::read_to_string(self.dir.path().join("upstream.conf")).unwrap_or_default();
        let mut s = self.state.lock().unwrap();
        let broken = s.broken.clone();
        if let Some((name, c)) = s.containers.iter().find(|(_, c)| c.address == addr).map(|(n, c)| (n.clone(), c.clone())) {
            if !c.running {
                return Err(ProbeError::Refused);
            }
            if broken.contains(&c.image) {
                return Ok(HttpAnswer { status: 500, body: "broken".into() });
            }
            *s.healthy_probes.entry(name).or_default() += 1;
            return Ok(HttpAnswer { status: 200, body: "ok".into() });
        }
        let up: Vec<String> =
            s.containers.iter().filter(|(_, c)| c.running && !upstream.contains(&format!(":{} down;", c.host_port))).map(|(n, _)| n.clone()).collect();
        if up.is_empty() {
            return Ok(HttpAnswer { status: 502, body: String::new() });
        }
        for n in up {
            s.containers.get_mut(&n).unwrap().rx += 300;
        }
        Ok(HttpAnswer { status: 200, body: "ok".into() })
    }
}
