//! The effects a rollout needs from one host, behind narrow traits:
//! [`Engine`] (the host's Docker engine), [`Swarm`] (its Swarm services, when the
//! host is a manager), [`Shell`] (a few quoted commands) and [`Probe`] (HTTP as
//! seen from the host). The real implementations are `docker::DockerEngine` and
//! `ssh::SshHost`, put together by `connect`; `fake::FakeHost` implements all
//! four in memory for the executor's tests. Also here: what runs on a host
//! through them: the lock and log scripts (`state`), the load balancer's drain
//! (`drain`), the Compose CLI and `.env` (`compose`).

pub mod compose;
pub mod connect;
pub mod curl;
pub mod docker;
pub mod drain;
pub mod drain_check;
#[cfg(test)]
pub mod fake;
pub mod gauges;
pub mod guard;
pub mod lane;
pub mod lb_batch;
pub mod nginx_reload;
pub mod spec;
pub mod ssh;
pub mod state;
pub mod swap;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::core::observed::{ContainerInfo, ContainerSpec, ImageInfo, Listed, SwarmService, SwarmTask};
use crate::core::secret::Credentials;

/// Says (at debug level, `CAPSTAN_LOG=capstan=debug`) how long one call to a host
/// took, when dropped: where a run's time goes over a slow link.
pub(crate) struct Timed {
    what: String,
    at: std::time::Instant,
}

impl Timed {
    pub(crate) fn new(what: impl Into<String>) -> Timed {
        Timed { what: what.into(), at: std::time::Instant::now() }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        tracing::debug!(ms = self.at.elapsed().as_millis() as u64, "{}", self.what);
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Other(String),
}

#[async_trait]
pub trait Engine: Send + Sync {
    async fn version(&self) -> Result<String, EngineError>;
    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError>;
    /// Containers and their images (tags and digests as they are now), each image asked
    /// once. With each name, the image ID it was listed with, which may be asked beside
    /// the containers. In the order asked; None for a container that does not exist.
    async fn inspect_with_images(&self, wanted: &[(&str, Option<&str>)]) -> Result<Vec<Option<(ContainerInfo, Option<ImageInfo>)>>, EngineError> {
        let mut out = Vec::new();
        for (name, _) in wanted {
            out.push(match self.inspect_container(name).await? {
                Some(c) => {
                    let image = self.inspect_image(&c.image_id).await?;
                    Some((c, image))
                }
                None => None,
            });
        }
        Ok(out)
    }
    /// A container as the Docker CLI's `docker container inspect` printed it on the host,
    /// read as [`Engine::inspect_container`] would: None where this engine cannot (its
    /// image not seen yet, say), and the caller asks.
    fn read_printed(&self, _printed: &str) -> Option<ContainerInfo> {
        None
    }
    /// Every container, running or not, with its Compose labels.
    async fn list_containers(&self) -> Result<Vec<Listed>, EngineError>;
    /// Runs `argv` inside a running container (no shell), to its end: its exit code and output.
    async fn exec(&self, container: &str, argv: &[&str]) -> Result<(i64, String), EngineError>;
    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError>;
    /// Asks the registry (through the engine) which manifest digest a tag points to, without pulling.
    async fn registry_digest(&self, reference: &str, creds: Option<&Credentials>) -> Result<String, EngineError>;
    async fn pull(&self, reference: &str, creds: Option<&Credentials>) -> Result<(), EngineError>;
    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError>;
    async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError>;
    /// Stops with the container's own stop signal and timeout.
    async fn stop(&self, name: &str) -> Result<(), EngineError>;
    async fn start(&self, name: &str) -> Result<(), EngineError>;
    async fn remove(&self, name: &str) -> Result<(), EngineError>;
    async fn create(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String, EngineError>;
    /// Bytes received on all of the container's interfaces.
    async fn rx_bytes(&self, name: &str) -> Result<u64, EngineError>;
    /// The engine's data root (`DockerRootDir`), where images and containers take space.
    async fn data_root(&self) -> Result<String, EngineError>;
    /// Runs a one-off container to its end and removes it: its exit code and output.
    async fn run_once(&self, name: &str, spec: &ContainerSpec, image: &str, timeout: Duration) -> Result<(i64, String), EngineError>;
    /// A container's output so far, stdout and stderr.
    async fn logs(&self, name: &str) -> Result<String, EngineError>;
    /// A container's output since `since` (Unix seconds), stdout and stderr: what a
    /// traffic gate reads when nginx's container writes its access log there.
    async fn logs_since(&self, name: &str, since: i64) -> Result<String, EngineError> {
        let _ = since;
        self.logs(name).await
    }
    /// One answer of the engine's stats endpoint (not streamed: it carries `precpu_stats`,
    /// so one answer gives a CPU share), as the resource gate reads it.
    async fn stats(&self, name: &str) -> Result<crate::core::resources::StatsSample, EngineError> {
        Err(EngineError::Other(format!("stats {name}: not available from this engine")))
    }
}

/// Swarm's rolling-update settings for one update (`UpdateConfig`; the `RollbackConfig`
/// gets the same pace and order, and pauses on a failure).
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmUpdate {
    pub parallelism: u64,
    pub delay: Duration,
    pub order: crate::core::config::SwarmOrder,
    pub failure_action: crate::core::config::SwarmFailureAction,
    pub monitor: Duration,
    pub max_failure_ratio: f64,
}

/// The Swarm services of a manager node. The update and the rollback return once
/// Swarm accepted them; Swarm then rolls the tasks, which `inspect_service` and
/// `tasks` watch.
#[async_trait]
pub trait Swarm: Send + Sync {
    /// `None` when no service has that name; an error when the node is no manager.
    async fn inspect_service(&self, name: &str) -> Result<Option<SwarmService>, EngineError>;
    /// Sends `service`'s spec back with `image` and `settings` (at `service.version`), with
    /// the registry credentials for the nodes' pulls (`--with-registry-auth`). Swarm's warnings.
    async fn update_service(
        &self,
        service: &SwarmService,
        image: &str,
        settings: &SwarmUpdate,
        creds: Option<&Credentials>,
    ) -> Result<Vec<String>, EngineError>;
    /// Swarm's own rollback to the spec before the last update (`docker service rollback`).
    async fn rollback_service(&self, service: &SwarmService) -> Result<(), EngineError>;
    async fn tasks(&self, service_id: &str) -> Result<Vec<SwarmTask>, EngineError>;
}

#[derive(Debug, Clone, PartialEq)]
pub struct CmdOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn ok(&self) -> bool {
        self.status == 0
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{0}")]
pub struct ShellError(pub String);

/// Runs a program on the host. Every element of `argv` is quoted for the
/// remote shell by the implementation: callers never build shell strings.
#[async_trait]
pub trait Shell: Send + Sync {
    /// A short command of capstan's own (a constant script, `cat`, `df`): it may wait
    /// behind another such command on one kept shell, a round trip each (`host::lane`).
    async fn run(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError>;

    /// A command on a channel of its own, never behind another: what may take long
    /// (a hook, the user's drain command) or must not wait (the lease's
    /// renewal, the check that the link is alive).
    async fn run_apart(&self, argv: &[&str], stdin: Option<&[u8]>) -> Result<CmdOutput, ShellError> {
        self.run(argv, stdin).await
    }

    /// The quickest answer a command has had from the host so far: a round trip over
    /// the link and the host's least work (zero while unknown). What is to be seen on
    /// the host at a given moment is asked this much ahead of it.
    fn round_trip(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

/// An HTTP answer as seen from the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    pub status: u16,
    /// The body (at most the first 64 KiB).
    pub body: String,
}

/// A URL of the config that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct BadUrl {
    pub url: String,
    /// The URL parser's words.
    pub reason: String,
}

/// `http://host:port/path?q` -> (host, port, `/path?q`): what [`Probe::http_get`] takes.
pub fn probe_target(url: &str) -> Result<(String, u16, String), BadUrl> {
    let url = reqwest::Url::parse(url).map_err(|e| BadUrl { url: url.to_string(), reason: e.to_string() })?;
    let addr = url.host_str().unwrap_or("127.0.0.1").trim_matches(|c| c == '[' || c == ']').to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    Ok((addr, port, path))
}

/// Why a probe got no HTTP answer. The text is a clause of a step's message
/// (`GET /health: connection refused`).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out")]
    TimedOut,
    #[error("connection refused")]
    Refused,
    /// Any other failure of the request: the innermost cause's words.
    #[error("{0}")]
    Request(String),
    #[error("no free local port: {0}")]
    NoLocalPort(std::io::Error),
    #[error("cannot open a tunnel to {addr}:{port}: {reason}")]
    Tunnel { addr: String, port: u16, reason: openssh::Error },
}

#[async_trait]
pub trait Probe: Send + Sync {
    /// `GET http://{addr}:{port}{path}`, connecting from the host.
    async fn http_get(&self, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError>;

    /// Like [`Probe::http_get`], on a connection kept alive from the last such call to
    /// the same address when there is one (a round trip less over a slow link). For
    /// probes that follow each other, such as the health gate's: never through a load
    /// balancer, whose reload leaves a kept connection on the old configuration.
    async fn http_get_reusing(&self, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<HttpAnswer, ProbeError> {
        self.http_get(addr, port, path, timeout).await
    }
}

/// One connected host: its name as configured and its effect handles.
#[derive(Clone)]
pub struct Host {
    pub name: String,
    pub engine: Arc<dyn Engine>,
    /// The same engine's Swarm API.
    pub swarm: Arc<dyn Swarm>,
    pub shell: Arc<dyn Shell>,
    pub probe: Arc<dyn Probe>,
}
