//! capstan-demo: a tiny HTTP/1.x service used by capstan's tests and demo.
//!
//! Built as a static binary and run as PID 1 in a `FROM scratch` image, so:
//! - it installs its own SIGTERM/SIGINT handlers (PID 1 gets no default action);
//! - it performs no host-name lookups (no NSS in a scratch image).
//!
//! Environment:
//! - `DEMO_PORT` (default 8080): listens on 0.0.0.0:$DEMO_PORT;
//! - `DEMO_VERSION` (default "dev"): reported by `/version`, `/` and the `X-Demo-Version` header;
//! - `DEMO_HEALTH` (`ok` default | `broken`): `/health` answers 500 when broken;
//! - `DEMO_START_DELAY_MS` (default 0): sleep before binding the listener (a slow start);
//! - `DEMO_REUSEPORT` (`1` to enable): bind with `SO_REUSEPORT`, so that several replicas on
//!   the host's network share one port and the kernel spreads connections over them (the
//!   Swarm tests, where the routing mesh is not available);
//! - `DEMO_LEDGER` (optional): the file `POST /pay` appends its charges to;
//! - `DEMO_ERROR_RATE` (default 0): the fraction of the GET/HEAD requests, `/health`,
//!   `/metrics` and `/admin/*` aside, answered `500` (`0.02`: every 50th, evenly
//!   spread, so a release is healthy but wrong);
//! - `DEMO_LATENCY` (default none): a delay added to those same requests (`300ms`,
//!   `1s`, or a number of milliseconds).
//!
//! Routes: `GET /health`, `GET /version`, `GET /[?sleep_ms=N]`, `GET /metrics`
//! (Prometheus' text format: `demo_requests_total` by status and the
//! `demo_request_duration_seconds` histogram of every request but `/health`,
//! `/metrics` and `/admin/*`; `demo_info` with the version), and for tests
//! `GET /admin/health/break` and `/admin/health/fix` (turn `/health` to 500 and
//! back), `GET /admin/oops` (prints an `ERROR` line). One request per
//! connection, always `Connection: close`.
//!
//! `POST /pay` with `X-Charge-Id: <id>` is a payment: the body is read in full
//! (by `Content-Length`), the line `<id> <version>` is appended to `DEMO_LEDGER`
//! (opened `O_APPEND`, one write per line, so the instances sharing that file
//! never interleave) and the answer is `201`. Without `DEMO_LEDGER` the charge
//! is answered `201` and recorded nowhere; a charge that cannot be recorded is
//! answered `500`, never `201`.
//!
//! Subcommands: `probe` (the HEALTHCHECK), `migrate` (prints and exits 0),
//! `exit N` (prints and exits N): one-off runs of the image, like migrations. On SIGTERM/SIGINT it closes the
//! listener, finishes the requests in flight and exits 0.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
/// Set by `/admin/health/break`, cleared by `/admin/health/fix`.
static BROKEN: AtomicBool = AtomicBool::new(false);
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Requests subject to `DEMO_ERROR_RATE`, counted: the n-th fails when it crosses a whole error.
static FAULT_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Longest a single `?sleep_ms=` may ask for.
const MAX_SLEEP_MS: u64 = 120_000;
/// Longest we wait for in-flight requests after a stop signal.
const DRAIN_LIMIT: Duration = Duration::from_secs(150);
/// How often the in-flight count is looked at while draining.
const POLL: Duration = Duration::from_millis(2);
/// The longest an idle listener sleeps before it looks at the stop flag again.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// Largest request head we accept.
const MAX_HEAD: usize = 16 * 1024;
/// Largest `POST /pay` body we accept.
const MAX_BODY: usize = 64 * 1024;

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                eprintln!(
                    "capstan-demo: cannot install handler for signal {sig}: {}",
                    io::Error::last_os_error()
                );
                std::process::exit(1);
            }
        }
    }
}

struct Settings {
    version: String,
    instance: String,
    healthy: bool,
    /// `DEMO_LEDGER`: where `POST /pay` records its charges.
    ledger: Option<std::path::PathBuf>,
    /// `DEMO_ERROR_RATE`: the fraction of application requests answered 500.
    error_rate: f64,
    /// `DEMO_LATENCY`: added to application requests.
    latency: Duration,
    metrics: Metrics,
}

/// What `/metrics` reports: application requests by status, and their durations.
struct Metrics {
    by_status: Mutex<std::collections::BTreeMap<u16, u64>>,
    /// Cumulative counts per bucket of [`BUCKETS`], then the `+Inf` one.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Microseconds, summed.
    sum_us: AtomicU64,
}

/// The histogram's upper bounds, in seconds (Prometheus' client default).
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    fn new() -> Metrics {
        Metrics { by_status: Mutex::new(Default::default()), buckets: Default::default(), sum_us: AtomicU64::new(0) }
    }

    fn record(&self, status: u16, took: Duration) {
        *self.by_status.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_insert(0) += 1;
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, version: &str) -> String {
        let mut out = String::new();
        out.push_str("# HELP demo_info The demo app's version.\n# TYPE demo_info gauge\n");
        out.push_str(&format!("demo_info{{version=\"{}\"}} 1\n", version.replace('\\', "\\\\").replace('"', "\\\"")));
        out.push_str("# HELP demo_requests_total Requests answered, by status (/health, /metrics and /admin/* aside).\n");
        out.push_str("# TYPE demo_requests_total counter\n");
        for (status, n) in self.by_status.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!("demo_requests_total{{status=\"{status}\"}} {n}\n"));
        }
        out.push_str("# HELP demo_request_duration_seconds Time from the request read to the answer ready.\n");
        out.push_str("# TYPE demo_request_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            out.push_str(&format!("demo_request_duration_seconds_bucket{{le=\"{le}\"}} {}\n", self.buckets[i].load(Ordering::Relaxed)));
        }
        let count = self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        out.push_str(&format!("demo_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!("demo_request_duration_seconds_sum {}\n", self.sum_us.load(Ordering::Relaxed) as f64 / 1e6));
        out.push_str(&format!("demo_request_duration_seconds_count {count}\n"));
        out
    }
}

/// Requests that the fault modes and the metrics are about: not the probes, the scrapes or the test controls.
fn is_application(path: &str) -> bool {
    !(path == "/health" || path == "/metrics" || path.starts_with("/admin/"))
}

/// Whether the `n`-th application request (from 1) is answered 500 at `rate`: the ones
/// where the count of errors owed, `n × rate`, passes a whole number.
fn injects_error(n: u64, rate: f64) -> bool {
    rate > 0.0 && (n as f64 * rate).floor() > ((n - 1) as f64 * rate).floor()
}

/// `300ms`, `1s`, `1.5s`, or a number of milliseconds.
fn parse_latency(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        (s, 1e-3)
    };
    let v: f64 = number.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v * scale))
}

fn env_or(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

fn instance_name() -> String {
    if let Ok(s) = std::fs::read_to_string("/etc/hostname") {
        let s = s.trim();
        if !s.is_empty() {
            return s.to_string();
        }
    }
    env_or("HOSTNAME", "unknown")
}

fn log(msg: &str) {
    // Ignore errors: a closed stdout must not kill the server.
    let _ = writeln!(io::stdout(), "capstan-demo: {msg}");
}

fn main() {
    // `capstan-demo probe`: the image's Docker HEALTHCHECK (a scratch image has no curl).
    match std::env::args().nth(1).as_deref() {
        Some("probe") => std::process::exit(probe()),
        Some("migrate") => {
            log(&format!("migrating to {}: done", env_or("DEMO_VERSION", "dev")));
            std::process::exit(0);
        }
        Some("exit") => {
            let code: i32 = std::env::args().nth(2).and_then(|c| c.parse().ok()).unwrap_or(1);
            log(&format!("migration failed: exiting {code}"));
            std::process::exit(code);
        }
        _ => {}
    }
    install_signal_handlers();

    let port: u16 = match env_or("DEMO_PORT", "8080").parse() {
        Ok(p) => p,
        Err(_) => {
            eprintln!("capstan-demo: DEMO_PORT must be a port number");
            std::process::exit(2);
        }
    };
    let delay_ms: u64 = match env_or("DEMO_START_DELAY_MS", "0").parse() {
        Ok(d) => d,
        Err(_) => {
            eprintln!("capstan-demo: DEMO_START_DELAY_MS must be a number of milliseconds");
            std::process::exit(2);
        }
    };
    let error_rate: f64 = match env_or("DEMO_ERROR_RATE", "0").parse() {
        Ok(r) if (0.0..=1.0).contains(&r) => r,
        _ => {
            eprintln!("capstan-demo: DEMO_ERROR_RATE must be a fraction from 0 to 1, like 0.02");
            std::process::exit(2);
        }
    };
    let latency = match parse_latency(&env_or("DEMO_LATENCY", "0")) {
        Some(l) => l,
        None => {
            eprintln!("capstan-demo: DEMO_LATENCY must be a duration like 300ms or 1s");
            std::process::exit(2);
        }
    };
    let settings = Arc::new(Settings {
        version: env_or("DEMO_VERSION", "dev"),
        instance: instance_name(),
        healthy: env_or("DEMO_HEALTH", "ok") != "broken",
        ledger: std::env::var_os("DEMO_LEDGER").filter(|l| !l.is_empty()).map(std::path::PathBuf::from),
        error_rate,
        latency,
        metrics: Metrics::new(),
    });

    // Simulated slow start; a stop signal during it ends the process at once.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(delay_ms) {
        if STOP.load(Ordering::SeqCst) {
            log("stopped during start delay");
            std::process::exit(0);
        }
        thread::sleep(Duration::from_millis(5));
    }

    let reuseport = env_or("DEMO_REUSEPORT", "0") == "1";
    let bound = if reuseport { bind_reuseport(port) } else { TcpListener::bind(("0.0.0.0", port)) };
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            eprintln!("capstan-demo: cannot listen on 0.0.0.0:{port}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = listener.set_nonblocking(true) {
        eprintln!("capstan-demo: set_nonblocking: {e}");
        std::process::exit(1);
    }
    let mut faults = String::new();
    if settings.error_rate > 0.0 {
        faults.push_str(&format!(", answering {}% of requests with 500", settings.error_rate * 100.0));
    }
    if !settings.latency.is_zero() {
        faults.push_str(&format!(", adding {} ms to each request", settings.latency.as_millis()));
    }
    log(&format!(
        "version {} listening on 0.0.0.0:{port}{} (health {}{faults})",
        settings.version,
        if reuseport { " with SO_REUSEPORT" } else { "" },
        if settings.healthy { "ok" } else { "broken" }
    ));

    loop {
        let stopping = STOP.load(Ordering::SeqCst);
        match listener.accept() {
            Ok((stream, _peer)) => spawn_handler(stream, &settings),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Once stopping, the backlog is empty: stop accepting.
                if stopping {
                    break;
                }
                wait_readable(&listener, POLL_IDLE);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. ECONNABORTED or EMFILE: keep serving.
                eprintln!("capstan-demo: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
    log("stop signal: listener closed, finishing requests in flight");

    let deadline = Instant::now() + DRAIN_LIMIT;
    while IN_FLIGHT.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    let left = IN_FLIGHT.load(Ordering::SeqCst);
    if left > 0 {
        log(&format!("exiting with {left} request(s) still in flight"));
    } else {
        log("all requests finished; exiting");
    }
    let _ = io::stdout().flush();
    std::process::exit(0);
}

/// A listener on 0.0.0.0:`port` with `SO_REUSEADDR` and `SO_REUSEPORT`: other
/// processes of the same user that do the same share the port.
fn bind_reuseport(port: u16) -> io::Result<TcpListener> {
    use std::os::unix::io::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; on error it is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd: libc::c_int| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let p = &one as *const libc::c_int as *const libc::c_void;
            if libc::setsockopt(fd, libc::SOL_SOCKET, opt, p, std::mem::size_of::<libc::c_int>() as libc::socklen_t) != 0 {
                return fail(fd);
            }
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_port = port.to_be();
        addr.sin_addr.s_addr = libc::INADDR_ANY.to_be();
        let a = &addr as *const libc::sockaddr_in as *const libc::sockaddr;
        if libc::bind(fd, a, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t) != 0 {
            return fail(fd);
        }
        if libc::listen(fd, 1024) != 0 {
            return fail(fd);
        }
        Ok(TcpListener::from_raw_fd(fd))
    }
}

/// Sleeps until `listener` has a connection waiting or `limit` passes (a signal cuts it
/// short too): an idle instance wakes a few times a second, not every 2 ms.
fn wait_readable(listener: &TcpListener, limit: Duration) {
    use std::os::unix::io::AsRawFd;
    let mut fds = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one pollfd that lives across the call.
    unsafe { libc::poll(&mut fds, 1, limit.as_millis() as libc::c_int) };
}

struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

fn spawn_handler(stream: TcpStream, settings: &Arc<Settings>) {
    // Counted before the thread starts, so the drain loop cannot miss it.
    let guard = InFlight::enter();
    let settings = Arc::clone(settings);
    let spawned = thread::Builder::new()
        .name("conn".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let _guard = guard;
            let _ = handle(stream, &settings);
        });
    if let Err(e) = spawned {
        // The closure (and with it the guard and the stream) was dropped.
        eprintln!("capstan-demo: cannot spawn a thread: {e}");
    }
}

struct Response {
    status: u16,
    body: String,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn handle(mut stream: TcpStream, settings: &Settings) -> io::Result<()> {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let _ = stream.set_nodelay(true);

    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let complete = loop {
        if find(&head, b"\r\n\r\n").is_some() || find(&head, b"\n\n").is_some() {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                if head.is_empty() {
                    return Ok(()); // connected and closed: a port probe
                }
                break true; // take what we have
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    };

    let started = Instant::now();
    let path = request_path(&head);
    let (head_only, response) = if !complete {
        (false, Response { status: 431, body: "request head too large\n".into() })
    } else if is_pay(&head) {
        (false, pay(&mut stream, &head, settings))
    } else {
        route(&head, settings)
    };
    if path.as_deref().is_some_and(is_application) {
        settings.metrics.record(response.status, started.elapsed());
    }

    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         X-Demo-Version: {}\r\nX-Demo-Instance: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len(),
        settings.version,
        settings.instance,
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    stream.write_all(&out)?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Read what the client may still send (until it closes, briefly), so
    // closing does not turn into a reset that could eat the response.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The path of the request line (without the query), if there is one.
fn request_path(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    let target = text.lines().next()?.split_whitespace().nth(1)?;
    Some(target.split('?').next().unwrap_or(target).to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Is this request `POST /pay`?
fn is_pay(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    method == Some("POST") && target.map(|t| t.split('?').next().unwrap_or(t)) == Some("/pay")
}

/// The value of header `name` (case-insensitive) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// `POST /pay`: read the body in full, record the charge in the ledger, answer 201.
/// `received` is everything read so far: the head and maybe the start of the body.
fn pay(stream: &mut TcpStream, received: &[u8], settings: &Settings) -> Response {
    let (head_end, sep) = match (find(received, b"\r\n\r\n"), find(received, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => return Response { status: 400, body: "bad request\n".into() },
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    let mut body = received[head_end + sep..].to_vec();
    if header(&head, "transfer-encoding").is_some() {
        return Response { status: 411, body: "a charge needs a Content-Length\n".into() };
    }
    let length = match header(&head, "content-length").map(|v| v.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Response { status: 413, body: "charge body too large\n".into() },
        Some(Err(_)) => return Response { status: 400, body: "bad Content-Length\n".into() },
    };
    let mut buf = [0u8; 4096];
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) => return Response { status: 400, body: "request body cut short\n".into() },
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Response { status: 400, body: "request body cut short\n".into() },
        }
    }
    let id = match header(&head, "x-charge-id") {
        Some(id) if !id.is_empty() && !id.chars().any(char::is_whitespace) => id.to_string(),
        _ => return Response { status: 400, body: "X-Charge-Id required\n".into() },
    };
    if let Some(path) = &settings.ledger {
        let line = format!("{id} {}\n", settings.version);
        let written = std::fs::OpenOptions::new().append(true).create(true).open(path).and_then(|mut f| f.write(line.as_bytes()));
        match written {
            Ok(n) if n == line.len() => {}
            Ok(n) => {
                log(&format!("ERROR charge {id}: wrote {n} of {} bytes to {}", line.len(), path.display()));
                return Response { status: 500, body: "charge not recorded\n".into() };
            }
            Err(e) => {
                log(&format!("ERROR charge {id}: cannot record it in {}: {e}", path.display()));
                return Response { status: 500, body: "charge not recorded\n".into() };
            }
        }
    }
    Response { status: 201, body: format!("charged {id}\n") }
}

/// Returns (is HEAD, response).
fn route(head: &[u8], settings: &Settings) -> (bool, Response) {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, target, proto) = (parts.next(), parts.next(), parts.next());
    let (method, target) = match (method, target, proto) {
        (Some(m), Some(t), Some(p)) if p.starts_with("HTTP/1.") => (m, t),
        _ => return (false, Response { status: 400, body: "bad request\n".into() }),
    };
    let is_head = method == "HEAD";
    if method != "GET" && !is_head {
        return (false, Response { status: 405, body: "only GET and HEAD\n".into() });
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    if is_application(path) {
        if !settings.latency.is_zero() {
            thread::sleep(settings.latency);
        }
        let n = FAULT_COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        if injects_error(n, settings.error_rate) {
            return (is_head, Response { status: 500, body: "injected error (DEMO_ERROR_RATE)\n".into() });
        }
    }
    let response = match path {
        "/metrics" => Response { status: 200, body: settings.metrics.render(&settings.version) },
        "/health" => {
            if settings.healthy && !BROKEN.load(Ordering::SeqCst) {
                Response { status: 200, body: "ok".into() }
            } else {
                Response { status: 500, body: "broken".into() }
            }
        }
        "/version" => Response { status: 200, body: settings.version.clone() },
        "/admin/health/break" => {
            BROKEN.store(true, Ordering::SeqCst);
            Response { status: 200, body: "health broken\n".into() }
        }
        "/admin/health/fix" => {
            BROKEN.store(false, Ordering::SeqCst);
            Response { status: 200, body: "health fixed\n".into() }
        }
        "/admin/oops" => {
            log("ERROR oops: something went wrong (asked for by /admin/oops)");
            Response { status: 200, body: "logged an error\n".into() }
        }
        "/" => {
            if let Some(ms) = query_param(query, "sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
                thread::sleep(Duration::from_millis(ms.min(MAX_SLEEP_MS)));
            }
            Response { status: 200, body: format!("hello from {}\n", settings.version) }
        }
        _ => Response { status: 404, body: "not found\n".into() },
    };
    (is_head, response)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// GET /health on 127.0.0.1:$DEMO_PROBE_PORT (default $DEMO_PORT, 8080): exit 0 on 200, else 1.
fn probe() -> i32 {
    let port = std::env::var("DEMO_PROBE_PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| env_or("DEMO_PORT", "8080"));
    let Ok(port) = port.parse::<u16>() else { return 1 };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return 1 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return 1;
    }
    let mut head = [0u8; 16];
    match s.read(&mut head) {
        Ok(n) if head[..n].starts_with(b"HTTP/1.1 200") || head[..n].starts_with(b"HTTP/1.0 200") => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_spread_at_the_rate() {
        let failed: Vec<u64> = (1..=200).filter(|n| injects_error(*n, 0.02)).collect();
        assert_eq!(failed, [50, 100, 150, 200]);
        assert_eq!((1..=1000).filter(|n| injects_error(*n, 0.3)).count(), 300);
        assert_eq!((1..=10).filter(|n| injects_error(*n, 1.0)).count(), 10);
        assert!(!(1..=1000).any(|n| injects_error(n, 0.0)));
    }

    #[test]
    fn latencies() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("300ms", Some(Duration::from_millis(300))),
            ("1s", Some(Duration::from_secs(1))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("250", Some(Duration::from_millis(250))),
            ("0", Some(Duration::ZERO)),
            ("soon", None),
            ("-1s", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_latency(s), *want, "{s}");
        }
    }

    #[test]
    fn metrics_in_prometheus_text_format() {
        let m = Metrics::new();
        m.record(200, Duration::from_millis(3));
        m.record(200, Duration::from_millis(300));
        m.record(500, Duration::from_millis(20));
        let text = m.render("v1");
        for line in [
            "demo_info{version=\"v1\"} 1",
            "demo_requests_total{status=\"200\"} 2",
            "demo_requests_total{status=\"500\"} 1",
            "demo_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "demo_request_duration_seconds_bucket{le=\"0.025\"} 2",
            "demo_request_duration_seconds_bucket{le=\"0.5\"} 3",
            "demo_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "demo_request_duration_seconds_sum 0.323",
            "demo_request_duration_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(is_application("/") && is_application("/version") && is_application("/pay"));
        assert!(!is_application("/health") && !is_application("/metrics") && !is_application("/admin/oops"));
    }
}
