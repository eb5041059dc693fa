//! The plan: for each host, service and instance, which image it runs now and
//! which it will run. Pure: computed from the config, what was observed on the
//! host and the resolved targets. `check`, `deploy --dry-run`, `deploy` and
//! `rollback` all go through it.

use std::collections::HashMap;

use serde::Serialize;

use crate::core::config::Service;
use crate::core::image;
use crate::core::observed::{ContainerInfo, ImageInfo, Listed, SwarmSeen};

/// What was seen on one host before anything changed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Per instance name: the container and its image, `None` when absent.
    pub containers: HashMap<String, (ContainerInfo, Option<ImageInfo>)>,
    /// Names of every container on the host (to spot leftovers of an interrupted run).
    pub all_names: Vec<String>,
    /// Every container on the host as listed, with its Compose labels.
    pub listed: Vec<Listed>,
    /// Per `target: swarm` service (by its config name): what the host said of its Swarm service.
    pub swarm: HashMap<String, SwarmSeen>,
    /// Per service (by its config name): the containers its `instances` are on this host,
    /// in order (a Compose service's containers found by their labels).
    pub instances: HashMap<String, Vec<String>>,
}

impl Observed {
    /// The containers of `svc` on this host: as resolved, else as the config names them.
    pub fn instances_of<'a>(&'a self, svc: &'a Service) -> &'a [String] {
        self.instances.get(&svc.name).map(Vec::as_slice).unwrap_or(&svc.instances)
    }
}

/// The containers `svc.instances` name on a host: each entry is a container of that
/// name, else (with `compose:`) every container of that Compose service of the project,
/// in Compose's container-number order (a scaled service is replaced container by
/// container), so that v2 names (`payment-web-1`), v1 names (`payment_web_1`) and
/// `container_name:` all work. A half-replaced container's kept `.capstan-old` counts as
/// its instance. An entry that matches nothing stays as written: the plan says it is missing.
pub fn resolve_instances(svc: &Service, listed: &[Listed]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in &svc.instances {
        let exact = listed.iter().any(|c| c.name == *entry || c.name == format!("{entry}{OLD_SUFFIX}"));
        let of_service: Vec<&Listed> = match (&svc.compose, exact) {
            (Some(c), false) => {
                let mut v: Vec<&Listed> = listed
                    .iter()
                    .filter(|l| l.compose_project.as_deref() == Some(c.project.as_str()) && l.compose_service.as_deref() == Some(entry))
                    .filter(|l| !l.name.ends_with(NEW_SUFFIX))
                    .collect();
                v.sort_by(|a, b| a.number.cmp(&b.number).then_with(|| a.name.cmp(&b.name)));
                v
            }
            _ => Vec::new(),
        };
        if of_service.is_empty() {
            out.push(entry.clone());
        }
        for l in of_service {
            let name = l.name.strip_suffix(OLD_SUFFIX).unwrap_or(&l.name).to_string();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Plan {
    pub hosts: Vec<HostPlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostPlan {
    pub host: String,
    pub services: Vec<ServicePlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServicePlan {
    pub service: String,
    pub instances: Vec<InstancePlan>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstancePlan {
    pub name: String,
    pub from_image: String,
    pub to_image: String,
    /// False when the instance already runs the target image.
    pub replace: bool,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.hosts.iter().flat_map(|h| &h.services).flat_map(|s| &s.instances).filter(|i| i.replace).count()
    }
}

/// What an instance runs now when no host was contacted.
pub const NOT_CONTACTED: &str = "? (host not contacted)";

/// The plan without contacting any host (a pull request from a fork has no
/// secrets): every instance, on every host, and the image it would run.
pub fn offline(hosts: &[String], services: &[&Service], target: &dyn Fn(&Service) -> String) -> Plan {
    Plan {
        hosts: hosts
            .iter()
            .map(|h| HostPlan {
                host: h.clone(),
                services: services
                    .iter()
                    .map(|s| ServicePlan {
                        service: s.name.clone(),
                        instances: s
                            .plan_names()
                            .iter()
                            .map(|i| InstancePlan { name: i.clone(), from_image: NOT_CONTACTED.into(), to_image: target(s), replace: true })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// What an instance would run when no version was given (`capstan check` alone):
/// not an image, so every instance counts as one a release would replace.
pub const NO_VERSION: &str = "? (no version given)";

/// The suffix of the kept old container while its successor proves itself.
pub const OLD_SUFFIX: &str = ".capstan-old";
/// An instance's successor, created ahead of its swap under this suffix: never an instance.
pub const NEW_SUFFIX: &str = ".capstan-new";

/// Plans one host. `target(service, instance)` is the exact image reference
/// (`repo@sha256:…` or an image ID) the instance must run. A `target: swarm`
/// service is one row, named after its Swarm service, from the image its spec
/// names to the target.
pub fn plan_host(host: &str, services: &[&Service], observed: &Observed, target: &dyn Fn(&str, &str) -> Option<String>) -> Result<HostPlan, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for svc in services {
        if let Some(sw) = &svc.swarm {
            let row = match observed.swarm.get(&svc.name) {
                Some(SwarmSeen::Exists(current)) => match target(&svc.name, &sw.service) {
                    Some(to) => {
                        let from = image::without_tag(&current.image);
                        Ok(InstancePlan { name: sw.service.clone(), replace: from != to, from_image: from, to_image: to })
                    }
                    None => Err(format!("{host}: no image to run for {}/{}", svc.name, sw.service)),
                },
                Some(SwarmSeen::Missing) | None => Err(format!(
                    "{host}: Swarm service {} (services.{}.swarm.service) does not exist; capstan updates a running service, create it first (for example with docker stack deploy)",
                    sw.service, svc.name
                )),
                Some(SwarmSeen::Unanswered(e)) => Err(format!("{host}: services.{} is a target: swarm service, but the host cannot say how it runs (is it a Swarm manager?): {e}", svc.name)),
            };
            match row {
                Ok(r) => out.push(ServicePlan { service: svc.name.clone(), instances: vec![r] }),
                Err(p) => problems.push(p),
            }
            continue;
        }
        let mut instances = Vec::new();
        for (i, name) in observed.instances_of(svc).iter().enumerate() {
            let leftover = format!("{name}{OLD_SUFFIX}");
            if observed.all_names.contains(&leftover) {
                problems.push(format!(
                    "{host}: container {leftover} is left from an interrupted deploy; `capstan deploy` or `capstan rollback` puts it back as {name} before anything else"
                ));
                continue;
            }
            let Some((c, image)) = observed.containers.get(name) else {
                let what = match &svc.compose {
                    Some(c) => format!("{name} (services.{}.instances[{i}]) is neither a container nor a service of Compose project {}", svc.name, c.project),
                    None => format!("container {name} (services.{}.instances[{i}]) does not exist", svc.name),
                };
                problems.push(format!("{host}: {what}; capstan replaces running containers, start it first (for example with docker compose up -d)"));
                continue;
            };
            let Some(to) = target(&svc.name, name) else {
                problems.push(format!("{host}: no image to run for {}/{name}", svc.name));
                continue;
            };
            let digests = image.as_ref().map(|i| i.repo_digests.clone()).unwrap_or_default();
            let from = image::best_reference(&svc.image, &digests, &c.image_id);
            let runs_target = to == c.image_id || digests.contains(&to);
            instances.push(InstancePlan { name: name.clone(), from_image: from, to_image: to, replace: !runs_target });
        }
        out.push(ServicePlan { service: svc.name.clone(), instances });
    }
    if problems.is_empty() {
        Ok(HostPlan { host: host.to_string(), services: out })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config;
    use crate::core::observed::ContainerSpec;
    use std::path::Path;

    fn service() -> Service {
        let yaml = "app: shop\nhosts: [h]\nservices:\n  web:\n    image: r/demo\n    instances: [web-1, web-2]\n";
        config::parse(Path::new("c.yml"), yaml).unwrap().services.remove(0)
    }

    fn container(image_id: &str) -> ContainerInfo {
        ContainerInfo {
            image_id: image_id.into(),
            image_ref: "r/demo:v1".into(),
            running: true,
            pid: 0,
            docker_health: None,
            ports: vec![],
            addresses: vec![],
            spec: ContainerSpec::default(),
            ..Default::default()
        }
    }

    fn observed(entries: &[(&str, &str, &[&str])]) -> Observed {
        let mut o = Observed::default();
        for (name, id, digests) in entries {
            let img = ImageInfo { id: id.to_string(), repo_digests: digests.iter().map(|d| d.to_string()).collect(), repo_tags: vec![] };
            o.containers.insert(name.to_string(), (container(id), Some(img)));
            o.all_names.push(name.to_string());
        }
        o
    }

    fn check(obs: &Observed, to: &str, want: Result<Vec<(&str, &str, bool)>, &str>) {
        let svc = service();
        let got = plan_host("h", &[&svc], obs, &|_, _| Some(to.to_string()));
        match (want, got) {
            (Ok(w), Ok(p)) => {
                let g: Vec<_> = p.services[0].instances.iter().map(|i| (i.name.as_str(), i.from_image.as_str(), i.replace)).collect();
                assert_eq!(g, w);
            }
            (Err(w), Err(e)) => assert!(e.iter().any(|m| m.contains(w)), "{e:?}"),
            (w, g) => panic!("want {w:?}, got {g:?}"),
        }
    }

    #[test]
    fn plans() {
        let v1 = ["r/demo@sha256:v1"];
        check(
            &observed(&[("web-1", "sha256:i1", &v1), ("web-2", "sha256:i1", &v1)]),
            "r/demo@sha256:v2",
            Ok(vec![("web-1", "r/demo@sha256:v1", true), ("web-2", "r/demo@sha256:v1", true)]),
        );
        // Already on the target: unchanged (by digest or by image ID).
        check(
            &observed(&[("web-1", "sha256:i2", &["r/demo@sha256:v2"]), ("web-2", "sha256:i1", &v1)]),
            "r/demo@sha256:v2",
            Ok(vec![("web-1", "r/demo@sha256:v2", false), ("web-2", "r/demo@sha256:v1", true)]),
        );
        check(
            &observed(&[("web-1", "sha256:i1", &[]), ("web-2", "sha256:i1", &[])]),
            "sha256:i1",
            Ok(vec![("web-1", "sha256:i1", false), ("web-2", "sha256:i1", false)]),
        );
        // A missing container is refused, naming the key.
        check(&observed(&[("web-1", "sha256:i1", &v1)]), "r/demo@sha256:v2", Err("container web-2 (services.web.instances[1]) does not exist"));
        // A leftover from an interrupted run is refused.
        let mut o = observed(&[("web-1", "sha256:i1", &v1), ("web-2", "sha256:i1", &v1)]);
        o.all_names.push("web-2.capstan-old".into());
        check(&o, "r/demo@sha256:v2", Err("web-2.capstan-old is left from an interrupted deploy"));
    }

    /// Entries name containers, or Compose services of the project found by their labels
    /// (v2 and v1 names, `container_name:`, a scaled service in Compose's order).
    #[test]
    fn instances_resolve_to_containers() {
        let yaml =
            "app: pay\nhosts: [h]\ncompose: { project: payment }\nservices:\n  a:\n    image: r/a\n    instances: [service-a-2, service-a-1, web, solo]\n";
        let svc = config::parse(Path::new("c.yml"), yaml).unwrap().services.remove(0);
        let l = |name: &str, project: &str, service: &str, n: u32| Listed {
            name: name.into(),
            compose_project: Some(project.into()),
            compose_service: Some(service.into()),
            number: Some(n),
            image_id: None,
        };
        let cases: &[(&[Listed], &[&str])] = &[
            // Compose v2 names; nothing else on the host.
            (
                &[l("payment-service-a-1-1", "payment", "service-a-1", 1), l("payment-service-a-2-1", "payment", "service-a-2", 1)],
                &["payment-service-a-2-1", "payment-service-a-1-1", "web", "solo"],
            ),
            // Compose v1 names, and a service of another project with the same name is not ours.
            (
                &[l("payment_service-a-2_1", "payment", "service-a-2", 1), l("other_service-a-1_1", "other", "service-a-1", 1)],
                &["payment_service-a-2_1", "service-a-1", "web", "solo"],
            ),
            // A scaled service in container-number order; a container named like the entry wins.
            (
                &[l("payment-web-2", "payment", "web", 2), l("payment-web-1", "payment", "web", 1), l("solo", "payment", "x", 1)],
                &["service-a-2", "service-a-1", "payment-web-1", "payment-web-2", "solo"],
            ),
            // A half-replaced container's kept old one stands for its instance.
            (&[l("payment-web-1.capstan-old", "payment", "web", 1)], &["service-a-2", "service-a-1", "payment-web-1", "solo"]),
        ];
        for (listed, want) in cases {
            assert_eq!(resolve_instances(&svc, listed), want.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "{listed:?}");
        }
    }
}
