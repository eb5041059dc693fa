//! Test support for capstan: real components on loopback.
//!
//! - [`Sandbox`]: one per process — Docker engine check, a registry with
//!   password auth, the demo images pushed to it, and an sshd with its own keys.
//! - [`App`]: one per test — demo containers, a Docker network, an nginx load
//!   balancer in front of them, a work dir with `capstan.yml` and the state dir.
//! - [`LoadGen`]: fixed-rate HTTP load through the load balancer.
//! - [`Fleet`]: N real hosts on this machine (network and mount namespaces),
//!   each with its own dockerd, sshd, nginx and demo instances.
//! - [`SwarmApp`]: a Swarm service on the sandbox's engine in swarm mode, its
//!   replicas on the host's network behind nginx (no routing mesh here).
//! - [`PaymentSystem`]: the payment system of issue #14, a Compose project
//!   with nginx as a container routing to its instances by service name.
//! - [`edit`]: a config changed by key path (`services.web.health.timeout`),
//!   never by text replacement.
//! - [`KeepAliveLoad`]: GETs and POSTs over persistent connections, as real
//!   clients send them, checked against the charges the service recorded.
//! - [`prometheus::Prometheus`]: a real Prometheus on loopback scraping given targets.
//!
//! Compiled once into the integration tests (`tests/it/main.rs`: `mod support;`),
//! and into each example with `#[path = "../tests/it/support/mod.rs"] mod support;`.

pub mod action_repo;
mod app;
pub mod base_image;
mod compose;
mod config_edit;
mod fleet;
pub mod github;
pub mod http;
mod keepalive_load;
mod load;
pub mod proc;
pub mod prometheus;
pub mod runner;
mod sandbox;
mod sshd;
mod swarm;
pub mod wan;

pub use app::{App, AppOptions, Run};
pub use compose::{registry_digest, ComposeCli, PaymentSystem, INSTANCES, NGINX_SERVICE, START_TAG};
pub use config_edit::{edit, ConfigEdit};
pub use fleet::Fleet;
pub use keepalive_load::{KeepAliveLoad, KeepAliveOptions, KeepAliveStats, LedgerCheck, PostOutcome};
pub use load::{LoadGen, LoadStats};
#[allow(unused_imports)] // `bench/wan` times `ssh host true` with it
pub(crate) use sandbox::ssh_base_args;
pub use sandbox::Sandbox;
pub use swarm::SwarmApp;
// What only the examples name.
#[allow(unused_imports)]
pub use {app::capstan_bin, compose::PaymentImages};

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One row of the faults table (#6), printed and appended to
/// `$CAPSTAN_FAULTS_TABLE` when set: `bash scripts/faults` collects them.
/// `stats` is the load that ran through the fault, when one did.
pub fn record_fault(fault: &str, did: &str, stats: Option<&LoadStats>, recover: Option<Duration>) {
    use std::io::Write;
    let lost = stats.map(|s| format!("{} of {}", s.failed, s.sent)).unwrap_or_else(|| "— (no load)".into());
    let recover = recover.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "—".into());
    let row = format!("| {fault} | {did} | {lost} | {recover} |\n");
    eprint!("[faults] {row}");
    if let Ok(path) = std::env::var("CAPSTAN_FAULTS_TABLE") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("the faults table");
        f.write_all(row.as_bytes()).expect("the faults table");
    }
}

/// The middle value of a benchmark's runs (the upper one of an even count; the
/// default of an empty list).
#[allow(dead_code)] // the benchmarks'
pub fn median<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The capstan repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on 127.0.0.1.
///
/// Ports are taken below the kernel's ephemeral range (where outgoing
/// connections and `bind(:0)` pick theirs), so a port handed out here is not
/// grabbed by the load generator's connections before the service binds it;
/// the port is checked by binding it, and never handed out twice by this
/// process. Falls back to `bind(127.0.0.1:0)`.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (from, to) = (20000u32, low.min(65535));
    if to > from + 1000 {
        for _ in 0..200 {
            let p = (from + (random_u64() % u64::from(to - from)) as u32) as u16;
            if handed.contains(&p) {
                continue;
            }
            // One at a time: both must be bindable (docker-proxy binds 127.0.0.1:p).
            let local = TcpListener::bind(("127.0.0.1", p)).is_ok();
            let any = local && TcpListener::bind(("0.0.0.0", p)).is_ok();
            if any {
                handed.insert(p);
                return p;
            }
        }
    }
    loop {
        let p = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port();
        if handed.insert(p) {
            return p;
        }
    }
}

/// 64 random bits from std only (SipHash with a random key, time and a counter).
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// `n` random lowercase hex digits.
pub fn random_hex(n: usize) -> String {
    let mut s = String::new();
    while s.len() < n {
        s.push_str(&format!("{:016x}", random_u64()));
    }
    s.truncate(n);
    s
}

/// Poll `f` every `every` until it returns `Some`, or `None` after `timeout`.
pub fn wait_for<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Does something accept TCP connections on 127.0.0.1:port?
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

/// A private temporary directory with a short path: `/tmp/<prefix>XXXXXX`.
pub fn short_tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).rand_bytes(6).tempdir_in("/tmp").unwrap_or_else(|e| panic!("create a temp dir /tmp/{prefix}*: {e}"))
}

/// `text` with `from`, which must occur in it exactly once, replaced by `to`:
/// for files that are not capstan's config (an nginx.conf), so that an edit
/// whose text drifted fails instead of silently changing nothing.
#[track_caller]
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    let n = text.matches(from).count();
    assert_eq!(n, 1, "replace_once: {from:?} occurs {n} times, not once, in:\n{text}");
    text.replacen(from, to, 1)
}

/// Write a file, panicking with its path on error.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}
