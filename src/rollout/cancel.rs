//! Cancellation: what SIGTERM and SIGINT do (a cancelled GitHub Actions run
//! sends them). The first signal asks the rollout to stop starting new work;
//! the instance in flight and the ones already replaced are reverted, the log
//! is written and the lock released. A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::output::events::{Event, Sink};

#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl Cancel {
    pub fn new() -> Arc<Self> {
        Arc::new(Cancel::default())
    }

    pub fn trigger(&self, reason: &str) {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| reason.to_string());
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Why the run was cancelled, if it was.
    pub fn reason(&self) -> Option<String> {
        if self.flag.load(Ordering::SeqCst) {
            self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
        } else {
            None
        }
    }

    /// Returns once cancelled.
    pub async fn cancelled(&self) {
        loop {
            let notified = self.notify.notified();
            if self.flag.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

/// Turns SIGTERM / SIGINT into a cancellation; a second one exits with 130.
pub fn on_signals(cancel: Arc<Cancel>, events: Arc<dyn Sink>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        let mut count = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            count += 1;
            if count > 1 {
                events.emit(Event::Warn { host: None, message: format!("second {name}: exiting now; hosts may need `capstan status`") });
                std::process::exit(130);
            }
            events.emit(Event::Warn {
                host: None,
                message: format!("{name} received: stopping, reverting what this run changed (send it again to exit at once)"),
            });
            cancel.trigger(&format!("cancelled by {name}"));
        }
    });
}
