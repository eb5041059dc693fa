//! What a host reports, as data: its containers (with the spec a successor is
//! created from), images, and Swarm services and tasks. Pure; the host's engine
//! (`host::docker`) reads them from the Docker API, the planner and the executor
//! read them.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedPort {
    pub container_port: u16,
    pub host_ip: String,
    pub host_port: u16,
}

/// How to create a container again: everything the user set on the old one
/// (env, ports, volumes, networks and aliases, labels, restart policy,
/// healthcheck, command), minus the image. Built by `host::spec::spec_from_inspect`.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec(pub bollard::models::ContainerCreateBody);

#[derive(Clone, Debug, Default)]
pub struct ContainerInfo {
    /// Its name, without Docker's leading `/`.
    pub name: String,
    /// The container's ID: what a change aimed at this very container names, so that a
    /// request that reaches the host late (held by a cut link) cannot hit another one
    /// that took the name meanwhile.
    pub id: String,
    /// The image ID (`sha256:…` of the image config).
    pub image_id: String,
    /// What the container was created from (`Config.Image`): a tag, a digest reference or an ID.
    pub image_ref: String,
    pub running: bool,
    /// The main process's PID on the host (0 when not running).
    pub pid: i64,
    /// `None` when the container has no Docker HEALTHCHECK.
    pub docker_health: Option<DockerHealth>,
    pub ports: Vec<PublishedPort>,
    /// The container's addresses on its networks, reachable from the host.
    pub addresses: Vec<String>,
    /// Its other names on its networks (Compose service names, `--network-alias`), which
    /// nginx may use for it; Docker's own short-ID alias left out.
    pub aliases: Vec<String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub spec: ContainerSpec,
}

impl ContainerInfo {
    pub fn host_port_for(&self, container_port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.container_port == container_port).map(|p| p.host_port)
    }

    /// Where the host reaches the container's `port`: its own address, else the published port.
    pub fn probe_addr(&self, port: u16) -> (String, u16) {
        match self.addresses.first() {
            Some(a) => (a.clone(), port),
            None => ("127.0.0.1".to_string(), self.host_port_for(port).unwrap_or(port)),
        }
    }
}

/// A container as the engine lists it: enough to find the instances of a Compose service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listed {
    pub name: String,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    /// `com.docker.compose.container-number`: the order of a scaled service's containers.
    pub number: Option<u32>,
    /// The ID of the image it runs, as listed.
    pub image_id: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    pub id: String,
    pub repo_digests: Vec<String>,
    pub repo_tags: Vec<String>,
}

/// A Swarm service's spec as the engine returned it: sent back whole, with only the
/// image and the update settings changed (so nothing else the user set is lost).
#[derive(Clone, Debug, Default)]
pub struct SwarmSpec(pub bollard::models::ServiceSpec);

/// Where a Swarm service's last update stands (`UpdateStatus.State`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    pub fn as_str(&self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }

    /// An update or a rollback is under way.
    pub fn busy(&self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }
}

/// What a host answered about a `target: swarm` service before the plan.
#[derive(Clone, Debug)]
pub enum SwarmSeen {
    Exists(Box<SwarmService>),
    Missing,
    /// The host could not say (most often: it is no Swarm manager); the engine's words.
    Unanswered(String),
}

#[derive(Clone, Debug)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// The object version an update must name (optimistic concurrency).
    pub version: u64,
    /// `TaskTemplate.ContainerSpec.Image`: `repo:tag@sha256:…`, `repo@sha256:…` or a tag.
    pub image: String,
    /// Desired tasks; `None` in global mode (one per eligible node).
    pub replicas: Option<u64>,
    /// `None` before any update, and right after one is accepted, until Swarm starts it.
    pub update: Option<UpdateState>,
    pub update_message: String,
    pub spec: SwarmSpec,
}

/// One task of a Swarm service.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmTask {
    pub id: String,
    pub slot: Option<u64>,
    pub image: String,
    /// `running`, `shutdown`…: what Swarm wants it to be.
    pub desired: String,
    /// `new` … `starting`, `running`, `complete`, `failed`, `rejected`…
    pub state: String,
    /// The error or message of its last state change.
    pub message: String,
    /// Its container, on whichever node runs it.
    pub container: Option<String>,
}
