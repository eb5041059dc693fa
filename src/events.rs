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
    Gate(crate::gates::Gate),
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
