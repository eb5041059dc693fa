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

/// A step's value and what it says about itself, or why it failed.
pub type StepResult<T> = Result<(T, String), String>;

#[derive(Debug)]
pub struct Failure {
    pub message: String,
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
    pub async fn step<T>(&self, service: &str, instance: &str, name: &str, fut: impl Future<Output = StepResult<T>>) -> Result<T, String> {
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
                Err(e) => e.clone(),
            },
        }));
        r.map(|(t, _)| t)
    }

    /// Err once the run is cancelled: no new step starts.
    pub fn go_on(&self, cancellable: bool) -> Result<(), String> {
        match self.cancel.reason() {
            Some(why) if cancellable => Err(why),
            _ => Ok(()),
        }
    }

    /// Sleeps, unless the run is cancelled first.
    pub async fn wait(&self, d: Duration, cancellable: bool) -> Result<(), String> {
        if !cancellable {
            tokio::time::sleep(d).await;
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(self.cancel.reason().unwrap_or_default()),
        }
    }
}

/// A duration to the tenth of a second, for messages.
pub fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
}
