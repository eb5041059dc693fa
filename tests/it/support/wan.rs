//! A wide-area link between capstan and a host's sshd: a TCP proxy on
//! loopback that delays every byte by a fixed time in each direction, counts
//! the round trips it carries, and can turn into a black hole (nothing
//! forwarded, nothing closed), as a cut VPN or a dead runner's link does, and
//! heal again (what was held flows, as TCP retransmits it).
//!
//! A round trip is counted each time the client sends after it has received:
//! the turns of a request/answer conversation, which a delay makes cost one
//! round-trip time each. Bytes sent back to back in one direction are one turn.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    one_way_us: AtomicU64,
    black_hole: AtomicBool,
    stop: AtomicBool,
    /// When each client turn started, since `epoch`.
    turns: Mutex<Vec<Duration>>,
    connections: AtomicU64,
    /// Connections still to be closed at once, before a byte is forwarded.
    to_drop: AtomicU64,
}

pub struct WanProxy {
    port: u16,
    #[allow(dead_code)] // counted round trips are the benchmark's
    epoch: Instant,
    shared: Arc<Shared>,
}

impl WanProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target` with
    /// `round_trip / 2` of delay each way.
    pub fn start(target: SocketAddr, round_trip: Duration) -> WanProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the WAN proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared::default());
        shared.one_way_us.store(round_trip.as_micros() as u64 / 2, Ordering::SeqCst);
        let epoch = Instant::now();
        let s = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if s.to_drop.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let turn = Arc::new(AtomicBool::new(true));
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { continue };
                pipe(client, s2, s.clone(), epoch, Way::ToServer(turn.clone()));
                pipe(server, c2, s.clone(), epoch, Way::ToClient(turn));
            }
        });
        WanProxy { port, epoch, shared }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, nothing is forwarded either way and nothing is closed; what
    /// was sent meanwhile flows once it is turned off (a link that heals).
    pub fn black_hole(&self, on: bool) {
        self.shared.black_hole.store(on, Ordering::SeqCst);
    }

    /// The next `n` connections are closed as soon as they are accepted, as a
    /// host whose sshd is restarting or a flapping link does.
    pub fn drop_next(&self, n: u64) {
        self.shared.to_drop.store(n, Ordering::SeqCst);
    }

    /// When each client turn started, from the proxy's start.
    #[allow(dead_code)] // the benchmark's
    pub fn turns(&self) -> Vec<Duration> {
        self.shared.turns.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Client turns in `[from, to)` measured from `since` (an instant after the proxy started).
    #[allow(dead_code)] // the benchmark's
    pub fn turns_between(&self, since: Instant, from: Duration, to: Duration) -> usize {
        let offset = since.saturating_duration_since(self.epoch);
        self.turns().iter().filter(|t| **t >= offset + from && **t < offset + to).count()
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Which way a pipe carries bytes, and the flag the two directions share:
/// set when the server's bytes reach the client, cleared (and a turn
/// counted) when the client sends again.
enum Way {
    ToServer(Arc<AtomicBool>),
    ToClient(Arc<AtomicBool>),
}

/// One direction: a reader hands its chunks, stamped, to a writer that sends
/// each when its delay is over (a delayed link, not a slow one).
fn pipe(mut from: TcpStream, to: TcpStream, s: Arc<Shared>, epoch: Instant, way: Way) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer_shared = s.clone();
    let mut writer_to = to;
    let delivered = match &way {
        Way::ToClient(flag) => Some(flag.clone()),
        Way::ToServer(_) => None,
    };
    thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            // Cut: held, not lost, as TCP keeps what it could not deliver; it flows once the link heals.
            while writer_shared.black_hole.load(Ordering::SeqCst) && !writer_shared.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
            if writer_to.write_all(&chunk).is_err() {
                break;
            }
            if let Some(flag) = &delivered {
                flag.store(true, Ordering::SeqCst);
            }
        }
        let _ = writer_to.shutdown(Shutdown::Write);
    });
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Way::ToServer(flag) = &way {
                if flag.swap(false, Ordering::SeqCst) {
                    s.turns.lock().unwrap_or_else(|e| e.into_inner()).push(epoch.elapsed());
                }
            }
            let delay = Duration::from_micros(s.one_way_us.load(Ordering::SeqCst));
            if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
}

/// `<dir>/known_hosts_wan`: the sandbox sshd's host key, at `proxy`'s port. Its path.
pub fn known_hosts(dir: &std::path::Path, sb: &super::Sandbox, proxy: &WanProxy) -> std::path::PathBuf {
    let known = std::fs::read_to_string(sb.known_hosts()).expect("known_hosts");
    let key = known.lines().next().and_then(|l| l.split_once(' ')).expect("a host key line").1.to_string();
    let known_hosts = dir.join("known_hosts_wan");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {key}\n", proxy.port())).expect("write known_hosts");
    known_hosts
}

/// `app`'s config with its one host reached through `proxy`: the sandbox
/// sshd's host key, now at the proxy's port, in a known_hosts of its own.
pub fn through(app: &super::App, sb: &super::Sandbox, proxy: &WanProxy) -> super::ConfigEdit {
    let known_hosts = known_hosts(app.dir(), sb, proxy);
    super::edit(&app.default_config())
        .set("hosts", vec![format!("{}@127.0.0.1:{}", sb.ssh_user(), proxy.port())])
        .set("ssh.known_hosts", known_hosts.display().to_string())
}

/// A proxy in front of the sandbox's sshd.
pub fn to_sandbox(sb: &super::Sandbox, round_trip: Duration) -> WanProxy {
    WanProxy::start(([127, 0, 0, 1], sb.ssh_port()).into(), round_trip)
}

/// The delays a benchmark runs at: `BENCH_RTTS` (milliseconds, space-separated), else `default`.
#[allow(dead_code)] // the benchmarks use it
pub fn bench_rtts(default: &str) -> Vec<u64> {
    std::env::var("BENCH_RTTS").unwrap_or_else(|_| default.into()).split_whitespace().map(|r| r.parse().expect("BENCH_RTTS: milliseconds")).collect()
}

/// Where a deploy's time went, from its `--json` report's first host: from the run's
/// start to the first instance's first step, to the last step's end, and each step.
#[allow(dead_code)] // the benchmarks use it
pub struct ReportTimes {
    pub first_ms: u64,
    pub last_ms: u64,
    pub instances: u64,
    /// Milliseconds per step name, summed over the instances.
    pub steps: std::collections::BTreeMap<String, u64>,
}

#[allow(dead_code)] // the benchmarks use it
impl ReportTimes {
    pub fn of(report: &serde_json::Value) -> ReportTimes {
        let instances = report["hosts"][0]["instances"].as_array().cloned().unwrap_or_default();
        let steps: Vec<&serde_json::Value> = instances.iter().flat_map(|i| i["steps"].as_array().into_iter().flatten()).collect();
        let ms = |s: &serde_json::Value, k: &str| s[k].as_u64().unwrap_or(0);
        let mut by_name = std::collections::BTreeMap::new();
        for s in &steps {
            *by_name.entry(s["step"].as_str().unwrap_or("?").to_string()).or_insert(0) += ms(s, "duration_ms");
        }
        ReportTimes {
            first_ms: steps.iter().map(|s| ms(s, "started_ms")).min().unwrap_or(0),
            last_ms: steps.iter().map(|s| ms(s, "started_ms") + ms(s, "duration_ms")).max().unwrap_or(0),
            instances: instances.len().max(1) as u64,
            steps: by_name,
        }
    }

    /// From the first instance's first step to the last step, per instance.
    pub fn per_instance_ms(&self) -> u64 {
        (self.last_ms - self.first_ms) / self.instances
    }

    /// Each step's milliseconds per instance.
    pub fn per_instance_steps(&self) -> std::collections::BTreeMap<String, u64> {
        self.steps.iter().map(|(k, v)| (k.clone(), v / self.instances)).collect()
    }
}

/// Prints each step's median milliseconds per instance at each delay (`per_delay[k]`: the
/// runs at `rtts[k]`, each its steps per instance).
#[allow(dead_code, clippy::print_stdout)] // the benchmarks print it
pub fn print_steps_table(rtts: &[u64], per_delay: &[Vec<&std::collections::BTreeMap<String, u64>>]) {
    let names: std::collections::BTreeSet<&String> = per_delay.iter().flatten().flat_map(|s| s.keys()).collect();
    println!("\nper instance, median milliseconds by step\n");
    println!("| step | {} |", rtts.iter().map(|r| format!("{r} ms")).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(rtts.len()));
    for name in names {
        let cells: Vec<String> =
            per_delay.iter().map(|runs| super::median(runs.iter().map(|s| s.get(name).copied().unwrap_or(0)).collect()).to_string()).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
