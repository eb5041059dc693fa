//! A connected host: one SSH master ([`ssh`]) with the host's Docker socket
//! forwarded over it, and the remote engine ([`docker`]) on that socket, as one
//! [`Host`]. The commands reach hosts through a [`Connector`]: [`SshConnector`]
//! for real, fakes in the tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};

use crate::core::config::{Config, Ssh};
use crate::core::names::HostAddr;
use crate::error::Error;
use crate::host::docker::DockerEngine;
use crate::host::ssh::{self, ConnectError, SshHost};
use crate::host::Host;

/// How many times a connection that failed on the way (refused, timed out,
/// reset) is tried, in all, before the run gives up on the host. Connecting
/// comes before any change, so trying again is always safe.
const CONNECT_ATTEMPTS: usize = 3;

/// Opens the master connection and the Docker socket forward: a ready [`Host`], and
/// the connection to close when the run ends. A transient failure is tried again
/// (1 s, then 2 s later); the error then says how many tries failed.
pub async fn connect(addr: &HostAddr, ssh: &Ssh, docker_socket: &str) -> Result<(Host, Arc<SshHost>), ConnectError> {
    let name = addr.to_string();
    let open = || ssh::open(addr, ssh);
    let backoff = ExponentialBuilder::default().with_min_delay(Duration::from_secs(1)).with_max_times(CONNECT_ATTEMPTS - 1);
    let ssh_host = open
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|e: &ConnectError| e.transient)
        .notify(|e: &ConnectError, wait| tracing::warn!("{}; trying again in {wait:?}", e.message))
        .await
        .map_err(|mut e| {
            if e.transient {
                e.message = format!("{} (tried {CONNECT_ATTEMPTS} times)", e.message);
            }
            e
        })?;
    // The kept shell starts beside the engine's first answer: both cost two round trips.
    let engine = async {
        let local = ssh_host.forward_docker(docker_socket).await?;
        DockerEngine::connect(&local).await.map_err(|e| ConnectError {
            message: format!("{name}: {e}"),
            hint: Some(format!("check that Docker runs on the host and that the ssh user may use {docker_socket}")),
            transient: false,
        })
    };
    let (engine, ()) = tokio::join!(engine, ssh_host.start_lane());
    let engine = engine?;
    let engine = Arc::new(engine);
    let host = Host { name, engine: engine.clone(), swarm: engine, shell: ssh_host.clone(), probe: ssh_host.clone() };
    Ok((host, ssh_host))
}

/// Opens hosts. The real one is SSH; tests use fakes.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(&self, addr: &HostAddr, config: &Config) -> Result<Host, Error>;
    async fn close(&self);
}

pub struct SshConnector {
    open: tokio::sync::Mutex<Vec<Arc<SshHost>>>,
}

impl SshConnector {
    pub fn new() -> Self {
        SshConnector { open: tokio::sync::Mutex::new(Vec::new()) }
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn connect(&self, addr: &HostAddr, config: &Config) -> Result<Host, Error> {
        let (host, ssh) = connect(addr, &config.ssh, &config.docker_socket).await.map_err(|e| Error::Unreachable {
            host: addr.to_string(),
            message: e.message,
            hint: e.hint,
        })?;
        self.open.lock().await.push(ssh);
        Ok(host)
    }

    async fn close(&self) {
        for s in self.open.lock().await.drain(..) {
            s.close().await;
        }
        ssh::remove_socket_dir();
    }
}
