//! The gates around a host's instances: the migration before a service's first
//! instance (once per deploy, from the new image), validation after the last one
//! (endpoints, error lines), then the bake window (health and error lines, watched).
//! They run inside `Rollout::run`, so a failure reverts like a failed step.
//! Migrations are never undone.

use std::time::Duration;

use tokio::time::Instant;

use crate::core::config::Service;
use crate::output::events::{Event, Gate};
use crate::rollout::checks;
use crate::rollout::steps::{round, StepError};
use crate::rollout::watch;
use crate::rollout::{Done, Rollout};

/// The gates around the instances: migrations before a service's first
/// instance, validation after the last one, then the bake window.
#[derive(Default, Clone, Copy)]
pub struct Safety<'a> {
    /// The services whose `migrate:` command this host runs (each runs on one host per deploy).
    pub migrate: &'a [String],
    pub validate: Option<&'a crate::core::config::Validate>,
    pub bake: Duration,
}

impl Rollout<'_> {
    fn gate(&self, g: Gate) -> Gate {
        self.events.emit(Event::Gate(g.clone()));
        g
    }

    /// Runs `migrate.command` as a one-off container of the new image, beside `instance`.
    pub(super) async fn migrate(&self, svc: &Service, m: &crate::core::config::Migrate, instance: &str, image: &str) -> Result<(), StepError> {
        self.go_on(true)?;
        let engine = &self.host.engine;
        let current = engine.inspect_container(instance).await.map_err(StepError::failed)?.ok_or_else(|| format!("{instance} disappeared"))?;
        let spec = crate::host::spec::one_off_spec(&current.spec, &m.command);
        let name = format!("{instance}-capstan-migrate");
        // A killed run may have left one behind.
        let _ = engine.remove(&name).await;
        let gate = format!("migrate {}", svc.name);
        let limit = format!("exit 0 within {}", humantime::format_duration(m.timeout));
        let g = match engine.run_once(&name, &spec, image, m.timeout).await {
            Ok((code, output)) => Gate {
                host: self.host.name.clone(),
                gate,
                ok: code == 0,
                measured: format!("`{}` exited {code}", m.command.join(" ")),
                limit,
                output: output.trim_end().to_string(),
                verdict: None,
            },
            Err(e) => Gate::new(&self.host.name, gate, false, e.to_string(), limit),
        };
        let g = self.gate(g);
        if g.ok {
            Ok(())
        } else {
            Err(StepError::Failed(g.describe()))
        }
    }

    /// After the last instance: the endpoints and the error lines, then the
    /// bake window. An error names the gate that failed.
    pub(super) async fn validate_and_bake(&self, done: &[Done<'_>]) -> Result<(), (String, StepError)> {
        // Containers whose output is checked: the replaced ones, and the new tasks of a Swarm service on this host.
        let mut names: Vec<String> = Vec::new();
        for d in done {
            match &d.service.swarm {
                Some(sw) => names.extend(self.swarm().containers(sw, &d.to_image).await),
                None => names.push(d.name.clone()),
            }
        }
        let fail = |at: &str, g: &Gate| Err((at.to_string(), StepError::Failed(g.describe())));
        if let Some(v) = self.safety.validate {
            for e in &v.endpoints {
                let g = self.gate(crate::rollout::gates::endpoint(self.host, e).await);
                if !g.ok {
                    return fail("validate", &g);
                }
            }
            if let Some(e) = &v.errors {
                let g = self.gate(crate::rollout::gates::errors(self.host, &names, &e.pattern, e.max, "validate errors").await);
                if !g.ok {
                    return fail("validate", &g);
                }
            }
        }
        let bake = self.safety.bake;
        // The gates on real traffic, per service, over its new instances (no old one is left to compare with).
        let mut gated: Vec<(&Service, Vec<String>)> = Vec::new();
        for d in done.iter().filter(|d| d.service.swarm.is_none() && watch::watched(&d.service.gates)) {
            match gated.iter_mut().find(|(s, _)| s.name == d.service.name) {
                Some((_, names)) => names.push(d.name.clone()),
                None => gated.push((d.service, vec![d.name.clone()])),
            }
        }
        let mut marks = Vec::new();
        for (svc, _) in &gated {
            marks.push(self.mark(svc).await);
        }
        let breach = |at: &str, why: String| Err((at.to_string(), StepError::Failed(format!("{}: {at} gates: {why}", self.host.name))));
        if bake.is_zero() {
            // Validation: one window of the release as a whole.
            if let Some(longest) = gated.iter().map(|(s, _)| s.gates.window).max() {
                if let Err(why) = self.wait(longest, true).await {
                    return Err(("validate".into(), why));
                }
            }
            for ((svc, names), mark) in gated.iter().zip(&marks) {
                if let Some(why) = self.judge(svc, "validate", mark, names, &[]).await.breach() {
                    return breach("validate", why);
                }
            }
            return Ok(());
        }
        let watched: Vec<&str> = done.iter().map(|d| d.name.as_str()).collect();
        self.info(format!("baking for {}: watching {} for health and errors", humantime::format_duration(bake), watched.join(", ")));
        let start = Instant::now();
        let every = (bake / 20).clamp(Duration::from_millis(200), Duration::from_secs(5));
        let errors = self.safety.validate.and_then(|v| v.errors.as_ref());
        loop {
            for d in done {
                let (ok, measured) = match &d.service.swarm {
                    Some(sw) => checks::swarm_now(self.host, d.service, sw, Some(&d.to_image)).await,
                    None => match self.host.engine.inspect_container(&d.name).await.ok().flatten() {
                        Some(c) => {
                            let health = checks::look(self.host, d.service, &c).await;
                            (health.serving(), health.to_string())
                        }
                        None => (false, "gone".into()),
                    },
                };
                if !ok {
                    let g = self.gate(Gate::new(
                        &self.host.name,
                        "bake",
                        false,
                        format!("{}: {measured} after {} of baking", d.name, humantime::format_duration(round(start.elapsed()))),
                        format!("healthy for {}", humantime::format_duration(bake)),
                    ));
                    return fail("bake", &g);
                }
            }
            if let Some(e) = errors {
                let g = crate::rollout::gates::errors(self.host, &names, &e.pattern, e.max, "bake errors").await;
                if !g.ok {
                    let mut g = self.gate(g);
                    g.measured = format!("{} after {} of baking", g.measured, humantime::format_duration(round(start.elapsed())));
                    return fail("bake", &g);
                }
            }
            // The gates, a window at a time, and what is left of one at the end.
            let end = start.elapsed() >= bake;
            for ((svc, names), mark) in gated.iter().zip(marks.iter_mut()) {
                let full = mark.started.elapsed() >= svc.gates.window;
                if full || (end && mark.started.elapsed() >= svc.gates.window / 2) {
                    let judged = self.judge(svc, "bake", mark, names, &[]).await;
                    if let Some(why) = judged.breach() {
                        return breach("bake", why);
                    }
                    *mark = judged.next;
                }
            }
            if end {
                break;
            }
            if let Err(why) = self.wait(every.min(bake.saturating_sub(start.elapsed())), true).await {
                return Err(("bake".into(), why));
            }
        }
        self.gate(Gate::new(
            &self.host.name,
            "bake",
            true,
            format!("{} healthy for {}", watched.join(", "), humantime::format_duration(round(start.elapsed()))),
            format!("healthy for {}", humantime::format_duration(bake)),
        ));
        Ok(())
    }
}
