//! `capstan lock status` and `capstan lock release [--force]`: the deploy lock of
//! each host; an expired lease is released, a live one only with `--force`.

use serde::Serialize;
use time::OffsetDateTime;

use crate::cli::Targets;
use crate::commands::Ctx;
use crate::core::record::{Lease, RunCommand};
use crate::core::time::fmt_time;
use crate::error::Error;
use crate::host::state::{self, StateError};

#[derive(Debug, Serialize)]
pub struct LockReport {
    pub app: String,
    pub command: RunCommand,
    pub hosts: Vec<HostLock>,
}

#[derive(Debug, Serialize)]
pub struct HostLock {
    pub host: String,
    pub lock: Option<Lease>,
    pub expired: Option<bool>,
    pub released: bool,
}

pub async fn lock(ctx: &Ctx<'_>, targets: &Targets, release: Option<bool>) -> Result<LockReport, Error> {
    let hosts = ctx.connect_all(&ctx.hosts(&targets.hosts)?).await?;
    let dir = &ctx.config.state_dir;
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    for h in &hosts {
        let err = |e: StateError| Error::Unreachable { host: h.name.clone(), message: e.to_string(), hint: None };
        let current = state::read_lock(h.shell.as_ref(), dir).await.map_err(err)?;
        let expired = current.as_ref().map(|l| l.expired(now));
        let released = match (release, &current) {
            (Some(true), Some(_)) => state::force_release(h.shell.as_ref(), dir).await.map_err(err)?.is_some(),
            (Some(false), Some(l)) if l.expired(now) => state::release(h.shell.as_ref(), dir, &l.id).await.map_err(err)?,
            (Some(false), Some(l)) => {
                return Err(Error::input_hint(
                    format!(
                        "{}: the lock is held by {} ({}) since {} and its lease runs until {}",
                        h.name,
                        l.holder,
                        l.command,
                        fmt_time(l.acquired_at),
                        fmt_time(l.expires_at)
                    ),
                    "if that deploy is dead, release it with `capstan lock release --force`",
                ))
            }
            _ => false,
        };
        out.push(HostLock { host: h.name.clone(), lock: current, expired, released });
    }
    Ok(LockReport { app: ctx.config.app.clone(), command: RunCommand::Lock, hosts: out })
}

pub fn render_lock(r: &LockReport) -> String {
    let mut out = String::new();
    for h in &r.hosts {
        match (&h.lock, h.released) {
            (None, _) => out.push_str(&format!("{}: unlocked\n", h.host)),
            (Some(l), true) => out.push_str(&format!("{}: released the lock held by {} since {}\n", h.host, l.holder, fmt_time(l.acquired_at))),
            (Some(l), false) => out.push_str(&format!(
                "{}: locked by {} ({} {}) since {}, lease until {}{}{}\n",
                h.host,
                l.holder,
                l.command,
                l.version.as_deref().unwrap_or(""),
                fmt_time(l.acquired_at),
                fmt_time(l.expires_at),
                if h.expired == Some(true) { " (expired)" } else { "" },
                l.run_url.as_deref().map(|u| format!(", {u}")).unwrap_or_default()
            )),
        }
    }
    out
}
