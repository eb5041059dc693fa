//! The shape of `capstan.yml` as serde reads it: every key the file may have,
//! with unknown keys refused. Only the validator reads these types.

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) app: String,
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) ssh: RawSsh,
    pub(super) registry: Option<RawRegistry>,
    pub(super) state_dir: Option<String>,
    #[serde(default)]
    pub(super) docker: RawDocker,
    #[serde(default)]
    pub(super) lock: RawLock,
    #[serde(default)]
    pub(super) release: RawRelease,
    #[serde(default)]
    pub(super) preflight: RawPreflight,
    #[serde(default)]
    pub(super) hooks: RawHooks,
    #[serde(default)]
    pub(super) validate: RawValidate,
    pub(super) bake: Option<String>,
    #[serde(default)]
    pub(super) rollout: RawRollout,
    #[serde(default)]
    pub(super) roles: IndexMap<String, Vec<String>>,
    pub(super) compose: Option<RawComposeTop>,
    pub(super) gates: Option<RawGates>,
    pub(super) services: IndexMap<String, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComposeTop {
    pub(super) project: Option<String>,
    pub(super) command: Option<Vec<String>>,
    pub(super) env_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComposeService {
    pub(super) project: Option<String>,
    pub(super) variable: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRollout {
    pub(super) parallel: Option<usize>,
    pub(super) canary: Option<usize>,
    pub(super) on_failure: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPreflight {
    pub(super) min_free_disk: Option<String>,
    pub(super) max_load_per_core: Option<f64>,
    pub(super) backup: Option<RawBackup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    pub(super) path: String,
    pub(super) max_age: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub(super) pre_deploy: Option<String>,
    pub(super) post_deploy: Option<String>,
    pub(super) on_failure: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawValidate {
    #[serde(default)]
    pub(super) endpoints: Vec<RawEndpoint>,
    pub(super) errors: Option<RawErrors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoint {
    pub(super) url: String,
    pub(super) status: Option<u16>,
    pub(super) body: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawErrors {
    pub(super) pattern: String,
    #[serde(default)]
    pub(super) max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMigrate {
    pub(super) command: Vec<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSsh {
    pub(super) identity_file: Option<String>,
    pub(super) known_hosts: Option<String>,
    pub(super) config: Option<String>,
    pub(super) connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) server: String,
    pub(super) username: String,
    pub(super) password_env: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDocker {
    pub(super) socket: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLock {
    pub(super) lease: Option<String>,
    pub(super) guard: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelease {
    #[serde(default)]
    pub(super) raw_tags: bool,
    #[serde(default)]
    pub(super) prereleases: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) image: String,
    pub(super) build: Option<RawBuild>,
    #[serde(default)]
    pub(super) instances: Vec<String>,
    #[serde(default)]
    pub(super) health: RawHealth,
    pub(super) drain: Option<RawDrain>,
    pub(super) traffic: Option<RawTraffic>,
    pub(super) pause: Option<String>,
    pub(super) migrate: Option<RawMigrate>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) target: Option<String>,
    pub(super) swarm: Option<RawSwarm>,
    pub(super) compose: Option<RawComposeService>,
    pub(super) gates: Option<RawGates>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSwarm {
    pub(super) service: Option<String>,
    pub(super) parallelism: Option<u64>,
    pub(super) delay: Option<String>,
    pub(super) order: Option<String>,
    pub(super) failure_action: Option<String>,
    pub(super) monitor: Option<String>,
    pub(super) max_failure_ratio: Option<f64>,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuild {
    #[serde(default = "dot")]
    pub(super) context: String,
    pub(super) dockerfile: Option<String>,
    #[serde(default)]
    pub(super) args: IndexMap<String, String>,
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) labels: IndexMap<String, String>,
    pub(super) tags: Option<Vec<String>>,
}

pub(super) fn dot() -> String {
    ".".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub(super) http: Option<RawHttp>,
    pub(super) timeout: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) healthy_after: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    pub(super) port: u16,
    pub(super) path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    pub(super) nginx: Option<RawNginx>,
    pub(super) command: Option<RawCommandDrain>,
    pub(super) wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNginx {
    pub(super) upstream_conf: String,
    pub(super) reload: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) container: Option<String>,
    pub(super) server: Option<RawServerAddress>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawServerAddress {
    Template(String),
    PerInstance(IndexMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommandDrain {
    pub(super) drain: String,
    pub(super) undrain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTraffic {
    pub(super) url: String,
    pub(super) requests: Option<u32>,
}

/// `gates:` at the top level (every service) or on a service (its own, gate by gate).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGates {
    pub(super) window: Option<String>,
    pub(super) traffic: Option<RawTrafficGate>,
    pub(super) resources: Option<RawResourceGate>,
    pub(super) prometheus: Option<RawPrometheusGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrafficGate {
    pub(super) access_log: Option<RawAccessLog>,
    pub(super) min_requests: Option<u64>,
    pub(super) too_little_traffic: Option<String>,
    pub(super) max_error_rate: Option<RawNumber>,
    pub(super) max_error_rate_increase: Option<RawNumber>,
    pub(super) max_p95: Option<String>,
    pub(super) max_p95_ratio: Option<RawNumber>,
}

/// A file on the host, or `{ container: NAME }`: what nginx's container writes to its output.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawAccessLog {
    File(String),
    Container { container: String },
}

/// A value written as a number (`2.0`) or as text (`1%`).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawNumber {
    Number(f64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawResourceGate {
    pub(super) max_cpu: Option<RawNumber>,
    pub(super) max_memory: Option<String>,
    pub(super) max_memory_ratio: Option<RawNumber>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrometheusGate {
    pub(super) url: String,
    #[serde(default)]
    pub(super) queries: Vec<RawQueryGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawQueryGate {
    pub(super) name: Option<String>,
    pub(super) query: String,
    pub(super) expect: String,
    pub(super) no_data: Option<String>,
}
