//! The process-wide sandbox: Docker engine, registry with password auth, the
//! demo images in that registry, and an sshd with its own keys.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::http;
use super::proc::{self, cmd, run, run_ok, run_ok_input, spawn_persistent, ChildGuard};
use super::sshd::{sshd_config, SshdFiles};
use super::{free_port, port_open, random_hex, repo_root, set_mode, short_tempdir, wait_for, write_file};

/// The image tags pushed to the registry, with (DEMO_VERSION, DEMO_HEALTH, Dockerfile, PROBE_PORT).
/// `hc-ok` and `hc-bad` carry a Docker HEALTHCHECK; `hc-bad`'s checks a dead port.
pub const DEMO_TAGS: [(&str, &str, &str, &str, &str); 6] = [
    ("v1", "v1", "ok", "Dockerfile", ""),
    ("v2", "v2", "ok", "Dockerfile", ""),
    ("v3", "v3", "ok", "Dockerfile", ""),
    ("broken", "broken", "broken", "Dockerfile", ""),
    ("hc-ok", "hc-ok", "ok", "Dockerfile.healthcheck", "8080"),
    ("hc-bad", "hc-bad", "ok", "Dockerfile.healthcheck", "9999"),
];
/// Tags that stay in the local engine after the push (the others must be pulled).
pub const LOCAL_TAGS: [&str; 1] = ["v1"];
/// Releases that are healthy but wrong, built like the others with one more build argument:
/// `err2` answers 2 % of its requests with 500, `slow` adds 300 ms to each.
pub const FAULT_TAGS: [(&str, &str); 2] = [("err2", "DEMO_ERROR_RATE=0.02"), ("slow", "DEMO_LATENCY=300ms")];

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
const REGISTRY_USER: &str = "capstan";
const REPO: &str = "capstan-demo";

pub struct Sandbox {
    tmp: tempfile::TempDir,
    ssh_port: u16,
    ssh_user: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    registry_addr: String,
    registry_password: String,
    docker_config: PathBuf,
    demo_binary: PathBuf,
    registry_child: Mutex<ChildGuard>,
    sshd_child: Mutex<ChildGuard>,
    startup: Duration,
}

static SANDBOX: OnceLock<Result<Sandbox, String>> = OnceLock::new();

impl Sandbox {
    /// The sandbox of this process, started on first use. Panics with the
    /// reason if it cannot start (and again, with the same reason, on every
    /// later call).
    pub fn get() -> &'static Sandbox {
        let result = SANDBOX.get_or_init(|| {
            std::panic::catch_unwind(Sandbox::start).map_err(|e| {
                e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into())
            })
        });
        match result {
            Ok(sb) => sb,
            Err(msg) => panic!("the test sandbox could not start: {msg}"),
        }
    }

    /// `user@127.0.0.1:PORT` of the sandbox sshd.
    pub fn ssh_host(&self) -> String {
        format!("{}@127.0.0.1:{}", self.ssh_user, self.ssh_port)
    }
    pub fn ssh_user(&self) -> &str {
        &self.ssh_user
    }
    pub fn ssh_port(&self) -> u16 {
        self.ssh_port
    }
    /// The client's private key: unencrypted ed25519, mode 0600.
    pub fn identity_file(&self) -> &Path {
        &self.identity
    }

    /// A second key for the same host, whose sessions get a `PATH` with every program
    /// of this machine but `curl` and `wget`: a host without them.
    pub fn identity_without_curl(&self) -> PathBuf {
        self.identity.with_file_name(NO_CURL_KEY)
    }
    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...` for the sandbox sshd.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }
    /// `127.0.0.1:PORT`
    pub fn registry(&self) -> &str {
        &self.registry_addr
    }
    pub fn registry_user(&self) -> &str {
        REGISTRY_USER
    }
    /// Chosen so that the standard base64 of `{"username":"capstan","password":"<pw>"}`
    /// contains `+` or `/` (a bollard bug sends those to an engine that decodes URL-safe).
    pub fn registry_password(&self) -> &str {
        &self.registry_password
    }
    /// The listening sshd: its children are the live SSH sessions (to cut them, in fault tests).
    pub fn sshd_pid(&self) -> u32 {
        self.sshd_child.lock().unwrap_or_else(|e| e.into_inner()).pid()
    }
    /// `127.0.0.1:PORT/capstan-demo:<tag>`
    pub fn image(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.registry_addr)
    }
    /// `127.0.0.1:PORT/capstan-demo`
    pub fn image_repo(&self) -> String {
        format!("{}/{REPO}", self.registry_addr)
    }
    /// A `DOCKER_CONFIG` directory logged in to the registry.
    /// The static demo server binary the sandbox's images were built from.
    pub fn demo_binary(&self) -> &Path {
        &self.demo_binary
    }

    pub fn docker_config_dir(&self) -> &Path {
        &self.docker_config
    }
    /// The sandbox's own temporary directory.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    /// How long `Sandbox::get()` took to start everything.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Removes every demo image but `keep`'s, so that the next deploy of another
    /// tag pulls it from the registry.
    #[allow(dead_code)] // the benchmarks'
    pub fn forget_images_but(&self, keep: &str) {
        let kept = self.docker_ok(&["image", "inspect", "-f", "{{.Id}}", &self.image(keep)]);
        for id in self.docker_ok(&["images", "--no-trunc", "--format", "{{.ID}}", &self.image_repo()]).lines().filter(|id| *id != kept) {
            let _ = self.docker(&["rmi", "-f", id]).output();
        }
    }

    /// A `docker` command using the sandbox's DOCKER_CONFIG.
    pub fn docker(&self, args: &[&str]) -> Command {
        docker_cmd(&self.docker_config, args)
    }

    /// Run `docker args...`; panic with its output on failure; return stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.docker(args), DOCKER_TIMEOUT)
    }

    /// Base `ssh` arguments: batch mode, strict host key checking against the
    /// sandbox known_hosts, the sandbox key, port. Append the destination and command.
    pub fn ssh_args(&self) -> Vec<String> {
        ssh_base_args(&self.identity, &self.known_hosts, self.ssh_port)
    }

    /// Log lines of the registry and sshd, for failure messages.
    pub fn logs(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(&p).unwrap_or_else(|e| format!("({}: {e})", p.display()));
        format!("--- registry log ---\n{}\n--- sshd log ---\n{}", read(self.dir().join("registry/registry.log")), read(self.dir().join("ssh/sshd.log")))
    }

    fn start() -> Sandbox {
        let t0 = Instant::now();
        ensure_docker();
        cleanup_stale();

        let tmp = short_tempdir("cst-s-");
        let dir = tmp.path().to_path_buf();
        write_file(&dir.join("owner"), std::process::id().to_string());
        let docker_config = dir.join("docker");
        fs::create_dir_all(&docker_config).expect("create the DOCKER_CONFIG dir");
        write_file(&docker_config.join("config.json"), "{}\n");

        // The demo binary builds while the registry and sshd start.
        let build = thread::spawn(build_demo_binary);
        let password = choose_password();
        let (registry_child, registry_addr) = start_registry(&dir.join("registry"), &password);
        write_file(&dir.join("registry.addr"), &registry_addr);
        let registry_done = t0.elapsed();

        let ssh_dir = dir.join("ssh");
        let sshd = thread::spawn(move || start_sshd(&ssh_dir));

        let binary = match build.join() {
            Ok(b) => b,
            Err(e) => std::panic::resume_unwind(e),
        };
        let binary_done = t0.elapsed();
        build_and_push_images(&docker_config, &dir.join("build"), &binary, &registry_addr, &password);

        let images_done = t0.elapsed();
        let (sshd_child, ssh_port, ssh_user, identity, known_hosts) = match sshd.join() {
            Ok(s) => s,
            Err(e) => std::panic::resume_unwind(e),
        };
        eprintln!(
            "[support] sandbox in {:?} (demo binary at {binary_done:?}, registry at {registry_done:?}, \
             images built+pushed at {images_done:?}): registry {registry_addr}, sshd port {ssh_port}, dir {}",
            t0.elapsed(),
            dir.display()
        );

        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
        Sandbox {
            tmp,
            ssh_port,
            ssh_user,
            identity,
            known_hosts,
            registry_addr,
            registry_password: password,
            docker_config,
            demo_binary: binary,
            registry_child: Mutex::new(registry_child),
            sshd_child: Mutex::new(sshd_child),
            startup: t0.elapsed(),
        }
    }
}

pub(crate) fn docker_cmd(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.env("DOCKER_CONFIG", config).env("DOCKER_BUILDKIT", "0").env("DOCKER_CLI_HINTS", "false").args(args);
    c
}

/// The docker CLI aimed at one engine: the sandbox's `DOCKER_CONFIG` (logged in
/// to the registry), and `-H` for an engine other than the default one (a
/// fleet host's).
#[derive(Debug, Clone)]
pub struct DockerCli {
    config: PathBuf,
    host: Option<String>,
}

impl DockerCli {
    /// The default engine (`/var/run/docker.sock`).
    pub fn local(config: &Path) -> DockerCli {
        DockerCli { config: config.to_path_buf(), host: None }
    }

    /// The engine listening on the Unix socket `socket`.
    pub fn at_socket(config: &Path, socket: &Path) -> DockerCli {
        DockerCli { config: config.to_path_buf(), host: Some(format!("unix://{}", socket.display())) }
    }

    /// `docker [-H ...] args...`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = docker_cmd(&self.config, &[]);
        if let Some(h) = &self.host {
            c.arg("-H").arg(h);
        }
        c.args(args);
        c
    }

    /// Run docker; stdout (empty on failure).
    pub fn out(&self, args: &[&str]) -> String {
        match run(&mut self.cmd(args), None, DOCKER_TIMEOUT) {
            Ok(o) if o.success() => o.stdout,
            _ => String::new(),
        }
    }

    /// Run docker; panic with its output on failure; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(&mut self.cmd(args), DOCKER_TIMEOUT)
    }
}

pub(crate) fn ssh_base_args(identity: &Path, known_hosts: &Path, port: u16) -> Vec<String> {
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
        "-i".into(),
        identity.display().to_string(),
        "-p".into(),
        port.to_string(),
    ]
}

// ---------------------------------------------------------------- docker

fn docker_works() -> Result<(), String> {
    match run(&mut cmd("docker", ["info", "--format", "{{.ServerVersion}}"]), None, Duration::from_secs(15)) {
        Ok(o) if o.success() && !o.stdout.trim().is_empty() => Ok(()),
        Ok(o) => Err(format!("docker info: exit {}: {}{}", o.status, o.stdout.trim(), o.stderr.trim())),
        Err(e) => Err(format!("cannot run docker: {e}")),
    }
}

/// `docker info` works, or dockerd is started (detached, it outlives the tests).
fn ensure_docker() {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        if docker_works().is_ok() {
            return;
        }
        let mut c = Command::new("sh");
        c.args(["-c", "nohup dockerd >/tmp/dockerd.log 2>&1 &"]);
        // SAFETY: setsid is async-signal-safe; detaches dockerd from our session.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let status = c.status().unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        assert!(status.success(), "starting dockerd failed: {status}");
        let mut last = String::new();
        let ok = wait_for(Duration::from_secs(30), Duration::from_millis(250), || match docker_works() {
            Ok(()) => Some(()),
            Err(e) => {
                last = e;
                None
            }
        });
        if ok.is_none() {
            let log = fs::read_to_string("/tmp/dockerd.log").unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            panic!(
                "the Docker engine did not come up within 30 s ({last}); /tmp/dockerd.log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    });
}

// ---------------------------------------------------------------- demo image

/// Build the static demo binary; returns its path.
fn build_demo_binary() -> PathBuf {
    let root = repo_root();
    let target_dir = root.join("target/demo");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(cargo);
    c.current_dir(&root)
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu", "--manifest-path"])
        .arg(root.join("demo/app/Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET");
    run_ok(&mut c, Duration::from_secs(600));
    let bin = target_dir.join("x86_64-unknown-linux-gnu/release/capstan-demo");
    assert!(bin.is_file(), "the demo build did not produce {}", bin.display());
    bin
}

fn build_and_push_images(config: &Path, ctx: &Path, binary: &Path, registry: &str, password: &str) {
    fs::create_dir_all(ctx).expect("create the build context dir");
    for f in ["Dockerfile", "Dockerfile.healthcheck"] {
        fs::copy(repo_root().join("demo/app").join(f), ctx.join(f)).unwrap_or_else(|e| panic!("copy demo/app/{f}: {e}"));
    }
    fs::copy(binary, ctx.join("capstan-demo")).expect("copy the demo binary");
    let ctx_s = ctx.display().to_string();
    // The four builds run in parallel (each is a few metadata steps and one COPY).
    let faults = FAULT_TAGS.iter().map(|&(tag, arg)| (tag, tag, "ok", "Dockerfile", "", arg));
    let all: Vec<_> =
        DEMO_TAGS.iter().map(|&(tag, version, health, dockerfile, probe_port)| (tag, version, health, dockerfile, probe_port, "")).chain(faults).collect();
    let builds: Vec<_> = all
        .iter()
        .map(|&(tag, version, health, dockerfile, probe_port, fault)| {
            let (config, ctx_s) = (config.to_path_buf(), ctx_s.clone());
            let image = format!("{registry}/{REPO}:{tag}");
            thread::spawn(move || {
                run_ok(
                    &mut docker_cmd(
                        &config,
                        &[
                            "build",
                            "-q",
                            "-f",
                            &format!("{ctx_s}/{dockerfile}"),
                            "-t",
                            &image,
                            "--build-arg",
                            &format!("DEMO_VERSION={version}"),
                            "--build-arg",
                            &format!("DEMO_HEALTH={health}"),
                            "--build-arg",
                            &format!("PROBE_PORT={probe_port}"),
                            "--build-arg",
                            if fault.is_empty() { "DEMO_ERROR_RATE=" } else { fault },
                            &ctx_s,
                        ],
                    ),
                    DOCKER_TIMEOUT,
                );
            })
        })
        .collect();
    for b in builds {
        if let Err(e) = b.join() {
            std::panic::resume_unwind(e);
        }
    }
    run_ok_input(&mut docker_cmd(config, &["login", registry, "-u", REGISTRY_USER, "--password-stdin"]), Some(password.as_bytes()), DOCKER_TIMEOUT);
    // Pushing in parallel: the first push uploads the binary layer, the others
    // mostly mount it.
    let pushes: Vec<_> = all
        .iter()
        .map(|(tag, ..)| {
            let image = format!("{registry}/{REPO}:{tag}");
            let config = config.to_path_buf();
            thread::spawn(move || {
                run_ok(&mut docker_cmd(&config, &["push", "-q", &image]), DOCKER_TIMEOUT);
            })
        })
        .collect();
    for p in pushes {
        if let Err(e) = p.join() {
            std::panic::resume_unwind(e);
        }
    }
    for &(tag, ..) in &all {
        if !LOCAL_TAGS.contains(&tag) {
            run_ok(&mut docker_cmd(config, &["rmi", &format!("{registry}/{REPO}:{tag}")]), DOCKER_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------- registry

fn json_auth(user: &str, password: &str) -> String {
    format!("{{\"username\":\"{user}\",\"password\":\"{password}\"}}")
}

/// A password whose X-Registry-Auth (standard base64 of the JSON auth) holds
/// `+` or `/`. Three `~` in a row put a `+` in the encoding at any alignment,
/// whatever else the JSON carries (e.g. a serveraddress field).
fn choose_password() -> String {
    let pw = format!("cst{}~~~{}", random_hex(8), random_hex(8));
    let encoded = http::base64_std(json_auth(REGISTRY_USER, &pw).as_bytes());
    assert!(encoded.contains('+') || encoded.contains('/'), "registry password {pw:?} must produce '+' or '/' in base64 ({encoded})");
    pw
}

fn start_registry(dir: &Path, password: &str) -> (ChildGuard, String) {
    fs::create_dir_all(dir.join("data")).expect("create the registry dir");
    let htpasswd = run_ok(&mut cmd("htpasswd", ["-Bbn", REGISTRY_USER, password]), Duration::from_secs(30));
    write_file(&dir.join("htpasswd"), htpasswd.trim_end().to_string() + "\n");
    let mut last_err = String::new();
    for _attempt in 0..4 {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        write_file(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n  secret: {secret}\n\
                 auth:\n  htpasswd:\n    realm: capstan-test-registry\n    path: {htpasswd}\n",
                data = dir.join("data").display(),
                secret = random_hex(32),
                htpasswd = dir.join("htpasswd").display(),
            ),
        );
        let log_path = dir.join("registry.log");
        let log = fs::File::create(&log_path).expect("create registry.log");
        let mut c = Command::new("docker-registry");
        c.arg("serve").arg(&config).stdin(Stdio::null()).stdout(log.try_clone().expect("dup log")).stderr(log);
        let child = spawn_persistent(c, libc::SIGKILL).unwrap_or_else(|e| panic!("cannot start docker-registry: {e}"));
        let mut guard = ChildGuard::new(child, "docker-registry");
        let url = format!("http://{addr}/v2/");
        let ready = guard.wait_ready(
            Duration::from_secs(20),
            Duration::from_millis(50),
            || matches!(http::get_with(&url, &[], Duration::from_secs(2)), Ok(r) if r.status == 401),
        );
        let log_text = fs::read_to_string(&log_path).unwrap_or_default();
        match ready {
            Ok(()) => return (guard, addr),
            Err(exited) => {
                last_err = format!("docker-registry on {addr} {}; log:\n{log_text}", exited.unwrap_or_else(|| "did not answer 401 on /v2/ within 20 s".into()));
                drop(guard);
                if !log_text.contains("address already in use") {
                    break;
                }
            }
        }
    }
    panic!("cannot start the registry: {last_err}");
}

// ---------------------------------------------------------------- sshd

pub(crate) fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy it at once.
    let from_passwd = unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_name.is_null() {
            None
        } else {
            Some(std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned())
        }
    };
    from_passwd.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "root".into())
}

pub(crate) fn keygen(path: &Path) -> String {
    let _ = fs::remove_file(path);
    run_ok(cmd("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "capstan-test", "-f"]).arg(path), Duration::from_secs(30));
    set_mode(path, 0o600);
    let pubkey = fs::read_to_string(path.with_extension("pub")).expect("read the public key");
    // "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA..."
    pubkey.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// Returns (child, port, user, identity file, known_hosts).
/// The key of [`Sandbox::identity_without_curl`].
const NO_CURL_KEY: &str = "id_ed25519_nocurl";

/// A directory of links to every program on this machine but `skip`.
fn path_without(dir: &Path, skip: &[&str]) {
    fs::create_dir_all(dir).expect("create the bin dir");
    for from in ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        for e in fs::read_dir(from).into_iter().flatten().flatten() {
            let name = e.file_name();
            if skip.iter().any(|s| name.to_string_lossy() == *s) || dir.join(&name).exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(e.path(), dir.join(&name));
        }
    }
}

fn start_sshd(dir: &Path) -> (ChildGuard, u16, String, PathBuf, PathBuf) {
    fs::create_dir_all(dir).expect("create the sshd dir");
    fs::create_dir_all("/run/sshd").expect("mkdir -p /run/sshd");
    let host_key = dir.join("host_ed25519");
    let identity = dir.join("id_ed25519");
    let host_pub = keygen(&host_key);
    let client_pub = keygen(&identity);
    let no_curl_pub = keygen(&dir.join(NO_CURL_KEY));
    let no_curl_bin = dir.join("bin-without-curl");
    path_without(&no_curl_bin, &["curl", "wget"]);
    let authorized = dir.join("authorized_keys");
    write_file(&authorized, format!("{client_pub}\nenvironment=\"PATH={}\" {no_curl_pub}\n", no_curl_bin.display()));
    set_mode(&authorized, 0o600);
    let user = current_user();
    let known_hosts = dir.join("known_hosts");

    let mut last_err = String::new();
    for _attempt in 0..4 {
        let port = free_port();
        let config = dir.join("sshd_config");
        let pid_file = dir.join("sshd.pid");
        let files = SshdFiles { listen: [127, 0, 0, 1].into(), port, host_key: &host_key, authorized_keys: &authorized, pid_file: &pid_file };
        write_file(&config, sshd_config(&files));
        let log_path = dir.join("sshd.log");
        let log = fs::File::create(&log_path).expect("create sshd.log");
        let mut c = Command::new("/usr/sbin/sshd");
        c.arg("-D").arg("-e").arg("-f").arg(&config).stdin(Stdio::null()).stdout(log.try_clone().expect("dup")).stderr(log);
        let child = spawn_persistent(c, libc::SIGKILL).unwrap_or_else(|e| panic!("cannot start sshd: {e}"));
        let mut guard = ChildGuard::new(child, "sshd");
        if let Err(exited) = guard.wait_ready(Duration::from_secs(20), Duration::from_millis(25), || port_open(port)) {
            let log_text = fs::read_to_string(&log_path).unwrap_or_default();
            last_err = format!("sshd on port {port} {}; log:\n{log_text}", exited.unwrap_or_else(|| "did not accept connections within 20 s".into()));
            drop(guard);
            if log_text.contains("Address already in use") {
                continue;
            }
            break;
        }
        write_file(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"));
        let mut check = Command::new("ssh");
        check.args(ssh_base_args(&identity, &known_hosts, port)).arg(format!("{user}@127.0.0.1")).arg("true");
        let out = run(&mut check, None, Duration::from_secs(30)).expect("run ssh");
        if !out.success() {
            let log_text = fs::read_to_string(&log_path).unwrap_or_default();
            panic!(
                "sshd started on port {port} but `ssh ... {user}@127.0.0.1 true` failed (exit {}): {}\nsshd log:\n{log_text}",
                out.status,
                out.stderr.trim()
            );
        }
        return (guard, port, user, identity, known_hosts);
    }
    panic!("cannot start sshd: {last_err}");
}

// ---------------------------------------------------------------- cleanup

fn owner_of(dir: &Path) -> Option<u32> {
    fs::read_to_string(dir.join("owner")).ok()?.trim().parse().ok()
}

/// Remove what earlier, killed test processes left behind: their sandbox
/// dirs and image tags, app dirs (nginx), containers and networks. Only
/// things whose owner process is gone are touched.
fn cleanup_stale() {
    let config = Path::new("/tmp/cst-nonexistent-config");
    let entries: Vec<PathBuf> = fs::read_dir("/tmp").map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    let starts = |p: &PathBuf, prefix: &str| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix));
    let dead = |p: &&PathBuf| owner_of(p).is_some_and(|pid| !proc::pid_alive(pid));
    let live_registries: Vec<String> = entries
        .iter()
        .filter(|p| starts(p, "cst-s-"))
        .filter(|p| owner_of(p).is_some_and(proc::pid_alive))
        .filter_map(|p| fs::read_to_string(p.join("registry.addr")).ok())
        .collect();

    // Fleets: their hosts' processes, namespaces, links and dirs.
    super::fleet::cleanup_stale_fleets();
    // Apps first (nginx, containers, network), so their images are not in use.
    for path in entries.iter().filter(|p| starts(p, "cst-a-")).filter(dead) {
        super::app::cleanup_stale_app_dir(path);
    }
    // Containers and networks labelled with a dead owner.
    for kind in ["container", "network"] {
        let format = "{{.ID}} {{.Label \"capstan.test.owner\"}}";
        let mut list = if kind == "container" {
            cmd("docker", ["ps", "-a", "--filter", "label=capstan.test.owner", "--format", format])
        } else {
            cmd("docker", ["network", "ls", "--filter", "label=capstan.test.owner", "--format", format])
        };
        let Ok(out) = run(&mut list, None, DOCKER_TIMEOUT) else { continue };
        let ids: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, pid)| pid.trim().parse::<u32>().is_ok_and(|p| !proc::pid_alive(p)))
            .map(|(id, _)| id)
            .collect();
        if !ids.is_empty() {
            let mut args: Vec<&str> = if kind == "container" { vec!["rm", "-f"] } else { vec!["network", "rm"] };
            args.extend(ids);
            let _ = run(&mut cmd("docker", &args), None, DOCKER_TIMEOUT);
        }
    }
    // Sandboxes: image references of their registries, then their dirs.
    for path in entries.iter().filter(|p| starts(p, "cst-s-")).filter(dead) {
        if let Ok(addr) = fs::read_to_string(path.join("registry.addr")) {
            if !live_registries.contains(&addr) {
                remove_repo_tags(config, &format!("{addr}/{REPO}"));
            }
        }
        let _ = fs::remove_dir_all(path);
    }
    for repo in dead_sandbox_repos(&live_registries) {
        remove_repo_tags(config, &repo);
    }
}

/// `docker rmi` every reference to `repo`: its tags, then its digest
/// references (left by pulls by digest). Errors are ignored: an image may be
/// in use by a container.
fn remove_repo_tags(config: &Path, repo: &str) {
    let Ok(out) = run(&mut docker_cmd(config, &["images", "--digests", "--format", "{{.Repository}}|{{.Tag}}|{{.Digest}}", repo]), None, DOCKER_TIMEOUT) else {
        return;
    };
    let mut tags = Vec::new();
    let mut digests = Vec::new();
    for line in out.stdout.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 3 || f[0] != repo {
            continue;
        }
        if f[1] != "<none>" {
            tags.push(format!("{repo}:{}", f[1]));
        }
        if f[2].starts_with("sha256:") {
            digests.push(format!("{repo}@{}", f[2]));
        }
    }
    digests.sort();
    digests.dedup();
    for refs in [tags, digests] {
        if !refs.is_empty() {
            let mut args = vec!["rmi"];
            args.extend(refs.iter().map(|s| s.as_str()));
            let _ = run(&mut docker_cmd(config, &args), None, DOCKER_TIMEOUT);
        }
    }
}

/// Image repositories `127.0.0.1:PORT/capstan-demo` of registries that are gone
/// (no live sandbox owns that address and nothing listens on the port).
fn dead_sandbox_repos(live_registries: &[String]) -> Vec<String> {
    let Ok(out) = run(&mut cmd("docker", ["images", "--format", "{{.Repository}}"]), None, DOCKER_TIMEOUT) else {
        return Vec::new();
    };
    let mut repos: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|r| r.strip_suffix(&format!("/{REPO}")))
        .filter(|addr| addr.starts_with("127.0.0.1:") && !live_registries.iter().any(|l| l == addr))
        .filter(|addr| addr["127.0.0.1:".len()..].parse::<u16>().is_ok_and(|p| !port_open(p)))
        .map(|addr| format!("{addr}/{REPO}"))
        .collect();
    repos.sort();
    repos.dedup();
    repos
}

extern "C" fn cleanup_at_exit() {
    let Some(Ok(sb)) = SANDBOX.get() else { return };
    let _ = std::panic::catch_unwind(|| {
        if let Ok(mut c) = sb.registry_child.lock() {
            c.terminate(Duration::from_secs(2));
        }
        if let Ok(mut c) = sb.sshd_child.lock() {
            c.terminate(Duration::from_secs(2));
        }
        remove_repo_tags(&sb.docker_config, &sb.image_repo());
        let _ = fs::remove_dir_all(sb.dir());
    });
}
