//! The executor's small interface: what a part of a host's rollout needs to do
//! its work in steps. [`Steps`] holds the host, the event sink, the registry
//! login, the run's start and its cancellation; a step is timed and reported as
//! an event, a forward step is not started once the run is cancelled, and waits
//! end early when it is. The Swarm rollout goes through it; `Rollout` hands it
//! out and delegates to it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::core::secret::Credentials;
use crate::host::Host;
use crate::output::events::{Event, Sink, StepEvent};
use crate::rollout::cancel::Cancel;

/// One host's steps: where they run, where they are reported, when they stop.
#[derive(Clone, Copy)]
pub struct Steps<'a> {
    pub host: &'a Host,
    pub events: &'a dyn Sink,
    pub creds: Option<&'a Credentials>,
    /// The run's start, so that step times line up across hosts.
    pub t0: Instant,
    /// Once triggered, no new forward step starts.
    pub cancel: &'a Cancel,
}

/// Why a step (or a part of one) did not go on: the run was cancelled, or it failed.
/// Reads as its message alone, as the step's detail and the run's error show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepError {
    /// The run was cancelled (a signal, or another host's failure): why.
    Cancelled(String),
    /// What went wrong.
    Failed(String),
}

impl StepError {
    /// A failure, worded as `e` reads.
    pub fn failed(e: impl std::fmt::Display) -> StepError {
        StepError::Failed(e.to_string())
    }

    pub fn message(&self) -> &str {
        match self {
            StepError::Cancelled(m) | StepError::Failed(m) => m,
        }
    }

    /// The same kind of error, its message rewritten.
    pub fn map(self, f: impl FnOnce(String) -> String) -> StepError {
        match self {
            StepError::Cancelled(m) => StepError::Cancelled(f(m)),
            StepError::Failed(m) => StepError::Failed(f(m)),
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.message())
    }
}

impl std::error::Error for StepError {}

impl From<String> for StepError {
    fn from(message: String) -> StepError {
        StepError::Failed(message)
    }
}

/// A step's value and what it says about itself, or why it did not go on.
pub type StepResult<T> = Result<(T, String), StepError>;

/// How a replace (or a Swarm service's update) failed, and whether what it changed is back.
#[derive(Debug)]
pub struct Failure {
    pub error: StepError,
    pub restored: bool,
}

impl Steps<'_> {
    pub fn info(&self, message: String) {
        self.events.emit(Event::Info { host: Some(self.host.name.clone()), message });
    }

    pub fn warn(&self, message: String) {
        self.events.emit(Event::Warn { host: Some(self.host.name.clone()), message });
    }

    /// Runs one step, timing it and reporting it as an event.
    pub async fn step<T>(&self, service: &str, instance: &str, name: &str, fut: impl Future<Output = StepResult<T>>) -> Result<T, StepError> {
        let start = Instant::now();
        let r = fut.await;
        self.events.emit(Event::Step(StepEvent {
            host: self.host.name.clone(),
            service: service.into(),
            instance: instance.into(),
            step: name.into(),
            started_ms: start.duration_since(self.t0).as_millis() as u64,
            duration_ms: start.elapsed().as_millis() as u64,
            ok: r.is_ok(),
            detail: match &r {
                Ok((_, d)) => d.clone(),
                Err(e) => e.to_string(),
            },
        }));
        r.map(|(t, _)| t)
    }

    /// Err once the run is cancelled: no new step starts.
    pub fn go_on(&self, cancellable: bool) -> Result<(), StepError> {
        match self.cancel.reason() {
            Some(why) if cancellable => Err(StepError::Cancelled(why)),
            _ => Ok(()),
        }
    }

    /// Sleeps, unless the run is cancelled first.
    pub async fn wait(&self, d: Duration, cancellable: bool) -> Result<(), StepError> {
        if !cancellable {
            tokio::time::sleep(d).await;
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(StepError::Cancelled(self.cancel.reason().unwrap_or_default())),
        }
    }
}

/// A duration to the tenth of a second, for messages.
pub fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}
