//! The report of one run (the `--json` document of DESIGN.md), assembled from
//! rollout events by [`Collector`]. Rendering it is pure.

use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::core::plan::Plan;
use crate::core::record::{InstanceOutcome, RunCommand, RunOutcome};
use crate::output::events::{Built, Event, Gate, HostEvent, HostPhase, Sink, StepEvent};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub app: String,
    pub command: RunCommand,
    pub version: Option<String>,
    /// `succeeded`, `rolled_back`, `refused` or `failed`.
    pub outcome: RunOutcome,
    pub duration_ms: u64,
    pub hosts: Vec<HostReport>,
    /// Per built service: image, tags, digest, build and push durations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub build: Vec<Built>,
    /// Every preflight check, hook, migration, validation and bake result, with its measured value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    pub error: Option<String>,
    /// The release the hosts ran before this run, as their log names it: what
    /// a rollback of this run goes back to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HostReport {
    pub host: String,
    /// `succeeded`, `rolled_back`, `failed`, `refused` or `skipped` (never started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
    pub timing: HostTiming,
    pub instances: Vec<InstanceReport>,
    /// Per service, how many times the load balancer was reloaded on this host.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reloads: std::collections::BTreeMap<String, u32>,
}

/// Where a host's time went; milliseconds, `started_ms` from the run's start.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct HostTiming {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub canary: bool,
    /// Why it never started, or why it was put back after finishing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstanceReport {
    pub service: String,
    pub name: String,
    pub from_image: String,
    pub to_image: String,
    pub outcome: Option<InstanceOutcome>,
    pub steps: Vec<StepEvent>,
}

/// Builds the per-host, per-instance part of the report from events.
#[derive(Default)]
pub struct Collector {
    hosts: Mutex<Vec<HostReport>>,
    builds: Mutex<Vec<Built>>,
    gates: Mutex<Vec<Gate>>,
}

impl Collector {
    fn with_host(&self, host: &str, f: impl FnOnce(&mut HostReport)) {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let i = match hosts.iter().position(|h| h.host == host) {
            Some(i) => i,
            None => {
                hosts.push(HostReport { host: host.into(), outcome: None, timing: HostTiming::default(), instances: vec![], reloads: Default::default() });
                hosts.len() - 1
            }
        };
        f(&mut hosts[i])
    }

    fn with_instance(&self, host: &str, service: &str, name: &str, f: impl FnOnce(&mut InstanceReport)) {
        self.with_host(host, |h| Self::instance(h, service, name, f))
    }

    fn instance(h: &mut HostReport, service: &str, name: &str, f: impl FnOnce(&mut InstanceReport)) {
        let i = match h.instances.iter().position(|i| i.name == name && i.service == service) {
            Some(i) => i,
            None => {
                h.instances.push(InstanceReport {
                    service: service.into(),
                    name: name.into(),
                    from_image: String::new(),
                    to_image: String::new(),
                    outcome: None,
                    steps: vec![],
                });
                h.instances.len() - 1
            }
        };
        f(&mut h.instances[i])
    }

    pub fn hosts(&self) -> Vec<HostReport> {
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn builds(&self) -> Vec<Built> {
        self.builds.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn gates(&self) -> Vec<Gate> {
        self.gates.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Sink for Collector {
    fn emit(&self, e: Event) {
        match e {
            Event::Step(s) => {
                let (h, sv, n) = (s.host.clone(), s.service.clone(), s.instance.clone());
                self.with_instance(&h, &sv, &n, |i| i.steps.push(s));
            }
            Event::Instance { host, service, instance, from_image, to_image, outcome } => {
                self.with_instance(&host, &service, &instance, |i| {
                    i.from_image = from_image;
                    i.to_image = to_image;
                    i.outcome = Some(outcome);
                });
            }
            Event::Built(b) => self.builds.lock().unwrap_or_else(PoisonError::into_inner).push(b),
            Event::Gate(g) => self.gates.lock().unwrap_or_else(PoisonError::into_inner).push(g),
            Event::Host(HostEvent { host, phase }) => self.with_host(&host, |h| match phase {
                HostPhase::Connected { ms } => h.timing.connect_ms = Some(ms),
                HostPhase::Started { at_ms, canary } => {
                    h.timing.started_ms = Some(at_ms);
                    h.timing.canary = canary;
                }
                HostPhase::Finished { at_ms, duration_ms, outcome } => {
                    h.timing.started_ms.get_or_insert(at_ms);
                    h.timing.duration_ms = Some(duration_ms);
                    h.outcome = Some(outcome);
                }
                HostPhase::Skipped { reason } => {
                    h.outcome = Some(RunOutcome::Skipped);
                    h.timing.note = Some(reason);
                }
                HostPhase::Reverting { reason } => h.timing.note = Some(reason),
            }),
            Event::Reloads { host, service, count } => self.with_host(&host, |h| *h.reloads.entry(service).or_default() += count),
            Event::Info { .. } | Event::Warn { .. } | Event::BuildOutput { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_outcomes_land_under_their_instance() {
        let c = Collector::default();
        let step = |inst: &str, step: &str| {
            Event::Step(StepEvent {
                host: "h".into(),
                service: "web".into(),
                instance: inst.into(),
                step: step.into(),
                started_ms: 1,
                duration_ms: 2,
                ok: true,
                detail: String::new(),
            })
        };
        c.emit(step("web-1", "drain"));
        c.emit(step("web-2", "drain"));
        c.emit(step("web-1", "health"));
        c.emit(Event::Instance {
            host: "h".into(),
            service: "web".into(),
            instance: "web-1".into(),
            from_image: "a".into(),
            to_image: "b".into(),
            outcome: InstanceOutcome::Replaced,
        });
        let hosts = c.hosts();
        assert_eq!(hosts.len(), 1);
        let names: Vec<_> = hosts[0].instances.iter().map(|i| (i.name.as_str(), i.steps.len())).collect();
        assert_eq!(names, vec![("web-1", 2), ("web-2", 1)]);
        let json = serde_json::to_value(&hosts[0].instances[0]).unwrap();
        assert_eq!(json["outcome"], "replaced");
        assert_eq!(json["steps"][0]["step"], "drain");
        assert_eq!(json["steps"][0]["duration_ms"], 2);
    }
}
