//! The pure half of the engine: what its inspect answers become
//! ([`container_info`], [`swarm_service`]), and the requests built from them.
//! "Replace everything but the image": [`spec_from_inspect`] turns an inspected
//! container (and its image) into the create request for its successor,
//! [`one_off_spec`] the request for a migration beside it, and
//! [`swarm_update_spec`] changes an inspected Swarm service's spec in the image
//! and the update settings only. Tested on fixtures shaped as the engine answers.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ImageInspect, NetworkingConfig};

use crate::core::observed::{ContainerInfo, ContainerSpec, DockerHealth, PublishedPort, SwarmService, SwarmSpec, SwarmTask, UpdateState};
use crate::host::SwarmUpdate;

/// The labels by which Compose marks its containers.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// The parts of an inspected container a rollout reads.
pub fn container_info(c: &ContainerInspectResponse, image: Option<&ImageInspect>) -> ContainerInfo {
    let state = c.state.clone().unwrap_or_default();
    let config = c.config.clone().unwrap_or_default();
    let settings = c.network_settings.clone().unwrap_or_default();
    // A stopped container has no live port map: its bindings are in HostConfig.
    let port_map =
        settings.ports.clone().filter(|m| !m.is_empty()).or_else(|| c.host_config.as_ref().and_then(|h| h.port_bindings.clone())).unwrap_or_default();
    let mut ports = Vec::new();
    for (key, bindings) in port_map {
        let Some(cport) = key.split('/').next().and_then(|p| p.parse::<u16>().ok()) else { continue };
        if !key.ends_with("/tcp") {
            continue;
        }
        for b in bindings.unwrap_or_default() {
            if let Some(hp) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) {
                ports.push(PublishedPort { container_port: cport, host_ip: b.host_ip.unwrap_or_default(), host_port: hp });
            }
        }
    }
    ports.sort_by_key(|p| (p.container_port, p.host_port));
    ports.dedup_by_key(|p| (p.container_port, p.host_port));
    let networks = settings.networks.clone().unwrap_or_default();
    let mut addresses: Vec<String> = networks.values().filter_map(|n| n.ip_address.clone()).filter(|a| !a.is_empty()).collect();
    addresses.sort();
    // Docker adds the short container ID as an alias on user networks: not a name anyone routes by.
    let short_id: String = c.id.clone().unwrap_or_default().chars().take(12).collect();
    let mut aliases: Vec<String> = networks.values().flat_map(|n| n.aliases.clone().unwrap_or_default()).filter(|a| !a.is_empty() && *a != short_id).collect();
    aliases.sort();
    aliases.dedup();
    let docker_health = state.health.as_ref().and_then(|h| match h.status {
        Some(bollard::models::HealthStatusEnum::HEALTHY) => Some(DockerHealth::Healthy),
        Some(bollard::models::HealthStatusEnum::UNHEALTHY) => Some(DockerHealth::Unhealthy),
        Some(bollard::models::HealthStatusEnum::STARTING) => Some(DockerHealth::Starting),
        _ => None,
    });
    let label = |k: &str| config.labels.as_ref().and_then(|l| l.get(k).cloned());
    ContainerInfo {
        name: c.name.clone().unwrap_or_default().trim_start_matches('/').to_string(),
        id: c.id.clone().unwrap_or_default(),
        image_id: c.image.clone().unwrap_or_default(),
        image_ref: config.image.clone().unwrap_or_default(),
        running: state.running.unwrap_or(false),
        pid: state.pid.unwrap_or(0),
        docker_health,
        ports,
        addresses,
        aliases,
        compose_project: label(COMPOSE_PROJECT),
        compose_service: label(COMPOSE_SERVICE),
        spec: spec_from_inspect(c, image),
    }
}

/// The create request for a successor of `c`: what the user set on the old
/// container, with values that merely came from the old image left unset so
/// that the new image's own defaults (ENV, CMD, labels, HEALTHCHECK, …) apply.
pub fn spec_from_inspect(c: &ContainerInspectResponse, image: Option<&ImageInspect>) -> ContainerSpec {
    let cfg = c.config.clone().unwrap_or_default();
    let img = image.and_then(|i| i.config.clone()).unwrap_or_default();
    fn unless_same<T: PartialEq>(v: Option<T>, image: &Option<T>) -> Option<T> {
        match (&v, image) {
            (Some(a), Some(b)) if a == b => None,
            _ => v,
        }
    }
    // Env: keep the entries the image does not set to exactly that value.
    let image_env: Vec<String> = img.env.clone().unwrap_or_default();
    let env = cfg.env.clone().map(|env| env.into_iter().filter(|e| !image_env.contains(e)).collect::<Vec<_>>());
    // Labels: same, per key.
    let image_labels: HashMap<String, String> = img.labels.clone().unwrap_or_default();
    let labels = cfg.labels.clone().map(|l| l.into_iter().filter(|(k, v)| image_labels.get(k) != Some(v)).collect::<HashMap<_, _>>());
    let exposed: Option<Vec<String>> = cfg.exposed_ports.clone().map(|p| {
        let from_image = img.exposed_ports.clone().unwrap_or_default();
        p.into_iter().filter(|x| !from_image.contains(x)).collect()
    });
    // Networks: the endpoints with their aliases; drop the alias Docker adds for the old container's short ID.
    let short_id: String = c.id.clone().unwrap_or_default().chars().take(12).collect();
    let mut host_config = c.host_config.clone().unwrap_or_default();
    let network_mode = host_config.network_mode.clone().unwrap_or_default();
    let endpoints: HashMap<String, EndpointSettings> = c
        .network_settings
        .clone()
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(net, ep)| {
            let aliases = ep.aliases.map(|a| a.into_iter().filter(|x| *x != short_id).collect::<Vec<_>>());
            (net, EndpointSettings { aliases, ipam_config: ep.ipam_config, links: ep.links, driver_opts: ep.driver_opts, ..Default::default() })
        })
        .collect();
    // Containers joined to another container's namespace (`container:x`) or the host's keep their mode only.
    let networking_config = if network_mode.starts_with("container:") || network_mode == "host" || endpoints.is_empty() {
        None
    } else {
        Some(NetworkingConfig { endpoints_config: Some(endpoints) })
    };
    // Docker fills these at runtime; passing them back would pin stale values.
    host_config.container_id_file = None;
    ContainerSpec(ContainerCreateBody {
        hostname: None,
        domainname: cfg.domainname.filter(|d| !d.is_empty()),
        user: unless_same(cfg.user, &img.user).filter(|u| !u.is_empty()),
        exposed_ports: exposed.filter(|p| !p.is_empty()),
        tty: cfg.tty,
        open_stdin: cfg.open_stdin,
        stdin_once: cfg.stdin_once,
        env: env.filter(|e| !e.is_empty()),
        cmd: unless_same(cfg.cmd, &img.cmd),
        healthcheck: unless_same(cfg.healthcheck, &img.healthcheck),
        image: None,
        volumes: unless_same(cfg.volumes, &img.volumes),
        working_dir: unless_same(cfg.working_dir, &img.working_dir).filter(|w| !w.is_empty()),
        entrypoint: unless_same(cfg.entrypoint, &img.entrypoint),
        labels: labels.filter(|l| !l.is_empty()),
        stop_signal: unless_same(cfg.stop_signal, &img.stop_signal),
        stop_timeout: cfg.stop_timeout,
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    })
}

/// The parts of an inspected Swarm service a rollout reads.
pub fn swarm_service(s: bollard::models::Service) -> SwarmService {
    let spec = s.spec.unwrap_or_default();
    let image = spec.task_template.as_ref().and_then(|t| t.container_spec.as_ref()).and_then(|c| c.image.clone()).unwrap_or_default();
    let replicas = match spec.mode.as_ref() {
        Some(m) if m.global.is_some() => None,
        Some(m) => Some(m.replicated.as_ref().and_then(|r| r.replicas).unwrap_or(1).max(0) as u64),
        None => Some(1),
    };
    use bollard::models::ServiceUpdateStatusStateEnum as S;
    let status = s.update_status.unwrap_or_default();
    let update = match status.state {
        Some(S::UPDATING) => Some(UpdateState::Updating),
        Some(S::PAUSED) => Some(UpdateState::Paused),
        Some(S::COMPLETED) => Some(UpdateState::Completed),
        Some(S::ROLLBACK_STARTED) => Some(UpdateState::RollbackStarted),
        Some(S::ROLLBACK_PAUSED) => Some(UpdateState::RollbackPaused),
        Some(S::ROLLBACK_COMPLETED) => Some(UpdateState::RollbackCompleted),
        Some(S::EMPTY) | None => None,
    };
    SwarmService {
        id: s.id.unwrap_or_default(),
        name: spec.name.clone().unwrap_or_default(),
        version: s.version.and_then(|v| v.index).unwrap_or(0),
        image,
        replicas,
        update,
        update_message: status.message.unwrap_or_default(),
        spec: SwarmSpec(spec),
    }
}

pub fn swarm_task(t: bollard::models::Task) -> SwarmTask {
    let status = t.status.unwrap_or_default();
    let message = match (status.err.filter(|e| !e.is_empty()), status.message) {
        (Some(e), _) => e,
        (None, m) => m.unwrap_or_default(),
    };
    SwarmTask {
        id: t.id.unwrap_or_default(),
        slot: t.slot.map(|s| s.max(0) as u64),
        image: t.spec.and_then(|s| s.container_spec).and_then(|c| c.image).unwrap_or_default(),
        desired: t.desired_state.map(|d| d.to_string()).unwrap_or_default(),
        state: status.state.map(|s| s.to_string()).unwrap_or_default(),
        message,
        container: status.container_status.and_then(|c| c.container_id).filter(|c| !c.is_empty()),
    }
}

/// The spec of a Swarm update: the inspected one, with the new image and the
/// update settings (the rollback runs at the same pace and order, and pauses
/// rather than going forward again if it fails). Everything else is kept.
pub fn swarm_update_spec(current: &SwarmSpec, image: &str, u: &SwarmUpdate) -> bollard::models::ServiceSpec {
    use crate::core::config::{SwarmFailureAction as F, SwarmOrder as O};
    use bollard::models::{
        ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum as RF, ServiceSpecRollbackConfigOrderEnum as RO, ServiceSpecUpdateConfig,
        ServiceSpecUpdateConfigFailureActionEnum as UF, ServiceSpecUpdateConfigOrderEnum as UO,
    };
    let mut spec = current.0.clone();
    let task = spec.task_template.get_or_insert_with(Default::default);
    task.container_spec.get_or_insert_with(Default::default).image = Some(image.to_string());
    let nanos = |d: std::time::Duration| d.as_nanos().min(i64::MAX as u128) as i64;
    spec.update_config = Some(ServiceSpecUpdateConfig {
        parallelism: Some(u.parallelism as i64),
        delay: Some(nanos(u.delay)),
        failure_action: Some(match u.failure_action {
            F::Rollback => UF::ROLLBACK,
            F::Pause => UF::PAUSE,
            F::Continue => UF::CONTINUE,
        }),
        monitor: Some(nanos(u.monitor)),
        max_failure_ratio: Some(u.max_failure_ratio),
        order: Some(match u.order {
            O::StartFirst => UO::START_FIRST,
            O::StopFirst => UO::STOP_FIRST,
        }),
    });
    spec.rollback_config = Some(ServiceSpecRollbackConfig {
        parallelism: Some(u.parallelism as i64),
        delay: Some(nanos(u.delay)),
        failure_action: Some(RF::PAUSE),
        monitor: Some(nanos(u.monitor)),
        max_failure_ratio: Some(u.max_failure_ratio),
        order: Some(match u.order {
            O::StartFirst => RO::START_FIRST,
            O::StopFirst => RO::STOP_FIRST,
        }),
    });
    spec
}

/// The create request for a one-off run (a migration) beside `spec`'s
/// container: the same env, volumes and networks, the given command, and
/// nothing that would make it part of the service (no published ports, no
/// network aliases, no restart policy, no Compose labels).
pub fn one_off_spec(spec: &ContainerSpec, command: &[String]) -> ContainerSpec {
    let mut body = spec.0.clone();
    body.cmd = Some(command.to_vec());
    body.exposed_ports = None;
    body.healthcheck = None;
    if let Some(h) = body.host_config.as_mut() {
        h.port_bindings = None;
        h.publish_all_ports = None;
        h.restart_policy = None;
        h.auto_remove = None;
    }
    if let Some(eps) = body.networking_config.as_mut().and_then(|n| n.endpoints_config.as_mut()) {
        for ep in eps.values_mut() {
            ep.aliases = None;
        }
    }
    if let Some(labels) = body.labels.as_mut() {
        labels.retain(|k, _| !k.starts_with("com.docker.compose."));
    }
    ContainerSpec(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inspect of a container created by `docker run -e APP_SETTING=kept --label team=web
    /// --network shop-net --network-alias web -p 127.0.0.1:8081:8080 --restart unless-stopped`,
    /// as Docker 20.10 returns it, with the image's own ENV and labels merged in.
    fn fixture() -> (ContainerInspectResponse, ImageInspect) {
        let c: ContainerInspectResponse = serde_json::from_value(serde_json::json!({
            "Id": "0123456789abcdef0123",
            "Name": "/shop-web-1",
            "Image": "sha256:old",
            "State": { "Running": true },
            "Config": {
                "Image": "registry.local/demo:v1",
                "Env": ["APP_SETTING=kept", "DEMO_VERSION=v1", "PATH=/usr/bin"],
                "Labels": { "team": "web", "org.opencontainers.image.version": "v1" },
                "Cmd": null,
                "Entrypoint": ["/capstan-demo"],
                "ExposedPorts": { "8080/tcp": {} },
                "StopSignal": "SIGTERM"
            },
            "HostConfig": {
                "NetworkMode": "shop-net",
                "RestartPolicy": { "Name": "unless-stopped", "MaximumRetryCount": 0 },
                "PortBindings": { "8080/tcp": [ { "HostIp": "127.0.0.1", "HostPort": "8081" } ] },
                "Binds": ["/srv/data:/data"]
            },
            "NetworkSettings": {
                "Ports": { "8080/tcp": [ { "HostIp": "127.0.0.1", "HostPort": "8081" } ] },
                "Networks": { "shop-net": { "Aliases": ["web", "0123456789ab"], "IPAddress": "172.18.0.2" } }
            }
        }))
        .unwrap();
        let i: ImageInspect = serde_json::from_value(serde_json::json!({
            "Id": "sha256:old",
            "Config": {
                "Env": ["DEMO_VERSION=v1", "PATH=/usr/bin"],
                "Labels": { "org.opencontainers.image.version": "v1" },
                "Entrypoint": ["/capstan-demo"],
                "ExposedPorts": { "8080/tcp": {} },
                "StopSignal": "SIGTERM"
            }
        }))
        .unwrap();
        (c, i)
    }

    #[test]
    fn keeps_what_the_user_set_and_leaves_image_defaults_to_the_new_image() {
        let (c, i) = fixture();
        let spec = spec_from_inspect(&c, Some(&i)).0;
        assert_eq!(spec.env, Some(vec!["APP_SETTING=kept".to_string()]));
        assert_eq!(spec.labels.unwrap(), HashMap::from([("team".to_string(), "web".to_string())]));
        assert_eq!(spec.entrypoint, None, "the new image's entrypoint applies");
        assert_eq!(spec.stop_signal, None);
        assert_eq!(spec.image, None);
        let hc = spec.host_config.unwrap();
        assert_eq!(hc.binds, Some(vec!["/srv/data:/data".to_string()]));
        assert_eq!(hc.restart_policy.unwrap().name.map(|n| n.to_string()), Some("unless-stopped".into()));
        assert!(hc.port_bindings.unwrap().contains_key("8080/tcp"));
        let eps = spec.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(eps["shop-net"].aliases, Some(vec!["web".to_string()]), "the old short ID is not an alias of the new container");
    }

    #[test]
    fn a_one_off_keeps_env_volumes_and_networks_but_is_not_part_of_the_service() {
        let (mut c, i) = fixture();
        c.config.as_mut().unwrap().labels.as_mut().unwrap().insert("com.docker.compose.service".into(), "web".into());
        let spec = one_off_spec(&spec_from_inspect(&c, Some(&i)), &["migrate".to_string()]).0;
        assert_eq!(spec.cmd, Some(vec!["migrate".to_string()]));
        assert_eq!(spec.env, Some(vec!["APP_SETTING=kept".to_string()]));
        assert_eq!(spec.labels.unwrap(), HashMap::from([("team".to_string(), "web".to_string())]), "no Compose labels");
        let hc = spec.host_config.unwrap();
        assert_eq!(hc.binds, Some(vec!["/srv/data:/data".to_string()]));
        assert_eq!((hc.port_bindings, hc.restart_policy), (None, None));
        let eps = spec.networking_config.unwrap().endpoints_config.unwrap();
        assert!(eps.contains_key("shop-net"), "on the service's network");
        assert_eq!(eps["shop-net"].aliases, None, "but never answering for the service's name");
    }

    #[test]
    fn without_the_image_everything_is_kept() {
        let (c, _) = fixture();
        let spec = spec_from_inspect(&c, None).0;
        assert_eq!(spec.env.unwrap().len(), 3);
        assert_eq!(spec.entrypoint, Some(vec!["/capstan-demo".to_string()]));
    }

    #[test]
    fn reads_ports_addresses_and_state() {
        let (c, i) = fixture();
        let info = container_info(&c, Some(&i));
        assert_eq!(info.host_port_for(8080), Some(8081));
        assert_eq!(info.addresses, vec!["172.18.0.2"]);
        assert!(info.running);
        assert_eq!(info.docker_health, None);
        assert_eq!(info.image_ref, "registry.local/demo:v1");
    }

    /// A service as Docker 20.10 answers `GET /services/{id}` for one made by
    /// `docker service create --with-registry-auth --network host --replicas 3 -e DEMO_PORT=18555`,
    /// in the middle of a rollback Swarm started itself.
    fn service_fixture() -> bollard::models::Service {
        serde_json::from_value(serde_json::json!({
            "ID": "7l969k51n4z0m04scxxqyqqeq",
            "Version": { "Index": 2241 },
            "Spec": {
                "Name": "shop_web",
                "Labels": { "com.docker.stack.namespace": "shop" },
                "TaskTemplate": {
                    "ContainerSpec": {
                        "Image": "127.0.0.1:26829/capstan-demo:v1@sha256:0123abcd",
                        "Env": ["DEMO_PORT=18555", "DEMO_REUSEPORT=1"],
                        "Init": false,
                        "StopGracePeriod": 10000000000u64,
                        "DNSConfig": {},
                        "Isolation": "default"
                    },
                    "Resources": { "Limits": {}, "Reservations": {} },
                    "RestartPolicy": { "Condition": "any", "Delay": 5000000000u64, "MaxAttempts": 0 },
                    "Placement": {},
                    "Networks": [ { "Target": "host" } ],
                    "ForceUpdate": 0,
                    "Runtime": "container"
                },
                "Mode": { "Replicated": { "Replicas": 3 } },
                "UpdateConfig": { "Parallelism": 1, "FailureAction": "pause", "Monitor": 5000000000u64, "MaxFailureRatio": 0, "Order": "stop-first" },
                "EndpointSpec": { "Mode": "vip" }
            },
            "UpdateStatus": { "State": "rollback_started", "Message": "update rolled back due to failure or early termination of task x" }
        }))
        .unwrap()
    }

    #[test]
    fn reads_a_swarm_service() {
        let s = swarm_service(service_fixture());
        assert_eq!((s.id.as_str(), s.name.as_str(), s.version, s.replicas), ("7l969k51n4z0m04scxxqyqqeq", "shop_web", 2241, Some(3)));
        assert_eq!(s.image, "127.0.0.1:26829/capstan-demo:v1@sha256:0123abcd");
        assert_eq!(crate::core::image::without_tag(&s.image), "127.0.0.1:26829/capstan-demo@sha256:0123abcd");
        assert_eq!(s.update, Some(UpdateState::RollbackStarted));
        assert!(s.update_message.contains("rolled back"));
    }

    #[test]
    fn a_swarm_update_changes_the_image_and_the_settings_only() {
        use crate::core::config::{SwarmFailureAction, SwarmOrder};
        let s = swarm_service(service_fixture());
        let u = SwarmUpdate {
            parallelism: 2,
            delay: std::time::Duration::from_millis(1500),
            order: SwarmOrder::StartFirst,
            failure_action: SwarmFailureAction::Rollback,
            monitor: std::time::Duration::from_secs(3),
            max_failure_ratio: 0.25,
        };
        let spec = swarm_update_spec(&s.spec, "r/demo@sha256:v2", &u);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Image"], "r/demo@sha256:v2");
        assert_eq!(
            json["UpdateConfig"],
            serde_json::json!({ "Parallelism": 2, "Delay": 1_500_000_000u64, "FailureAction": "rollback", "Monitor": 3_000_000_000u64, "MaxFailureRatio": 0.25, "Order": "start-first" })
        );
        assert_eq!(json["RollbackConfig"]["FailureAction"], "pause", "a rollback that fails pauses, it never goes forward again");
        assert_eq!(json["RollbackConfig"]["Order"], "start-first");
        // Everything else as it was.
        let before = serde_json::to_value(&s.spec.0).unwrap();
        for key in ["Name", "Labels", "Mode", "EndpointSpec"] {
            assert_eq!(json[key], before[key], "{key}");
        }
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Env"], before["TaskTemplate"]["ContainerSpec"]["Env"]);
        assert_eq!(json["TaskTemplate"]["Networks"], serde_json::json!([{ "Target": "host" }]));
        assert_eq!(json["TaskTemplate"]["RestartPolicy"], before["TaskTemplate"]["RestartPolicy"]);
    }
}
