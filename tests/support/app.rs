//! One application per test: demo containers on their own Docker network,
//! nginx in front of them, a work dir for `capstan.yml` and a state dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http;
use super::load::LoadGen;
use super::proc::{self, run, spawn_persistent, ChildGuard};
use super::sandbox::{docker_cmd, Sandbox};
use super::{free_port, random_hex, repo_root, short_tempdir, wait_for, write_file};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
/// Default limit for one `capstan` run.
pub const CAPSTAN_TIMEOUT: Duration = Duration::from_secs(600);

/// The capstan binary to test: `$CAPSTAN_BIN` if set, else the binary cargo
/// built for this integration test (`CARGO_BIN_EXE_capstan`, known at compile
/// time in `tests/*.rs`), else `<repo>/target/debug/capstan` (examples).
pub fn capstan_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAPSTAN_BIN") {
        return PathBuf::from(p);
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_capstan") {
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
    docker_config: PathBuf,
    ssh_host: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    registry: String,
    registry_password: String,
}

impl App {
    pub fn new(sandbox: &Sandbox, hint: &str, opts: AppOptions) -> App {
        assert!(opts.instances >= 1, "App needs at least one instance");
        let hint: String = hint.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(20).collect();
        let name = format!("t{hint}-{}", random_hex(6));
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
            docker_config: sandbox.docker_config_dir().to_path_buf(),
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
            ports.push(app.run_instance(&instance, &image, opts.start_delay_ms, &owner, &opts.env));
        }
        for (instance, port) in app.instances.iter().zip(&ports) {
            let url = format!("http://127.0.0.1:{port}/health");
            let ok = wait_for(Duration::from_secs(30), Duration::from_millis(50), || match http::get_with(&url, &[], Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            });
            if ok.is_none() {
                let logs = app.docker_out(&["logs", "--tail", "30", instance]);
                panic!("{instance} did not answer 200 on {url} within 30 s; docker logs:\n{logs}");
            }
        }
        app.start_nginx(&ports);
        app
    }

    /// `docker run -d` one instance; retried on another port if the port was taken.
    fn run_instance(&self, instance: &str, image: &str, delay_ms: u64, owner: &str, env: &[String]) -> u16 {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let publish = format!("127.0.0.1:{port}:8080");
            let delay = format!("DEMO_START_DELAY_MS={delay_ms}");
            let label = format!("capstan.test={}", self.name);
            let network = format!("{}-net", self.name);
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
            let out = run(&mut self.docker(&args), None, DOCKER_TIMEOUT).expect("run docker");
            if out.success() {
                return port;
            }
            last = format!("exit {}: {}", out.status, out.stderr.trim());
            // The container may have been created but not started.
            let _ = run(&mut self.docker(&["rm", "-f", instance]), None, DOCKER_TIMEOUT);
            if !(last.contains("already allocated") || (last.contains("already in use") && last.contains("address"))) {
                break;
            }
        }
        panic!("docker run {instance} ({image}) failed: {last}");
    }

    fn nginx_dir(&self) -> PathBuf {
        self.dir().join("nginx")
    }

    fn nginx_conf(&self) -> PathBuf {
        self.nginx_dir().join("nginx.conf")
    }

    fn start_nginx(&mut self, ports: &[u16]) {
        let nd = self.nginx_dir();
        let mut upstream = format!("upstream {} {{\n", self.name);
        for p in ports {
            upstream.push_str(&format!("    server 127.0.0.1:{p};\n"));
        }
        upstream.push_str("}\n");
        write_file(self.upstream_conf(), upstream);
        let mut last = String::new();
        for _ in 0..4 {
            let lb_port = free_port();
            // `daemon off`: the master stays our child, gets SIGTERM if the test
            // process dies (PR_SET_PDEATHSIG) and takes its workers down with it.
            write_file(
                &self.nginx_conf(),
                format!(
                    "daemon off;\n\
                     master_process on;\n\
                     pid {d}/nginx.pid;\n\
                     error_log {d}/error.log;\n\
                     worker_processes 1;\n\
                     events {{}}\n\
                     http {{\n\
                     \x20   access_log off;\n\
                     \x20   client_body_temp_path {d}/client_body;\n\
                     \x20   proxy_temp_path {d}/proxy;\n\
                     \x20   fastcgi_temp_path {d}/fastcgi;\n\
                     \x20   uwsgi_temp_path {d}/uwsgi;\n\
                     \x20   scgi_temp_path {d}/scgi;\n\
                     \x20   include {up};\n\
                     \x20   server {{\n\
                     \x20       listen 127.0.0.1:{lb_port};\n\
                     \x20       location / {{ proxy_pass http://{name}; }}\n\
                     \x20   }}\n\
                     }}\n",
                    d = nd.display(),
                    up = self.upstream_conf().display(),
                    name = self.name,
                ),
            );
            let log = fs::File::create(nd.join("nginx.out")).expect("create nginx.out");
            let mut c = Command::new("nginx");
            c.arg("-c").arg(self.nginx_conf()).stdin(Stdio::null()).stdout(log.try_clone().expect("dup")).stderr(log);
            let child = spawn_persistent(c, libc::SIGTERM).unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
            let mut guard = ChildGuard::new(child, "nginx");
            let url = format!("http://127.0.0.1:{lb_port}/");
            let ready = guard.wait_ready(
                Duration::from_secs(30),
                Duration::from_millis(50),
                || matches!(http::get_with(&url, &[], Duration::from_secs(2)), Ok(r) if r.status == 200),
            );
            let Err(exited) = ready else {
                self.lb_port = lb_port;
                self.nginx = Some(guard);
                return;
            };
            let out = fs::read_to_string(nd.join("nginx.out")).unwrap_or_default();
            let err = fs::read_to_string(nd.join("error.log")).unwrap_or_default();
            last = format!("{}\n{out}\n{err}", exited.unwrap_or_else(|| format!("{url} did not answer 200 within 30 s")));
            drop(guard);
            if !(out.contains("Address already in use") || err.contains("Address already in use")) {
                break;
            }
        }
        panic!("cannot start nginx for {}: {last}", self.name);
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
    pub fn reload_cmd(&self) -> String {
        format!("nginx -c {} -s reload", self.nginx_conf().display())
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }
    /// The nginx error log (upstream errors show up here).
    pub fn nginx_error_log(&self) -> String {
        fs::read_to_string(self.nginx_dir().join("error.log")).unwrap_or_default()
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
            name = self.name,
            host = self.ssh_host,
            identity = self.identity.display(),
            known_hosts = self.known_hosts.display(),
            registry = self.registry,
            state = self.state_dir().display(),
            instances = self.instances.join(", "),
            upstream = self.upstream_conf().display(),
            reload = self.reload_cmd(),
            lb = self.lb_url(),
        )
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
        let bin = capstan_bin();
        assert!(bin.is_file(), "capstan binary not found at {} (build it, or set CAPSTAN_BIN)", bin.display());
        let mut c = Command::new(&bin);
        c.args(args).current_dir(self.dir()).env("REGISTRY_PASSWORD", &self.registry_password).env("NO_COLOR", "1").env_remove("CAPSTAN_CONFIG");
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

    /// The host port currently published for an instance's 8080/tcp.
    pub fn instance_port(&self, instance: &str) -> Option<u16> {
        let out = self.docker_out(&[
            "inspect",
            "-f",
            "{{range $p, $b := .NetworkSettings.Ports}}{{if eq $p \"8080/tcp\"}}{{range $b}}{{.HostPort}} {{end}}{{end}}{{end}}",
            instance,
        ]);
        out.split_whitespace().next().and_then(|p| p.parse().ok())
    }

    /// `GET /version` of every instance through its published port (looked up
    /// afresh each time); an error text in place of a version that can't be read.
    pub fn versions(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| match self.instance_port(i) {
                None => format!("<{i}: no published port>"),
                Some(port) => match http::get(&format!("http://127.0.0.1:{port}/version")) {
                    Ok(r) if r.status == 200 => r.body.trim().to_string(),
                    Ok(r) => format!("<{i}: status {}>", r.status),
                    Err(e) => format!("<{i}: {e}>"),
                },
            })
            .collect()
    }

    /// The image ID (`sha256:...`) of every instance ("<missing>" if it does not exist).
    pub fn images(&self) -> Vec<String> {
        self.instances
            .iter()
            .map(|i| {
                let out = self.docker_out(&["inspect", "-f", "{{.Image}}", i]);
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
    pub fn containers(&self) -> Vec<String> {
        list_containers(&self.docker_config, &self.name)
    }

    /// Start a load generator on `lb_url()`.
    pub fn load(&self, rps: u32) -> LoadGen {
        LoadGen::start(&self.lb_url(), rps)
    }

    /// A `docker` command with the sandbox's DOCKER_CONFIG.
    pub fn docker(&self, args: &[&str]) -> Command {
        docker_cmd(&self.docker_config, args)
    }

    /// Run docker; stdout (empty on failure).
    pub fn docker_out(&self, args: &[&str]) -> String {
        match run(&mut self.docker(args), None, DOCKER_TIMEOUT) {
            Ok(o) if o.success() => o.stdout,
            _ => String::new(),
        }
    }

    /// Run docker; panic with its output on failure; stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        proc::run_ok(&mut self.docker(args), DOCKER_TIMEOUT)
    }
}

fn list_containers(config: &Path, name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    let out = run(&mut docker_cmd(config, &["ps", "-a", "--filter", &format!("name={prefix}"), "--format", "{{.Names}}"]), None, DOCKER_TIMEOUT);
    let mut names: Vec<String> = match out {
        Ok(o) => o.stdout.lines().filter(|n| n.starts_with(&prefix)).map(String::from).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn remove_app_resources(config: &Path, name: &str) {
    let containers = list_containers(config, name);
    if !containers.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(containers.iter().map(|s| s.as_str()));
        let _ = run(&mut docker_cmd(config, &args), None, DOCKER_TIMEOUT);
    }
    let net = format!("{name}-net");
    let _ = run(&mut docker_cmd(config, &["network", "rm", &net]), None, DOCKER_TIMEOUT);
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.terminate(Duration::from_secs(5));
        }
        remove_app_resources(&self.docker_config, &self.name);
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
            remove_app_resources(Path::new("/tmp/cst-nonexistent-config"), name);
        }
    }
    let _ = fs::remove_dir_all(dir);
}
