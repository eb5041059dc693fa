//! An open-loop, fixed-rate HTTP load generator.
//!
//! A scheduler thread issues one request every `1/rps` seconds (on an absolute
//! schedule, so a late tick is caught up, not skipped) to a pool of worker
//! threads. Each request is a fresh TCP connection with a raw
//! `GET <path> HTTP/1.1 ... Connection: close`. A request is ok when the status
//! is 200; anything else (connect error, reset, timeout, other status) is a
//! failure with a short description.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::http::{parse_response, split_url};

const WORKERS: usize = 32;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A load generator stops by itself after this long.
const MAX_RUN: Duration = Duration::from_secs(600);
const MAX_SAMPLES: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Requests attempted (= ok + failed).
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first failure descriptions, e.g. `t+1234ms: status 502`.
    pub samples: Vec<String>,
    /// `X-Demo-Version` of the ok (200) responses; "(none)" when absent.
    pub by_version: BTreeMap<String, u64>,
    /// How long the generator ran.
    pub elapsed: Duration,
    /// Scheduled requests dropped at stop() because no worker had picked them up.
    pub unsent: u64,
}

impl std::fmt::Display for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sent {} ok {} failed {} in {:.1}s, by version {:?}", self.sent, self.ok, self.failed, self.elapsed.as_secs_f64(), self.by_version)?;
        if !self.samples.is_empty() {
            write!(f, ", first failures: {:?}", self.samples)?;
        }
        Ok(())
    }
}

pub struct LoadGen {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    scheduler: Option<thread::JoinHandle<u64>>,
    workers: Vec<thread::JoinHandle<()>>,
    started: Instant,
}

struct Target {
    addr: SocketAddr,
    request: Vec<u8>,
}

impl LoadGen {
    /// Start sending `rps` requests per second to `url` (`http://host:port/path`).
    pub fn start(url: &str, rps: u32) -> LoadGen {
        assert!(rps > 0, "LoadGen: rps must be > 0");
        let (authority, path) = split_url(url).unwrap_or_else(|e| panic!("LoadGen: {e}"));
        let addr = authority.to_socket_addrs().ok().and_then(|mut a| a.next()).unwrap_or_else(|| panic!("LoadGen: cannot resolve {authority}"));
        let target = Arc::new(Target {
            addr,
            request: format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: capstan-loadgen\r\nConnection: close\r\n\r\n").into_bytes(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let started = Instant::now();
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Arc::new(Mutex::new(rx));

        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let (rx, stop, stats, target) = (rx.clone(), stop.clone(), stats.clone(), target.clone());
            let w = thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    if job.is_err() || stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let at = started.elapsed();
                    let result = one_request(&target);
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.sent += 1;
                    match result {
                        Ok(version) => {
                            s.ok += 1;
                            *s.by_version.entry(version).or_default() += 1;
                        }
                        Err(why) => {
                            s.failed += 1;
                            if s.samples.len() < MAX_SAMPLES {
                                s.samples.push(format!("t+{}ms: {why}", at.as_millis()));
                            }
                        }
                    }
                })
                .expect("spawn a load generator worker");
            workers.push(w);
        }

        let stop2 = stop.clone();
        let scheduler = thread::Builder::new()
            .name("loadgen-scheduler".into())
            .spawn(move || {
                let interval = Duration::from_secs_f64(1.0 / f64::from(rps));
                let mut n: u32 = 0;
                let mut scheduled = 0u64;
                while !stop2.load(Ordering::SeqCst) && started.elapsed() < MAX_RUN {
                    let due = interval * n;
                    let now = started.elapsed();
                    if due > now {
                        // Sleep in short slices so stop() is seen promptly.
                        thread::sleep((due - now).min(Duration::from_millis(20)));
                        continue;
                    }
                    if tx.send(()).is_err() {
                        break;
                    }
                    scheduled += 1;
                    n += 1;
                }
                scheduled
                // tx dropped here: idle workers see the channel closed.
            })
            .expect("spawn the load generator scheduler");

        LoadGen { stop, stats, scheduler: Some(scheduler), workers, started }
    }

    /// Stop sending, wait for the requests in flight, return the statistics.
    pub fn stop(mut self) -> LoadStats {
        self.finish()
    }

    fn finish(&mut self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let elapsed = self.started.elapsed();
        let scheduled = self.scheduler.take().map(|h| h.join().unwrap_or(0)).unwrap_or(0);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.elapsed = elapsed;
        s.unsent = scheduled.saturating_sub(s.sent);
        s
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        if self.scheduler.is_some() {
            self.finish();
        }
    }
}

/// One request; Ok(X-Demo-Version) on status 200, else a short description.
fn one_request(target: &Target) -> Result<String, String> {
    let t0 = Instant::now();
    let mut stream = TcpStream::connect_timeout(&target.addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {}", short(&e)))?;
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(IO_TIMEOUT)).and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT))).map_err(|e| format!("socket: {}", short(&e)))?;
    stream.write_all(&target.request).map_err(|e| format!("write: {}", short(&e)))?;
    let mut raw = Vec::with_capacity(512);
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A complete response followed by a reset still counts as a response.
        if raw.is_empty() || parse_response(&raw).is_err() {
            return Err(format!("read after {}ms: {}", t0.elapsed().as_millis(), short(&e)));
        }
    }
    let resp = parse_response(&raw).map_err(|e| format!("response after {}ms: {}", t0.elapsed().as_millis(), short(&e)))?;
    let version = resp.header("x-demo-version").unwrap_or("(none)").to_string();
    if resp.status == 200 {
        Ok(version)
    } else {
        let body: String = resp.body.trim().chars().take(60).collect();
        Err(format!("status {} (version {version}): {body}", resp.status))
    }
}

fn short(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::UnexpectedEof => e.to_string(),
        _ => e.to_string(),
    }
}
