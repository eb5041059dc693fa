//! The commands: each one connects, observes, plans and (for deploy and
//! rollback) applies through the same path. Hosts are reached through a
//! [`Connector`], so the whole flow also runs against fakes.
//!
//! Read top-down, a deploy is: `prepare.rs` (connect every host, observe, finish
//! what a killed run left (`recover.rs`), resolve the release, plan), then
//! `deploy.rs` (the dry run's checks, or the lock on every host, preflight, the
//! pre-deploy hook, `fleet.rs`'s roll of the hosts, hooks, records, release).
//! `status.rs`, `history.rs` and `lock.rs` are the read-mostly commands.

pub mod deploy;
mod fleet;
pub mod history;
pub mod lock;
pub mod prepare;
mod recover;
#[cfg(test)]
pub mod simulated;
pub mod status;
#[cfg(test)]
mod tests;

use crate::core::config::{Config, Service};
use crate::core::names::HostAddr;
use crate::core::record::Lease;
use crate::core::secret::{Credentials, Secret};
use crate::core::time::fmt_time;
use crate::env;
use crate::error::Error;
use crate::host::connect::Connector;
use crate::output::events::{Event, Sink};
use crate::rollout::cancel::Cancel;

/// What a command needs besides its arguments.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub events: &'a dyn Sink,
    pub connector: &'a dyn Connector,
    pub cancel: &'a Cancel,
    /// What the run took from the environment (read once, in `main`).
    pub env: &'a env::Context,
}

impl Ctx<'_> {
    fn info(&self, host: Option<&str>, message: impl Into<String>) {
        self.events.emit(Event::Info { host: host.map(String::from), message: message.into() });
    }

    fn warn(&self, host: Option<&str>, message: impl Into<String>) {
        self.events.emit(Event::Warn { host: host.map(String::from), message: message.into() });
    }

    pub fn services(&self, names: &[String]) -> Result<Vec<&Service>, Error> {
        for n in names {
            if self.config.service(n).is_none() {
                return Err(Error::input(format!(
                    "--service {n}: no such service in {} (services: {})",
                    self.config.file.display(),
                    self.config.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(self.config.services.iter().filter(|s| names.is_empty() || names.contains(&s.name)).collect())
    }

    pub fn hosts(&self, names: &[String]) -> Result<Vec<HostAddr>, Error> {
        for n in names {
            if !self.config.hosts.iter().any(|h| &h.to_string() == n || &h.host == n) {
                return Err(Error::input(format!("--host {n}: not a host of {}", self.config.file.display())));
            }
        }
        Ok(self.config.hosts.iter().filter(|h| names.is_empty() || names.iter().any(|n| *n == h.to_string() || *n == h.host)).cloned().collect())
    }

    /// Registry credentials from the environment, when the config names a registry.
    pub fn credentials(&self) -> Result<Option<Credentials>, Error> {
        let Some(r) = &self.config.registry else { return Ok(None) };
        let password = self.env.registry_password().map(str::to_string).ok_or_else(|| {
            Error::input_hint(
                format!("{}: registry.password_env: the environment variable {} is not set", self.config.file.display(), r.password_env),
                format!("export {} with the password or token for {}", r.password_env, r.server),
            )
        })?;
        Ok(Some(Credentials { server: r.server.clone(), username: r.username.clone(), password: Secret::new(password) }))
    }
}

fn locked(host: &str, l: Lease) -> Error {
    Error::Locked {
        host: host.to_string(),
        holder: format!("{} ({} {})", l.holder, l.command, l.version.unwrap_or_default()),
        since: fmt_time(l.acquired_at),
        run_url: l.run_url,
        expires: fmt_time(l.expires_at),
    }
}
