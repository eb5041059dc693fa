//! One application per test: demo containers on their own Docker network,
//! nginx in front of them, a work dir for `capstan.yml` and a state dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::{self, HttpResponse};
use super::load::LoadGen;
use super::proc::{run, spawn_persistent, ChildGuard};
use super::sandbox::{DockerCli, Sandbox};
use super::{free_port, random_hex, repo_root, short_tempdir, wait_for, write_file};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Default limit for one `capstan` run.
pub const CAPSTAN_TIMEOUT: Duration = Duration::from_secs(600);

/// The capstan binary to test: in the integration tests, the one cargo built
/// for them (`CARGO_BIN_EXE_capstan`, fixed at compile time, so nothing in the
/// process's environment can point elsewhere); in the examples, which cargo
/// gives no such path, `$CAPSTAN_BIN` if set, else `<repo>/target/debug/capstan`.
pub fn capstan_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_capstan") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("CAPSTAN_BIN") {
        return PathBuf::from(p);
    }
    repo_root().join("target/debug/capstan")
}

#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Number of `web` instances (default 2).
    pub instances: usize,
    /// `DEMO_START_DELAY_MS` of every container (default 300).
    pub start_delay_ms: u64,
    /// Image tag the containers start from (default "v1"; must be in the local engine).
    pub version: String,
    /// Extra `NAME=value` environment of every container (the app's own secrets, say).
    pub env: Vec<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions { instances: 2, start_delay_ms: 300, version: "v1".into(), env: vec![] }
    }
}

/// The result of running a command (capstan).
#[derive(Debug, Clone)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// Panic with the whole output unless the exit status is `code`.
    #[track_caller]
    pub fn assert_status(&self, code: i32) -> &Self {
        assert_eq!(self.status, code, "unexpected exit status {}; expected {code}\n{self}", self.status);
        self
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        self.assert_status(0)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout.trim_end(), self.stderr.trim_end())
    }
}

pub struct App {
    name: String,
    tmp: tempfile::TempDir,
    instances: Vec<String>,
    lb_port: u16,
    upstream: PathBuf,
    nginx: Option<ChildGuard>,
    cli: DockerCli,
    ssh_host: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    registry: String,
    registry_password: String,
}

impl App {
    pub fn new(sandbox: &Sandbox, hint: &str, opts: AppOptions) -> App {
        assert!(opts.instances >= 1, "App needs at least one instance");
        let name = app_name(hint);
        let tmp = short_tempdir("cst-a-");
        let dir = tmp.path().to_path_buf();
        write_file(&dir.join("owner"), std::process::id().to_string());
        write_file(&dir.join("name"), &name);
        fs::create_dir_all(dir.join("nginx")).expect("create the nginx dir");

        let mut app = App {
            name: name.clone(),
            tmp,
            instances: (1..=opts.instances).map(|i| format!("{name}-web-{i}")).collect(),
            lb_port: 0,
            upstream: dir.join("nginx/upstream.conf"),
            nginx: None,
            cli: DockerCli::local(sandbox.docker_config_dir()),
            ssh_host: sandbox.ssh_host(),
            identity: sandbox.identity_file().to_path_buf(),
            known_hosts: sandbox.known_hosts().to_path_buf(),
            registry: sandbox.registry().to_string(),
            registry_password: sandbox.registry_password().to_string(),
        };
        // From here on, Drop cleans up whatever was created.
        let owner = format!("capstan.test.owner={}", std::process::id());
        app.docker_ok(&["network", "create", "--label", &owner, &format!("{name}-net")]);
        let image = sandbox.image(&opts.version);
        let mut ports = Vec::new();
        for instance in app.instances.clone() {
            ports.push(run_instance(&app.cli, &app.name, &instance, &image, opts.start_delay_ms, &owner, &opts.env));
        }
        for (instance, port) in app.instances.iter().zip(&ports) {
            wait_instance_healthy(&app.cli, instance, *port, |url| http::get_with(url, &[], Duration::from_secs(2)));
        }
        app.start_nginx(&ports);
        app
    }

    fn nginx_dir(&self) -> PathBuf {
        self.dir().join("nginx")
    }

    fn nginx_conf(&self) -> PathBuf {
        self.nginx_dir().join("nginx.conf")
    }

    fn start_nginx(&mut self, ports: &[u16]) {
        let nd = self.nginx_dir();
        write_file(self.upstream_conf(), upstream_text(&self.name, ports));
        let (lb_port, guard) = start_lb_nginx(&nd, self.upstream_conf(), &self.name);
        self.lb_port = lb_port;
        self.nginx = Some(guard);
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The work dir; `capstan.yml` goes here and capstan runs here.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    /// `["<name>-web-1", "<name>-web-2", ...]`
    pub fn instances(&self) -> Vec<String> {
        self.instances.clone()
    }
    /// `http://127.0.0.1:<lb port>/`
    pub fn lb_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.lb_port)
    }
    pub fn upstream_conf(&self) -> &Path {
        &self.upstream
    }
    /// The access log nginx writes with capstan's `log_format`.
    pub fn access_log(&self) -> PathBuf {
        self.nginx_dir().join("access.log")
    }
    pub fn reload_cmd(&self) -> String {
        format!("nginx -c {} -s reload", self.nginx_conf().display())
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Write `<dir>/capstan.yml`; returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir().join("capstan.yml");
        write_file(&path, yaml);
        path
    }

    /// A complete config for this app on the sandbox host. `release.raw_tags`
    /// is on because the sandbox's images are tagged `v1`, `v2`, `broken`….
    pub fn default_config(&self) -> String {
        render_config(&ConfigParts {
            name: &self.name,
            hosts: std::slice::from_ref(&self.ssh_host),
            identity: &self.identity,
            known_hosts: &self.known_hosts,
            registry: &self.registry,
            docker_socket: None,
            state_dir: &self.state_dir(),
            instances: &self.instances,
            upstream: self.upstream_conf(),
            reload: &self.reload_cmd(),
            lb: &self.lb_url(),
        })
    }

    /// Run capstan in `dir()` with `REGISTRY_PASSWORD` and `NO_COLOR=1`.
    pub fn capstan(&self, args: &[&str]) -> Run {
        self.capstan_env(args, &[])
    }

    /// Like [`App::capstan`], with extra environment variables.
    pub fn capstan_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.capstan_with(args, env, CAPSTAN_TIMEOUT)
    }

    pub fn capstan_with(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
        run_capstan(self.dir(), &self.registry_password, args, env, timeout)
    }

    /// capstan started in `dir()` as [`App::capstan`] runs it, in the background,
    /// its stdout and stderr piped: for a test that acts while it runs.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        capstan_command(self.dir(), &self.registry_password, args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", capstan_bin().display()))
    }

    /// The host port currently published for an instance's 8080/tcp.
    pub fn instance_port(&self, instance: &str) -> Option<u16> {
        instance_port(&self.cli, instance)
    }

    /// `GET /version` of every instance through its published port (looked up
    /// afresh each time); an error text in place of a version that can't be read.
    pub fn versions(&self) -> Vec<String> {
        versions(&self.cli, &self.instances, http::get)
    }

    /// The image ID (`sha256:...`) of every instance ("<missing>" if it does not exist).
    pub fn images(&self) -> Vec<String> {
        images(&self.cli, &self.instances)
    }

    /// Names of all containers (any state) whose name starts with `<name>-`, sorted.
    pub fn containers(&self) -> Vec<String> {
        list_containers(&self.cli, &self.name)
    }

    /// Start a load generator on `lb_url()`.
    pub fn load(&self, rps: u32) -> LoadGen {
        LoadGen::start(&self.lb_url(), rps)
    }

    /// Run docker; stdout (empty on failure).
    pub fn docker_out(&self, args: &[&str]) -> String {
        self.cli.out(args)
    }

    /// Run docker; panic with its output on failure; stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }
}

// ------------------------------------------------ shared with the fleet (fleet.rs)

/// `t<hint>-<6 hex>`: the hint lowercased, other than `[a-z0-9-]` as `-`, 20 characters at most.
pub(crate) fn app_name(hint: &str) -> String {
    let hint: String = hint.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(20).collect();
    format!("t{hint}-{}", random_hex(6))
}

/// `docker run -d` one demo instance as every test app runs it: published on
/// 127.0.0.1 of the engine's host, `APP_SETTING=kept`, the app's labels, on
/// `<app>-net` with the alias `web`. Retried on another port if the port was
/// taken. Returns the published port.
pub(crate) fn run_instance(cli: &DockerCli, app: &str, instance: &str, image: &str, delay_ms: u64, owner: &str, env: &[String]) -> u16 {
    let mut last = String::new();
    for _ in 0..5 {
        let port = free_port();
        let publish = format!("127.0.0.1:{port}:8080");
        let delay = format!("DEMO_START_DELAY_MS={delay_ms}");
        let label = format!("capstan.test={app}");
        let network = format!("{app}-net");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            instance,
            "--restart",
            "unless-stopped",
            "-p",
            &publish,
            "-e",
            &delay,
            "-e",
            "APP_SETTING=kept",
            "--label",
            &label,
            "--label",
            owner,
            "--network",
            &network,
            "--network-alias",
            "web",
        ];
        for e in env {
            args.extend(["-e", e.as_str()]);
        }
        args.push(image);
        let out = run(&mut cli.cmd(&args), None, DOCKER_TIMEOUT).expect("run docker");
        if out.success() {
            return port;
        }
        last = format!("exit {}: {}", out.status, out.stderr.trim());
        // The container may have been created but not started.
        let _ = run(&mut cli.cmd(&["rm", "-f", instance]), None, DOCKER_TIMEOUT);
        if !(last.contains("already allocated") || (last.contains("already in use") && last.contains("address"))) {
            break;
        }
    }
    panic!("docker run {instance} ({image}) failed: {last}");
}

/// Wait (30 s at most) until `GET http://127.0.0.1:<port>/health`, made by
/// `get`, answers 200; panic with the container's log otherwise.
pub(crate) fn wait_instance_healthy(cli: &DockerCli, instance: &str, port: u16, get: impl Fn(&str) -> std::io::Result<HttpResponse>) {
    let url = format!("http://127.0.0.1:{port}/health");
    let ok = wait_for(Duration::from_secs(30), Duration::from_millis(50), || match get(&url) {
        Ok(r) if r.status == 200 => Some(()),
        _ => None,
    });
    if ok.is_none() {
        let logs = cli.out(&["logs", "--tail", "30", instance]);
        panic!("{instance} did not answer 200 on {url} within 30 s; docker logs:\n{logs}");
    }
}

/// The nginx upstream file: `upstream <app> { server 127.0.0.1:<port>; ... }`.
pub(crate) fn upstream_text(app: &str, ports: &[u16]) -> String {
    let mut upstream = format!("upstream {app} {{\n");
    for p in ports {
        upstream.push_str(&format!("    server 127.0.0.1:{p};\n"));
    }
    upstream.push_str("}\n");
    upstream
}

/// The `log_format` the README gives for the traffic gates (`capstan`): every test
/// nginx logs with it to `access.log` in its dir.
pub(crate) const ACCESS_LOG_FORMAT: &str =
    r#"log_format capstan '$remote_addr [$time_iso8601] "$request" $status "$upstream_addr" "$upstream_status" "$upstream_response_time" $request_time';"#;

/// An nginx.conf whose pid, logs and temp dirs are in `dir`, listening on
/// each of `listen` and proxying to the upstream `app` defined in `upstream`.
pub(crate) fn nginx_conf_text(dir: &Path, upstream: &Path, app: &str, listen: &[String]) -> String {
    let listen: String = listen.iter().map(|l| format!("    \x20   listen {l};\n")).collect();
    // `daemon off`: the master stays our child, gets SIGTERM if the test
    // process dies (PR_SET_PDEATHSIG) and takes its workers down with it.
    format!(
        "daemon off;\n\
         master_process on;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log;\n\
         worker_processes 1;\n\
         events {{}}\n\
         http {{\n\
         \x20   {format}\n\
         \x20   access_log {d}/access.log capstan;\n\
         \x20   client_body_temp_path {d}/client_body;\n\
         \x20   proxy_temp_path {d}/proxy;\n\
         \x20   fastcgi_temp_path {d}/fastcgi;\n\
         \x20   uwsgi_temp_path {d}/uwsgi;\n\
         \x20   scgi_temp_path {d}/scgi;\n\
         \x20   include {up};\n\
         \x20   server {{\n\
         {listen}\
         \x20       location / {{ proxy_pass http://{app}; }}\n\
         \x20   }}\n\
         }}\n",
        d = dir.display(),
        up = upstream.display(),
        format = ACCESS_LOG_FORMAT,
    )
}

/// Spawn nginx (`command`, whose config logs to `log_dir`) as a persistent
/// child and wait (30 s at most) until `ready`; on failure, the reason with
/// nginx's output and error log.
/// nginx as the load balancer of app `name` on a free loopback port, in front of the
/// `upstream` file, its config and log in `nd` (another port if one was taken meanwhile):
/// the port and the running nginx.
pub(crate) fn start_lb_nginx(nd: &Path, upstream: &Path, name: &str) -> (u16, ChildGuard) {
    let conf = nd.join("nginx.conf");
    let mut last = String::new();
    for _ in 0..4 {
        let lb_port = free_port();
        write_file(&conf, nginx_conf_text(nd, upstream, name, &[format!("127.0.0.1:{lb_port}")]));
        let url = format!("http://127.0.0.1:{lb_port}/");
        let mut c = Command::new("nginx");
        c.arg("-c").arg(&conf);
        match start_nginx(c, nd, &url, || matches!(http::get_with(&url, &[], Duration::from_secs(2)), Ok(r) if r.status == 200)) {
            Ok(guard) => return (lb_port, guard),
            Err(e) => last = e,
        }
        if !last.contains("Address already in use") {
            break;
        }
    }
    panic!("cannot start nginx for {name}: {last}");
}

pub(crate) fn start_nginx(mut command: Command, log_dir: &Path, url: &str, ready: impl FnMut() -> bool) -> Result<ChildGuard, String> {
    let log = fs::File::create(log_dir.join("nginx.out")).expect("create nginx.out");
    command.stdin(Stdio::null()).stdout(log.try_clone().expect("dup")).stderr(log);
    let child = spawn_persistent(command, libc::SIGTERM).unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
    let mut guard = ChildGuard::new(child, "nginx");
    let Err(exited) = guard.wait_ready(Duration::from_secs(30), Duration::from_millis(50), ready) else {
        return Ok(guard);
    };
    let out = fs::read_to_string(log_dir.join("nginx.out")).unwrap_or_default();
    let err = fs::read_to_string(log_dir.join("error.log")).unwrap_or_default();
    drop(guard);
    Err(format!("{}\n{out}\n{err}", exited.unwrap_or_else(|| format!("{url} did not answer 200 within 30 s"))))
}

/// What differs between the configs of an [`App`] and of a fleet.
pub(crate) struct ConfigParts<'a> {
    pub name: &'a str,
    /// `user@addr:port` of every host.
    pub hosts: &'a [String],
    pub identity: &'a Path,
    pub known_hosts: &'a Path,
    pub registry: &'a str,
    /// `docker.socket`, when not the default.
    pub docker_socket: Option<&'a Path>,
    pub state_dir: &'a Path,
    pub instances: &'a [String],
    pub upstream: &'a Path,
    pub reload: &'a str,
    /// `traffic.url`, as seen from the host.
    pub lb: &'a str,
}

/// A complete capstan.yml for the demo app. `release.raw_tags` is on because
/// the sandbox's images are tagged `v1`, `v2`, `broken`….
pub(crate) fn render_config(p: &ConfigParts) -> String {
    let hosts: String = p.hosts.iter().map(|h| format!("  - {h}\n")).collect();
    let docker = p.docker_socket.map(|s| format!("docker:\n  socket: {}\n", s.display())).unwrap_or_default();
    format!(
        "app: {name}\n\
         hosts:\n{hosts}\
         ssh:\n  identity_file: {identity}\n  known_hosts: {known_hosts}\n\
         registry:\n  server: {registry}\n  username: capstan\n  password_env: REGISTRY_PASSWORD\n\
         {docker}\
         state_dir: {state}\n\
         release:\n  raw_tags: true\n\
         services:\n\
         \x20 web:\n\
         \x20   image: {registry}/capstan-demo\n\
         \x20   instances: [{instances}]\n\
         \x20   health:\n\
         \x20     http: {{ port: 8080, path: /health }}\n\
         \x20     timeout: 20s\n\
         \x20     interval: 200ms\n\
         \x20     healthy_after: 3\n\
         \x20   drain:\n\
         \x20     nginx: {{ upstream_conf: {upstream}, reload: \"{reload}\" }}\n\
         \x20     wait: 300ms\n\
         \x20   traffic: {{ url: \"{lb}\", requests: 20 }}\n\
         \x20   pause: 500ms\n",
        name = p.name,
        identity = p.identity.display(),
        known_hosts = p.known_hosts.display(),
        registry = p.registry,
        state = p.state_dir.display(),
        instances = p.instances.join(", "),
        upstream = p.upstream.display(),
        reload = p.reload,
        lb = p.lb,
    )
}

/// Run capstan in `dir` with `REGISTRY_PASSWORD` and `NO_COLOR=1` (and no
/// `CAPSTAN_CONFIG`), plus `env`; killed after `timeout`.
pub(crate) fn run_capstan(dir: &Path, registry_password: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
    let bin = capstan_bin();
    assert!(bin.is_file(), "capstan binary not found at {} (build it, or set CAPSTAN_BIN)", bin.display());
    let mut c = capstan_command(dir, registry_password, args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = run(&mut c, None, timeout).unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let mut stderr = out.stderr;
    if out.timed_out {
        stderr.push_str(&format!("\n[support: capstan killed after {timeout:?}]"));
    }
    Run { status: out.status, stdout: out.stdout, stderr }
}

/// capstan in `dir` with `REGISTRY_PASSWORD` and `NO_COLOR=1` (and no `CAPSTAN_CONFIG`).
fn capstan_command(dir: &Path, registry_password: &str, args: &[&str]) -> Command {
    let mut c = Command::new(capstan_bin());
    c.args(args).current_dir(dir).env("REGISTRY_PASSWORD", registry_password).env("NO_COLOR", "1").env_remove("CAPSTAN_CONFIG");
    c
}

/// The host port currently published for an instance's 8080/tcp.
pub(crate) fn instance_port(cli: &DockerCli, instance: &str) -> Option<u16> {
    let out = cli.out(&[
        "inspect",
        "-f",
        "{{range $p, $b := .NetworkSettings.Ports}}{{if eq $p \"8080/tcp\"}}{{range $b}}{{.HostPort}} {{end}}{{end}}{{end}}",
        instance,
    ]);
    out.split_whitespace().next().and_then(|p| p.parse().ok())
}

/// `GET /version` of every instance through its published port (looked up
/// afresh each time), made by `get`; an error text in place of a version that
/// can't be read.
pub(crate) fn versions(cli: &DockerCli, instances: &[String], get: impl Fn(&str) -> std::io::Result<HttpResponse>) -> Vec<String> {
    instances
        .iter()
        .map(|i| match instance_port(cli, i) {
            None => format!("<{i}: no published port>"),
            // Asked up to three times: a release that answers some requests 500 on purpose
            // (`err2`) answers `/version` so too.
            Some(port) => {
                let ask = || match get(&format!("http://127.0.0.1:{port}/version")) {
                    Ok(r) if r.status == 200 => Ok(r.body.trim().to_string()),
                    Ok(r) => Err(format!("<{i}: status {}>", r.status)),
                    Err(e) => Err(format!("<{i}: {e}>")),
                };
                ask().or_else(|_| ask()).or_else(|_| ask()).unwrap_or_else(|e| e)
            }
        })
        .collect()
}

/// The image ID (`sha256:...`) of every instance ("<missing>" if it does not exist).
pub(crate) fn images(cli: &DockerCli, instances: &[String]) -> Vec<String> {
    instances
        .iter()
        .map(|i| {
            let out = cli.out(&["inspect", "-f", "{{.Image}}", i]);
            let id = out.trim();
            if id.starts_with("sha256:") {
                id.to_string()
            } else {
                "<missing>".to_string()
            }
        })
        .collect()
}

/// Names of all containers (any state) whose name starts with `<name>-`, sorted.
pub(crate) fn list_containers(cli: &DockerCli, name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let out = run(&mut cli.cmd(&["ps", "-a", "--filter", &format!("name={prefix}"), "--format", "{{.Names}}"]), None, DOCKER_TIMEOUT);
    let mut names: Vec<String> = match out {
        Ok(o) => o.stdout.lines().filter(|n| n.starts_with(&prefix)).map(String::from).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

/// Remove the app's containers and its network.
pub(crate) fn remove_app_resources(cli: &DockerCli, name: &str) {
    let containers = list_containers(cli, name);
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(containers.iter().map(|s| s.as_str()));
        let _ = run(&mut cli.cmd(&args), None, DOCKER_TIMEOUT);
    }
    let net = format!("{name}-net");
    let _ = run(&mut cli.cmd(&["network", "rm", &net]), None, DOCKER_TIMEOUT);
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.terminate(Duration::from_secs(5));
        }
        remove_app_resources(&self.cli, &self.name);
        // The temp dir goes with `self.tmp`.
    }
}

/// Clean up after an App whose process died without running Drop.
pub(crate) fn cleanup_stale_app_dir(dir: &Path) {
    if let Ok(pid) = fs::read_to_string(dir.join("nginx/nginx.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.contains("nginx") && cmdline.contains(&dir.display().to_string()) {
                // SAFETY: kill(2) on a pid checked to be that app's nginx master.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
    if let Ok(name) = fs::read_to_string(dir.join("name")) {
        let name = name.trim();
        if !name.is_empty() {
            remove_app_resources(&DockerCli::local(Path::new("/tmp/cst-nonexistent-config")), name);
        }
    }
    let _ = fs::remove_dir_all(dir);
}
