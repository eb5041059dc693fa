//! A load generator that behaves like real HTTP clients: GETs and POSTs at a
//! fixed rate over a small pool of persistent (keep-alive) HTTP/1.1
//! connections.
//!
//! - A scheduler thread puts each request on an absolute schedule (a late tick
//!   is caught up, not skipped): `get_rps` GETs a second, spread over
//!   `get_paths` in turn, and `post_rps` POSTs a second to `post_path`, each
//!   with a unique `X-Charge-Id`.
//! - `connections` worker threads each own one connection and take the next
//!   request from the queue. A connection is opened when needed, kept after an
//!   answer unless the answer says `Connection: close`, and, like Go's
//!   transport or a browser, checked before it is reused: one the server has
//!   already closed (a FIN or reset waiting) is dropped and a new one opened,
//!   which is not a failure.
//! - A POST is never sent twice. A GET that fails on a reused connection before
//!   any byte of the answer came back (the server closed the connection as the
//!   request went out) is retried once on a new connection, as Go and browsers
//!   do for idempotent requests; if that answers, it counts as ok (and as
//!   `get_retried`).
//! - The generator stops by itself after `max_run`.
//!
//! After the run, [`KeepAliveStats::check_ledger`] compares the POSTs with the
//! charges the service recorded: every POST answered 2xx must be recorded
//! exactly once, and no charge may be recorded twice, whatever its answer.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::random_hex;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SAMPLES: usize = 12;
const MAX_RESPONSE: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct KeepAliveOptions {
    /// GETs per second, spread over `get_paths` in turn.
    pub get_rps: u32,
    pub get_paths: Vec<String>,
    /// POSTs per second to `post_path`, each with a new `X-Charge-Id`.
    pub post_rps: u32,
    pub post_path: String,
    /// The pool: this many persistent connections (and worker threads).
    pub connections: usize,
    /// The generator stops by itself after this long.
    pub max_run: Duration,
}

impl Default for KeepAliveOptions {
    fn default() -> Self {
        KeepAliveOptions {
            get_rps: 100,
            get_paths: vec!["/auth/".into(), "/payments/version".into()],
            post_rps: 25,
            post_path: "/pay".into(),
            connections: 8,
            max_run: Duration::from_secs(300),
        }
    }
}

/// What became of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostOutcome {
    /// The status the server answered.
    Answered(u16),
    /// No answer: the error.
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct KeepAliveStats {
    pub elapsed: Duration,
    pub get_sent: u64,
    /// Answered 2xx (after at most one retry).
    pub get_ok: u64,
    /// Not answered 2xx: no answer, or another status.
    pub get_failed: u64,
    /// Answered 5xx (counted in `get_failed` too).
    pub get_5xx: u64,
    /// GETs that needed their one retry (counted as ok when it answered).
    pub get_retried: u64,
    pub post_sent: u64,
    pub post_2xx: u64,
    /// No answer at all (the error samples are in `post_samples`).
    pub post_failed: u64,
    /// Of `post_failed`: no byte came back on a reused keep-alive connection, the one nginx
    /// closes as it reloads while the request is on its way (which no client retries for a
    /// POST: it cannot know that nothing was done).
    pub post_reload_race: u64,
    pub post_5xx: u64,
    /// Answered, neither 2xx nor 5xx.
    pub post_other: u64,
    /// Connections opened, including the first ones.
    pub connections_opened: u64,
    /// Pooled connections found closed by the server before reuse (dropped, not failures).
    pub stale_dropped: u64,
    /// The longest a request waited in the queue past its scheduled time.
    pub max_lag: Duration,
    /// Requests scheduled but never sent (queued when the generator stopped).
    pub unsent: u64,
    /// `"<method> <path> <X-Demo-Version>"` of the 2xx answers.
    pub by_version: BTreeMap<String, u64>,
    pub get_samples: Vec<String>,
    pub post_samples: Vec<String>,
    /// Every POST sent: its charge id and what became of it.
    pub posts: Vec<(String, PostOutcome)>,
}

/// The POSTs against the ledger of recorded charges.
#[derive(Debug, Clone, Default)]
pub struct LedgerCheck {
    /// Charges (lines) in the ledger that this load sent.
    pub recorded: u64,
    /// POSTs answered 2xx and recorded exactly once.
    pub answered_and_recorded: u64,
    /// POSTs answered 2xx but not recorded.
    pub missing: Vec<String>,
    /// Charge ids recorded more than once, whatever their answer (with the count).
    pub duplicates: Vec<(String, u64)>,
    /// POSTs not answered 2xx that were recorded all the same (charged, but the client was not told).
    pub recorded_unanswered: Vec<String>,
}

impl LedgerCheck {
    /// Every 2xx recorded exactly once, and no charge twice.
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.duplicates.is_empty()
    }
}

impl std::fmt::Display for LedgerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ledger: {} charges recorded, {} answered 2xx and recorded once, {} answered 2xx and missing, {} recorded twice or more, {} recorded though not answered 2xx",
            self.recorded,
            self.answered_and_recorded,
            self.missing.len(),
            self.duplicates.len(),
            self.recorded_unanswered.len()
        )?;
        if !self.missing.is_empty() {
            write!(f, "; missing: {:?}", &self.missing[..self.missing.len().min(10)])?;
        }
        if !self.duplicates.is_empty() {
            write!(f, "; duplicates: {:?}", &self.duplicates[..self.duplicates.len().min(10)])?;
        }
        Ok(())
    }
}

impl KeepAliveStats {
    /// Requests answered 5xx, GETs and POSTs.
    pub fn total_5xx(&self) -> u64 {
        self.get_5xx + self.post_5xx
    }

    /// Compare with the ledger's lines (`<charge id> <version>`); lines of
    /// charges this load did not send are ignored.
    pub fn check_ledger<S: AsRef<str>>(&self, lines: &[S]) -> LedgerCheck {
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for line in lines {
            if let Some(id) = line.as_ref().split_whitespace().next() {
                *counts.entry(id).or_default() += 1;
            }
        }
        let mut check = LedgerCheck::default();
        for (id, outcome) in &self.posts {
            let n = counts.get(id.as_str()).copied().unwrap_or(0);
            check.recorded += n;
            let answered_2xx = matches!(outcome, PostOutcome::Answered(s) if (200..300).contains(s));
            if n > 1 {
                check.duplicates.push((id.clone(), n));
            }
            match (answered_2xx, n) {
                (true, 1) => check.answered_and_recorded += 1,
                (true, 0) => check.missing.push(id.clone()),
                (false, n) if n > 0 => check.recorded_unanswered.push(id.clone()),
                _ => {}
            }
        }
        check
    }
}

impl std::fmt::Display for KeepAliveStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in {:.1}s over {} connections opened ({} found closed before reuse), max queue lag {} ms, {} unsent: \
             GET sent {} ok {} failed {} 5xx {} retried {}; POST sent {} 2xx {} failed {} 5xx {} other {}; by version {:?}",
            self.elapsed.as_secs_f64(),
            self.connections_opened,
            self.stale_dropped,
            self.max_lag.as_millis(),
            self.unsent,
            self.get_sent,
            self.get_ok,
            self.get_failed,
            self.get_5xx,
            self.get_retried,
            self.post_sent,
            self.post_2xx,
            self.post_failed,
            self.post_5xx,
            self.post_other,
            self.by_version
        )?;
        if !self.get_samples.is_empty() {
            write!(f, "; GET failures: {:?}", self.get_samples)?;
        }
        if !self.post_samples.is_empty() {
            write!(f, "; POST failures: {:?}", self.post_samples)?;
        }
        Ok(())
    }
}

enum Job {
    Get { path: String, due: Duration },
    Post { id: String, due: Duration },
}

struct Shared {
    addr: SocketAddr,
    authority: String,
    post_path: String,
    started: Instant,
    stop: AtomicBool,
    stats: Mutex<KeepAliveStats>,
}

pub struct KeepAliveLoad {
    shared: Arc<Shared>,
    scheduler: Option<thread::JoinHandle<u64>>,
    workers: Vec<thread::JoinHandle<()>>,
}

impl KeepAliveLoad {
    /// Start the load against `base` (`http://host:port`, no path).
    pub fn start(base: &str, opts: KeepAliveOptions) -> KeepAliveLoad {
        assert!(opts.connections > 0, "KeepAliveLoad: connections must be > 0");
        assert!(opts.get_rps == 0 || !opts.get_paths.is_empty(), "KeepAliveLoad: GETs need paths");
        let authority = base.strip_prefix("http://").unwrap_or(base).trim_end_matches('/').to_string();
        let addr = authority.to_socket_addrs().ok().and_then(|mut a| a.next()).unwrap_or_else(|| panic!("KeepAliveLoad: cannot resolve {authority}"));
        let shared = Arc::new(Shared {
            addr,
            authority,
            post_path: opts.post_path.clone(),
            started: Instant::now(),
            stop: AtomicBool::new(false),
            stats: Mutex::new(KeepAliveStats::default()),
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..opts.connections)
            .map(|i| {
                let (rx, shared) = (rx.clone(), shared.clone());
                thread::Builder::new()
                    .name(format!("keepalive-{i}"))
                    .stack_size(256 * 1024)
                    .spawn(move || worker(&shared, &rx))
                    .expect("spawn a keep-alive load worker")
            })
            .collect();
        let sched_shared = shared.clone();
        let scheduler = thread::Builder::new()
            .name("keepalive-scheduler".into())
            .spawn(move || schedule(&sched_shared, &opts, &tx))
            .expect("spawn the keep-alive load scheduler");
        KeepAliveLoad { shared, scheduler: Some(scheduler), workers }
    }

    /// Stop scheduling, let the requests in flight finish, return the figures.
    pub fn stop(mut self) -> KeepAliveStats {
        self.finish()
    }

    fn finish(&mut self) -> KeepAliveStats {
        self.shared.stop.store(true, Ordering::SeqCst);
        let elapsed = self.shared.started.elapsed();
        let scheduled = self.scheduler.take().map(|h| h.join().unwrap_or(0)).unwrap_or(0);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let mut s = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        s.elapsed = elapsed;
        s.unsent = scheduled.saturating_sub(s.get_sent + s.post_sent);
        s
    }
}

impl Drop for KeepAliveLoad {
    fn drop(&mut self) {
        if self.scheduler.is_some() {
            self.finish();
        }
    }
}

/// Emits the GETs and POSTs on their schedules; returns how many it emitted.
fn schedule(shared: &Shared, opts: &KeepAliveOptions, tx: &mpsc::Sender<Job>) -> u64 {
    let every = |rps: u32| (rps > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rps)));
    let (get_every, post_every) = (every(opts.get_rps), every(opts.post_rps));
    let prefix = random_hex(8);
    let (mut gets, mut posts) = (0u32, 0u32);
    let mut emitted = 0u64;
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.started.elapsed() >= opts.max_run {
            return emitted;
        }
        let next_get = get_every.map(|e| e * gets);
        let next_post = post_every.map(|e| e * posts);
        let (due, is_get) = match (next_get, next_post) {
            (Some(g), Some(p)) if p < g => (p, false),
            (Some(g), _) => (g, true),
            (None, Some(p)) => (p, false),
            (None, None) => return emitted,
        };
        let now = shared.started.elapsed();
        if due > now {
            // Short slices, so that stop() is seen promptly.
            thread::sleep((due - now).min(Duration::from_millis(20)));
            continue;
        }
        let job = if is_get {
            let path = opts.get_paths[gets as usize % opts.get_paths.len()].clone();
            gets += 1;
            Job::Get { path, due }
        } else {
            posts += 1;
            Job::Post { id: format!("ch-{prefix}-{posts}"), due }
        };
        if tx.send(job).is_err() {
            return emitted;
        }
        emitted += 1;
    }
}

/// One persistent connection.
struct Conn {
    stream: TcpStream,
    /// Answers read on it so far.
    answered: u64,
}

struct Answer {
    status: u16,
    version: String,
    keep_alive: bool,
}

/// Why an exchange failed: whether any byte of an answer had come back, and
/// whether the connection had carried an answer before (was reused).
struct Failure {
    what: String,
    before_any_byte: bool,
    reused: bool,
}

fn worker(shared: &Shared, rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut conn: Option<Conn> = None;
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(job) = job else { return };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let lag = match &job {
            Job::Get { due, .. } | Job::Post { due, .. } => shared.started.elapsed().saturating_sub(*due),
        };
        let at = shared.started.elapsed().as_millis();
        match job {
            Job::Get { path, .. } => {
                let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: capstan-keepalive-load\r\n\r\n", shared.authority);
                let mut result = exchange(shared, &mut conn, request.as_bytes());
                let mut retried = false;
                if let Err(f) = &result {
                    if f.before_any_byte && f.reused {
                        retried = true;
                        result = exchange(shared, &mut conn, request.as_bytes());
                    }
                }
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.max_lag = s.max_lag.max(lag);
                s.get_sent += 1;
                s.get_retried += u64::from(retried);
                match result {
                    Ok(a) if (200..300).contains(&a.status) => {
                        s.get_ok += 1;
                        *s.by_version.entry(format!("GET {path} {}", a.version)).or_default() += 1;
                    }
                    Ok(a) => {
                        s.get_failed += 1;
                        s.get_5xx += u64::from(a.status >= 500);
                        sample(&mut s.get_samples, format!("t+{at}ms GET {path}: status {} (version {})", a.status, a.version));
                    }
                    Err(f) => {
                        s.get_failed += 1;
                        sample(&mut s.get_samples, format!("t+{at}ms GET {path}: {}{}", f.what, if retried { " (after a retry)" } else { "" }));
                    }
                }
            }
            Job::Post { id, .. } => {
                let body = format!("{{\"charge\":\"{id}\",\"amount_cents\":1250}}");
                let request = format!(
                    "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: capstan-keepalive-load\r\nContent-Type: application/json\r\n\
                     X-Charge-Id: {id}\r\nContent-Length: {}\r\n\r\n{body}",
                    shared.post_path,
                    shared.authority,
                    body.len()
                );
                // Never retried, whatever happened.
                let result = exchange(shared, &mut conn, request.as_bytes());
                let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                s.max_lag = s.max_lag.max(lag);
                s.post_sent += 1;
                let outcome = match result {
                    Ok(a) => {
                        if (200..300).contains(&a.status) {
                            s.post_2xx += 1;
                            *s.by_version.entry(format!("POST {} {}", shared.post_path, a.version)).or_default() += 1;
                        } else {
                            if a.status >= 500 {
                                s.post_5xx += 1;
                            } else {
                                s.post_other += 1;
                            }
                            sample(&mut s.post_samples, format!("t+{at}ms POST {id}: status {} (version {})", a.status, a.version));
                        }
                        PostOutcome::Answered(a.status)
                    }
                    Err(f) => {
                        s.post_failed += 1;
                        if f.before_any_byte && f.reused {
                            s.post_reload_race += 1;
                        }
                        sample(&mut s.post_samples, format!("t+{at}ms POST {id}: {}", f.what));
                        PostOutcome::Failed(f.what)
                    }
                };
                s.posts.push((id, outcome));
            }
        }
    }
}

fn sample(samples: &mut Vec<String>, what: String) {
    if samples.len() < MAX_SAMPLES {
        samples.push(what);
    }
}

/// Has the server closed (or reset) this idle connection? Looked at without
/// blocking, the way a pooling client notices a closed idle connection.
fn closed_by_server(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let closed = match stream.peek(&mut b) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        // EOF, an error, or bytes nobody asked for: not reusable.
        _ => true,
    };
    closed || stream.set_nonblocking(false).is_err()
}

/// Send one request on the pooled connection (opening one if needed) and read its answer.
fn exchange(shared: &Shared, conn: &mut Option<Conn>, request: &[u8]) -> Result<Answer, Failure> {
    if conn.as_ref().is_some_and(|c| closed_by_server(&c.stream)) {
        *conn = None;
        shared.stats.lock().unwrap_or_else(|e| e.into_inner()).stale_dropped += 1;
    }
    if conn.is_none() {
        let fail = |what: String| Failure { what, before_any_byte: true, reused: false };
        let stream = TcpStream::connect_timeout(&shared.addr, CONNECT_TIMEOUT).map_err(|e| fail(format!("connect: {}", short(&e))))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| fail(format!("socket: {}", short(&e))))?;
        shared.stats.lock().unwrap_or_else(|e| e.into_inner()).connections_opened += 1;
        *conn = Some(Conn { stream, answered: 0 });
    }
    let c = conn.as_mut().expect("a connection");
    let reused = c.answered > 0;
    let which = if reused { format!("reused connection, after {} answers", c.answered) } else { "new connection".to_string() };
    let t0 = Instant::now();
    let result = (|| {
        c.stream.write_all(request).map_err(|e| (format!("write: {}", short(&e)), true))?;
        read_answer(&mut c.stream)
    })();
    match result {
        Ok(a) => {
            c.answered += 1;
            if !a.keep_alive {
                *conn = None;
            }
            Ok(a)
        }
        Err((what, before_any_byte)) => {
            *conn = None;
            let when = if before_any_byte { "before any byte of the answer" } else { "during the answer" };
            Err(Failure { what: format!("{what} {when}, after {} ms ({which})", t0.elapsed().as_millis()), before_any_byte, reused })
        }
    }
}

/// Read one HTTP/1.x answer. Errors carry whether no byte had come back.
fn read_answer(stream: &mut TcpStream) -> Result<Answer, (String, bool)> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut fill = |buf: &mut Vec<u8>| -> Result<usize, (String, bool)> {
        loop {
            match stream.read(&mut chunk) {
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err((format!("read: {}", short(&e)), buf.is_empty())),
            }
        }
    };
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(("answer head too large".into(), false));
        }
        if fill(&mut buf)? == 0 {
            return Err((if buf.is_empty() { "EOF".into() } else { "EOF in the answer head".into() }, buf.is_empty()));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let proto = parts.next().unwrap_or("").to_string();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| (format!("bad status line {status_line:?}"), false))?;
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let connection = header("connection").unwrap_or("").to_ascii_lowercase();
    let mut keep_alive = if proto == "HTTP/1.0" { connection.contains("keep-alive") } else { !connection.contains("close") };
    let version = header("x-demo-version").unwrap_or("(none)").to_string();
    let body_start = head_end + 4;
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < body_start + len {
            if fill(&mut buf)? == 0 {
                return Err(("EOF in the answer body".into(), false));
            }
        }
    } else if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        while !chunked_complete(&buf[body_start..]) {
            if buf.len() > MAX_RESPONSE {
                return Err(("answer body too large".into(), false));
            }
            if fill(&mut buf)? == 0 {
                return Err(("EOF in the chunked answer body".into(), false));
            }
        }
    } else if status >= 200 && status != 204 && status != 304 {
        // Delimited by the end of the connection.
        keep_alive = false;
        while fill(&mut buf)? > 0 {
            if buf.len() > MAX_RESPONSE {
                return Err(("answer body too large".into(), false));
            }
        }
    }
    Ok(Answer { status, version, keep_alive })
}

/// Does `data` hold a complete chunked body (through the last chunk and the trailer's end)?
fn chunked_complete(mut data: &[u8]) -> bool {
    loop {
        let Some(nl) = data.windows(2).position(|w| w == b"\r\n") else { return false };
        let size = std::str::from_utf8(&data[..nl]).ok().and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return false };
        data = &data[nl + 2..];
        if size == 0 {
            // Trailers end at an empty line.
            return data.windows(2).position(|w| w == b"\r\n").is_some_and(|i| i == 0 || data.windows(4).any(|w| w == b"\r\n\r\n"));
        }
        if data.len() < size + 2 {
            return false;
        }
        data = &data[size + 2..];
    }
}

fn short(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}
