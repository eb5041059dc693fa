//! The validator: the raw shape into the validated [`Config`], with defaults,
//! names checked by `core::names`, durations parsed, paths resolved against the
//! config file's directory, and every problem collected rather than the first.
//! The `gates:` blocks are validated in `gates.rs`, on the same [`Validator`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use super::issue::Issue;
use super::raw::*;
use super::*;
use crate::core::names::{self, HostAddr};

/// Validates the raw shape into a [`Config`], or returns every problem found.
pub(super) fn validate(file: &Path, raw: RawConfig) -> Result<Config, Vec<Issue>> {
    let mut v = Validator { issues: Vec::new() };
    let config = v.config(file, raw);
    if v.issues.is_empty() {
        Ok(config)
    } else {
        Err(v.issues)
    }
}

pub(super) struct Validator {
    issues: Vec<Issue>,
}

impl Validator {
    pub(super) fn issue(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue { path: path.into(), line: None, message: message.into() });
    }

    pub(super) fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(_) => {
                self.issue(path, format!("expected a duration like 500ms, 60s or 2m, got {s:?}"));
                default
            }
        }
    }

    pub(super) fn name(&mut self, path: &str, what: &str, value: &str, check: fn(&str) -> Result<(), names::NameError>) {
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
        let lock_guard = self.duration("lock.guard", raw.lock.guard.as_deref(), Duration::from_secs(30));
        if lock_guard < Duration::from_secs(3) {
            self.issue(
                "lock.guard",
                format!("must be at least 3s (the run renews its lease every third of it), got {}", humantime::format_duration(lock_guard)),
            );
        }
        let roles = self.roles(raw.roles, &raw.hosts, &hosts);
        let rollout = self.rollout(raw.rollout, hosts.len());
        if raw.services.is_empty() {
            self.issue("services", "expected at least one service");
        }
        let top_gates = raw.gates.map(|g| self.gate_set("gates", g)).unwrap_or_default();
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
            let gates = self.service_gates(&p, &top_gates, s.gates.take(), &drain, swarm.is_some());
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
                gates,
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
            lock_guard,
            raw_tags: raw.release.raw_tags,
            prereleases: raw.release.prereleases,
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
