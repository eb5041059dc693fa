//! A real Prometheus (Debian's `prometheus`, which `scripts/setup` installs with
//! its service left stopped) on a loopback port, scraping the targets a test
//! gives, with its own config and data in a temporary directory; stopped when
//! dropped.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::http::{self, HttpResponse};
use super::proc::{spawn_persistent, ChildGuard};
use super::{free_port, short_tempdir, write_file};

/// Where Debian installs it.
pub const BINARY: &str = "/usr/bin/prometheus";

pub struct Prometheus {
    port: u16,
    log: PathBuf,
    /// Stopped (SIGTERM, then SIGKILL) when dropped.
    _child: ChildGuard,
    // Dropped after the child (fields drop in order): its data outlives it.
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one scraping `targets` (`127.0.0.1:PORT`, as job `demo`) every
    /// `interval` (at least 1 s), and waits until it is ready. Panics with its log
    /// when it does not start.
    pub fn start(targets: &[String], interval: Duration) -> Prometheus {
        assert!(std::path::Path::new(BINARY).is_file(), "{BINARY} is missing: run `bash scripts/setup` as root (it installs Debian's prometheus)");
        let dir = short_tempdir("cprom");
        let every = format!("{}s", interval.as_secs().max(1));
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  evaluation_interval: {every}\n\
             scrape_configs:\n  - job_name: demo\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        write_file(&dir.path().join("prometheus.yml"), config);
        let log = dir.path().join("prometheus.log");
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = fs::File::create(&log).expect("create the Prometheus log");
            let mut cmd = Command::new(BINARY);
            cmd.arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=1h")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone the log file"))
                .stderr(out);
            let child = spawn_persistent(cmd, libc::SIGTERM).unwrap_or_else(|e| panic!("start {BINARY}: {e}"));
            let mut child = ChildGuard::new(child, "prometheus");
            let ready = child.wait_ready(Duration::from_secs(30), Duration::from_millis(100), || {
                http::get(&format!("http://127.0.0.1:{port}/-/ready")).is_ok_and(|r| r.status == 200)
            });
            match ready {
                Ok(()) => return Prometheus { port, log, _child: child, _dir: dir },
                Err(why) => {
                    last = format!("{}; its log:\n{}", why.unwrap_or_else(|| "not ready within 30 s".into()), fs::read_to_string(&log).unwrap_or_default());
                    child.terminate(Duration::from_secs(3));
                    // A port taken meanwhile: another try on another port.
                    if !last.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("Prometheus did not start: {last}");
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET /api/v1/query?query=…`: the answer as Prometheus sent it (any status).
    pub fn query(&self, promql: &str) -> HttpResponse {
        let url = format!("{}/api/v1/query?query={}", self.url(), encode(promql));
        http::get_with(&url, &[], Duration::from_secs(10)).unwrap_or_else(|e| panic!("query Prometheus ({promql}): {e}; its log:\n{}", self.log()))
    }

    /// What it wrote so far, for a failure's message.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Percent-encodes a query parameter's value (RFC 3986 unreserved kept).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
