//! Rollout events: the one stream every kind of output is fed from (the
//! terminal printer, the `--json` report, and later GitHub statuses and the
//! job summary). Producers emit; they never print.

use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceOutcome {
    Replaced,
    Reverted,
    Unchanged,
    Failed,
}

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
    Built(crate::build::Built),
    /// A preflight check, hook, migration, validation or bake result.
    Gate(crate::rollout::gates::Gate),
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
    Finished { at_ms: u64, duration_ms: u64, outcome: String },
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
