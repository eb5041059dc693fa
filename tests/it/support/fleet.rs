//! Several real hosts on one machine: a [`Fleet`] of N hosts, each one a
//! network namespace and a mount namespace with its own Docker engine, sshd,
//! nginx and demo instances, all configured by one capstan.yml as real servers
//! would be.
//!
//! Layout of a fleet's dir `/tmp/cst-f-XXXXXX` (`XXXXXX` is the fleet's id):
//!
//! - `capstan.yml`, `known_hosts` (every host's key), `authorized_keys` (the
//!   sandbox's client key), `owner` (the test process), `name` (the app);
//! - `host/`: empty in the root mount namespace. In each host's mount
//!   namespace, that host's `hosts/hN/` is bind-mounted here, so the paths in
//!   the config (`state_dir`, the nginx upstream file, `docker.socket`) are the
//!   same on every host and lead to per-host storage;
//! - `hosts/hN/`: the host's files as the root namespace sees them: `name`
//!   (`hN <addr>`), `docker.sock`, `docker/` (data root), `exec/`, `nginx/`,
//!   `ssh/`, `state/`, logs.
//!
//! Each host: a holder process (`unshare --net --mount --uts`, then `sleep`)
//! owns the namespaces (hostname `cstfXXXXXX-hN`); everything else of the host
//! is started with `nsenter -t HOLDER -n -m -u`. A veth pair links the host's `eth0` (10.X.Y.N/24) to the fleet's
//! bridge `cstfXXXXXX` (10.X.Y.1) in the root namespace, so the host's sshd
//! (port 22) and nginx (port 80) are reachable from here at the host's
//! address. The host's own loopback carries what real servers keep there: the
//! instances' published ports, nginx on 127.0.0.1:80 (capstan's traffic check),
//! and the sandbox registry at the same `127.0.0.1:PORT` as in the root
//! namespace, relayed by a thread of the test process (a socket bound in the
//! host's namespace, connections made from the root one). The host's Docker
//! containers go in the cgroup `/cst-f-XXXXXX-hN`.
//!
//! Hosts can reach the root namespace (their default route), not each other:
//! the root namespace's FORWARD policy (Docker's) drops bridged traffic between them.

use super::sshd::{sshd_config, SshdFiles};
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::app::{self, AppOptions, ConfigParts, Run, CAPSTAN_TIMEOUT};
use super::http::{self, HttpResponse};
use super::load::LoadGen;
use super::proc::{self, cmd, run, run_ok, spawn_persistent, ChildGuard};
use super::sandbox::{keygen, ssh_base_args, DockerCli, Sandbox};
use super::{random_u64, short_tempdir, write_file};

const DOCKER_TIMEOUT: Duration = Duration::from_secs(120);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const DIR_PREFIX: &str = "cst-f-";
/// Interface names: `cstf<id>` (bridge), `cstf<id>h<N>` (the root end of host N's veth); 15 bytes at most.
const LINK_PREFIX: &str = "cstf";

/// A fleet of real hosts; see the module docs. Dropping it removes everything.
pub struct Fleet {
    tmp: tempfile::TempDir,
    id: String,
    name: String,
    /// `[X, Y]` of the fleet's 10.X.Y.0/24.
    net: [u8; 2],
    bridge: String,
    hosts: Vec<FleetHost>,
    instances: Vec<String>,
    identity: PathBuf,
    registry: String,
    registry_password: String,
    startup: Duration,
}

/// One host of a [`Fleet`].
pub struct FleetHost {
    index: usize,
    addr: Ipv4Addr,
    /// `<fleet>/hosts/hN`: the host's files as seen from here.
    dir: PathBuf,
    /// `<fleet>/host`: where the host sees its files.
    common: PathBuf,
    app: String,
    instances: Vec<String>,
    ssh_user: String,
    identity: PathBuf,
    known_hosts: PathBuf,
    veth: String,
    cgroup: String,
    cli: DockerCli,
    holder: Option<ChildGuard>,
    holder_pid: u32,
    /// The host's network namespace, for [`FleetHost::in_netns`].
    netns: Option<fs::File>,
    dockerd: Option<ChildGuard>,
    nginx: Option<ChildGuard>,
    sshd: Option<ChildGuard>,
    relay: Option<thread::JoinHandle<()>>,
    relay_stop: Arc<AtomicBool>,
    /// Phase name and when it was done, since the host's start.
    timings: Vec<(&'static str, Duration)>,
}

impl Fleet {
    /// Start `n` hosts (in parallel), each with the demo instances of `opts`
    /// behind its nginx. Panics with the reason if anything cannot start
    /// (after removing what did).
    pub fn start(sandbox: &Sandbox, n: usize, hint: &str, opts: AppOptions) -> Fleet {
        assert!((1..=250).contains(&n), "a fleet has 1 to 250 hosts, not {n}");
        assert!(opts.instances >= 1, "a fleet's hosts need at least one instance");
        let t0 = Instant::now();
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(cleanup_stale_fleets);
        check_tools();

        let tmp = short_tempdir(DIR_PREFIX);
        let dir = tmp.path().to_path_buf();
        let id = dir.file_name().unwrap().to_string_lossy()[DIR_PREFIX.len()..].to_string();
        let name = app::app_name(hint);
        write_file(&dir.join("owner"), std::process::id().to_string());
        write_file(&dir.join("name"), &name);
        fs::create_dir_all(dir.join("host")).expect("create the fleet's host mount point");
        fs::create_dir_all(dir.join("hosts")).expect("create the fleet's hosts dir");
        let pubkey = fs::read_to_string(sandbox.identity_file().with_extension("pub")).expect("read the sandbox's client public key");
        write_file(&dir.join("authorized_keys"), pubkey);
        super::set_mode(&dir.join("authorized_keys"), 0o600);

        let mut fleet = Fleet {
            tmp,
            bridge: format!("{LINK_PREFIX}{id}"),
            id,
            name: name.clone(),
            net: [0, 0],
            hosts: Vec::new(),
            instances: (1..=opts.instances).map(|i| format!("{name}-web-{i}")).collect(),
            identity: sandbox.identity_file().to_path_buf(),
            registry: sandbox.registry().to_string(),
            registry_password: sandbox.registry_password().to_string(),
            startup: Duration::ZERO,
        };
        // From here on, Drop removes whatever was made.
        fleet.net = create_bridge(&fleet.bridge, &dir);
        let image_tar = saved_image(sandbox, &opts.version);
        let bridge_done = t0.elapsed();

        let registry_port: u16 = fleet.registry.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the registry's port");
        let starts: Vec<_> = (1..=n)
            .map(|i| {
                let spec = HostSpec {
                    index: i,
                    addr: Ipv4Addr::new(10, fleet.net[0], fleet.net[1], (i + 1) as u8),
                    fleet_dir: dir.clone(),
                    id: fleet.id.clone(),
                    bridge: fleet.bridge.clone(),
                    app: name.clone(),
                    instances: fleet.instances.clone(),
                    opts: opts.clone(),
                    image: sandbox.image(&opts.version),
                    image_tar: image_tar.clone(),
                    docker_config: sandbox.docker_config_dir().to_path_buf(),
                    ssh_user: sandbox.ssh_user().to_string(),
                    identity: sandbox.identity_file().to_path_buf(),
                    registry_port,
                };
                thread::Builder::new().name(format!("fleet-h{i}")).spawn(move || FleetHost::start(spec)).expect("spawn a host start thread")
            })
            .collect();
        let mut failure = None;
        for (i, s) in starts.into_iter().enumerate() {
            match s.join() {
                Ok(Ok(h)) => fleet.hosts.push(h),
                Ok(Err(e)) => failure = failure.or(Some(format!("host h{}: {e}", i + 1))),
                Err(e) => failure = failure.or(Some(format!("host h{}: {}", i + 1, panic_text(&*e)))),
            }
        }
        if let Some(why) = failure {
            panic!("cannot start a fleet of {n} hosts: {why}");
        }

        // One known_hosts for all hosts; then every host must answer over SSH
        // with strict host-key checking, as itself.
        let known: String = fleet.hosts.iter().map(|h| format!("{} {}\n", h.addr, h.host_key())).collect();
        write_file(&fleet.known_hosts(), known);
        let checks: Vec<_> = fleet.hosts.iter().map(|h| (h.name(), h.ssh_command(&format!("cat {}", fleet.common().join("name").display())))).collect();
        let outs: Vec<_> = thread::scope(|s| {
            let handles: Vec<_> = checks.into_iter().map(|(name, mut c)| s.spawn(move || (name, run(&mut c, None, CMD_TIMEOUT)))).collect();
            handles.into_iter().map(|h| h.join().expect("an ssh check thread")).collect()
        });
        for ((name, out), h) in outs.into_iter().zip(&fleet.hosts) {
            let want = format!("{name} {}", h.addr);
            match out {
                Ok(o) if o.success() && o.stdout.trim() == want => {}
                Ok(o) => panic!(
                    "ssh to {name} ({}) answered {:?} (exit {}), expected {want:?}: {}\n{}",
                    h.ssh_host(),
                    o.stdout.trim(),
                    o.status,
                    o.stderr.trim(),
                    h.logs()
                ),
                Err(e) => panic!("cannot run ssh: {e}"),
            }
        }
        fleet.startup = t0.elapsed();
        let slowest = |phase: &str| fleet.hosts.iter().filter_map(|h| h.timings.iter().find(|(p, _)| *p == phase).map(|(_, d)| *d)).max().unwrap_or_default();
        eprintln!(
            "[support] fleet {name}: {n} hosts in {:.2?} (bridge+image {bridge_done:.2?}; slowest host: namespaces {:.2?}, dockerd {:.2?}, image {:.2?}, \
             instances {:.2?}, nginx {:.2?}, sshd {:.2?}): 10.{}.{}.0/24, dir {}",
            fleet.startup,
            slowest("namespaces"),
            slowest("dockerd"),
            slowest("image"),
            slowest("instances"),
            slowest("nginx"),
            slowest("sshd"),
            fleet.net[0],
            fleet.net[1],
            fleet.dir().display()
        );
        fleet
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// The work dir; `capstan.yml` goes here and capstan runs here.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }
    /// The fleet's id: `XXXXXX` of `/tmp/cst-f-XXXXXX`, the bridge `cstfXXXXXX`.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The host `i` (0-based: `host(0)` is `h1`).
    pub fn host(&self, i: usize) -> &FleetHost {
        &self.hosts[i]
    }
    pub fn host_list(&self) -> &[FleetHost] {
        &self.hosts
    }
    /// `user@10.X.Y.N:22` of every host, as capstan.yml lists them.
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.ssh_host()).collect()
    }
    /// `["<name>-web-1", ...]`: the same on every host.
    pub fn instances(&self) -> Vec<String> {
        self.instances.clone()
    }
    /// `<fleet>/host`: each host sees its own files here.
    pub fn common(&self) -> PathBuf {
        self.dir().join("host")
    }
    /// The state dir as the config names it (each host has its own; see [`FleetHost::state_dir`]).
    pub fn state_dir(&self) -> PathBuf {
        self.common().join("state")
    }
    /// The upstream file as the config names it (see [`FleetHost::upstream_conf`]).
    pub fn upstream_conf(&self) -> PathBuf {
        self.common().join("nginx/upstream.conf")
    }
    /// The hosts' Docker socket as the config names it (`docker.socket`).
    pub fn docker_socket(&self) -> PathBuf {
        self.common().join("docker.sock")
    }
    /// Reloads the nginx of the host it runs on (capstan runs it over SSH).
    pub fn reload_cmd(&self) -> String {
        format!("nginx -c {} -s reload", self.common().join("nginx/nginx.conf").display())
    }
    /// `traffic.url`: each host's nginx, from the host itself.
    pub fn traffic_url(&self) -> String {
        "http://127.0.0.1:80/".into()
    }
    /// The known_hosts file with every host's key.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir().join("known_hosts")
    }
    /// How long [`Fleet::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `GET /version` of every instance of every host (per host, per instance).
    pub fn versions(&self) -> Vec<Vec<String>> {
        thread::scope(|s| {
            let hs: Vec<_> = self.hosts.iter().map(|h| s.spawn(move || h.versions())).collect();
            hs.into_iter().map(|h| h.join().expect("a versions thread")).collect()
        })
    }

    /// One load generator of `rps` requests/s through each host's load balancer.
    pub fn load(&self, rps: u32) -> Vec<LoadGen> {
        self.hosts.iter().map(|h| h.load(rps)).collect()
    }

    /// A complete config for the app on every host of the fleet, like
    /// [`super::App::default_config`] with all the hosts, the common paths and
    /// `docker.socket`.
    pub fn default_config(&self) -> String {
        app::render_config(&ConfigParts {
            name: &self.name,
            hosts: &self.hosts(),
            identity: &self.identity,
            known_hosts: &self.known_hosts(),
            registry: &self.registry,
            docker_socket: Some(&self.docker_socket()),
            state_dir: &self.state_dir(),
            instances: &self.instances,
            upstream: &self.upstream_conf(),
            reload: &self.reload_cmd(),
            lb: &self.traffic_url(),
        })
    }

    /// Write `<dir>/capstan.yml`; returns its path.
    pub fn write_config(&self, yaml: &str) -> PathBuf {
        let path = self.dir().join("capstan.yml");
        write_file(&path, yaml);
        path
    }

    /// Run capstan in `dir()` with `REGISTRY_PASSWORD` and `NO_COLOR=1`.
    pub fn capstan(&self, args: &[&str]) -> Run {
        self.capstan_with(args, &[], CAPSTAN_TIMEOUT)
    }

    pub fn capstan_with(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Run {
        app::run_capstan(self.dir(), &self.registry_password, args, env, timeout)
    }

    /// Every host's logs (dockerd, sshd, nginx), for failure messages.
    pub fn logs(&self) -> String {
        self.hosts.iter().map(|h| h.logs()).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let t0 = Instant::now();
        // Hosts stop in parallel: each dockerd takes a moment.
        let hosts = std::mem::take(&mut self.hosts);
        let n = hosts.len();
        let stops: Vec<_> = hosts.into_iter().map(|h| thread::spawn(move || drop(h))).collect();
        for s in stops {
            let _ = s.join();
        }
        let _ = run(&mut cmd("ip", ["link", "del", &self.bridge]), None, CMD_TIMEOUT);
        if n > 0 {
            eprintln!("[support] fleet {}: {n} hosts removed in {:.2?}", self.name, t0.elapsed());
        }
        // The dir goes with `self.tmp`.
    }
}

/// What a host thread needs to start one host.
struct HostSpec {
    index: usize,
    addr: Ipv4Addr,
    fleet_dir: PathBuf,
    id: String,
    bridge: String,
    app: String,
    instances: Vec<String>,
    opts: AppOptions,
    image: String,
    image_tar: PathBuf,
    docker_config: PathBuf,
    ssh_user: String,
    identity: PathBuf,
    registry_port: u16,
}

impl FleetHost {
    /// Starts the host; `Err` (with what is known) if it cannot. What was
    /// started is stopped again (by Drop) in either case of failure.
    fn start(spec: HostSpec) -> Result<FleetHost, String> {
        let t0 = Instant::now();
        let dir = spec.fleet_dir.join("hosts").join(format!("h{}", spec.index));
        for sub in ["nginx", "ssh", "state"] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| format!("create {}/{sub}: {e}", dir.display()))?;
        }
        write_file(&dir.join("name"), format!("h{} {}\n", spec.index, spec.addr));
        let mut h = FleetHost {
            index: spec.index,
            addr: spec.addr,
            common: spec.fleet_dir.join("host"),
            cli: DockerCli::at_socket(&spec.docker_config, &dir.join("docker.sock")),
            dir,
            app: spec.app.clone(),
            instances: spec.instances.clone(),
            ssh_user: spec.ssh_user.clone(),
            identity: spec.identity.clone(),
            known_hosts: spec.fleet_dir.join("known_hosts"),
            veth: format!("{LINK_PREFIX}{}h{}", spec.id, spec.index),
            cgroup: format!("{DIR_PREFIX}{}-h{}", spec.id, spec.index),
            holder: None,
            holder_pid: 0,
            netns: None,
            dockerd: None,
            nginx: None,
            sshd: None,
            relay: None,
            relay_stop: Arc::new(AtomicBool::new(false)),
            timings: Vec::new(),
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.bring_up(&spec, t0)));
        match result {
            Ok(Ok(())) => Ok(h),
            Ok(Err(e)) => Err(format!("{e}\n{}", h.logs())),
            Err(p) => Err(format!("{}\n{}", panic_text(&*p), h.logs())),
        }
    }

    fn bring_up(&mut self, spec: &HostSpec, t0: Instant) -> Result<(), String> {
        self.start_namespaces(&spec.bridge)?;
        self.timings.push(("namespaces", t0.elapsed()));
        self.start_relay(spec.registry_port)?;
        self.start_dockerd()?;
        self.timings.push(("dockerd", t0.elapsed()));
        run(&mut self.cli.cmd(&["load", "-q", "-i", &spec.image_tar.display().to_string()]), None, DOCKER_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|o| if o.success() { Ok(()) } else { Err(format!("docker load: {}", o.stderr.trim())) })?;
        self.timings.push(("image", t0.elapsed()));

        let owner = format!("capstan.test.owner={}", std::process::id());
        self.cli.ok(&["network", "create", "--label", &owner, &format!("{}-net", self.app)]);
        let mut ports = Vec::new();
        for instance in &self.instances {
            ports.push(app::run_instance(&self.cli, &self.app, instance, &spec.image, spec.opts.start_delay_ms, &owner, &spec.opts.env));
        }
        for (instance, port) in self.instances.iter().zip(&ports) {
            app::wait_instance_healthy(&self.cli, instance, *port, |url| self.http_get(url));
        }
        self.timings.push(("instances", t0.elapsed()));

        let nd = self.dir.join("nginx");
        write_file(&nd.join("upstream.conf"), app::upstream_text(&self.app, &ports));
        let common_nd = self.common.join("nginx");
        write_file(
            &nd.join("nginx.conf"),
            app::nginx_conf_text(&common_nd, &common_nd.join("upstream.conf"), &self.app, &[format!("{}:80", self.addr), "127.0.0.1:80".into()]),
        );
        let url = self.lb_url();
        let mut c = self.nsenter();
        c.arg("nginx").arg("-c").arg(common_nd.join("nginx.conf"));
        let nginx = app::start_nginx(c, &nd, &url, || matches!(http::get_with(&url, &[], Duration::from_secs(2)), Ok(r) if r.status == 200))
            .map_err(|e| format!("nginx: {e}"))?;
        self.nginx = Some(nginx);
        self.timings.push(("nginx", t0.elapsed()));

        self.start_sshd()?;
        self.timings.push(("sshd", t0.elapsed()));
        Ok(())
    }

    /// The holder process with the host's two namespaces, the common path
    /// bind-mounted to the host's dir, and the network: veth, address, routes.
    fn start_namespaces(&mut self, bridge: &str) -> Result<(), String> {
        write_file(&self.dir.join("plain.bashrc"), "");
        let out_path = self.dir.join("holder.out");
        let out = fs::File::create(&out_path).map_err(|e| e.to_string())?;
        let mut c = Command::new("unshare");
        c.args([
            "--net",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            // A deploy user's plain shell: this machine's root ~/.bashrc runs `pyenv init`
            // (~190 ms of CPU for every command sshd starts), which no server's deploy user does.
            "mount --bind \"$1\" \"$2\" && { [ ! -f \"$HOME/.bashrc\" ] || mount --bind \"$4\" \"$HOME/.bashrc\"; } \
             && hostname \"$3\" && echo ready && exec sleep infinity",
            "holder",
        ])
        .arg(&self.dir)
        .arg(&self.common)
        .arg(self.hostname())
        .arg(self.dir.join("plain.bashrc"))
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out);
        let child = spawn_persistent(c, libc::SIGKILL).map_err(|e| format!("cannot start unshare: {e}"))?;
        self.holder_pid = child.id();
        let mut holder = ChildGuard::new(child, "the namespace holder (unshare)");
        let ready = holder.wait_ready(Duration::from_secs(20), Duration::from_millis(5), || fs::read_to_string(&out_path).is_ok_and(|s| s.contains("ready")));
        self.holder = Some(holder);
        if let Err(e) = ready {
            return Err(format!(
                "the namespace holder {}: {}",
                e.unwrap_or_else(|| "did not get ready within 20 s".into()),
                fs::read_to_string(&out_path).unwrap_or_default()
            ));
        }
        self.netns = Some(fs::File::open(format!("/proc/{}/ns/net", self.holder_pid)).map_err(|e| format!("open the host's netns: {e}"))?);

        let pid = self.holder_pid.to_string();
        let addr = self.addr.to_string();
        let o = self.addr.octets();
        let gateway = format!("{}.{}.{}.1", o[0], o[1], o[2]);
        ip(&["link", "add", &self.veth, "type", "veth", "peer", "name", "eth0", "netns", &pid])?;
        ip(&["link", "set", &self.veth, "master", bridge, "up"])?;
        let script = format!("ip link set lo up && ip addr add {addr}/24 dev eth0 && ip link set eth0 up && ip route add default via {gateway}");
        let mut c = Command::new("nsenter");
        c.args(["-t", &pid, "-n", "--", "sh", "-c", &script]);
        let out = run(&mut c, None, CMD_TIMEOUT).map_err(|e| e.to_string())?;
        if !out.success() {
            return Err(format!("configure the host's network ({script}): {}", out.stderr.trim()));
        }
        Ok(())
    }

    /// The sandbox registry at `127.0.0.1:<port>` inside the host: a listener
    /// bound in the host's namespace, each connection relayed to the registry
    /// from the root namespace.
    fn start_relay(&mut self, port: u16) -> Result<(), String> {
        let listener = self
            .in_netns(move || TcpListener::bind(("127.0.0.1", port)))
            .map_err(|e| format!("bind the registry relay on 127.0.0.1:{port} in the host: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stop = self.relay_stop.clone();
        let relay = thread::Builder::new()
            .name(format!("fleet-relay-h{}", self.index))
            .spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((inside, _)) => {
                            let _ = inside.set_nonblocking(false);
                            if let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) {
                                pipe(inside, outside);
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
                        Err(_) => thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        self.relay = Some(relay);
        Ok(())
    }

    /// The registry goes away for this host only: its relay stops and the
    /// address refuses connections (a host-side fault for multi-host tests).
    pub fn cut_registry(&self) {
        self.relay_stop.store(true, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(50));
    }

    fn start_dockerd(&mut self) -> Result<(), String> {
        let c = &self.common;
        let log = fs::File::create(self.dir.join("dockerd.log")).map_err(|e| e.to_string())?;
        // Its own key (the engine's ID), not the root namespace engine's /etc/docker/key.json.
        write_file(&self.dir.join("daemon.json"), format!("{{\"deprecated-key-path\": \"{}\"}}\n", c.join("key.json").display()));
        let mut d = self.nsenter();
        d.arg("dockerd")
            .arg("--config-file")
            .arg(c.join("daemon.json"))
            .arg("--data-root")
            .arg(c.join("docker"))
            .arg("--exec-root")
            .arg(c.join("exec"))
            .arg("--pidfile")
            .arg(c.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", c.join("docker.sock").display()))
            .arg("--cgroup-parent")
            .arg(format!("/{}", self.cgroup))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // SIGTERM when the test process dies: dockerd then stops its containers.
        let child = spawn_persistent(d, libc::SIGTERM).map_err(|e| format!("cannot start dockerd: {e}"))?;
        let mut guard = ChildGuard::new(child, "dockerd");
        let sock = self.dir.join("docker.sock");
        let ready = guard.wait_ready(Duration::from_secs(60), Duration::from_millis(25), || engine_ping(&sock));
        self.dockerd = Some(guard);
        ready.map_err(|e| format!("dockerd {}", e.unwrap_or_else(|| "did not answer /_ping within 60 s".into())))
    }

    fn start_sshd(&mut self) -> Result<(), String> {
        let sd = self.dir.join("ssh");
        let common_sd = self.common.join("ssh");
        keygen(&sd.join("host_ed25519"));
        let authorized = self.known_hosts.with_file_name("authorized_keys");
        let (host_key, pid_file) = (common_sd.join("host_ed25519"), common_sd.join("sshd.pid"));
        let files = SshdFiles { listen: self.addr.into(), port: 22, host_key: &host_key, authorized_keys: &authorized, pid_file: &pid_file };
        write_file(&sd.join("sshd_config"), sshd_config(&files));
        let log = fs::File::create(sd.join("sshd.log")).map_err(|e| e.to_string())?;
        let mut c = self.nsenter();
        c.arg("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(common_sd.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = spawn_persistent(c, libc::SIGKILL).map_err(|e| format!("cannot start sshd: {e}"))?;
        let mut guard = ChildGuard::new(child, "sshd");
        let addr = self.addr;
        let ready = guard.wait_ready(Duration::from_secs(20), Duration::from_millis(25), || {
            TcpStream::connect_timeout(&(addr, 22).into(), Duration::from_millis(500)).is_ok()
        });
        self.sshd = Some(guard);
        ready.map_err(|e| format!("sshd {}", e.unwrap_or_else(|| format!("did not accept connections on {addr}:22 within 20 s"))))
    }

    /// `hN`
    pub fn name(&self) -> String {
        format!("h{}", self.index)
    }
    /// The host's hostname: `cstf<fleet id>-hN`.
    pub fn hostname(&self) -> String {
        let suffix = format!("h{}", self.index);
        format!("{}-{suffix}", self.veth.strip_suffix(&suffix).unwrap_or(&self.veth))
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    /// `user@10.X.Y.N:22`
    pub fn ssh_host(&self) -> String {
        format!("{}@{}:22", self.ssh_user, self.addr)
    }
    /// `http://10.X.Y.N:80/`: the host's nginx, from here.
    pub fn lb_url(&self) -> String {
        format!("http://{}:80/", self.addr)
    }
    /// The host's files as seen from here (`<fleet>/hosts/hN`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The host's state dir as seen from here.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// A `docker` command on this host's engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        self.cli.cmd(args)
    }
    /// Run docker on this host; panic with its output on failure; stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.cli.ok(args)
    }
    /// Names of the app's containers on this host (any state), sorted.
    pub fn containers(&self) -> Vec<String> {
        app::list_containers(&self.cli, &self.app)
    }
    /// `GET /version` of each instance, from inside the host.
    pub fn versions(&self) -> Vec<String> {
        app::versions(&self.cli, &self.instances, |url| self.http_get(url))
    }
    /// The image ID of each instance.
    pub fn images(&self) -> Vec<String> {
        app::images(&self.cli, &self.instances)
    }
    /// A load generator through this host's nginx.
    pub fn load(&self, rps: u32) -> LoadGen {
        LoadGen::start(&self.lb_url(), rps)
    }

    /// `GET url` from inside the host (so `127.0.0.1` is the host's loopback).
    pub fn http_get(&self, url: &str) -> io::Result<HttpResponse> {
        let url = url.to_string();
        self.in_netns(move || http::get_with(&url, &[], Duration::from_secs(5)))
    }

    /// Run `f` on a thread inside the host's network namespace (sockets it
    /// makes stay there).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.netns.as_ref().expect("the host's network namespace").as_raw_fd();
        thread::scope(|s| {
            let h = s.spawn(move || {
                // SAFETY: setns(2) on an open namespace fd; it changes this thread only, which ends after `f`.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    panic!("setns into the host's network namespace: {}", io::Error::last_os_error());
                }
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e),
            }
        })
    }

    /// `nsenter -t HOLDER -n -m -u --`: append a program to run it inside the host
    /// (its network, mount and UTS namespaces).
    pub fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder_pid.to_string(), "-n", "-m", "-u", "--"]);
        c
    }

    /// `sh -c script` inside the host (its network and mount namespaces).
    pub fn exec(&self, script: &str) -> Command {
        let mut c = self.nsenter();
        c.args(["sh", "-c", script]);
        c
    }

    /// Run `sh -c script` inside the host; panic on failure; stdout.
    pub fn exec_ok(&self, script: &str) -> String {
        run_ok(&mut self.exec(script), CMD_TIMEOUT)
    }

    /// `ssh` to this host with the sandbox's key and strict checking against
    /// the fleet's known_hosts; append the remote command.
    pub fn ssh_command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(ssh_base_args(&self.identity, &self.known_hosts, 22)).arg(format!("{}@{}", self.ssh_user, self.addr)).arg(remote);
        c
    }

    /// Run a command on this host over SSH.
    pub fn ssh(&self, remote: &str) -> proc::Output {
        run(&mut self.ssh_command(remote), None, CMD_TIMEOUT).expect("run ssh")
    }

    /// Every process of the host: those in its mount namespace (the holder,
    /// dockerd, containerd and shims, sshd and its sessions, nginx,
    /// docker-proxy) and its containers' (the host's cgroup).
    #[allow(dead_code)] // the examples use it
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = processes_of_host(&self.common, &self.dir);
        pids.extend(cgroup_pids(&self.cgroup));
        pids.sort();
        pids.dedup();
        pids
    }

    /// The host key's `ssh-ed25519 AAAA...`.
    fn host_key(&self) -> String {
        let pubkey = fs::read_to_string(self.dir.join("ssh/host_ed25519.pub")).expect("read a host key");
        pubkey.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    /// The tails of the host's logs, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |p: PathBuf| {
            let text = fs::read_to_string(&p).unwrap_or_else(|e| format!("({e})"));
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        };
        format!(
            "--- h{i} dockerd.log ---\n{}\n--- h{i} sshd.log ---\n{}\n--- h{i} nginx error.log ---\n{}",
            tail(self.dir.join("dockerd.log")),
            tail(self.dir.join("ssh/sshd.log")),
            tail(self.dir.join("nginx/error.log")),
            i = self.index
        )
    }
}

impl Drop for FleetHost {
    fn drop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.terminate(Duration::from_secs(3));
        }
        if let Some(mut sshd) = self.sshd.take() {
            sshd.terminate(Duration::from_secs(2));
        }
        if let Some(mut dockerd) = self.dockerd.take() {
            // Containers killed first: a stop would wait for each one's grace period.
            if dockerd.exited().is_none() {
                let ids = self.cli.out(&["ps", "-aq"]);
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = run(&mut self.cli.cmd(&args), None, DOCKER_TIMEOUT);
                }
            }
            dockerd.terminate(Duration::from_secs(20));
        }
        self.relay_stop.store(true, Ordering::SeqCst);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
        // Whatever is left inside the host (containerd, shims, sessions), then the holder.
        kill_host_processes(&self.common, &self.dir, &self.cgroup);
        if let Some(mut holder) = self.holder.take() {
            holder.terminate(Duration::from_secs(2));
        }
        self.netns = None;
        remove_cgroups(&self.cgroup);
        let _ = run(&mut cmd("ip", ["link", "del", &self.veth]), None, CMD_TIMEOUT);
    }
}

// ---------------------------------------------------------------- helpers

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "unknown panic".into())
}

fn check_tools() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "a fleet needs root (network and mount namespaces, veth, dockerd)");
    for tool in ["ip", "unshare", "nsenter", "dockerd", "nginx", "/usr/sbin/sshd"] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        };
        assert!(found, "a fleet needs `{tool}` (run `bash scripts/setup`)");
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = run(&mut cmd("ip", args), None, CMD_TIMEOUT).map_err(|e| format!("cannot run ip: {e}"))?;
    if out.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), out.stderr.trim()))
    }
}

/// The fleet's bridge on a random 10.X.Y.0/24 that no address or route of
/// this machine uses; returns `[X, Y]` (also written to `<dir>/net`).
fn create_bridge(bridge: &str, dir: &Path) -> [u8; 2] {
    let mut last = String::new();
    for _ in 0..20 {
        let r = random_u64();
        let net = [64 + (r % 190) as u8, (r >> 8) as u8];
        let prefix = format!("10.{}.{}.", net[0], net[1]);
        let used = ["addr", "route"].iter().any(|what| {
            let out = run(&mut cmd("ip", ["-4", "-o", what, "show"]), None, CMD_TIMEOUT).map(|o| o.stdout).unwrap_or_default();
            out.contains(&prefix) || out.contains(&format!("10.{}.0.0/16", net[0])) || out.contains(&format!("10.{}.{}.0/24", net[0], net[1]))
        });
        if used {
            continue;
        }
        write_file(&dir.join("net"), format!("10.{}.{}.0/24\n", net[0], net[1]));
        let gateway = format!("{prefix}1/24");
        match ip(&["link", "add", bridge, "type", "bridge"])
            .and_then(|_| ip(&["addr", "add", &gateway, "dev", bridge]))
            .and_then(|_| ip(&["link", "set", bridge, "up"]))
        {
            Ok(()) => return net,
            Err(e) => {
                last = e;
                let _ = ip(&["link", "del", bridge]);
            }
        }
    }
    panic!("cannot create the fleet's bridge {bridge}: {last}");
}

/// `docker save` of the sandbox's image `tag` from the local engine, once per process.
fn saved_image(sandbox: &Sandbox, tag: &str) -> PathBuf {
    static SAVED: Mutex<Vec<(String, PathBuf)>> = Mutex::new(Vec::new());
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = saved.iter().find(|(t, _)| t == tag) {
        return p.clone();
    }
    let path = sandbox.dir().join(format!("fleet-image-{tag}.tar"));
    let image = sandbox.image(tag);
    sandbox.docker_ok(&["save", "-o", &path.display().to_string(), &image]);
    saved.push((tag.to_string(), path.clone()));
    path
}

/// Does the engine on this Unix socket answer `GET /_ping`?
fn engine_ping(sock: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(sock) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    http::parse_response(&raw).is_ok_and(|r| r.status == 200)
}

/// Copy both ways between two connections until each side is done.
fn pipe(a: TcpStream, b: TcpStream) {
    let pairs = [(a.try_clone(), b.try_clone()), (b.try_clone(), a.try_clone())];
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else { continue };
        let _ = thread::Builder::new().name("fleet-relay-conn".into()).stack_size(64 * 1024).spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
    }
}

/// Processes inside one host's mount namespace: those that see the host's
/// dir `source` mounted on the fleet's `host` dir (`mount_point`), which no
/// other namespace has.
fn processes_of_host(mount_point: &Path, source: &Path) -> Vec<u32> {
    let me = std::process::id();
    let mount_point = mount_point.display().to_string();
    let host = format!("/hosts/{}", source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    // mountinfo: id parent major:minor root mount-point options ...
    let is_host_mount = |line: &str| {
        let f: Vec<&str> = line.split(' ').collect();
        f.len() > 4 && f[4] == mount_point && f[3].ends_with(&host)
    };
    let Ok(rd) = fs::read_dir("/proc") else { return Vec::new() };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| fs::read_to_string(format!("/proc/{pid}/mountinfo")).is_ok_and(|m| m.lines().any(is_host_mount)))
        .collect()
}

/// Every pid in the cgroup `name` (and below it) of the pids hierarchy.
fn cgroup_pids(name: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup/pids").join(name)];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    pids
}

/// SIGKILL every process of a host: those in its mount namespace (holder,
/// dockerd, containerd, shims, sshd and sessions, nginx) and its containers
/// (the cgroup `cgroup`); waits (5 s at most) until they are gone.
fn kill_host_processes(common: &Path, host_dir: &Path, cgroup: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut pids = processes_of_host(common, host_dir);
        pids.extend(cgroup_pids(cgroup));
        pids.retain(|p| proc::pid_alive(*p));
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a process inside this fleet host (its mount namespace or its containers' cgroup).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// rmdir the cgroup `name` (deepest first) in every v1 hierarchy.
fn remove_cgroups(name: &str) {
    let Ok(rd) = fs::read_dir("/sys/fs/cgroup") else { return };
    for hierarchy in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
        let top = hierarchy.join(name);
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = fs::read_dir(&d) {
                stack.extend(rd.filter_map(|e| e.ok()).filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Remove what fleets of dead test processes left: their hosts' processes
/// and containers, cgroups, links, and dirs; and bridges whose fleet dir is gone.
pub(crate) fn cleanup_stale_fleets() {
    let entries: Vec<PathBuf> = fs::read_dir("/tmp").map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
    let fleet_dirs: Vec<&PathBuf> = entries.iter().filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(DIR_PREFIX))).collect();
    for dir in &fleet_dirs {
        let owner: Option<u32> = fs::read_to_string(dir.join("owner")).ok().and_then(|s| s.trim().parse().ok());
        if owner.is_none_or(proc::pid_alive) {
            continue;
        }
        let id = dir.file_name().unwrap().to_string_lossy()[DIR_PREFIX.len()..].to_string();
        let hosts: Vec<String> = fs::read_dir(dir.join("hosts"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        for h in &hosts {
            kill_host_processes(&dir.join("host"), &dir.join("hosts").join(h), &format!("{DIR_PREFIX}{id}-{h}"));
        }
        for h in &hosts {
            remove_cgroups(&format!("{DIR_PREFIX}{id}-{h}"));
            let _ = run(&mut cmd("ip", ["link", "del", &format!("{LINK_PREFIX}{id}{h}")]), None, CMD_TIMEOUT);
        }
        let _ = run(&mut cmd("ip", ["link", "del", &format!("{LINK_PREFIX}{id}")]), None, CMD_TIMEOUT);
        let _ = fs::remove_dir_all(dir);
        eprintln!("[support] removed the stale fleet {} (owner {} is gone)", dir.display(), owner.unwrap_or(0));
    }
    // Bridges (and veths) of fleets whose dir is gone.
    if let Ok(out) = run(&mut cmd("ip", ["-o", "link", "show"]), None, CMD_TIMEOUT) {
        for line in out.stdout.lines() {
            let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
            let Some(rest) = name.strip_prefix(LINK_PREFIX) else { continue };
            let id: String = rest.chars().take(6).collect();
            if id.len() == 6 && !Path::new("/tmp").join(format!("{DIR_PREFIX}{id}")).exists() {
                let _ = run(&mut cmd("ip", ["link", "del", name]), None, CMD_TIMEOUT);
            }
        }
    }
}
