//! Tests of the test harness itself (support): the sandbox's sshd,
//! registry and images, an App behind nginx, the load generator, the demo
//! service's behaviour in a container, and a fleet of real namespace hosts.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::http::{self, base64_std, basic_auth};
use crate::support::proc::{run, spawn_persistent, ChildGuard};
use crate::support::{random_hex, App, AppOptions, Fleet, Sandbox};
use crate::{alone, sandbox, shared};

fn ssh_true(sb: &Sandbox, known_hosts: &std::path::Path) -> support::proc::Output {
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(sb.identity_file())
        .arg("-p")
        .arg(sb.ssh_port().to_string())
        .arg(format!("{}@127.0.0.1", sb.ssh_user()))
        .arg("echo capstan-ok");
    run(&mut c, None, Duration::from_secs(30)).expect("run ssh")
}

#[test]
fn sshd_accepts_the_key_with_strict_host_key_checking() {
    let _turn = shared();
    let sb = sandbox();
    eprintln!("sandbox started in {:?}", sb.startup_time());

    let mode = fs::metadata(sb.identity_file()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity file mode");
    let key = fs::read_to_string(sb.identity_file()).unwrap();
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"), "identity file is an OpenSSH key");

    let kh = fs::read_to_string(sb.known_hosts()).unwrap();
    let prefix = format!("[127.0.0.1]:{} ssh-ed25519 AAAA", sb.ssh_port());
    assert!(kh.starts_with(&prefix), "known_hosts {kh:?} should start with {prefix:?}");
    assert_eq!(sb.ssh_host(), format!("{}@127.0.0.1:{}", sb.ssh_user(), sb.ssh_port()));

    let out = ssh_true(sb, sb.known_hosts());
    assert!(out.success(), "ssh failed: exit {} {}\n{}", out.status, out.stderr, sb.logs());
    assert_eq!(out.stdout.trim(), "capstan-ok");
}

#[test]
fn sshd_is_refused_when_known_hosts_has_another_key() {
    let _turn = shared();
    let sb = sandbox();
    let dir = support::short_tempdir("cst-k-");
    let other = dir.path().join("other");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other).status().unwrap();
    assert!(st.success());
    let other_pub = fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();

    let wrong = dir.path().join("known_hosts_wrong");
    fs::write(&wrong, format!("[127.0.0.1]:{} {}\n", sb.ssh_port(), other_pub.join(" "))).unwrap();
    let out = ssh_true(sb, &wrong);
    assert!(!out.success(), "ssh must fail with a wrong host key; stdout {:?}", out.stdout);
    assert!(
        out.stderr.contains("HOST IDENTIFICATION HAS CHANGED") || out.stderr.contains("Host key verification failed"),
        "unexpected ssh error: {}",
        out.stderr
    );
    assert!(!out.stdout.contains("capstan-ok"));

    // An empty known_hosts is refused too (no accept-new).
    let empty = dir.path().join("known_hosts_empty");
    fs::write(&empty, "").unwrap();
    let out = ssh_true(sb, &empty);
    assert!(!out.success(), "ssh must fail with an unknown host key");
    assert!(out.stderr.contains("Host key verification failed"), "unexpected ssh error: {}", out.stderr);
    assert_eq!(fs::read_to_string(&empty).unwrap(), "", "known_hosts must not be written");
}

#[test]
fn sshd_forwards_the_docker_socket() {
    let _turn = shared();
    // What capstan does: forward a local Unix socket to the host's Docker socket.
    let sb = sandbox();
    let dir = support::short_tempdir("cst-f-");
    let sock = dir.path().join("d.sock");
    let mut c = Command::new("ssh");
    c.args(sb.ssh_args())
        .args(["-N", "-o", "ExitOnForwardFailure=yes", "-L"])
        .arg(format!("{}:/var/run/docker.sock", sock.display()))
        .arg(format!("{}@127.0.0.1", sb.ssh_user()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = spawn_persistent(c, libc::SIGKILL).expect("spawn ssh -L");
    let mut guard = ChildGuard::new(child, "ssh -L");
    let up = support::wait_for(Duration::from_secs(15), Duration::from_millis(20), || {
        if guard.exited().is_some() {
            return Some(false);
        }
        sock.exists().then_some(true)
    });
    assert_eq!(up, Some(true), "ssh -L did not create {}", sock.display());
    let mut s = UnixStream::connect(&sock).expect("connect to the forwarded socket");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let resp = http::parse_response(&raw).expect("a response from the engine");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "OK");
    assert!(resp.header("api-version").is_some());
}

#[test]
fn registry_requires_basic_auth_and_holds_the_demo_tags() {
    let _turn = shared();
    let sb = sandbox();
    assert_eq!(sb.registry_user(), "capstan");
    let json = format!("{{\"username\":\"capstan\",\"password\":\"{}\"}}", sb.registry_password());
    let enc = base64_std(json.as_bytes());
    assert!(enc.contains('+') || enc.contains('/'), "{enc}");
    assert!(sb.image("v2").starts_with(&format!("{}/capstan-demo:", sb.registry())));

    let base = format!("http://{}/v2/", sb.registry());
    let t = Duration::from_secs(5);
    let anon = http::get_with(&base, &[], t).unwrap();
    assert_eq!(anon.status, 401, "{anon:?}");
    assert!(anon.header("www-authenticate").unwrap_or("").starts_with("Basic"), "{anon:?}");

    let wrong = basic_auth("capstan", "not-the-password");
    assert_eq!(http::get_with(&base, &[("Authorization", &wrong)], t).unwrap().status, 401);

    let auth = basic_auth(sb.registry_user(), sb.registry_password());
    let ok = http::get_with(&base, &[("Authorization", &auth)], t).unwrap();
    assert_eq!(ok.status, 200, "{ok:?}");

    let tags_url = format!("{base}capstan-demo/tags/list");
    assert_eq!(http::get_with(&tags_url, &[], t).unwrap().status, 401);
    let tags = http::get_with(&tags_url, &[("Authorization", &auth)], t).unwrap();
    assert_eq!(tags.status, 200, "{tags:?}");
    for tag in ["v1", "v2", "v3", "broken"] {
        assert!(tags.body.contains(&format!("\"{tag}\"")), "tag {tag} missing from {}", tags.body);
    }

    // v1 stays local; the others must come through the registry.
    assert!(run(&mut sb.docker(&["image", "inspect", &sb.image("v1")]), None, t).unwrap().success());
    for tag in ["v2", "v3"] {
        let out = run(&mut sb.docker(&["image", "inspect", &sb.image(tag)]), None, t).unwrap();
        assert!(!out.success(), "{} should not be in the local engine", sb.image(tag));
    }

    // The sandbox DOCKER_CONFIG is logged in.
    let cfg = fs::read_to_string(sb.docker_config_dir().join("config.json")).unwrap();
    assert!(cfg.contains(sb.registry()), "config.json: {cfg}");
}

#[test]
fn app_serves_through_nginx_and_takes_load_without_errors() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "harness", AppOptions::default());
    let name = app.name().to_string();
    assert!(name.starts_with("tharness-") && name.len() == "tharness-".len() + 6, "{name}");
    assert_eq!(app.instances(), vec![format!("{name}-web-1"), format!("{name}-web-2")]);
    assert_eq!(app.containers(), app.instances());
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    let images = app.images();
    assert!(images.iter().all(|i| i.starts_with("sha256:")), "{images:?}");
    assert_eq!(images[0], images[1]);

    let r = http::get(&app.lb_url()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello from v1\n");
    assert_eq!(r.header("x-demo-version"), Some("v1"));
    assert!(r.header("x-demo-instance").is_some_and(|h| !h.is_empty()));

    let up = fs::read_to_string(app.upstream_conf()).unwrap();
    assert!(up.starts_with(&format!("upstream {name} {{\n")), "{up}");
    assert_eq!(up.matches("server 127.0.0.1:").count(), 2, "{up}");

    // The kept setting and labels are there for capstan to carry over.
    let env = app.docker_ok(&["inspect", "-f", "{{json .Config.Env}}", &app.instances()[0]]);
    assert!(env.contains("APP_SETTING=kept") && env.contains("DEMO_START_DELAY_MS=300"), "{env}");

    let config = app.default_config();
    assert!(config.contains(&format!("app: {name}\n")));
    assert!(config.contains(&format!("  - {}\n", sb.ssh_host())));
    assert!(config.contains(&format!("instances: [{name}-web-1, {name}-web-2]")));
    let path = app.write_config(&config);
    assert_eq!(path, app.dir().join("capstan.yml"));

    // The reload command works while nginx runs.
    let out = run(Command::new("sh").arg("-c").arg(app.reload_cmd()), None, Duration::from_secs(10)).unwrap();
    assert!(out.success(), "{}: {}", app.reload_cmd(), out.stderr);

    let load = app.load(200);
    thread::sleep(Duration::from_secs(2));
    let stats = load.stop();
    eprintln!("load: {stats}");
    assert_eq!(stats.failed, 0, "{stats}");
    assert!(stats.sent >= 350, "{stats}");
    assert_eq!(stats.ok, stats.sent);
    assert_eq!(stats.by_version.keys().collect::<Vec<_>>(), vec!["v1"], "{stats}");

    let config_dir = sb.docker_config_dir().to_path_buf();
    drop(app);
    let left = run(
        Command::new("docker").env("DOCKER_CONFIG", &config_dir).args(["ps", "-a", "--filter", &format!("name={name}-"), "--format", "{{.Names}}"]),
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(left.stdout.trim(), "", "containers left after drop");
}

#[test]
fn load_generator_counts_failures() {
    let _turn = shared();
    // Nothing listens on this port: every request fails to connect.
    let port = support::free_port();
    let load = support::LoadGen::start(&format!("http://127.0.0.1:{port}/"), 50);
    thread::sleep(Duration::from_millis(500));
    let stats = load.stop();
    assert!(stats.sent >= 15, "{stats}");
    assert_eq!(stats.ok, 0);
    assert_eq!(stats.failed, stats.sent);
    assert!(!stats.samples.is_empty() && stats.samples.len() <= 10);
    assert!(stats.samples[0].contains("connect: connection refused"), "{:?}", stats.samples);
}

/// A throwaway container from the sandbox images, removed on drop.
struct Throwaway {
    name: String,
    port: u16,
    config: std::path::PathBuf,
}

impl Throwaway {
    fn run(sb: &Sandbox, image: &str) -> Throwaway {
        let name = format!("tthrow-{}", random_hex(6));
        let port = support::free_port();
        sb.docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("capstan.test.owner={}", std::process::id()),
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            image,
        ]);
        let t = Throwaway { name, port, config: sb.docker_config_dir().to_path_buf() };
        let url = t.url("/version");
        let up = support::wait_for(Duration::from_secs(30), Duration::from_millis(50), || http::get(&url).ok().filter(|r| r.status == 200));
        assert!(up.is_some(), "{image} did not come up on port {port}");
        t
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = run(Command::new("docker").env("DOCKER_CONFIG", &self.config).args(["rm", "-f", &self.name]), None, Duration::from_secs(30));
    }
}

#[test]
fn broken_image_fails_its_health_check() {
    let _turn = shared();
    let sb = sandbox();
    let image = sb.image("broken");
    {
        // Pulled from the registry with the sandbox credentials.
        let c = Throwaway::run(sb, &image);
        let h = http::get(&c.url("/health")).unwrap();
        assert_eq!(h.status, 500, "{h:?}");
        assert_eq!(h.header("x-demo-version"), Some("broken"));
        assert_eq!(http::get(&c.url("/version")).unwrap().body, "broken");
        assert_eq!(http::get(&c.url("/")).unwrap().status, 200);
    }
    // Keep the invariant: only v1 is local, capstan must pull the rest.
    let _ = run(&mut sb.docker(&["rmi", &image]), None, Duration::from_secs(30));
}

#[test]
fn demo_finishes_requests_in_flight_on_sigterm_as_pid_1() {
    let _turn = shared();
    let sb = sandbox();
    let c = Throwaway::run(sb, &sb.image("v1"));
    assert_eq!(http::get(&c.url("/health")).unwrap().status, 200);
    assert_eq!(http::get(&c.url("/nope")).unwrap().status, 404);

    let slow_url = c.url("/?sleep_ms=1500");
    let slow = thread::spawn(move || http::get_with(&slow_url, &[], Duration::from_secs(10)));
    thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    sb.docker_ok(&["stop", "-t", "10", &c.name]);
    let stop_took = t0.elapsed();
    let resp = slow.join().unwrap().expect("the in-flight request completes");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "hello from v1\n");
    assert!(stop_took >= Duration::from_millis(900), "stopped before the request finished: {stop_took:?}");
    assert!(stop_took < Duration::from_secs(5), "SIGTERM ignored? docker stop took {stop_took:?}");
    let code = sb.docker_ok(&["inspect", "-f", "{{.State.ExitCode}}", &c.name]);
    assert_eq!(code.trim(), "0");
}

#[test]
fn fleet_of_three_hosts_is_real() {
    let _turn = alone();
    let sb = sandbox();
    let fleet = Fleet::start(sb, 3, "fleet", AppOptions::default());
    eprintln!("fleet of 3 hosts started in {:?}", fleet.startup_time());
    let instances = fleet.instances();
    let hosts = fleet.host_list();
    assert_eq!(fleet.hosts(), hosts.iter().map(|h| format!("{}@{}:22", sb.ssh_user(), h.addr())).collect::<Vec<_>>());
    let addrs: std::collections::HashSet<_> = hosts.iter().map(|h| h.addr()).collect();
    assert_eq!(addrs.len(), 3, "one address per host: {addrs:?}");

    // Each engine is its own and holds only its own instances.
    let mut engine_ids = std::collections::HashSet::new();
    let mut container_ids = Vec::new();
    for h in hosts {
        let info = h.docker_ok(&["info", "-f", "{{.ID}} {{.Name}}"]);
        assert!(engine_ids.insert(info.trim().to_string()), "{} shares an engine: {info}", h.name());
        assert!(info.trim().ends_with(&format!(" {}", h.hostname())), "{}: {info}", h.name());
        assert_eq!(h.containers(), instances, "{}", h.name());
        let ids: Vec<String> = h.docker_ok(&["ps", "-aq"]).split_whitespace().map(String::from).collect();
        assert_eq!(ids.len(), instances.len(), "{}: only the app's containers: {ids:?}", h.name());
        container_ids.push(ids);
    }
    for (i, ids) in container_ids.iter().enumerate() {
        for (j, other) in container_ids.iter().enumerate() {
            if i != j {
                assert!(ids.iter().all(|id| !other.contains(id)), "h{} and h{} share containers", i + 1, j + 1);
                for id in ids {
                    assert!(
                        !run(&mut hosts[j].docker(&["inspect", id]), None, Duration::from_secs(30)).unwrap().success(),
                        "h{} sees h{}'s {id}",
                        j + 1,
                        i + 1
                    );
                }
            }
        }
    }
    let main_engine = run(&mut sb.docker(&["ps", "-aq", "--filter", &format!("name={}-", fleet.name())]), None, Duration::from_secs(30)).unwrap();
    assert_eq!(main_engine.stdout.trim(), "", "the fleet's containers are not on the main engine");

    // Each host's nginx answers v1 on the host's address, from its own instances,
    // and on the host's own loopback (capstan's traffic check goes there).
    for (h, ids) in hosts.iter().zip(&container_ids) {
        for _ in 0..4 {
            let r = http::get(&h.lb_url()).unwrap_or_else(|e| panic!("{}: {e}", h.lb_url()));
            assert_eq!((r.status, r.header("x-demo-version")), (200, Some("v1")), "{}: {r:?}", h.lb_url());
            let instance = r.header("x-demo-instance").unwrap_or("");
            assert!(ids.iter().any(|id| id.starts_with(instance) && !instance.is_empty()), "{} answered from {instance:?}, not one of {ids:?}", h.name());
        }
        let r = h.http_get("http://127.0.0.1:80/").unwrap();
        assert_eq!(r.status, 200, "{}: nginx on the host's 127.0.0.1:80", h.name());
        assert_eq!(h.versions(), vec!["v1", "v1"], "{}", h.name());
        // The config's paths are the same on every host and lead to each one's own files.
        assert_eq!(fs::read_to_string(h.dir().join("name")).unwrap().trim(), format!("{} {}", h.name(), h.addr()));
        let seen = h.exec_ok(&format!("cat {}/name; test -S {}", fleet.common().display(), fleet.docker_socket().display()));
        assert_eq!(seen.trim(), format!("{} {}", h.name(), h.addr()));
    }
    assert_eq!(fs::read_dir(fleet.common()).unwrap().count(), 0, "the common path is empty outside the hosts");

    // SSH with the sandbox identity and strict host-key checking lands in that host.
    for h in hosts {
        let out = h.ssh(&format!(
            "cat {}/name; ip -4 -o addr show dev eth0; docker -H unix://{} ps -q | wc -l",
            fleet.common().display(),
            fleet.docker_socket().display()
        ));
        assert!(out.success(), "ssh {}: exit {} {}\n{}", h.ssh_host(), out.status, out.stderr, h.logs());
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], format!("{} {}", h.name(), h.addr()), "{}", out.stdout);
        assert!(lines[1].contains(&format!("inet {}/24", h.addr())), "{}", out.stdout);
        assert_eq!(lines[2].trim(), instances.len().to_string(), "{}", out.stdout);
    }
    // Each host has its own key: h1's key under h2's address is refused.
    let kh = fs::read_to_string(fleet.known_hosts()).unwrap();
    assert_eq!(kh.lines().count(), 3, "{kh}");
    let h1_key = kh.lines().next().unwrap().split_once(' ').unwrap().1.to_string();
    let dir = support::short_tempdir("cst-k-");
    let wrong = dir.path().join("known_hosts");
    fs::write(&wrong, format!("{} {h1_key}\n", hosts[1].addr())).unwrap();
    let mut c = Command::new("ssh");
    c.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", wrong.display()))
        .arg("-i")
        .arg(sb.identity_file())
        .arg(format!("{}@{}", sb.ssh_user(), hosts[1].addr()))
        .arg("true");
    let out = run(&mut c, None, Duration::from_secs(30)).unwrap();
    assert!(!out.success() && out.stderr.contains("HOST IDENTIFICATION HAS CHANGED"), "exit {} {}", out.status, out.stderr);

    // The current capstan deploys v2 to all three hosts under load, losing nothing.
    let config = fleet.default_config();
    for h in fleet.hosts() {
        assert!(config.contains(&format!("  - {h}\n")), "{config}");
    }
    assert!(config.contains(&format!("docker:\n  socket: {}\n", fleet.docker_socket().display())), "{config}");
    fleet.write_config(&config);
    let loads = fleet.load(50);
    thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let deploy = fleet.capstan(&["deploy", "--version", "v2"]);
    let took = t.elapsed();
    thread::sleep(Duration::from_millis(500));
    let stats: Vec<_> = loads.into_iter().map(|l| l.stop()).collect();
    assert!(deploy.success(), "{deploy}\n{}", fleet.logs());
    eprintln!("deploy of v2 to 3 hosts in {took:.2?}");
    for (h, s) in hosts.iter().zip(&stats) {
        eprintln!("load through {} ({}): {s}", h.name(), h.lb_url());
        assert_eq!(s.failed, 0, "{}: {s}", h.name());
        assert!(s.sent >= 100, "{}: {s}", h.name());
        assert!(s.by_version.contains_key("v2"), "{}: v2 served through the host's nginx: {s}", h.name());
    }
    assert_eq!(fleet.versions(), vec![vec!["v2", "v2"]; 3]);
    for h in hosts {
        let log = fs::read_to_string(h.state_dir().join("deploys.jsonl")).unwrap_or_default();
        assert_eq!(log.lines().count(), 1, "{}: one deploy recorded in its own state dir: {log}", h.name());
        assert_eq!(h.containers(), instances, "{}: no leftover containers", h.name());
    }

    // Drop removes everything: processes, links, the dir.
    let (fleet_dir, bridge) = (fleet.dir().to_path_buf(), format!("cstf{}", fleet.id()));
    drop(fleet);
    assert!(!fleet_dir.exists(), "{} left behind", fleet_dir.display());
    let links = run(Command::new("ip").args(["-o", "link", "show"]), None, Duration::from_secs(10)).unwrap();
    assert!(!links.stdout.contains(&bridge), "links left behind: {}", links.stdout);
    let ps = run(Command::new("ps").args(["-eo", "args"]), None, Duration::from_secs(10)).unwrap();
    assert!(!ps.stdout.contains(&fleet_dir.display().to_string()), "processes left behind:\n{}", ps.stdout);
}
