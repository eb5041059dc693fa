//! A killed run is finished by the next one: before planning, `deploy` and
//! `rollback` put back, under the lock, every `<name>.capstan-old` a killed run
//! left (with drain and health gate, through the executor's `recover`), and log a
//! `recover` record.

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::commands::{locked, Ctx};
use crate::core::config::Service;
use crate::core::plan::{self, Observed};
use crate::core::record::{InstanceOutcome, Lease, Record, RecordInstance, RunCommand, RunOutcome};
use crate::error::Error;
use crate::host::state::{self, StateError};
use crate::host::Host;
use crate::rollout::safety::Safety;
use crate::rollout::Rollout;

/// Puts back, under the lock, the instances a killed run left half-replaced
/// (a `<name>.capstan-old` beside or instead of `<name>`). Returns whether it did anything.
pub(super) async fn recover(ctx: &Ctx<'_>, h: &Host, services: &[&Service], o: &Observed) -> Result<bool, Error> {
    let leftovers: Vec<(&Service, &String)> = services
        .iter()
        .flat_map(|s| o.instances_of(s).iter().map(move |i| (*s, i)))
        .filter(|(_, i)| o.all_names.contains(&format!("{i}{}", plan::OLD_SUFFIX)))
        .collect();
    if leftovers.is_empty() {
        return Ok(false);
    }
    ctx.warn(Some(&h.name), format!("an interrupted run left {} instance(s) half-replaced; putting the kept containers back first", leftovers.len()));
    let now = OffsetDateTime::now_utc();
    let lease = Lease {
        id: state::new_id(),
        holder: ctx.env.actor.clone(),
        command: RunCommand::Recover,
        version: None,
        run_url: ctx.env.run_url.clone(),
        acquired_at: now,
        expires_at: now + ctx.config.lock_lease,
    };
    let dir = &ctx.config.state_dir;
    state::acquire(h.shell.as_ref(), dir, &lease, now).await.map_err(|e| match e {
        StateError::Held(l) => locked(&h.name, l),
        StateError::Host(m) => Error::Unreachable { host: h.name.clone(), message: format!("cannot take the deploy lock: {m}"), hint: None },
    })?;
    let r = Rollout {
        host: h,
        events: ctx.events,
        creds: None,
        t0: Instant::now(),
        lease: None,
        cancel: ctx.cancel,
        drainer: Default::default(),
        safety: Safety::default(),
        version: None,
    };
    let mut instances = Vec::new();
    let mut failed = Vec::new();
    for (svc, name) in &leftovers {
        let kept = format!("{name}{}", plan::OLD_SUFFIX);
        let image_of = |n: &str| o.containers.get(n).map(|(c, _)| c.image_id.clone());
        let from_image = image_of(name).unwrap_or_default();
        let to_image = h.engine.inspect_container(&kept).await.ok().flatten().map(|c| c.image_id).unwrap_or_default();
        let outcome = match r.recover(svc, name).await {
            Ok(()) => InstanceOutcome::Reverted,
            Err(e) => {
                failed.push(format!("{name}: {e}"));
                InstanceOutcome::Failed
            }
        };
        instances.push(RecordInstance { service: svc.name.clone(), name: (*name).clone(), from_image, to_image, outcome });
    }
    let record = Record {
        time: now,
        app: ctx.config.app.clone(),
        host: h.name.clone(),
        command: RunCommand::Recover,
        version: None,
        outcome: if failed.is_empty() { RunOutcome::Succeeded } else { RunOutcome::Failed },
        actor: Some(lease.holder.clone()),
        run_url: lease.run_url.clone(),
        duration_ms: (OffsetDateTime::now_utc() - now).whole_milliseconds().max(0) as u64,
        instances,
        error: (!failed.is_empty()).then(|| failed.join("; ")),
    };
    if let Err(e) = state::append_and_release(h.shell.as_ref(), dir, &record, &lease.id).await {
        ctx.warn(Some(&h.name), format!("could not record the recovery or release the lock: {e}"));
    }
    if !failed.is_empty() {
        return Err(Error::NeedsAttention(format!("{}: could not put back {}", h.name, failed.join("; "))));
    }
    Ok(true)
}
