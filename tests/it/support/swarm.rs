//! One Swarm service per test, on the sandbox's engine in swarm mode (a
//! single-node swarm, `docker swarm init` if the engine is not in one yet; it is
//! left in swarm mode, which the other suites do not mind).
//!
//! No routing mesh here: this machine's kernel has no IPVS (no `/proc/net/ip_vs`,
//! no module to load), so ingress-published ports and service VIPs refuse every
//! connection. The replicas run on the host's network instead, each demo binding
//! port 8080 with `SO_REUSEPORT` (`DEMO_REUSEPORT=1`): the kernel spreads
//! connections over every replica listening, and nginx in front of them (the
//! same nginx the container tests use) retries a connection that a stopping
//! replica reset. Port 8080 because the `hc-ok`/`hc-bad` images' HEALTHCHECK
//! probes 8080 (`hc-bad`'s probes a dead 9999); host ports are shared, so Swarm
//! apps take turns: one at a time per machine (a file lock).

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::app::{app_name, run_capstan, start_lb_nginx, Run, CAPSTAN_TIMEOUT};
use super::http;
use super::load::LoadGen;
use super::proc::{self, ChildGuard};
use super::sandbox::{DockerCli, Sandbox};
use super::{port_open, short_tempdir, wait_for, write_file};

/// The port every replica listens on, on the host's network.
pub const SWARM_PORT: u16 = 8080;
const LOCK: &str = "/tmp/capstan-swarm.lock";

pub struct SwarmApp {
    name: String,
    service: String,
    tmp: tempfile::TempDir,
    cli: DockerCli,
    lb_port: u16,
    nginx: Option<ChildGuard>,
    ssh_host: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    registry: String,
    registry_password: String,
    /// Held while the app lives (see the module's doc).
    _lock: fs::File,
}

/// The engine is a Swarm manager: `docker swarm init --advertise-addr 127.0.0.1` unless it is one.
pub fn ensure_swarm(cli: &DockerCli) {
    if cli.out(&["info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}"]).trim() == "active true" {
        return;
    }
    let out = proc::run(&mut cli.cmd(&["swarm", "init", "--advertise-addr", "127.0.0.1"]), None, Duration::from_secs(60)).expect("run docker swarm init");
    // Another test process may have been first.
    assert!(out.success() || out.stderr.contains("already part of a swarm"), "docker swarm init failed: {}", out.stderr);
}

/// `repo:tag@sha256:…` → `repo@sha256:…` (what capstan records).
pub fn without_tag(image: &str) -> String {
    match image.split_once('@') {
        Some((name, digest)) => {
            let repo = match name.rsplit_once(':') {
                Some((r, tag)) if !tag.contains('/') => r,
                _ => name,
            };
            format!("{repo}@{digest}")
        }
        None => image.to_string(),
    }
}

impl SwarmApp {
    /// A service `<app>_web` of `replicas` tasks of the sandbox's `tag` image, on the host's
    /// network with `SO_REUSEPORT`, started first-start (as a stack would), up and answering,
    /// and nginx in front of it.
    pub fn new(sandbox: &Sandbox, hint: &str, tag: &str, replicas: u32) -> SwarmApp {
        let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).expect("open the Swarm tests' lock");
        // SAFETY: flock on a descriptor we own; released when the file closes (the app drops).
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0, "flock {LOCK}");
        let cli = DockerCli::local(sandbox.docker_config_dir());
        ensure_swarm(&cli);
        cleanup_stale_services(&cli);
        let name = app_name(hint);
        let tmp = short_tempdir("cst-w-");
        write_file(&tmp.path().join("owner"), std::process::id().to_string());
        fs::create_dir_all(tmp.path().join("nginx")).expect("create the nginx dir");
        let mut app = SwarmApp {
            service: format!("{name}_web"),
            name,
            tmp,
            cli,
            lb_port: 0,
            nginx: None,
            ssh_host: sandbox.ssh_host(),
            identity: sandbox.identity_file().to_path_buf(),
            known_hosts: sandbox.known_hosts().to_path_buf(),
            registry: sandbox.registry().to_string(),
            registry_password: sandbox.registry_password().to_string(),
            _lock: lock,
        };
        assert!(!port_open(SWARM_PORT), "port {SWARM_PORT} is taken on this host: the Swarm tests' replicas listen there");
        let owner = format!("capstan.test.owner={}", std::process::id());
        let replicas = replicas.to_string();
        let port = format!("DEMO_PORT={SWARM_PORT}");
        let image = sandbox.image(tag);
        #[rustfmt::skip]
        let args = [
            "service", "create", "--detach", "--name", &app.service, "--network", "host", "--replicas", &replicas,
            "--with-registry-auth", "--label", &owner, "--container-label", &owner,
            "-e", &port, "-e", "DEMO_REUSEPORT=1", "-e", "APP_SETTING=kept",
            "--update-order", "start-first", "--stop-grace-period", "10s", &image,
        ];
        app.cli.ok(&args);
        let want = format!("{replicas}/{replicas}");
        let up = wait_for(Duration::from_secs(90), Duration::from_millis(250), || {
            (app.cli.out(&["service", "ls", "--filter", &format!("name={}", app.service), "--format", "{{.Replicas}}"]).trim() == want).then_some(())
        });
        if up.is_none() {
            panic!("{} did not reach {want} tasks within 90 s:\n{}", app.service, app.cli.out(&["service", "ps", "--no-trunc", &app.service]));
        }
        let health = format!("http://127.0.0.1:{SWARM_PORT}/health");
        let ok = wait_for(Duration::from_secs(30), Duration::from_millis(100), || matches!(http::get(&health), Ok(r) if r.status == 200).then_some(()));
        assert!(ok.is_some(), "{} does not answer on {health}", app.service);
        app.start_nginx();
        app
    }

    /// nginx on a free port in front of 127.0.0.1:8080. The same address three times: when a
    /// stopping replica resets a connection, nginx tries the next "server", which the kernel
    /// hands to a replica that still listens. `max_fails=0`: never marked down.
    fn start_nginx(&mut self) {
        let nd = self.dir().join("nginx");
        let upstream = nd.join("upstream.conf");
        let server = format!("    server 127.0.0.1:{SWARM_PORT} max_fails=0;\n");
        write_file(&upstream, format!("upstream {} {{\n{}}}\n", self.name, server.repeat(3)));
        let (lb_port, guard) = start_lb_nginx(&nd, &upstream, &self.name);
        self.lb_port = lb_port;
        self.nginx = Some(guard);
    }

    /// The Swarm service's name, `<app>_web` (capstan's default for the config's `web`).
    pub fn service(&self) -> &str {
        &self.service
    }
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }
    pub fn lb_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.lb_port)
    }

    /// A capstan.yml with the one `target: swarm` service `web` (its Swarm service named by
    /// default); `swarm` is appended to its `swarm:` block.
    pub fn config(&self, swarm: &str) -> String {
        format!(
            "app: {name}\n\
             hosts:\n  - {host}\n\
             ssh:\n  identity_file: {identity}\n  known_hosts: {known_hosts}\n\
             registry:\n  server: {registry}\n  username: capstan\n  password_env: REGISTRY_PASSWORD\n\
             state_dir: {state}\n\
             release:\n  raw_tags: true\n\
             services:\n\
             \x20 web:\n\
             \x20   image: {registry}/capstan-demo\n\
             \x20   target: swarm\n\
             \x20   swarm:\n\
             \x20     parallelism: 1\n\
             \x20     delay: 0s\n\
             \x20     order: start-first\n\
             \x20     failure_action: rollback\n\
             \x20     monitor: 2s\n\
             \x20     timeout: 2m\n{swarm}\
             \x20   health:\n\
             \x20     http: {{ port: {SWARM_PORT}, path: /health }}\n\
             \x20     timeout: 20s\n\
             \x20     interval: 200ms\n\
             \x20     healthy_after: 3\n\
             \x20   traffic: {{ url: \"{lb}\", requests: 20 }}\n",
            name = self.name,
            host = self.ssh_host,
            identity = self.identity.display(),
            known_hosts = self.known_hosts.display(),
            registry = self.registry,
            state = self.state_dir().display(),
            lb = self.lb_url(),
        )
    }

    pub fn write_config(&self, yaml: &str) {
        write_file(&self.dir().join("capstan.yml"), yaml);
    }

    /// Run capstan in `dir()` with `REGISTRY_PASSWORD` and `NO_COLOR=1`.
    pub fn capstan(&self, args: &[&str]) -> Run {
        run_capstan(self.dir(), &self.registry_password, args, &[], CAPSTAN_TIMEOUT)
    }

    pub fn load(&self, rps: u32) -> LoadGen {
        LoadGen::start(&self.lb_url(), rps)
    }

    /// The image the service's spec names, as capstan records it (`repo@sha256:…`).
    pub fn image(&self) -> String {
        without_tag(self.cli.ok(&["service", "inspect", "--format", "{{.Spec.TaskTemplate.ContainerSpec.Image}}", &self.service]).trim())
    }

    /// `UpdateStatus.State` (empty when none).
    pub fn update_state(&self) -> String {
        self.cli.out(&["service", "inspect", "--format", "{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}", &self.service]).trim().to_string()
    }

    /// The images of the tasks Swarm wants running that run, sorted.
    pub fn running_images(&self) -> Vec<String> {
        let out =
            self.cli.out(&["service", "ps", "--filter", "desired-state=running", "--format", "{{.Image}} {{.CurrentState}}", "--no-trunc", &self.service]);
        let mut v: Vec<String> = out.lines().filter(|l| l.contains(" Running ")).map(|l| without_tag(l.split(' ').next().unwrap_or(""))).collect();
        v.sort();
        v
    }

    /// The images of the tasks Swarm has stopped or given up (desired state shutdown), sorted.
    pub fn stopped_images(&self) -> Vec<String> {
        let out = self.cli.out(&["service", "ps", "--filter", "desired-state=shutdown", "--format", "{{.Image}}", "--no-trunc", &self.service]);
        let mut v: Vec<String> = out.lines().map(without_tag).collect();
        v.sort();
        v
    }

    /// `docker service ps` as a text, for failure messages.
    pub fn tasks_text(&self) -> String {
        self.cli.out(&["service", "ps", "--no-trunc", &self.service])
    }

    /// The versions that answer `GET /version` through the load balancer (20 requests).
    pub fn versions(&self) -> Vec<String> {
        let url = format!("{}version", self.lb_url());
        let mut v: Vec<String> = (0..20).filter_map(|_| http::get(&url).ok()).filter(|r| r.status == 200).map(|r| r.body.trim().to_string()).collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for SwarmApp {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.terminate(Duration::from_secs(5));
        }
        let _ = proc::run(&mut self.cli.cmd(&["service", "rm", &self.service]), None, Duration::from_secs(60));
        // Its replicas hold port 8080 until they are gone.
        wait_for(Duration::from_secs(30), Duration::from_millis(200), || (!port_open(SWARM_PORT)).then_some(()));
    }
}

/// Removes the services of test processes that died without dropping their app.
fn cleanup_stale_services(cli: &DockerCli) {
    let ids = cli.out(&["service", "ls", "--quiet", "--filter", "label=capstan.test.owner"]);
    for id in ids.split_whitespace() {
        let line = cli.out(&["service", "inspect", "--format", "{{.Spec.Name}} {{index .Spec.Labels \"capstan.test.owner\"}}", id]);
        let line = line.trim();
        let Some((name, pid)) = line.split_once(' ') else { continue };
        if pid.trim().parse::<u32>().is_ok_and(|p| !proc::pid_alive(p)) {
            let _ = proc::run(&mut cli.cmd(&["service", "rm", name]), None, Duration::from_secs(60));
        }
    }
    for p in fs::read_dir("/tmp").map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default() {
        let stale = p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cst-w-"))
            && fs::read_to_string(p.join("owner")).ok().and_then(|o| o.trim().parse::<u32>().ok()).is_some_and(|pid| !proc::pid_alive(pid));
        if stale {
            let _ = fs::remove_dir_all(&p);
        }
    }
    wait_for(Duration::from_secs(30), Duration::from_millis(200), || (!port_open(SWARM_PORT)).then_some(()));
}
