//! `capstan.yml` as the rest of capstan sees it: the validated [`Config`] and
//! its parts, in this file. How the file becomes one: [`load`] (`load.rs`) reads
//! it into the shape serde reads (`raw.rs`, unknown keys refused), the validator
//! (`validate.rs`, with `gates.rs` for the `gates:` blocks) turns that into these types, and `issue.rs` says what is
//! wrong: every problem found, each with the file, the key path
//! (`services.web.health.timeout`), its line and what was expected.
//!
//! No network, no host; the only file read is the config itself. Secrets are
//! never in the file, only the names of the environment variables that hold them.

mod gates;
pub mod issue;
mod load;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

use crate::core::names::HostAddr;

pub use issue::ConfigError;
#[cfg(test)]
pub use load::parse;
pub use load::{load, DEFAULT_FILE};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub file: PathBuf,
    pub app: String,
    pub hosts: Vec<HostAddr>,
    pub ssh: Ssh,
    pub registry: Option<Registry>,
    pub state_dir: String,
    pub docker_socket: String,
    pub lock_lease: Duration,
    /// `lock.guard`: how long the guard on a host waits for the run to renew its lease
    /// before it puts the host back by itself.
    pub lock_guard: Duration,
    /// `release.raw_tags`: deploy versions that are not semver.
    pub raw_tags: bool,
    /// `release.prereleases`: a published GitHub prerelease deploys (else it is a notice).
    pub prereleases: bool,
    pub preflight: Preflight,
    pub hooks: Hooks,
    pub validate: Validate,
    /// After validation, how long to keep watching before the release counts as good (zero: off).
    pub bake: Duration,
    /// How the hosts roll: how many at once, canaries first, what a failure reverts.
    pub rollout: HostRollout,
    /// Named groups of hosts (`roles:`), for services that run on a subset.
    pub roles: IndexMap<String, Vec<HostAddr>>,
    pub services: Vec<Service>,
}

/// `rollout:`: the order and bound of the hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRollout {
    /// Hosts rolled at once (`parallel:`); at least 1. Default: every host.
    pub parallel: usize,
    /// Hosts rolled first, alone, and fully done (validated and baked) before any other starts.
    pub canary: usize,
    pub on_failure: OnFailure,
}

/// What a failed host means for the hosts that already took the release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Every host that took the release goes back: all hosts run one release.
    RevertAll,
    /// Only the failed host reverts; hosts that finished keep the release.
    RevertHost,
}

/// Checks on each host before anything changes (`preflight:`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Preflight {
    /// Bytes that must be free on the engine's data root.
    pub min_free_disk: Option<u64>,
    pub max_load_per_core: Option<f64>,
    pub backup: Option<BackupCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackupCheck {
    /// A glob on the host, like `/var/backups/shop/*.sql.gz`.
    pub path: String,
    pub max_age: Duration,
}

/// Shell commands run on each host (`hooks:`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hooks {
    pub pre_deploy: Option<String>,
    pub post_deploy: Option<String>,
    pub on_failure: Option<String>,
}

/// After the last instance on a host (`validate:`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Validate {
    pub endpoints: Vec<Endpoint>,
    pub errors: Option<ErrorCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// As seen from the host.
    pub url: String,
    pub status: u16,
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorCheck {
    /// A regular expression matched against each log line of the new containers.
    pub pattern: String,
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Migrate {
    /// The command (exec form), run with the image's entrypoint.
    pub command: Vec<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ssh {
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub server: String,
    pub username: String,
    pub password_env: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The image repository, without tag: `ghcr.io/acme/web`.
    pub image: String,
    pub build: Option<Build>,
    pub instances: Vec<String>,
    pub health: Health,
    pub drain: Drain,
    pub traffic: Option<Traffic>,
    pub pause: Duration,
    pub migrate: Option<Migrate>,
    /// The hosts it runs on (`services.<name>.hosts`, roles resolved); empty: every host.
    pub hosts: Vec<HostAddr>,
    /// `target: swarm`: a Swarm service that Swarm rolls (capstan updates its image and
    /// watches); `None`: the containers of `instances`, replaced by capstan.
    pub swarm: Option<SwarmTarget>,
    /// The Compose project its instances belong to (`compose:` at the top level or on the
    /// service): `instances` may then name Compose services of it.
    pub compose: Option<Compose>,
    /// What real traffic, the containers and Prometheus must show of a new instance
    /// (`gates:` on the service, gate by gate over the top-level `gates:`).
    pub gates: Gates,
}

/// A service's Compose project, and how capstan keeps Compose's view of it true.
#[derive(Debug, Clone, PartialEq)]
pub struct Compose {
    pub project: String,
    /// The `.env` variable the compose file takes this service's image tag from
    /// (`image: repo:${SERVICE_A_TAG}`): capstan sets it to the release it deployed.
    pub variable: Option<String>,
    /// The Compose CLI on the host; `None`: chosen by the containers' Compose version label.
    pub command: Option<Vec<String>>,
    /// The `.env` file on the host; `None`: `.env` in the project's working directory.
    pub env_file: Option<String>,
}

/// `services.<name>.swarm`: which Swarm service, and Swarm's own rolling-update settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SwarmTarget {
    /// The Swarm service's name; default `<app>_<service>`, as `docker stack deploy` names it.
    pub service: String,
    /// Tasks updated at once (0: all at once, as in Swarm).
    pub parallelism: u64,
    /// Between two batches of tasks.
    pub delay: Duration,
    pub order: SwarmOrder,
    pub failure_action: SwarmFailureAction,
    /// How long Swarm watches each updated task for a failure.
    pub monitor: Duration,
    /// Fraction of tasks that may fail during an update before `failure_action` applies.
    pub max_failure_ratio: f64,
    /// How long capstan waits for Swarm to finish the update (or its rollback).
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmOrder {
    StartFirst,
    StopFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwarmFailureAction {
    Rollback,
    Pause,
    Continue,
}

impl SwarmOrder {
    pub fn as_str(&self) -> &'static str {
        match self {
            SwarmOrder::StartFirst => "start-first",
            SwarmOrder::StopFirst => "stop-first",
        }
    }
}

impl SwarmFailureAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            SwarmFailureAction::Rollback => "rollback",
            SwarmFailureAction::Pause => "pause",
            SwarmFailureAction::Continue => "continue",
        }
    }
}

impl Service {
    pub fn runs_on(&self, host: &HostAddr) -> bool {
        self.hosts.is_empty() || self.hosts.contains(host)
    }

    /// The rows of the plan: the instances, or for a Swarm service the Swarm service itself.
    pub fn plan_names(&self) -> Vec<String> {
        match &self.swarm {
            Some(sw) => vec![sw.service.clone()],
            None => self.instances.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// The context directory, resolved against the config file's directory.
    pub context: PathBuf,
    /// The Dockerfile, resolved the same way.
    pub dockerfile: PathBuf,
    pub args: IndexMap<String, String>,
    pub target: Option<String>,
    pub labels: IndexMap<String, String>,
    pub tags: Vec<crate::core::tags::TagKind>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub http: Option<HttpProbe>,
    pub timeout: Duration,
    pub interval: Duration,
    /// Consecutive good probes needed before an instance counts as healthy.
    pub healthy_after: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpProbe {
    /// The container's port (not the published one).
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub method: DrainMethod,
    /// How long to wait after draining for in-flight requests to finish.
    pub wait: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DrainMethod {
    None,
    Nginx(Nginx),
    Command { drain: String, undrain: String },
}

/// `drain.nginx`: the upstream file, how nginx is reloaded, and how an instance's
/// `server` line is found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nginx {
    /// The file on the host (bind-mounted into `container` when nginx runs in one).
    pub upstream_conf: String,
    /// A shell command on the host, or with `container`, the argv run inside it.
    pub reload: String,
    /// The upstream port when it differs from the published one (or the health port).
    pub port: Option<u16>,
    /// The container (or Compose service) nginx runs in: `nginx -t`, the reload and the
    /// check that the change took run inside it through the Docker API.
    pub container: Option<String>,
    /// The `server` address of each instance, when capstan cannot tell it by itself.
    pub server: Option<ServerAddress>,
}

/// `drain.nginx.server`: one template for every instance (`"{instance}:3001"`), or one
/// address per instance.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerAddress {
    Template(String),
    PerInstance(IndexMap<String, String>),
}

impl ServerAddress {
    /// The address for an instance as the config names it.
    pub fn for_instance(&self, instance: &str) -> Option<String> {
        match self {
            ServerAddress::Template(t) => Some(t.replace("{instance}", instance)),
            ServerAddress::PerInstance(m) => m.get(instance).cloned(),
        }
    }
}

impl Nginx {
    /// The reload as an argv for `docker exec` (nginx in a container).
    pub fn reload_argv(&self) -> Vec<String> {
        shlex::split(&self.reload).unwrap_or_else(|| self.reload.split_whitespace().map(String::from).collect())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub url: String,
    pub requests: u32,
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `gates:`: what a new instance must show once it serves, judged by what its users
/// see. Set at the top level for every service, or on a service: a gate (traffic,
/// resources, prometheus) or the window given on the service replaces the top level's.
/// A top-level traffic gate applies to the services drained through nginx (it reads
/// nginx's access log); on another service it must not be set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gates {
    /// How long the gates watch each instance after it is put back, before the next
    /// one is touched (the bake window, when set, is watched too).
    pub window: Duration,
    pub traffic: Option<TrafficGate>,
    pub resources: Option<ResourceGate>,
    pub prometheus: Option<PrometheusGate>,
}

impl Gates {
    /// The window when none is given.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
}

/// `gates.traffic`: real requests, per instance, from nginx's access log (the
/// `log_format` in `core::access_log`), against absolute limits and against the
/// instances still on the old release over the same window.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficGate {
    pub access_log: AccessLog,
    /// Fewer requests on the instance than this: no verdict (said so), and `too_little_traffic` decides.
    pub min_requests: u64,
    pub too_little_traffic: IfUndecided,
    /// A fraction (`1%` is 0.01) of the requests an instance answered with a server error.
    pub max_error_rate: Option<f64>,
    /// Percentage points over the old instances' error rate, as a fraction (`0.5%` is 0.005).
    pub max_error_rate_increase: Option<f64>,
    pub max_p95: Option<Duration>,
    /// At most this many times the old instances' p95.
    pub max_p95_ratio: Option<f64>,
}

/// Where nginx's access log is read.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    /// A file on the host.
    File(String),
    /// The output of nginx's container (the official image sends its access log there).
    Container(String),
}

/// What an undecided gate (too little traffic, no data) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IfUndecided {
    /// Said so, and the release goes on: no revert on noise.
    Pass,
    /// Said so, and the release reverts.
    Fail,
}

/// `gates.resources`: the new container's CPU and memory, from the engine's stats.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceGate {
    /// Percent of one CPU, as `docker stats` shows it (`80%`; 200 is two cores busy).
    pub max_cpu: Option<f64>,
    pub max_memory: Option<u64>,
    /// At most this many times the old instances' memory (on average per container).
    pub max_memory_ratio: Option<f64>,
}

/// `gates.prometheus`: PromQL queries, asked of a Prometheus reached from the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusGate {
    /// Like `http://127.0.0.1:9090`, as seen from the host.
    pub url: String,
    pub queries: Vec<QueryGate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryGate {
    /// For messages; `query 1`, `query 2`… when not given.
    pub name: String,
    /// PromQL with `{instance}`, `{address}` and `{service}` filled in per instance.
    pub query: String,
    /// What every value of the answer must meet, like `< 0.01`.
    pub expect: crate::core::promql::Comparison,
    /// An empty answer or NaN: no verdict, and this decides.
    pub no_data: IfUndecided,
}
