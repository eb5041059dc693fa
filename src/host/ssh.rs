//! One OpenSSH master connection per host for the whole run (the openssh
//! crate; commands are multiplexed over the master's control socket by the
//! native-mux client, with no `ssh` process per command). Through it: quoted commands ([`Shell`]), the host's
//! Docker socket forwarded to a local socket, and TCP tunnels for HTTP probes
//! ([`Probe`]). capstan's own short commands go through one kept shell
//! ([`Lane`]): a round trip each instead of three. Host keys are always checked
//! strictly; nothing is accepted new.
//! This is the only module that spawns processes. It knows nothing of Docker
//! beyond forwarding a socket: `host::connect` puts the engine on it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use openssh::{ForwardType, KnownHosts, Session, SessionBuilder, Socket};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::core::config::Ssh;
use crate::core::names::HostAddr;
use crate::host::lane::Lane;
use crate::host::{CmdOutput, HttpAnswer, Probe, ProbeError, Shell, ShellError};

pub struct SshHost {
    session: Arc<Session>,
    /// The kept shell, once started; commands go on channels of their own while it is not alive.
    lane: std::sync::Mutex<Option<Arc<Lane>>>,
    name: String,
    /// Local TCP ports forwarded to (address, port) on the host, opened on first use.
    tunnels: Mutex<HashMap<(String, u16), u16>>,
    http: reqwest::Client,
    /// For probes that follow each other: keeps a connection alive a short while.
    kept: reqwest::Client,
    docker_socket: Mutex<Option<(PathBuf, String)>>,
    /// Set once the host was found without `curl`: HTTP goes through tunnels then.
    no_curl: std::sync::atomic::AtomicBool,
    /// The quickest answer of the kept shell so far, in microseconds ([`Shell::round_trip`]).
    quickest_us: std::sync::atomic::AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    pub message: String,
    pub hint: Option<String>,
    /// A failure that may pass (refused, timed out, reset): worth another try
    /// before any change. A refused key or login is not.
    pub transient: bool,
}

/// How often the master asks the server whether it is alive. OpenSSH gives up
/// after three unanswered asks: a silent partition is noticed within 15 s.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long a probe's kept connection may stay idle.
const KEPT_IDLE: Duration = Duration::from_millis(2500);

/// Short, private directory for control and forwarded sockets (Unix socket paths are ~100 bytes at most).
fn socket_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capstan-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    dir
}

/// Removes this process's socket directory once every connection is closed.
pub fn remove_socket_dir() {
    let _ = std::fs::remove_dir_all(socket_dir());
}

/// Opens the master connection to `addr`.
pub async fn open(addr: &HostAddr, ssh: &Ssh) -> Result<Arc<SshHost>, ConnectError> {
    let name = addr.to_string();
    let mut b = SessionBuilder::default();
    b.known_hosts_check(KnownHosts::Strict).connect_timeout(ssh.connect_timeout).server_alive_interval(KEEPALIVE).control_directory(socket_dir());
    if let Some(u) = &addr.user {
        b.user(u.clone());
    }
    if let Some(p) = addr.port {
        b.port(p);
    }
    if let Some(k) = &ssh.identity_file {
        if !k.exists() {
            return Err(ConnectError { message: format!("ssh.identity_file {} does not exist", k.display()), hint: None, transient: false });
        }
        b.keyfile(k);
    }
    if let Some(kh) = &ssh.known_hosts {
        if !kh.exists() {
            return Err(ConnectError {
                message: format!("ssh.known_hosts {} does not exist", kh.display()),
                hint: Some("add the host's key with `ssh-keyscan -p PORT HOST >> known_hosts` and check it out of band".into()),
                transient: false,
            });
        }
        b.user_known_hosts_file(kh);
    }
    if let Some(c) = &ssh.config_file {
        b.config_file(c);
    }
    let session = b.connect_mux(&addr.host).await.map_err(|e| connect_error(&name, e))?;
    let http = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().map_err(|e| ConnectError {
        message: format!("http client: {e}"),
        hint: None,
        transient: false,
    })?;
    // Idle for longer than a probe interval apart, a kept connection is closed: it would
    // hold up the graceful stop of a server that waits for idle connections.
    let kept = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(1).pool_idle_timeout(KEPT_IDLE).build().map_err(|e| ConnectError {
        message: format!("http client: {e}"),
        hint: None,
        transient: false,
    })?;
    Ok(Arc::new(SshHost {
        session: Arc::new(session),
        lane: std::sync::Mutex::new(None),
        name,
        tunnels: Mutex::new(HashMap::new()),
        http,
        kept,
        docker_socket: Mutex::new(None),
        no_curl: Default::default(),
        quickest_us: std::sync::atomic::AtomicU64::new(u64::MAX),
    }))
}

fn connect_error(name: &str, e: openssh::Error) -> ConnectError {
    let text = format!("{e}");
    let detail = match &e {
        openssh::Error::Connect(io) => format!("{text}: {io}"),
        _ => text,
    };
    let lower = detail.to_lowercase();
    if lower.contains("host key verification failed") || lower.contains("identification has changed") {
        ConnectError {
            message: format!("{name}: the host's key is not the one in known_hosts; refusing to connect ({detail})"),
            hint: Some("if the host was rebuilt, verify its new key out of band and update ssh.known_hosts".into()),
            transient: false,
        }
    } else if lower.contains("permission denied") {
        ConnectError {
            message: format!("{name}: ssh authentication failed ({detail})"),
            hint: Some("check ssh.identity_file (mode 0600, unencrypted) or the ssh agent".into()),
            transient: false,
        }
    } else {
        let transient = ["refused", "timed out", "timeout", "reset", "closed by remote", "unreachable", "connection closed", "broken pipe"]
            .iter()
            .any(|w| lower.contains(w));
        ConnectError { message: format!("{name}: cannot connect over ssh ({detail})"), hint: None, transient }
    }
}

impl SshHost {
    /// Forwards the host's Docker socket `remote` to a local socket: its path.
    pub async fn forward_docker(&self, remote: &str) -> Result<PathBuf, ConnectError> {
        let local = socket_dir().join(format!("d{}.sock", rand::random::<u32>()));
        let _ = std::fs::remove_file(&local);
        self.session.request_port_forward(ForwardType::Local, local.clone(), PathBuf::from(remote)).await.map_err(|e| ConnectError {
            message: format!("{}: cannot forward the Docker socket {remote}: {e}", self.name),
            hint: Some("the host's sshd must allow stream-local forwarding (AllowStreamLocalForwarding)".into()),
            transient: false,
        })?;
        *self.docker_socket.lock().await = Some((local.clone(), remote.to_string()));
        Ok(local)
    }

    async fn tunnel(&self, addr: &str, port: u16) -> Result<u16, ProbeError> {
        let mut tunnels = self.tunnels.lock().await;
        if let Some(p) = tunnels.get(&(addr.to_string(), port)) {
            return Ok(*p);
        }
        let local_port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(ProbeError::NoLocalPort)?.port();
        self.session
            .request_port_forward(ForwardType::Local, Socket::new("127.0.0.1", local_port), Socket::new(addr.to_string(), port))
            .await
            .map_err(|reason| ProbeError::Tunnel { addr: addr.to_string(), port, reason })?;
        tunnels.insert((addr.to_string(), port), local_port);
        Ok(local_port)
    }

    /// Starts the kept shell (two round trips: a channel and its `sh`). Without it,
    /// every command gets a channel of its own, as before.
    pub async fn start_lane(&self) {
        let mut cmd = self.session.clone().arc_command("sh");
        cmd.stdin(openssh::Stdio::piped()).stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::null());
        match cmd.spawn().await {
            Ok(mut child) => {
                if let (Some(input), Some(output)) = (child.stdin().take(), child.stdout().take()) {
                    let lane = Lane::start(input, output, child);
                    if let Ok(mut l) = self.lane.lock() {
                        *l = Some(Arc::new(lane));
                    }
                }
            }
            Err(e) => tracing::debug!("{}: no kept shell ({e}); a channel per command", self.name),
        }
    }

    fn live_lane(&self) -> Option<Arc<Lane>> {
        self.lane.lock().ok()?.as_ref().filter(|l| l.alive()).cloned()
    }

    /// Closes forwards and the master connection.
    pub async fn close(self: Arc<Self>) {
        let lane = self.lane.lock().ok().and_then(|mut l| l.take());
        if let Some(lane) = lane.and_then(|l| Arc::try_unwrap(l).ok()) {
            lane.close().await;
        }
        if let Some((local, remote)) = self.docker_socket.lock().await.take() {
            let _ = self.session.close_port_forward(ForwardType::Local, local.clone(), PathBuf::from(remote)).await;
            let _ = std::fs::remove_file(local);
        }
        for ((addr, port), lp) in self.tunnels.lock().await.drain() {
            let _ = self.session.close_port_forward(ForwardType::Local, Socket::new("127.0.0.1", lp), Socket::new(addr, port)).await;
        }
        if let Ok(me) = Arc::try_unwrap(self) {
            if let Ok(session) = Arc::try_unwrap(me.session) {
                let _ = session.close().await;
            }
        }
    }
}

/// What the debug log calls a command: the script's name (`sh -c SCRIPT NAME …`) says more than its text.
fn label(argv: &[&str], how: &str) -> String {
    match argv {
        ["sh", "-c", _, name, ..] => format!("ssh{how} sh {name}"),
        _ => format!("ssh{how} {}", argv.iter().take(2).copied().collect::<Vec<_>>().join(" ")),
    }
}

#[async_trait]
impl Shell for SshHost {
    async fn run(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        let Some(lane) = self.live_lane() else { return self.run_apart(argv, stdin).await };
        let _t = crate::host::Timed::new(label(argv, " (kept shell)"));
        let sent = std::time::Instant::now();
        let out = lane.run(argv, stdin).await.map_err(|e| ShellError(format!("{}: {}: {e}", self.name, argv.first().unwrap_or(&""))))?;
        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.quickest_us.fetch_min(us, std::sync::atomic::Ordering::Relaxed);
        Ok(out)
    }

    fn round_trip(&self) -> Duration {
        match self.quickest_us.load(std::sync::atomic::Ordering::Relaxed) {
            u64::MAX => Duration::ZERO,
            us => Duration::from_micros(us),
        }
    }

    async fn run_apart(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        let (prog, args) = argv.split_first().ok_or_else(|| ShellError("empty command".into()))?;
        let _t = crate::host::Timed::new(label(argv, ""));
        let mut cmd = self.session.command(*prog);
        cmd.args(args.iter().copied());
        cmd.stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::piped());
        cmd.stdin(if stdin.is_some() { openssh::Stdio::piped() } else { openssh::Stdio::null() });
        let mut child = cmd.spawn().await.map_err(|e| ShellError(format!("{}: {prog}: {e}", self.name)))?;
        if let (Some(data), Some(mut w)) = (stdin, child.stdin().take()) {
            w.write_all(data).await.map_err(|e| ShellError(format!("{}: writing to {prog}: {e}", self.name)))?;
            w.shutdown().await.ok();
            drop(w);
        }
        let out = child.wait_with_output().await.map_err(|e| ShellError(format!("{}: {prog}: {e}", self.name)))?;
        Ok(CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[async_trait]
impl Probe for SshHost {
    async fn http_get(&self, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
        self.get(&self.http, addr, port, path, timeout).await
    }

    async fn http_get_reusing(&self, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
        self.get(&self.kept, addr, port, path, timeout).await
    }
}

impl SshHost {
    /// Made on the host with `curl` over the kept shell (one round trip) when both are
    /// there; through a tunnel from here otherwise (a channel per connection, and the request).
    async fn get(&self, client: &reqwest::Client, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.live_lane().is_some() && !self.no_curl.load(Relaxed) {
            let _t = crate::host::Timed::new(format!("http GET {addr}:{port}{path} (curl on the host)"));
            match crate::host::curl::get(self, addr, port, path, timeout).await? {
                Some(answer) => return Ok(answer),
                None => {
                    tracing::debug!("{}: no curl on the host; HTTP goes through tunnels from here on", self.name);
                    self.no_curl.store(true, Relaxed)
                }
            }
        }
        let _t = crate::host::Timed::new(format!("http GET {addr}:{port}{path}"));
        let local = self.tunnel(addr, port).await?;
        let url = format!("http://127.0.0.1:{local}{path}");
        let host_header = if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") };
        let resp = client.get(&url).header(reqwest::header::HOST, host_header).timeout(timeout).send().await.map_err(|e| short_reqwest_error(&e))?;
        let status = resp.status().as_u16();
        let mut body = resp.text().await.unwrap_or_default();
        if body.len() > 64 * 1024 {
            let mut end = 64 * 1024;
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body.truncate(end);
        }
        Ok(HttpAnswer { status, body })
    }
}

fn short_reqwest_error(e: &reqwest::Error) -> ProbeError {
    if e.is_timeout() {
        ProbeError::TimedOut
    } else if e.is_connect() {
        ProbeError::Refused
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = inner.to_string();
            src = inner.source();
        }
        ProbeError::Request(s)
    }
}
