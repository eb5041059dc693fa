//! `capstan.yml`: the shape users write, and its validation into [`Config`].
//!
//! Pure: reads a string, returns a validated value or every problem found, each
//! with the file, the key path (`services.web.health.timeout`) and what was
//! expected. Unknown keys are errors. Secrets are never in the file, only the
//! names of the environment variables that hold them.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::core::names;

// ---------------------------------------------------------------------------
// The validated config
// ---------------------------------------------------------------------------

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
    /// `release.raw_tags`: deploy versions that are not semver.
    pub raw_tags: bool,
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddr {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
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

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in the file: where, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: String,
    pub line: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if let [one] = self.issues.as_slice() {
            return write!(f, "{}", render_issue(&file.to_string(), one));
        }
        write!(f, "{file}: {} problems", self.issues.len())?;
        for i in &self.issues {
            write!(f, "\n  {}", render_issue(&file.to_string(), i))?;
        }
        Ok(())
    }
}

fn render_issue(file: &str, i: &Issue) -> String {
    let at = match i.line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    };
    format!("{at}: {}", i.describe())
}

impl Issue {
    /// `key.path: message`, or the message alone for the file as a whole.
    pub fn describe(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// The raw shape (what serde reads)
// ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    app: String,
    hosts: Vec<String>,
    #[serde(default)]
    ssh: RawSsh,
    registry: Option<RawRegistry>,
    state_dir: Option<String>,
    #[serde(default)]
    docker: RawDocker,
    #[serde(default)]
    lock: RawLock,
    #[serde(default)]
    release: RawRelease,
    #[serde(default)]
    preflight: RawPreflight,
    #[serde(default)]
    hooks: RawHooks,
    #[serde(default)]
    validate: RawValidate,
    bake: Option<String>,
    #[serde(default)]
    rollout: RawRollout,
    #[serde(default)]
    roles: IndexMap<String, Vec<String>>,
    compose: Option<RawComposeTop>,
    services: IndexMap<String, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComposeTop {
    project: Option<String>,
    command: Option<Vec<String>>,
    env_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComposeService {
    project: Option<String>,
    variable: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    parallel: Option<usize>,
    canary: Option<usize>,
    on_failure: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    min_free_disk: Option<String>,
    max_load_per_core: Option<f64>,
    backup: Option<RawBackup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackup {
    path: String,
    max_age: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHooks {
    pre_deploy: Option<String>,
    post_deploy: Option<String>,
    on_failure: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawValidate {
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
    errors: Option<RawErrors>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    url: String,
    status: Option<u16>,
    body: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawErrors {
    pattern: String,
    #[serde(default)]
    max: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigrate {
    command: Vec<String>,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    identity_file: Option<String>,
    known_hosts: Option<String>,
    config: Option<String>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    server: String,
    username: String,
    password_env: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    socket: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLock {
    lease: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRelease {
    #[serde(default)]
    raw_tags: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    image: String,
    build: Option<RawBuild>,
    #[serde(default)]
    instances: Vec<String>,
    #[serde(default)]
    health: RawHealth,
    drain: Option<RawDrain>,
    traffic: Option<RawTraffic>,
    pause: Option<String>,
    migrate: Option<RawMigrate>,
    hosts: Option<Vec<String>>,
    target: Option<String>,
    swarm: Option<RawSwarm>,
    compose: Option<RawComposeService>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSwarm {
    service: Option<String>,
    parallelism: Option<u64>,
    delay: Option<String>,
    order: Option<String>,
    failure_action: Option<String>,
    monitor: Option<String>,
    max_failure_ratio: Option<f64>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuild {
    #[serde(default = "dot")]
    context: String,
    dockerfile: Option<String>,
    #[serde(default)]
    args: IndexMap<String, String>,
    target: Option<String>,
    #[serde(default)]
    labels: IndexMap<String, String>,
    tags: Option<Vec<String>>,
}

fn dot() -> String {
    ".".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    http: Option<RawHttp>,
    timeout: Option<String>,
    interval: Option<String>,
    healthy_after: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    port: u16,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    nginx: Option<RawNginx>,
    command: Option<RawCommandDrain>,
    wait: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    upstream_conf: String,
    reload: Option<String>,
    port: Option<u16>,
    container: Option<String>,
    server: Option<RawServerAddress>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawServerAddress {
    Template(String),
    PerInstance(IndexMap<String, String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommandDrain {
    drain: String,
    undrain: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTraffic {
    url: String,
    requests: Option<u32>,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

pub const DEFAULT_FILE: &str = "capstan.yml";

/// Reads and validates a config file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        issues: vec![Issue { path: String::new(), line: None, message: format!("cannot read the file: {e}") }],
    })?;
    parse(file, &text)
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let err = |issues| ConfigError { file: file.to_path_buf(), issues };
    let raw: RawConfig = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            <serde_saphyr::Error as serde::de::Error>::custom(PathMarked(path, inner).to_string())
        })
    })
    .map_err(|e| err(vec![serde_issue(&e)]))?;
    let mut v = Validator { issues: Vec::new() };
    let config = v.config(file, raw);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        let issues = v.issues.into_iter().map(|i| Issue { line: i.line.or_else(|| line_of(text, &i.path)), ..i }).collect();
        Err(err(issues))
    }
}

/// The line of a key path (`services.web.health.timeout`) in block or flow
/// YAML: each segment is looked for after the line of the one before. For
/// messages and annotations; `None` when not found.
fn line_of(text: &str, path: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for seg in path.split('.') {
        let key = seg.split('[').next().unwrap_or(seg);
        if key.is_empty() {
            continue;
        }
        let at = (from..lines.len()).find(|&i| {
            let l = lines[i];
            l.match_indices(key).any(|(pos, _)| {
                let before_ok = pos == 0 || !l[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '-');
                let after = l[pos + key.len()..].trim_start_matches(['"', '\'']);
                before_ok && after.starts_with(':')
            })
        })?;
        found = Some(at as u64 + 1);
        from = at;
    }
    found
}

/// Carries the key path through serde-saphyr's error type.
struct PathMarked(String, serde_saphyr::Error);

const PATH_MARK: &str = "@@path=";
const PATH_END: &str = "@@ ";

impl fmt::Display for PathMarked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PATH_MARK}{}{PATH_END}{}", self.0, first_line(&self.1.to_string()))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

fn serde_issue(e: &serde_saphyr::Error) -> Issue {
    let mut line = e.location().map(|l| l.line()).filter(|l| *l > 0);
    let mut text = first_line(&e.to_string());
    // "… at line 18, column 21": keep the line, drop the suffix.
    if let Some(i) = text.rfind(" at line ") {
        let n: String = text[i + 9..].chars().take_while(|c| c.is_ascii_digit()).collect();
        line = line.or_else(|| n.parse().ok());
        text.truncate(i);
    }
    let (path, message) = match text.split_once(PATH_MARK) {
        Some((_, rest)) => match rest.split_once(PATH_END) {
            Some((p, m)) => (if p == "." { String::new() } else { p.to_string() }, m.to_string()),
            None => (String::new(), rest.to_string()),
        },
        None => (String::new(), text),
    };
    Issue { path, line, message: tidy_serde_message(&message) }
}

/// serde-saphyr prefixes messages with a location we already show.
fn tidy_serde_message(m: &str) -> String {
    let m = m.trim();
    let m = m.strip_prefix("error: ").unwrap_or(m);
    // "line 3 column 5: unknown field ..." -> "unknown field ..."
    let m = match m.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") || head.starts_with("at line") => rest,
        _ => m,
    };
    match m {
        m if m.starts_with("invalid u16") => "expected a whole number from 1 to 65535".into(),
        m if m.starts_with("invalid u32") || m.starts_with("invalid u64") => "expected a whole number".into(),
        m => m.to_string(),
    }
}

struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue { path: path.into(), line: None, message: message.into() });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(_) => {
                self.issue(path, format!("expected a duration like 500ms, 60s or 2m, got {s:?}"));
                default
            }
        }
    }

    fn name(&mut self, path: &str, what: &str, value: &str, check: fn(&str) -> Result<(), String>) {
        if let Err(e) = check(value) {
            self.issue(path, format!("invalid {what} {value:?}: {e}"));
        }
    }

    fn config(&mut self, file: &Path, raw: RawConfig) -> Config {
        self.name("app", "app name", &raw.app, names::check_app);
        if raw.hosts.is_empty() {
            self.issue("hosts", "expected at least one host like deployer@203.0.113.10:22");
        }
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.iter().enumerate() {
            match names::parse_host(h) {
                Ok(a) => {
                    if hosts.contains(&a) {
                        self.issue(format!("hosts[{i}]"), format!("host {h:?} is listed twice"));
                    }
                    hosts.push(a)
                }
                Err(e) => self.issue(format!("hosts[{i}]"), format!("invalid host {h:?}: {e}")),
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let ssh = Ssh {
            identity_file: raw.ssh.identity_file.as_deref().map(|p| resolve_path(base, p)),
            known_hosts: raw.ssh.known_hosts.as_deref().map(|p| resolve_path(base, p)),
            config_file: raw.ssh.config.as_deref().map(|p| resolve_path(base, p)),
            connect_timeout: self.duration("ssh.connect_timeout", raw.ssh.connect_timeout.as_deref(), Duration::from_secs(15)),
        };
        let registry = raw.registry.map(|r| {
            if r.server.trim().is_empty() || r.server.contains(char::is_whitespace) || r.server.contains('/') {
                self.issue("registry.server", format!("expected a registry host like ghcr.io or 10.0.0.2:5000, got {:?}", r.server));
            }
            if r.username.trim().is_empty() {
                self.issue("registry.username", "expected a user name");
            }
            if !names::is_env_name(&r.password_env) {
                self.issue(
                    "registry.password_env",
                    format!(
                        "expected the NAME of an environment variable that holds the password (like REGISTRY_TOKEN), got {:?}; secrets never go in the file",
                        r.password_env
                    ),
                );
            }
            Registry { server: r.server, username: r.username, password_env: r.password_env }
        });
        let state_dir = raw.state_dir.unwrap_or_else(|| format!("/var/lib/capstan/{}", raw.app));
        if !state_dir.starts_with('/') {
            self.issue("state_dir", format!("expected an absolute path on the host, got {state_dir:?}"));
        }
        let docker_socket = raw.docker.socket.unwrap_or_else(|| "/var/run/docker.sock".into());
        if !docker_socket.starts_with('/') {
            self.issue("docker.socket", format!("expected an absolute path on the host, got {docker_socket:?}"));
        }
        let lock_lease = self.duration("lock.lease", raw.lock.lease.as_deref(), Duration::from_secs(2 * 60));
        let roles = self.roles(raw.roles, &raw.hosts, &hosts);
        let rollout = self.rollout(raw.rollout, hosts.len());
        if raw.services.is_empty() {
            self.issue("services", "expected at least one service");
        }
        let mut services = Vec::new();
        let mut seen_instances: Vec<(String, String)> = Vec::new();
        for (name, mut s) in raw.services {
            let p = format!("services.{name}");
            self.name(&p, "service name", &name, names::check_service);
            let swarm = self.swarm(&p, &raw.app, &name, s.target.as_deref(), s.swarm.take());
            if swarm.is_some() {
                self.swarm_refusals(&p, &s);
            }
            for (i, inst) in s.instances.iter().enumerate() {
                let ip = format!("{p}.instances[{i}]");
                self.name(&ip, "instance name", inst, names::check_container);
                if let Some((other, _)) = seen_instances.iter().find(|(_, n)| n == inst) {
                    self.issue(ip, format!("instance {inst:?} is already listed under services.{other}"));
                }
                seen_instances.push((name.clone(), inst.clone()));
            }
            if s.instances.is_empty() && swarm.is_none() {
                self.issue(format!("{p}.instances"), "expected the names of the containers to replace, like [web-1, web-2]");
            }
            self.name(&format!("{p}.image"), "image repository", &s.image, names::check_repository);
            let health = self.health(&p, s.health);
            let drain = self.drain(&p, s.drain, &s.instances);
            let compose = self.compose(&p, raw.compose.as_ref(), s.compose.take());
            let traffic = s.traffic.map(|t| {
                if !(t.url.starts_with("http://")) {
                    self.issue(format!("{p}.traffic.url"), format!("expected an http:// URL as seen from the host, got {:?}", t.url));
                }
                let requests = t.requests.unwrap_or(10);
                if requests == 0 {
                    self.issue(format!("{p}.traffic.requests"), "expected at least 1");
                }
                Traffic { url: t.url, requests }
            });
            let pause = self.duration(&format!("{p}.pause"), s.pause.as_deref(), Duration::from_secs(2));
            let migrate = s.migrate.map(|m| {
                if m.command.is_empty() || m.command[0].trim().is_empty() {
                    self.issue(format!("{p}.migrate.command"), "expected a command like [bin/rails, db:migrate]");
                }
                let timeout = self.duration(&format!("{p}.migrate.timeout"), m.timeout.as_deref(), Duration::from_secs(600));
                Migrate { command: m.command, timeout }
            });
            let service_hosts = self.service_hosts(&p, s.hosts, &roles, &raw.hosts, &hosts);
            if swarm.is_some() && hosts.len() > 1 && service_hosts.len() != 1 {
                self.issue(
                    format!("{p}.hosts"),
                    "expected exactly one host for a target: swarm service: capstan updates it through one manager node, and Swarm rolls it on every node",
                );
            }
            services.push(Service {
                name,
                image: s.image,
                build: s.build.map(|b| self.build(&p, base, b)),
                instances: s.instances,
                health,
                drain,
                traffic,
                pause,
                migrate,
                hosts: service_hosts,
                swarm,
                compose,
            });
        }
        Config {
            file: file.to_path_buf(),
            app: raw.app,
            hosts,
            ssh,
            registry,
            state_dir,
            docker_socket,
            lock_lease,
            raw_tags: raw.release.raw_tags,
            preflight: self.preflight(raw.preflight),
            hooks: self.hooks(raw.hooks),
            validate: self.validate(raw.validate),
            bake: self.duration("bake", raw.bake.as_deref(), Duration::ZERO),
            rollout,
            roles,
            services,
        }
    }

    /// `target:` and `swarm:` of a service: `Some` for a Swarm service.
    fn swarm(&mut self, p: &str, app: &str, name: &str, target: Option<&str>, raw: Option<RawSwarm>) -> Option<SwarmTarget> {
        match target {
            None | Some("containers") => {
                if raw.is_some() {
                    self.issue(format!("{p}.swarm"), "only for a Swarm service: add `target: swarm`, or leave swarm: out");
                }
                return None;
            }
            Some("swarm") => {}
            Some(other) => {
                self.issue(format!("{p}.target"), format!("expected containers (the default) or swarm, got {other:?}"));
                return None;
            }
        }
        let r = raw.unwrap_or_default();
        let p = format!("{p}.swarm");
        let service = r.service.unwrap_or_else(|| format!("{app}_{name}"));
        if let Err(e) = names::check_swarm_service(&service) {
            let how = if service == format!("{app}_{name}") { " (the default, <app>_<service>; set swarm.service)" } else { "" };
            self.issue(format!("{p}.service"), format!("invalid Swarm service name {service:?}{how}: {e}"));
        }
        let order = match r.order.as_deref() {
            None | Some("start-first") => SwarmOrder::StartFirst,
            Some("stop-first") => SwarmOrder::StopFirst,
            Some(other) => {
                self.issue(format!("{p}.order"), format!("expected start-first or stop-first, got {other:?}"));
                SwarmOrder::StartFirst
            }
        };
        let failure_action = match r.failure_action.as_deref() {
            None | Some("rollback") => SwarmFailureAction::Rollback,
            Some("pause") => SwarmFailureAction::Pause,
            Some("continue") => SwarmFailureAction::Continue,
            Some(other) => {
                self.issue(format!("{p}.failure_action"), format!("expected rollback, pause or continue, got {other:?}"));
                SwarmFailureAction::Rollback
            }
        };
        let max_failure_ratio = r.max_failure_ratio.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&max_failure_ratio) {
            self.issue(format!("{p}.max_failure_ratio"), format!("expected a fraction from 0 to 1, like 0.2, got {max_failure_ratio}"));
        }
        let timeout = self.duration(&format!("{p}.timeout"), r.timeout.as_deref(), Duration::from_secs(10 * 60));
        if timeout.is_zero() {
            self.issue(format!("{p}.timeout"), "expected a duration above zero");
        }
        Some(SwarmTarget {
            service,
            parallelism: r.parallelism.unwrap_or(1),
            delay: self.duration(&format!("{p}.delay"), r.delay.as_deref(), Duration::ZERO),
            order,
            failure_action,
            monitor: self.duration(&format!("{p}.monitor"), r.monitor.as_deref(), Duration::from_secs(5)),
            max_failure_ratio,
            timeout,
        })
    }

    /// The keys of a container service that mean nothing for a Swarm service, where Swarm replaces the tasks.
    fn swarm_refusals(&mut self, p: &str, s: &RawService) {
        if !s.instances.is_empty() {
            self.issue(format!("{p}.instances"), "a target: swarm service has no containers to list: Swarm runs its tasks (leave instances out)");
        }
        if s.drain.is_some() {
            self.issue(
                format!("{p}.drain"),
                "Swarm replaces the tasks of a target: swarm service itself, so capstan cannot drain them one by one (leave drain out; swarm.order: start-first keeps one serving)",
            );
        }
        if s.pause.is_some() {
            self.issue(format!("{p}.pause"), "Swarm paces a target: swarm service: use swarm.delay (between batches) and swarm.monitor instead");
        }
        if s.migrate.is_some() {
            self.issue(format!("{p}.migrate"), "not supported for a target: swarm service (run the migration from a pre_deploy hook)");
        }
    }

    /// A host named in `roles:` or `services.*.hosts`: as written in `hosts:`, or by its name alone.
    fn listed_host(written: &[String], hosts: &[HostAddr], h: &str) -> Option<HostAddr> {
        let i = written.iter().position(|w| w == h).or_else(|| hosts.iter().position(|a| a.host == h || a.to_string() == h))?;
        hosts.get(i).cloned()
    }

    fn roles(&mut self, raw: IndexMap<String, Vec<String>>, written: &[String], hosts: &[HostAddr]) -> IndexMap<String, Vec<HostAddr>> {
        let mut out = IndexMap::new();
        for (role, list) in raw {
            let p = format!("roles.{role}");
            self.name(&p, "role name", &role, names::check_service);
            if list.is_empty() {
                self.issue(&p, "expected at least one host of hosts:");
            }
            let mut members = Vec::new();
            for (i, h) in list.iter().enumerate() {
                match Self::listed_host(written, hosts, h) {
                    Some(a) if !members.contains(&a) => members.push(a),
                    Some(_) => self.issue(format!("{p}[{i}]"), format!("host {h:?} is listed twice")),
                    None => self.issue(format!("{p}[{i}]"), format!("{h:?} is not one of hosts: ({})", written.join(", "))),
                }
            }
            out.insert(role, members);
        }
        out
    }

    fn rollout(&mut self, r: RawRollout, host_count: usize) -> HostRollout {
        let parallel = match r.parallel {
            Some(0) => {
                self.issue("rollout.parallel", "expected at least 1 (hosts rolled at once)");
                1
            }
            Some(n) => n,
            None => host_count.max(1),
        };
        let canary = r.canary.unwrap_or(0);
        if canary > 0 && canary >= host_count {
            self.issue(
                "rollout.canary",
                format!("expected fewer canary hosts than hosts ({host_count}): the canaries go first and the rest follow once they are done"),
            );
        }
        let on_failure = match r.on_failure.as_deref() {
            None | Some("revert_all") => OnFailure::RevertAll,
            Some("revert_host") => OnFailure::RevertHost,
            Some(other) => {
                self.issue("rollout.on_failure", format!("expected revert_all or revert_host, got {other:?}"));
                OnFailure::RevertAll
            }
        };
        HostRollout { parallel, canary, on_failure }
    }

    fn service_hosts(
        &mut self,
        p: &str,
        raw: Option<Vec<String>>,
        roles: &IndexMap<String, Vec<HostAddr>>,
        written: &[String],
        hosts: &[HostAddr],
    ) -> Vec<HostAddr> {
        let Some(list) = raw else { return Vec::new() };
        if list.is_empty() {
            self.issue(format!("{p}.hosts"), "expected roles or hosts to run on (leave the key out for every host)");
        }
        let mut out: Vec<HostAddr> = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let found = match roles.get(entry) {
                Some(members) => members.clone(),
                None => match Self::listed_host(written, hosts, entry) {
                    Some(a) => vec![a],
                    None => {
                        let roles = if roles.is_empty() { "none defined".to_string() } else { roles.keys().cloned().collect::<Vec<_>>().join(", ") };
                        self.issue(format!("{p}.hosts[{i}]"), format!("{entry:?} is neither a role (roles: {roles}) nor one of hosts:"));
                        vec![]
                    }
                },
            };
            for a in found {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    fn preflight(&mut self, p: RawPreflight) -> Preflight {
        let min_free_disk = p.min_free_disk.and_then(|s| match s.trim().parse::<bytesize::ByteSize>() {
            Ok(b) => Some(b.as_u64()),
            Err(_) => {
                self.issue("preflight.min_free_disk", format!("expected a size like 500MB or 2GiB, got {s:?}"));
                None
            }
        });
        if let Some(l) = p.max_load_per_core {
            if !(l > 0.0 && l.is_finite()) {
                self.issue("preflight.max_load_per_core", format!("expected a load above zero, like 2.0, got {l}"));
            }
        }
        let backup = p.backup.map(|b| {
            if !b.path.starts_with('/') || b.path.contains('\n') {
                self.issue(
                    "preflight.backup.path",
                    format!("expected an absolute path or glob on the host, like /var/backups/shop/*.sql.gz, got {:?}", b.path),
                );
            }
            let max_age = self.duration("preflight.backup.max_age", Some(&b.max_age), Duration::from_secs(86400));
            BackupCheck { path: b.path, max_age }
        });
        Preflight { min_free_disk, max_load_per_core: p.max_load_per_core, backup }
    }

    fn hooks(&mut self, h: RawHooks) -> Hooks {
        for (key, v) in [("pre_deploy", &h.pre_deploy), ("post_deploy", &h.post_deploy), ("on_failure", &h.on_failure)] {
            if v.as_deref().is_some_and(|c| c.trim().is_empty()) {
                self.issue(format!("hooks.{key}"), "expected a shell command");
            }
        }
        Hooks { pre_deploy: h.pre_deploy, post_deploy: h.post_deploy, on_failure: h.on_failure }
    }

    fn validate(&mut self, v: RawValidate) -> Validate {
        let endpoints = v
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if !e.url.starts_with("http://") {
                    self.issue(format!("validate.endpoints[{i}].url"), format!("expected an http:// URL as seen from the host, got {:?}", e.url));
                }
                let status = e.status.unwrap_or(200);
                if !(100..600).contains(&status) {
                    self.issue(format!("validate.endpoints[{i}].status"), format!("expected an HTTP status, got {status}"));
                }
                Endpoint { url: e.url, status, body: e.body }
            })
            .collect();
        let errors = v.errors.map(|e| {
            if let Err(err) = regex::Regex::new(&e.pattern) {
                self.issue("validate.errors.pattern", format!("expected a regular expression: {err}"));
            }
            ErrorCheck { pattern: e.pattern, max: e.max }
        });
        Validate { endpoints, errors }
    }

    fn build(&mut self, p: &str, base: &Path, b: RawBuild) -> Build {
        let p = format!("{p}.build");
        let context = resolve_path(base, &b.context);
        // Like Compose: the Dockerfile is relative to the context.
        let dockerfile = context.join(b.dockerfile.as_deref().unwrap_or("Dockerfile"));
        for key in b.args.keys() {
            if key.is_empty() || key.contains('=') || key.contains(char::is_whitespace) {
                self.issue(format!("{p}.args"), format!("invalid build argument name {key:?}"));
            }
        }
        for key in b.labels.keys() {
            if key.is_empty() || key.contains(char::is_whitespace) || key.contains('=') {
                self.issue(format!("{p}.labels"), format!("invalid label name {key:?}"));
            }
        }
        if let Some(t) = &b.target {
            let ok = !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                self.issue(format!("{p}.target"), format!("expected the name of a build stage (FROM … AS name), got {t:?}"));
            }
        }
        let tags = match b.tags {
            None => crate::core::tags::TagKind::ALL.to_vec(),
            Some(list) => {
                let mut kinds = Vec::new();
                for (i, t) in list.iter().enumerate() {
                    match crate::core::tags::TagKind::parse(t) {
                        Some(k) => kinds.push(k),
                        None => self.issue(format!("{p}.tags[{i}]"), format!("unknown tag kind {t:?}: expected version, minor, major, latest or sha")),
                    }
                }
                kinds
            }
        };
        Build { context, dockerfile, args: b.args, target: b.target, labels: b.labels, tags }
    }

    fn health(&mut self, p: &str, h: RawHealth) -> Health {
        let http = h.http.map(|http| {
            let path = http.path.unwrap_or_else(|| "/health".into());
            if !path.starts_with('/') || path.contains(char::is_whitespace) {
                self.issue(format!("{p}.health.http.path"), format!("expected a URL path like /health, got {path:?}"));
            }
            if http.port == 0 {
                self.issue(format!("{p}.health.http.port"), "expected the container's port, 1-65535");
            }
            HttpProbe { port: http.port, path }
        });
        let timeout = self.duration(&format!("{p}.health.timeout"), h.timeout.as_deref(), Duration::from_secs(60));
        let interval = self.duration(&format!("{p}.health.interval"), h.interval.as_deref(), Duration::from_secs(1));
        if interval.is_zero() {
            self.issue(format!("{p}.health.interval"), "expected a duration above zero");
        }
        if timeout < interval {
            self.issue(format!("{p}.health.timeout"), "expected a timeout at least as long as health.interval");
        }
        let healthy_after = h.healthy_after.unwrap_or(3);
        if healthy_after == 0 {
            self.issue(format!("{p}.health.healthy_after"), "expected at least 1 consecutive good probe");
        }
        Health { http, timeout, interval, healthy_after }
    }

    /// A `server` address as nginx writes it: `host:port`, `[v6]:port` or `host`.
    fn server_address(&mut self, path: &str, a: &str) {
        let ok = !a.is_empty() && !a.contains(char::is_whitespace) && !a.contains(';') && !a.contains('{') && !a.contains('}') && !a.starts_with("unix:");
        if !ok {
            self.issue(path, format!("expected an upstream server address like service-a-1:3001, got {a:?}"));
        }
    }

    fn compose(&mut self, p: &str, top: Option<&RawComposeTop>, raw: Option<RawComposeService>) -> Option<Compose> {
        let project = raw.as_ref().and_then(|c| c.project.clone()).or_else(|| top.and_then(|t| t.project.clone()));
        let variable = raw.as_ref().and_then(|c| c.variable.clone());
        let Some(project) = project else {
            if raw.is_some() || top.is_some() {
                self.issue(
                    format!("{p}.compose.project"),
                    "expected the Compose project's name (compose: { project: NAME } at the top level or on the service)",
                );
            }
            return None;
        };
        let valid = !project.is_empty() && project.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !valid {
            self.issue(format!("{p}.compose.project"), format!("expected a Compose project name (lowercase letters, digits, - and _), got {project:?}"));
        }
        if let Some(v) = &variable {
            if !names::is_env_name(v) {
                self.issue(
                    format!("{p}.compose.variable"),
                    format!("expected the name of a variable of the compose project's .env, like SERVICE_A_TAG, got {v:?}"),
                );
            }
        }
        let command = top.and_then(|t| t.command.clone());
        if command.as_ref().is_some_and(|c| c.is_empty() || c[0].trim().is_empty()) {
            self.issue("compose.command", "expected the Compose command on the host, like [docker, compose] or [docker-compose]");
        }
        let env_file = top.and_then(|t| t.env_file.clone());
        if env_file.as_ref().is_some_and(|f| !f.starts_with('/')) {
            self.issue("compose.env_file", format!("expected an absolute path on the host, got {:?}", env_file.as_deref().unwrap_or_default()));
        }
        Some(Compose { project, variable, command, env_file })
    }

    fn drain(&mut self, p: &str, d: Option<RawDrain>, instances: &[String]) -> Drain {
        let Some(d) = d else {
            return Drain { method: DrainMethod::None, wait: Duration::ZERO };
        };
        let wait = self.duration(&format!("{p}.drain.wait"), d.wait.as_deref(), Duration::from_secs(1));
        let method = match (d.nginx, d.command) {
            (Some(_), Some(_)) => {
                self.issue(format!("{p}.drain"), "expected one of nginx or command, not both");
                DrainMethod::None
            }
            (Some(n), None) => {
                if !n.upstream_conf.starts_with('/') {
                    self.issue(format!("{p}.drain.nginx.upstream_conf"), format!("expected an absolute path on the host, got {:?}", n.upstream_conf));
                }
                let reload = n.reload.unwrap_or_else(|| "nginx -s reload".into());
                if reload.trim().is_empty() {
                    self.issue(format!("{p}.drain.nginx.reload"), "expected the command that reloads nginx");
                }
                if let Some(c) = &n.container {
                    self.name(&format!("{p}.drain.nginx.container"), "container name", c, names::check_container);
                    if shlex::split(&reload).is_none_or(|a| a.is_empty()) {
                        self.issue(format!("{p}.drain.nginx.reload"), format!("expected a command to run inside {c}, like nginx -s reload, got {reload:?}"));
                    }
                }
                let server = n.server.map(|s| match s {
                    RawServerAddress::Template(t) => {
                        self.server_address(&format!("{p}.drain.nginx.server"), &t.replace("{instance}", "x"));
                        ServerAddress::Template(t)
                    }
                    RawServerAddress::PerInstance(m) => {
                        for (inst, a) in &m {
                            self.server_address(&format!("{p}.drain.nginx.server.{inst}"), a);
                            if !instances.contains(inst) {
                                self.issue(format!("{p}.drain.nginx.server.{inst}"), format!("{inst:?} is not one of {p}.instances"));
                            }
                        }
                        ServerAddress::PerInstance(m)
                    }
                });
                DrainMethod::Nginx(Nginx { upstream_conf: n.upstream_conf, reload, port: n.port, container: n.container, server })
            }
            (None, Some(c)) => {
                if c.drain.trim().is_empty() || c.undrain.trim().is_empty() {
                    self.issue(format!("{p}.drain.command"), "expected both drain and undrain commands");
                }
                DrainMethod::Command { drain: c.drain, undrain: c.undrain }
            }
            (None, None) => {
                self.issue(format!("{p}.drain"), "expected nginx: {upstream_conf, reload} or command: {drain, undrain}");
                DrainMethod::None
            }
        };
        Drain { method, wait }
    }
}

fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let expanded = match p.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(rest),
            None => PathBuf::from(p),
        },
        None => PathBuf::from(p),
    };
    if expanded.is_absolute() {
        expanded
    } else {
        base.join(expanded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
app: shop
hosts:
  - deployer@203.0.113.10:22
ssh:
  identity_file: /keys/deploy
  known_hosts: .github/known_hosts
registry:
  server: ghcr.io
  username: octocat
  password_env: REGISTRY_TOKEN
services:
  web:
    image: ghcr.io/acme/web
    build: { context: ., dockerfile: Dockerfile }
    instances: [web-2, web-1]
    health:
      http: { port: 8080, path: /health }
      timeout: 60s
      interval: 1s
    drain:
      nginx: { upstream_conf: /etc/nginx/conf.d/shop.conf, reload: "nginx -s reload" }
    traffic: { url: "http://127.0.0.1:80/" }
    pause: 10s
"#;

    fn parse_str(s: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/repo/capstan.yml"), s)
    }

    #[test]
    fn design_example_parses() {
        let c = parse_str(GOOD).unwrap();
        assert_eq!(c.app, "shop");
        assert_eq!(c.hosts[0].to_string(), "deployer@203.0.113.10:22");
        assert_eq!(c.ssh.known_hosts.as_deref(), Some(Path::new("/repo/.github/known_hosts")));
        assert_eq!(c.state_dir, "/var/lib/capstan/shop");
        let web = &c.services[0];
        assert_eq!(web.instances, vec!["web-2", "web-1"]);
        assert_eq!(web.health.timeout, Duration::from_secs(60));
        assert_eq!(web.health.healthy_after, 3);
        assert_eq!(web.pause, Duration::from_secs(10));
        assert!(matches!(web.drain.method, DrainMethod::Nginx { .. }));
        assert_eq!(web.traffic.as_ref().unwrap().requests, 10);
        let build = web.build.as_ref().unwrap();
        assert_eq!(build.context, Path::new("/repo/."));
        assert_eq!(build.dockerfile, Path::new("/repo/./Dockerfile"));
        assert_eq!(build.tags, crate::core::tags::TagKind::ALL.to_vec());
        assert!(!c.raw_tags);
    }

    #[test]
    fn validation_errors_carry_the_line() {
        let e = parse_str(&GOOD.replace("timeout: 60s", "timeout: sixty")).unwrap_err();
        assert_eq!(e.issues[0].line, Some(19), "the line of health.timeout: {e}");
        assert_eq!(line_of("a:\n  b: { c: 1, d: 2 }\n", "a.b.d"), Some(2));
        assert_eq!(line_of("a: 1\n", "x.y"), None);
    }

    #[test]
    fn build_blocks() {
        let c = parse_str(&GOOD.replace(
            "build: { context: ., dockerfile: Dockerfile }",
            "build:\n      context: app\n      dockerfile: docker/Dockerfile.prod\n      args: { RUST_VERSION: \"1.80\" }\n      target: runtime\n      labels: { team: storefront }\n      tags: [version, latest]",
        ).replace("app: shop", "app: shop\nrelease: { raw_tags: true }"))
        .unwrap();
        let b = c.services[0].build.as_ref().unwrap();
        assert_eq!(b.context, Path::new("/repo/app"));
        assert_eq!(b.dockerfile, Path::new("/repo/app/docker/Dockerfile.prod"));
        assert_eq!(b.args["RUST_VERSION"], "1.80");
        assert_eq!(b.target.as_deref(), Some("runtime"));
        assert_eq!(b.labels["team"], "storefront");
        assert_eq!(b.tags, vec![crate::core::tags::TagKind::Version, crate::core::tags::TagKind::Latest]);
        assert!(c.raw_tags);
        let e = parse_str(&GOOD.replace("dockerfile: Dockerfile }", "dockerfile: Dockerfile, tags: [version, nightly], target: \"a b\" }")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("services.web.build.tags[1]: unknown tag kind \"nightly\""), "{text}");
        assert!(text.contains("services.web.build.target: expected the name of a build stage"), "{text}");
    }

    /// One bad edit of the good file per case: the error must name the key path and say what was expected.
    #[test]
    fn errors_name_the_key_and_the_expectation() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("timeout: 60s", "timeout: sixty", "services.web.health.timeout", "expected a duration"),
            ("pause: 10s", "pause: 10 parsecs", "services.web.pause", "expected a duration"),
            ("pause: 10s", "pause: 10s\n    paus: 1s", "services.web.paus", "unknown field `paus`"),
            ("app: shop", "app: shop\nregion: eu", "region", "unknown field `region`"),
            ("port: 8080", "port: eighty", "services.web.health.http.port", "expected a whole number from 1 to 65535"),
            ("password_env: REGISTRY_TOKEN", "password_env: hunter2 secret", "registry.password_env", "NAME of an environment variable"),
            ("instances: [web-2, web-1]", "instances: [web-2, \"web;rm -rf /\"]", "services.web.instances[1]", "invalid instance name"),
            ("instances: [web-2, web-1]", "instances: []", "services.web.instances", "expected the names"),
            ("deployer@203.0.113.10:22", "deployer@203.0.113.10:notaport", "hosts[0]", "port"),
            ("deployer@203.0.113.10:22", "-oProxyCommand=evil", "hosts[0]", "invalid host"),
            ("image: ghcr.io/acme/web", "image: ghcr.io/acme/web:v1", "services.web.image", "without a tag"),
            ("upstream_conf: /etc/nginx/conf.d/shop.conf", "upstream_conf: shop.conf", "services.web.drain.nginx.upstream_conf", "absolute path"),
            ("url: \"http://127.0.0.1:80/\"", "url: \"ftp://x\"", "services.web.traffic.url", "http://"),
            ("app: shop", "app: \"sh op\"", "app", "invalid app name"),
            ("interval: 1s", "interval: 2m", "services.web.health.timeout", "at least as long"),
            ("app: shop", "app: shop\nrollout: { parallel: 0 }", "rollout.parallel", "at least 1"),
            ("app: shop", "app: shop\nrollout: { canary: 1 }", "rollout.canary", "fewer canary hosts than hosts (1)"),
            ("app: shop", "app: shop\nrollout: { on_failure: shrug }", "rollout.on_failure", "revert_all or revert_host"),
            ("app: shop", "app: shop\nroles: { web: [10.0.0.9] }", "roles.web[0]", "is not one of hosts:"),
            ("pause: 10s", "pause: 10s\n    hosts: [jobs]", "services.web.hosts[0]", "neither a role (roles: none defined)"),
        ];
        for (from, to, path, expect) in cases {
            assert!(GOOD.contains(from), "bad case: {from}");
            let text = GOOD.replacen(from, to, 1);
            let err = parse_str(&text).expect_err(&format!("{to:?} should be refused"));
            let shown = err.to_string();
            assert!(
                err.issues.iter().any(|i| i.path == *path && i.message.contains(expect)),
                "case {to:?}: expected path {path:?} and {expect:?}, got:\n{shown}"
            );
            assert!(shown.starts_with("/repo/capstan.yml"), "names the file: {shown}");
        }
    }

    #[test]
    fn roles_and_service_hosts() {
        let text = GOOD
            .replacen("  - deployer@203.0.113.10:22\n", "  - deployer@203.0.113.10:22\n  - deployer@203.0.113.11\n  - deployer@203.0.113.12\n", 1)
            .replacen("services:\n", "roles:\n  web: [203.0.113.10, deployer@203.0.113.11]\n  jobs: [203.0.113.12]\nrollout: { parallel: 2, canary: 1, on_failure: revert_host }\nservices:\n", 1)
            .replacen("pause: 10s", "pause: 10s\n    hosts: [web, 203.0.113.12]", 1);
        let c = parse_str(&text).unwrap();
        assert_eq!(c.rollout, HostRollout { parallel: 2, canary: 1, on_failure: OnFailure::RevertHost });
        assert_eq!(c.roles["web"].iter().map(|h| h.to_string()).collect::<Vec<_>>(), ["deployer@203.0.113.10:22", "deployer@203.0.113.11"]);
        let web = &c.services[0];
        assert_eq!(web.hosts.len(), 3);
        assert!(c.hosts.iter().all(|h| web.runs_on(h)));
        // Without `hosts:` a service runs everywhere; the default rolls every host at once and reverts all.
        let c = parse_str(GOOD).unwrap();
        assert!(c.services[0].hosts.is_empty() && c.services[0].runs_on(&c.hosts[0]));
        assert_eq!(c.rollout, HostRollout { parallel: 1, canary: 0, on_failure: OnFailure::RevertAll });
    }

    #[test]
    fn type_errors_carry_a_line() {
        let text = GOOD.replacen("port: 8080", "port: eighty", 1);
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.issues[0].line, Some(18), "{err}");
    }

    #[test]
    fn all_problems_are_reported_together() {
        let text = GOOD.replacen("timeout: 60s", "timeout: x", 1).replacen("pause: 10s", "pause: y", 1);
        let err = parse_str(&text).unwrap_err();
        assert_eq!(err.issues.len(), 2, "{err}");
        assert!(err.to_string().contains("2 problems"));
    }

    #[test]
    fn swarm_targets() {
        let swarm = |block: &str| GOOD.replacen("services:\n", &format!("services:\n  api:\n    image: ghcr.io/acme/api\n    target: swarm\n{block}"), 1);
        let c = parse_str(&swarm("")).unwrap();
        let api = c.service("api").unwrap();
        assert_eq!(api.plan_names(), ["shop_api"], "named like docker stack deploy names it");
        assert_eq!(
            api.swarm,
            Some(SwarmTarget {
                service: "shop_api".into(),
                parallelism: 1,
                delay: Duration::ZERO,
                order: SwarmOrder::StartFirst,
                failure_action: SwarmFailureAction::Rollback,
                monitor: Duration::from_secs(5),
                max_failure_ratio: 0.0,
                timeout: Duration::from_secs(600),
            })
        );
        assert!(api.instances.is_empty() && c.service("web").unwrap().swarm.is_none());
        let block = "    swarm: { service: shop-api, parallelism: 2, delay: 10s, order: stop-first, failure_action: pause, monitor: 30s, max_failure_ratio: 0.5, timeout: 3m }\n";
        let sw = parse_str(&swarm(block)).unwrap().service("api").unwrap().swarm.clone().unwrap();
        assert_eq!((sw.service.as_str(), sw.parallelism, sw.delay, sw.order), ("shop-api", 2, Duration::from_secs(10), SwarmOrder::StopFirst));
        assert_eq!(
            (sw.failure_action, sw.monitor, sw.max_failure_ratio, sw.timeout),
            (SwarmFailureAction::Pause, Duration::from_secs(30), 0.5, Duration::from_secs(180))
        );

        let cases: &[(&str, &str, &str)] = &[
            ("    swarm: { order: random }\n", "services.api.swarm.order", "expected start-first or stop-first"),
            ("    swarm: { failure_action: retry }\n", "services.api.swarm.failure_action", "expected rollback, pause or continue"),
            ("    swarm: { delay: soon }\n", "services.api.swarm.delay", "expected a duration"),
            ("    swarm: { monitor: 5 parsecs }\n", "services.api.swarm.monitor", "expected a duration"),
            ("    swarm: { timeout: 0s }\n", "services.api.swarm.timeout", "above zero"),
            ("    swarm: { max_failure_ratio: 1.5 }\n", "services.api.swarm.max_failure_ratio", "from 0 to 1"),
            ("    swarm: { parallelism: -1 }\n", "services.api.swarm.parallelism", ""),
            ("    swarm: { service: \"a b\" }\n", "services.api.swarm.service", "invalid Swarm service name"),
            ("    swarm: { service: api_ }\n", "services.api.swarm.service", "end with a letter or digit"),
            ("    swarm: { replicas: 3 }\n", "services.api.swarm.replicas", "unknown field `replicas`"),
            ("    instances: [api-1]\n", "services.api.instances", "Swarm runs its tasks"),
            ("    drain: { nginx: { upstream_conf: /etc/nginx/api.conf } }\n", "services.api.drain", "cannot drain them one by one"),
            ("    pause: 5s\n", "services.api.pause", "swarm.delay"),
            ("    migrate: { command: [migrate] }\n", "services.api.migrate", "pre_deploy hook"),
        ];
        for (block, path, expect) in cases {
            let err = parse_str(&swarm(block)).expect_err(&format!("{block:?} should be refused"));
            assert!(err.issues.iter().any(|i| i.path == *path && i.message.contains(expect)), "case {block:?}: expected {path:?} and {expect:?}, got:\n{err}");
        }
        // target: and swarm: themselves.
        let err = parse_str(&swarm("").replace("target: swarm", "target: kubernetes")).unwrap_err();
        assert!(err.issues.iter().any(|i| i.path == "services.api.target" && i.message.contains("containers (the default) or swarm")), "{err}");
        let err = parse_str(&GOOD.replacen("pause: 10s", "pause: 10s\n    swarm: { parallelism: 2 }", 1)).unwrap_err();
        assert!(err.issues.iter().any(|i| i.path == "services.web.swarm" && i.message.contains("add `target: swarm`")), "{err}");
        let err = parse_str(&swarm("").replacen("app: shop", "app: shop.eu", 1)).unwrap_err();
        assert!(
            err.issues.iter().any(|i| i.path == "services.api.swarm.service" && i.message.contains("(the default, <app>_<service>; set swarm.service)")),
            "{err}"
        );
        // Updated through one manager: with several hosts, exactly one.
        let two = swarm("").replacen("  - deployer@203.0.113.10:22\n", "  - deployer@203.0.113.10:22\n  - deployer@203.0.113.11\n", 1);
        let err = parse_str(&two).unwrap_err();
        assert!(err.issues.iter().any(|i| i.path == "services.api.hosts" && i.message.contains("exactly one host")), "{err}");
        assert!(parse_str(&two.replacen("target: swarm\n", "target: swarm\n    hosts: [203.0.113.11]\n", 1)).is_ok());
    }

    #[test]
    fn an_instance_cannot_belong_to_two_services() {
        let text = format!("{GOOD}  worker:\n    image: ghcr.io/acme/worker\n    instances: [web-1]\n");
        let err = parse_str(&text).unwrap_err();
        assert!(err.issues.iter().any(|i| i.path == "services.worker.instances[0]" && i.message.contains("services.web")), "{err}");
    }
}
