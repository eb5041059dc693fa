//! What capstan tells GitHub about a run: a deployment of the release to the
//! environment with statuses `in_progress` → `success` | `failure` | `error`
//! (each with the run's log URL, the environment URL and the rollback
//! command), the environment's earlier successful deployment marked
//! `inactive` (keeping its own log URL), and for pull requests a check run
//! with the plan.
//!
//! The requests are built by pure functions; [`Publisher`] sends them through
//! [`crate::github::api::Api`]. A refusal when the deployment is created (a missing
//! permission, a protection rule) stops the run before any host is touched;
//! GitHub being unreachable, or any later failure, is a warning: the rollout
//! completes or reverts as it would. A deployment capstan made always gets a
//! final status: the caller runs [`Publisher::finish`] whatever happened after
//! [`Publisher::start`], with the report or the error that stopped the run.

use serde_json::json;

use crate::core::record::{InstanceOutcome, RunCommand, RunOutcome};
use crate::github::api::{Annotation, Api, ApiError, CheckOutput, Earlier, NewCheckRun, NewDeployment, NewStatus};
use crate::github::summary::RollbackLink;
use crate::output::events::{Event, Sink};
use crate::output::report::Report;

/// GitHub's limits.
pub const MAX_DESCRIPTION: usize = 140;
pub const MAX_SUMMARY: usize = 65_535;
pub const MAX_ANNOTATIONS: usize = 50;
/// The check run's name, as it shows on the pull request.
pub const CHECK_NAME: &str = "capstan plan";

/// Where and how this run's deployment is recorded.
#[derive(Debug, Clone)]
pub struct Target {
    pub environment: String,
    pub environment_url: Option<String>,
    /// The run's page (`…/actions/runs/ID`).
    pub log_url: Option<String>,
    pub rollback: Option<RollbackLink>,
}

/// What the deployment is of.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A release: the tag is the deployment's ref.
    Deploy { version: String },
    /// A rollback: made on the commit the workflow ran on (`GITHUB_SHA`).
    Rollback { to: String, sha: String },
}

/// At most `max` characters, cut on a character boundary with an ellipsis.
pub fn clip(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The first line of an error, for a one-line description.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

pub fn new_deployment(kind: &Kind, target: &Target, app: &str, attempt: &str) -> NewDeployment {
    let (git_ref, task, description, payload) = match kind {
        Kind::Deploy { version } => (
            version.clone(),
            "deploy",
            format!("capstan: deploy {app} {version} to {}", target.environment),
            json!({ "version": version, "capstan": { "attempt": attempt } }),
        ),
        Kind::Rollback { to, sha } => (
            sha.clone(),
            "deploy:rollback",
            format!("capstan: roll {app} back to {to} on {}", target.environment),
            json!({ "rollback_to": to, "capstan": { "attempt": attempt } }),
        ),
    };
    NewDeployment {
        git_ref,
        task: task.into(),
        environment: target.environment.clone(),
        description: clip(&description, MAX_DESCRIPTION),
        auto_merge: false,
        required_contexts: vec![],
        production_environment: is_production(&target.environment),
        transient_environment: false,
        payload,
    }
}

/// `production` and `prod…` environments are production ones.
pub fn is_production(environment: &str) -> bool {
    let e = environment.to_ascii_lowercase();
    e == "production" || e.starts_with("prod")
}

fn status(state: &str, description: String, target: &Target) -> NewStatus {
    NewStatus {
        state: state.into(),
        description: clip(&description, MAX_DESCRIPTION),
        log_url: target.log_url.clone(),
        environment_url: target.environment_url.clone(),
        environment: Some(target.environment.clone()),
        auto_inactive: true,
    }
}

pub fn started(kind: &Kind, target: &Target) -> NewStatus {
    let what = match kind {
        Kind::Deploy { version } => format!("Deploying {version}"),
        Kind::Rollback { to, .. } => format!("Rolling back to {to}"),
    };
    status("in_progress", format!("{what}: one instance at a time, drained, checked, put back"), target)
}

/// The status that retires an earlier deployment: its own log and environment
/// URLs, not this run's (GitHub keeps a status's `log_url` as sent, `""` when
/// none is, and shows the newest status's link on the deployment).
pub fn superseded(earlier: &Earlier, by: u64, target: &Target) -> NewStatus {
    NewStatus {
        log_url: earlier.log_url.clone(),
        environment_url: earlier.environment_url.clone(),
        ..status("inactive", format!("Superseded by deployment {by}"), target)
    }
}

/// The last status, from the run's report: what happened and how to undo it
/// (back to `report.previous`; with no earlier release in the hosts' log there
/// is none to name, and no undo command).
pub fn finished(report: &Report, target: &Target) -> NewStatus {
    let version = report.version.as_deref().unwrap_or("the release");
    let instances: Vec<_> = report.hosts.iter().flat_map(|h| h.instances.iter()).collect();
    let replaced = instances.iter().filter(|i| i.outcome == Some(InstanceOutcome::Replaced)).count();
    let reverted: Vec<&str> = instances.iter().filter(|i| i.outcome == Some(InstanceOutcome::Reverted)).map(|i| i.name.as_str()).collect();
    let undo = match (&target.rollback, report.previous.as_deref()) {
        (Some(l), Some(to)) => format!(" Undo: {}", l.command(to)),
        _ => String::new(),
    };
    let error = report.error.as_deref().map(first_line).unwrap_or("");
    match report.outcome {
        RunOutcome::Succeeded => {
            let what = if report.command == RunCommand::Rollback { format!("Rolled back to {version}") } else { format!("{version} is live") };
            let hosts = report.hosts.len();
            let body = if replaced == 0 { format!("{what}: nothing to change") } else { format!("{what} on {replaced} instance(s), {hosts} host(s).") };
            // The undo command first goes; the outcome must fit.
            let full = format!("{body}{undo}");
            status("success", if full.chars().count() <= MAX_DESCRIPTION { full } else { body }, target)
        }
        RunOutcome::Refused => status("error", format!("Refused before any change: {error}"), target),
        _ if !reverted.is_empty() || report.outcome == RunOutcome::RolledBack => {
            let back = if reverted.is_empty() { String::new() } else { format!("reverted {} to what they ran; ", reverted.join(", ")) };
            status("failure", format!("{version} failed, {back}{error}"), target)
        }
        _ if instances.is_empty() => status("error", format!("Nothing was changed: {error}"), target),
        _ => status("failure", format!("{version} failed: {error}"), target),
    }
}

/// The pull request's check run: the plan, what was skipped, the config's errors on their lines.
pub fn check_run(head_sha: &str, summary_md: &str, ok: bool, skipped: &[String], annotations: Vec<Annotation>, details_url: Option<String>) -> NewCheckRun {
    let title = match (ok, skipped.is_empty()) {
        (false, _) => "The deploy would fail: see the errors".to_string(),
        (true, true) => "The plan is valid".to_string(),
        (true, false) => format!("The plan is valid (skipped: {})", skipped.join(", ")),
    };
    let mut summary = String::new();
    for s in skipped {
        summary.push_str(&format!("> Skipped: {s}\n\n"));
    }
    // GitHub takes at most 50 annotations per request: the rest are named here, never dropped silently.
    if annotations.len() > MAX_ANNOTATIONS {
        summary.push_str(&format!(
            "> {} problems: the first {MAX_ANNOTATIONS} are annotated on their lines, all are listed below and in the job summary.\n\n",
            annotations.len()
        ));
    }
    summary.push_str(summary_md);
    let summary = if summary.len() > MAX_SUMMARY {
        let note = "\n\n… (cut to GitHub's 65,535 characters; the job summary has all of it)";
        let mut cut = MAX_SUMMARY - note.len();
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{}{note}", &summary[..cut])
    } else {
        summary
    };
    NewCheckRun {
        name: CHECK_NAME.into(),
        head_sha: head_sha.into(),
        status: "completed".into(),
        conclusion: if ok { "success" } else { "failure" }.into(),
        details_url,
        output: CheckOutput { title: clip(&title, 255), summary, annotations: annotations.into_iter().take(MAX_ANNOTATIONS).collect() },
    }
}

/// Config errors as check-run annotations on their lines.
pub fn annotations(e: &crate::core::config::ConfigError, workspace: &std::path::Path) -> Vec<Annotation> {
    let path = e.file.strip_prefix(workspace).unwrap_or(&e.file).display().to_string();
    e.issues
        .iter()
        .map(|i| Annotation {
            path: path.clone(),
            start_line: i.line.unwrap_or(1),
            end_line: i.line.unwrap_or(1),
            annotation_level: "failure".into(),
            message: i.describe(),
            title: "capstan config".into(),
        })
        .collect()
}

/// Sends a run's deployment and statuses, and check runs, through the API.
pub struct Publisher<'a> {
    pub api: &'a dyn Api,
    pub target: Target,
    pub events: &'a dyn Sink,
}

impl Publisher<'_> {
    fn warn(&self, message: String) {
        self.events.emit(Event::Warn { host: None, message });
    }

    /// Creates the deployment and sets it `in_progress`. A refusal is an error
    /// (the run stops before any host is touched); an unreachable GitHub a warning.
    pub async fn start(&self, kind: &Kind, app: &str) -> Result<Option<u64>, ApiError> {
        let attempt = format!("{:016x}", rand::random::<u64>());
        let id = match self.api.create_deployment(&new_deployment(kind, &self.target, app, &attempt)).await {
            Ok(id) => id,
            Err(e @ ApiError::Refused { .. }) => return Err(e),
            // Unreachable, or a yes capstan cannot read (no id, and none found by its marker).
            Err(e) => {
                self.warn(format!("{e}; the deploy goes on without a GitHub deployment"));
                return Ok(None);
            }
        };
        self.events.emit(Event::Info { host: None, message: format!("GitHub deployment {id} ({}) in progress", self.target.environment) });
        if let Err(e) = self.api.create_status(id, &started(kind, &self.target)).await {
            self.warn(e.to_string());
        }
        Ok(Some(id))
    }

    /// The last status; on success, the environment's earlier successful deployments become `inactive`.
    pub async fn finish(&self, id: u64, report: &Report) {
        let last = finished(report, &self.target);
        if let Err(e) = self.api.create_status(id, &last).await {
            self.warn(format!("{e}; the deploy itself {}", report.outcome.in_words()));
            return;
        }
        if last.state != "success" {
            return;
        }
        // auto_inactive retires only non-production deployments: production ones are capstan's to retire.
        match self.api.earlier(&self.target.environment, 10).await {
            Ok(list) => {
                for d in list.into_iter().filter(|d| d.id != id && d.state.as_deref() == Some("success")) {
                    if let Err(e) = self.api.create_status(d.id, &superseded(&d, id, &self.target)).await {
                        self.warn(e.to_string());
                    }
                }
            }
            Err(e) => self.warn(e.to_string()),
        }
    }

    pub async fn check(&self, run: &NewCheckRun) {
        match self.api.create_check_run(run).await {
            Ok(id) => self.events.emit(Event::Info { host: None, message: format!("GitHub check run {id}: {}", run.output.title) }),
            Err(e) => self.warn(format!("{e}; the plan is in the job summary")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::github::fake::FakeGitHub;
    use crate::output::events::Recorder;
    use crate::output::report::{HostReport, InstanceReport};

    fn target() -> Target {
        Target {
            environment: "production".into(),
            environment_url: Some("https://shop.example".into()),
            log_url: Some("https://github.com/acme/shop/actions/runs/7".into()),
            rollback: RollbackLink::new("https://github.com", "acme/shop", "acme/shop/.github/workflows/deploy.yml@refs/tags/v2"),
        }
    }

    fn report(outcome: RunOutcome, instances: &[(&str, InstanceOutcome)], error: Option<&str>) -> Report {
        Report {
            app: "shop".into(),
            command: RunCommand::Deploy,
            version: Some("v2.0.0".into()),
            outcome,
            duration_ms: 8_000,
            hosts: vec![HostReport {
                host: "deploy@10.0.0.1:22".into(),
                outcome: None,
                timing: Default::default(),
                instances: instances
                    .iter()
                    .map(|(n, o)| InstanceReport {
                        service: "web".into(),
                        name: n.to_string(),
                        from_image: "r/web:v1".into(),
                        to_image: "r/web:v2".into(),
                        outcome: Some(*o),
                        steps: vec![],
                    })
                    .collect(),
                reloads: Default::default(),
            }],
            build: vec![],
            gates: vec![],
            plan: None,
            error: error.map(String::from),
            previous: None,
        }
    }

    #[test]
    fn statuses_fit_githubs_140_characters_and_say_what_happened() {
        let t = target();
        let ok =
            finished(&after("v1.0.0", report(RunOutcome::Succeeded, &[("web-1", InstanceOutcome::Replaced), ("web-2", InstanceOutcome::Replaced)], None)), &t);
        assert_eq!(ok.state, "success");
        assert_eq!(ok.description, "v2.0.0 is live on 2 instance(s), 1 host(s). Undo: gh workflow run deploy.yml -f rollback-to=v1.0.0");
        assert_eq!(ok.log_url.as_deref(), Some("https://github.com/acme/shop/actions/runs/7"));
        let long = "web-2: not healthy after 30s: ".repeat(10);
        let bad = finished(&report(RunOutcome::RolledBack, &[("web-1", InstanceOutcome::Reverted), ("web-2", InstanceOutcome::Reverted)], Some(&long)), &t);
        assert_eq!(bad.state, "failure");
        assert!(bad.description.starts_with("v2.0.0 failed, reverted web-1, web-2 to what they ran; web-2: not healthy"), "{}", bad.description);
        assert_eq!(bad.description.chars().count(), MAX_DESCRIPTION);
        assert!(bad.description.ends_with('…'));
        let refused = finished(&report(RunOutcome::Refused, &[], Some("host: disk: 1 GB free, needs 5 GB")), &t);
        assert_eq!((refused.state.as_str(), refused.description.as_str()), ("error", "Refused before any change: host: disk: 1 GB free, needs 5 GB"));
        assert_eq!(clip("ééé", 2), "é…");
        // The first release in the hosts' log: no earlier one to undo to, and `previous` would
        // name this very release once another follows it.
        let first = finished(&report(RunOutcome::Succeeded, &[("web-1", InstanceOutcome::Replaced)], None), &t);
        assert_eq!(first.description, "v2.0.0 is live on 1 instance(s), 1 host(s).");
    }

    /// The report of a run whose hosts ran `previous` before it.
    fn after(previous: &str, r: Report) -> Report {
        Report { previous: Some(previous.into()), ..r }
    }

    #[test]
    fn a_deployment_never_merges_and_waits_for_no_context() {
        let d = new_deployment(&Kind::Deploy { version: "v2.0.0".into() }, &target(), "shop", "abc");
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["ref"], "v2.0.0");
        assert_eq!(v["auto_merge"], false);
        assert_eq!(v["required_contexts"], serde_json::json!([]));
        assert_eq!(v["production_environment"], true);
        assert_eq!(v["payload"]["version"], "v2.0.0");
        let r = new_deployment(&Kind::Rollback { to: "previous".into(), sha: "f".repeat(40) }, &target(), "shop", "abc");
        assert_eq!((r.git_ref.len(), r.task.as_str()), (40, "deploy:rollback"));
        assert!(!is_production("staging"));
    }

    #[test]
    fn check_runs_stay_within_githubs_limits() {
        let big = "x".repeat(70_000);
        let ann = (0..60)
            .map(|i| Annotation {
                path: "capstan.yml".into(),
                start_line: i,
                end_line: i,
                annotation_level: "failure".into(),
                message: "m".into(),
                title: "t".into(),
            })
            .collect();
        let run = check_run("abc", &big, false, &["hosts (a fork: no secrets)".into()], ann, None);
        assert!(run.output.summary.len() <= MAX_SUMMARY);
        assert!(run.output.summary.starts_with("> Skipped: hosts (a fork: no secrets)"));
        assert_eq!(run.output.annotations.len(), MAX_ANNOTATIONS);
        assert!(
            run.output.summary.contains("> 60 problems: the first 50 are annotated on their lines, all are listed below"),
            "{}",
            &run.output.summary[..300]
        );
        assert_eq!(run.conclusion, "failure");
    }

    #[tokio::test]
    async fn a_good_deploy_retires_the_earlier_production_deployment() {
        let gh = FakeGitHub::default();
        let rec = Recorder::default();
        let p = Publisher { api: &gh, target: target(), events: &rec };
        let first = p.start(&Kind::Deploy { version: "v1.0.0".into() }, "shop").await.unwrap().unwrap();
        p.finish(first, &report(RunOutcome::Succeeded, &[("web-1", InstanceOutcome::Replaced)], None)).await;
        // The second run is another run: its own log page.
        let t2 = Target { log_url: Some("https://github.com/acme/shop/actions/runs/8".into()), ..target() };
        let p2 = Publisher { api: &gh, target: t2, events: &rec };
        let second = p2.start(&Kind::Deploy { version: "v2.0.0".into() }, "shop").await.unwrap().unwrap();
        p2.finish(second, &after("v1.0.0", report(RunOutcome::Succeeded, &[("web-1", InstanceOutcome::Replaced)], None))).await;
        assert_eq!(gh.states(first), ["in_progress", "success", "inactive"]);
        assert_eq!(gh.states(second), ["in_progress", "success"]);
        // The retired deployment keeps its own run's log, not the run that replaced it.
        let inactive = gh.statuses(first).pop().unwrap();
        assert_eq!(inactive.log_url.as_deref(), Some("https://github.com/acme/shop/actions/runs/7"));
        assert_eq!(inactive.description, format!("Superseded by deployment {second}"));
        // A failed third leaves the second live.
        let third = p.start(&Kind::Deploy { version: "v3.0.0".into() }, "shop").await.unwrap().unwrap();
        p.finish(third, &after("v2.0.0", report(RunOutcome::RolledBack, &[("web-1", InstanceOutcome::Reverted)], Some("boom")))).await;
        assert_eq!(gh.states(second), ["in_progress", "success"]);
        assert_eq!(gh.states(third), ["in_progress", "failure"]);
    }

    #[tokio::test]
    async fn an_unreachable_github_is_a_warning_and_a_refusal_an_error() {
        let rec = Recorder::default();
        let down = FakeGitHub { down: true, ..Default::default() };
        let p = Publisher { api: &down, target: target(), events: &rec };
        assert_eq!(p.start(&Kind::Deploy { version: "v1".into() }, "shop").await, Ok(None));
        assert!(rec.0.lock().unwrap().iter().any(|e| matches!(e, Event::Warn { message, .. } if message.contains("goes on without"))));
        let denied = FakeGitHub { denied: true, ..Default::default() };
        let p = Publisher { api: &denied, target: target(), events: &rec };
        let e = p.start(&Kind::Deploy { version: "v1".into() }, "shop").await.unwrap_err();
        assert!(e.to_string().contains("deployments: write"), "{e}");
        // GitHub said yes in an answer capstan cannot read (and the marker found nothing): a warning, not a refusal.
        let rec = Recorder::default();
        let odd = FakeGitHub { unreadable: true, ..Default::default() };
        let p = Publisher { api: &odd, target: target(), events: &rec };
        assert_eq!(p.start(&Kind::Deploy { version: "v1".into() }, "shop").await, Ok(None));
        let warned =
            rec.0.lock().unwrap().iter().any(|e| matches!(e, Event::Warn { message, .. } if message.starts_with("GitHub answered 201 to create a deployment")));
        assert!(warned);
    }
}
