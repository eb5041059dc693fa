//! Rollout events: the one stream every kind of output is fed from (the
//! terminal printer, the `--json` report, GitHub statuses and the job summary).
//! Producers emit; they never print. The stream's vocabulary is defined here,
//! including what the build ([`Built`]) and the gates ([`Gate`]) report, so that
//! producers import the output layer and never the other way round.

use std::sync::Arc;

use serde::Serialize;

use crate::core::image;
use crate::core::record::{InstanceOutcome, RunOutcome};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Info {
        host: Option<String>,
        message: String,
    },
    Warn {
        host: Option<String>,
        message: String,
    },
    Step(StepEvent),
    Instance {
        host: String,
        service: String,
        instance: String,
        from_image: String,
        to_image: String,
        outcome: InstanceOutcome,
    },
    /// One line of a service's build output.
    BuildOutput {
        service: String,
        line: String,
    },
    /// A service was built (and pushed, when it has a digest).
    Built(Built),
    /// A preflight check, hook, migration, validation or bake result.
    Gate(Gate),
    /// A host's part of the run: connected, started, finished or skipped, with its times.
    Host(HostEvent),
    /// How many times the load balancer was reloaded for a service on a host.
    Reloads {
        host: String,
        service: String,
        count: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct HostEvent {
    pub host: String,
    pub phase: HostPhase,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HostPhase {
    /// The SSH master and the engine answered, `ms` after the connection began.
    Connected { ms: u64 },
    /// The rollout began on the host, `at_ms` after the run began.
    Started { at_ms: u64, canary: bool },
    /// The host is done: `outcome` as recorded in its log.
    Finished { at_ms: u64, duration_ms: u64, outcome: RunOutcome },
    /// Never started: an earlier host failed, or the run was cancelled.
    Skipped { reason: String },
    /// A host that had taken the release is being put back, because another failed (`on_failure: revert_all`).
    Reverting { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepEvent {
    #[serde(skip)]
    pub host: String,
    #[serde(skip)]
    pub service: String,
    #[serde(skip)]
    pub instance: String,
    pub step: String,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    pub host: String,
    /// `preflight disk`, `pre_deploy hook`, `migrate web`, `validate errors`, `bake`…
    pub gate: String,
    pub ok: bool,
    /// What was found: `41.2 GiB free`, `exit 0`.
    pub measured: String,
    /// What was required, if anything: `at least 2.0 GiB`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub limit: String,
    /// The output of a hook or a migration (its last 64 KiB).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    /// A traffic, resource or query gate's figures: each measured value with its limit
    /// and the old instances' value (`measured` is their sentence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<crate::core::verdict::Verdict>,
}

impl Gate {
    pub fn new(host: &str, gate: impl Into<String>, ok: bool, measured: impl Into<String>, limit: impl Into<String>) -> Gate {
        Gate { host: host.into(), gate: gate.into(), ok, measured: measured.into(), limit: limit.into(), output: String::new(), verdict: None }
    }

    /// `web-1.example: preflight disk: 1.2 GiB free, needs at least 2.0 GiB`
    pub fn describe(&self) -> String {
        let limit = if self.limit.is_empty() { String::new() } else { format!(", needs {}", self.limit) };
        format!("{}: {}: {}{limit}", self.host, self.gate, self.measured)
    }
}

/// One service's build, in the report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Built {
    pub service: String,
    pub image: String,
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_tags: Vec<String>,
    /// `sha256:…` of the pushed manifest; `None` when not pushed.
    pub digest: Option<String>,
    pub image_id: String,
    /// `local`, `from <ref>`, or `none`.
    pub cache: String,
    pub context_files: usize,
    pub context_bytes: usize,
    pub build_ms: u64,
    pub push_ms: Option<u64>,
}

impl Built {
    /// `repo@sha256:…`: what a deploy runs.
    pub fn reference(&self) -> Option<String> {
        self.digest.as_ref().map(|d| image::digest_ref(&self.image, d))
    }
}

pub trait Sink: Send + Sync {
    fn emit(&self, e: Event);
}

/// Sends each event to every sink, in order.
pub struct Fanout(pub Vec<Arc<dyn Sink>>);

impl Sink for Fanout {
    fn emit(&self, e: Event) {
        for s in &self.0 {
            s.emit(e.clone());
        }
    }
}

/// Keeps every event: for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<Event>>);

#[cfg(test)]
impl Sink for Recorder {
    fn emit(&self, e: Event) {
        self.0.lock().unwrap().push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_the_host_the_check_and_the_limit() {
        let g = Gate::new("h1", "preflight disk", false, "1.0 GiB free on /var/lib/docker", "at least 2.0 GiB");
        assert_eq!(g.describe(), "h1: preflight disk: 1.0 GiB free on /var/lib/docker, needs at least 2.0 GiB");
    }
}
