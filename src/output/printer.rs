//! Human output, on stderr: progress lines with per-step timings, the plan,
//! and summaries. Fed by rollout events; the only place that writes to the
//! terminal besides `main` (which prints the final error and the JSON report).

use std::io::Write;

use crate::core::image::short;
use crate::core::plan::Plan;
use crate::core::record::InstanceOutcome;
use crate::output::events::{Event, HostEvent, HostPhase, Sink};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verbosity {
    Quiet,
    Normal,
}

pub struct Printer {
    verbosity: Verbosity,
    /// In GitHub Actions: the open `::group::` of the log, folded per host and service.
    group: Option<std::sync::Mutex<Option<String>>>,
}

impl Printer {
    pub fn new(verbosity: Verbosity) -> Self {
        Printer { verbosity, group: None }
    }

    /// Folds the log into `::group::` sections (one per host and service, one for the build), as GitHub Actions shows them.
    pub fn with_groups(mut self, on: bool) -> Self {
        self.group = on.then(|| std::sync::Mutex::new(None));
        self
    }

    /// Opens the group `key` (closing the one open), or closes it with `None`.
    fn enter(&self, key: Option<String>) {
        let Some(g) = &self.group else { return };
        let mut open = g.lock().unwrap_or_else(|e| e.into_inner());
        if *open == key {
            return;
        }
        let mut err = std::io::stderr().lock();
        if open.is_some() {
            let _ = writeln!(err, "::endgroup::");
        }
        if let Some(k) = &key {
            let _ = writeln!(err, "::group::{}", crate::output::workflow::escape_data(k));
        }
        *open = key;
    }

    /// Closes the open group, before the final lines.
    pub fn end_group(&self) {
        self.enter(None);
    }

    pub fn line(&self, text: &str) {
        if self.verbosity == Verbosity::Normal {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        }
    }

    pub fn always(&self, text: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

pub fn render_plan(plan: &Plan) -> String {
    let mut out = String::from("plan:");
    for h in &plan.hosts {
        out.push_str(&format!("\n  {}", h.host));
        for s in &h.services {
            for i in &s.instances {
                let what =
                    if i.replace { format!("{} -> {}", short(&i.from_image), short(&i.to_image)) } else { format!("{} (unchanged)", short(&i.from_image)) };
                out.push_str(&format!("\n    {}/{:<14} {}", s.service, i.name, what));
            }
        }
    }
    out.push_str(&format!("\n  {} instance(s) to replace", plan.changes()));
    out
}

/// What runs now on each host, by instance (a check with no version has no plan).
pub fn render_running(plan: &Plan) -> String {
    let mut out = String::from("running now:");
    for h in &plan.hosts {
        out.push_str(&format!("\n  {}", h.host));
        for s in &h.services {
            for i in &s.instances {
                out.push_str(&format!("\n    {}/{:<14} {}", s.service, i.name, short(&i.from_image)));
            }
        }
    }
    out
}

fn ms(d: u64) -> String {
    if d >= 10_000 {
        format!("{:.1}s", d as f64 / 1000.0)
    } else {
        format!("{d}ms")
    }
}

impl Sink for Printer {
    fn emit(&self, e: Event) {
        match &e {
            Event::Step(s) => self.enter(Some(format!("{} {}", s.host, s.service))),
            Event::Instance { host, service, .. } => self.enter(Some(format!("{host} {service}"))),
            Event::Gate(g) => self.enter(Some(format!("{} checks", g.host))),
            Event::BuildOutput { .. } | Event::Built(_) => self.enter(Some("build".into())),
            Event::Info { host: Some(_), .. } => {}
            Event::Host(_) => self.enter(None),
            Event::Reloads { host, service, .. } => self.enter(Some(format!("{host} {service}"))),
            // Warnings and run-wide lines stay outside any fold.
            Event::Info { host: None, .. } | Event::Warn { .. } => self.enter(None),
        }
        match e {
            Event::Info { host, message } => match host {
                Some(h) => self.line(&format!("{h}: {message}")),
                None => self.line(&message),
            },
            Event::Warn { host, message } => match host {
                Some(h) => self.always(&format!("warning: {h}: {message}")),
                None => self.always(&format!("warning: {message}")),
            },
            Event::Step(s) => {
                let status = if s.ok { "ok" } else { "FAILED" };
                let detail = if s.detail.is_empty() { String::new() } else { format!("  {}", s.detail) };
                let text = format!("  {} {}/{:<14} {:<16} {:<6} {:>8}{detail}", s.host, s.service, s.instance, s.step, status, ms(s.duration_ms));
                if s.ok {
                    self.line(&text)
                } else {
                    self.always(&text)
                }
            }
            Event::Instance { host, service, instance, from_image, to_image, outcome } => {
                let text = match outcome {
                    InstanceOutcome::Replaced => format!("  {host} {service}/{instance}: {} -> {}", short(&from_image), short(&to_image)),
                    InstanceOutcome::Reverted => format!("  {host} {service}/{instance}: reverted to {}", short(&from_image)),
                    InstanceOutcome::Unchanged => format!("  {host} {service}/{instance}: unchanged ({})", short(&from_image)),
                    InstanceOutcome::Failed => format!("  {host} {service}/{instance}: FAILED, not restored; it needs attention"),
                };
                if outcome == InstanceOutcome::Failed {
                    self.always(&text)
                } else {
                    self.line(&text)
                }
            }
            Event::Gate(g) => {
                let limit = if g.limit.is_empty() { String::new() } else { format!("  (needs {})", g.limit) };
                let text = format!("  {} {:<28} {:<6} {}{limit}", g.host, g.gate, if g.ok { "ok" } else { "FAILED" }, g.measured);
                let output: String = g.output.lines().map(|l| format!("\n    | {l}")).collect();
                if g.ok {
                    self.line(&format!("{text}{output}"))
                } else {
                    self.always(&format!("{text}{output}"))
                }
            }
            Event::Host(HostEvent { host, phase }) => match phase {
                // The connection's time is in the "connected" line and the report.
                HostPhase::Connected { .. } => {}
                HostPhase::Started { canary: true, .. } => self.line(&format!("{host}: canary: rolling it alone first; the other hosts wait until it is done")),
                HostPhase::Started { .. } => {}
                HostPhase::Finished { duration_ms, outcome, .. } => self.line(&format!("{host}: {} in {}", outcome.in_words(), ms(duration_ms))),
                HostPhase::Skipped { reason } => self.always(&format!("{host}: not started: {reason}")),
                HostPhase::Reverting { reason } => self.always(&format!("{host}: putting it back: {reason}")),
            },
            Event::Reloads { host, service, count } => self.line(&format!("  {host} {service}: the load balancer was reloaded {count} time(s)")),
            Event::BuildOutput { service, line } => self.line(&format!("  {service} | {line}")),
            Event::Built(b) => {
                let what = match b.reference() {
                    Some(r) => format!("pushed {}", short(&r)),
                    None => format!("built {} (not pushed)", short(&b.image_id)),
                };
                let push = b.push_ms.map(|p| format!(", push {}", ms(p))).unwrap_or_default();
                self.line(&format!("{}: {what} as {} (build {}{push})", b.service, b.tags.join(", "), ms(b.build_ms)));
            }
        }
    }
}
