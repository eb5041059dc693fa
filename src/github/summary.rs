//! The job summary (`GITHUB_STEP_SUMMARY`) of a run, rendered from its report:
//! outcome and version, hosts × instances with from → to and durations, the
//! gates, the rollback link, and a Mermaid `gantt` timeline of the steps. Pure.

use crate::core::image::short;
use crate::core::record::{RunCommand, RunOutcome};
use crate::output::report::Report;

/// Where the rollback runs: the workflow's dispatch page and its file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackLink {
    /// `https://github.com/acme/shop/actions/workflows/deploy.yml`
    pub page: String,
    /// `deploy.yml`
    pub workflow: String,
}

impl RollbackLink {
    /// From `GITHUB_SERVER_URL`, `GITHUB_REPOSITORY` and `GITHUB_WORKFLOW_REF`
    /// (`acme/shop/.github/workflows/deploy.yml@refs/tags/v1.4.2`).
    pub fn new(server: &str, repository: &str, workflow_ref: &str) -> Option<RollbackLink> {
        let path = workflow_ref.split('@').next()?;
        let file = path.rsplit('/').next()?.to_string();
        (!file.is_empty()).then(|| RollbackLink { page: format!("{server}/{repository}/actions/workflows/{file}"), workflow: file })
    }

    /// The exact command line that rolls back to `to`.
    pub fn command(&self, to: &str) -> String {
        format!("gh workflow run {} -f rollback-to={to}", self.workflow)
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Markdown cells must not break the table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn render(report: &Report, rollback: Option<&RollbackLink>, rollback_to: &str) -> String {
    let icon = match report.outcome {
        RunOutcome::Succeeded => "✅",
        RunOutcome::RolledBack => "↩️",
        RunOutcome::Refused => "⛔",
        RunOutcome::Failed | RunOutcome::Skipped => "❌",
    };
    let mut out = format!("## {icon} capstan {} {}: {}\n\n", report.command, report.version.as_deref().unwrap_or(""), report.outcome.in_words());
    out.push_str(&format!("{} in {}", report.app, secs(report.duration_ms)));
    if let Some(e) = &report.error {
        out.push_str(&format!("\n\n> {}", cell(e)));
    }
    out.push_str("\n\n");
    if !report.build.is_empty() {
        out.push_str("| service | image | tags | build | push |\n|---|---|---|---|---|\n");
        for b in &report.build {
            let image = b.reference().map(|r| short(&r)).unwrap_or_else(|| short(&b.image_id));
            out.push_str(&format!(
                "| {} | `{}` | {} | {} | {} |\n",
                b.service,
                image,
                b.tags.join(", "),
                secs(b.build_ms),
                b.push_ms.map(secs).unwrap_or_else(|| "—".into())
            ));
        }
        out.push('\n');
    }
    if report.hosts.len() > 1 {
        out.push_str("| host | outcome | connect | started | took | |\n|---|---|---|---|---|---|\n");
        for h in &report.hosts {
            let t = &h.timing;
            let ms = |v: Option<u64>| v.map(secs).unwrap_or_else(|| "—".into());
            let mut note = if t.canary { "canary".to_string() } else { String::new() };
            if let Some(n) = &t.note {
                note = if note.is_empty() { cell(n) } else { format!("{note}; {}", cell(n)) };
            }
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {note} |\n",
                cell(&h.host),
                h.outcome.map(|o| o.in_words()).unwrap_or("—"),
                ms(t.connect_ms),
                t.started_ms.map(|v| format!("+{}", secs(v))).unwrap_or_else(|| "—".into()),
                ms(t.duration_ms)
            ));
        }
        out.push('\n');
    }
    if report.hosts.iter().any(|h| !h.instances.is_empty()) {
        out.push_str("| host | instance | from | to | outcome | time |\n|---|---|---|---|---|---|\n");
        for h in &report.hosts {
            for i in &h.instances {
                let time: u64 = i.steps.iter().map(|s| s.duration_ms).sum();
                let outcome = i.outcome.map(|o| o.as_str()).unwrap_or("—");
                out.push_str(&format!(
                    "| {} | {}/{} | `{}` | `{}` | {} | {} |\n",
                    h.host,
                    i.service,
                    i.name,
                    short(&i.from_image),
                    short(&i.to_image),
                    outcome,
                    secs(time)
                ));
            }
        }
        out.push('\n');
    }
    if let (Some(plan), true) = (&report.plan, report.hosts.iter().all(|h| h.instances.is_empty())) {
        out.push_str("**Plan**\n\n| host | instance | now | would run | change |\n|---|---|---|---|---|\n");
        for h in &plan.hosts {
            for s in &h.services {
                for i in &s.instances {
                    out.push_str(&format!(
                        "| {} | {}/{} | `{}` | `{}` | {} |\n",
                        cell(&h.host),
                        s.service,
                        i.name,
                        cell(&short(&i.from_image)),
                        cell(&short(&i.to_image)),
                        if i.replace { "replace" } else { "unchanged" }
                    ));
                }
            }
        }
        out.push('\n');
    }
    if !report.gates.is_empty() {
        out.push_str("| host | check | | measured | limit |\n|---|---|---|---|---|\n");
        for g in &report.gates {
            out.push_str(&format!("| {} | {} | {} | {} | {} |\n", g.host, cell(&g.gate), if g.ok { "✅" } else { "❌" }, cell(&g.measured), cell(&g.limit)));
        }
        out.push('\n');
    }
    if let (Some(link), RunOutcome::Succeeded, RunCommand::Deploy | RunCommand::Rollback) = (rollback, report.outcome, report.command) {
        out.push_str(&format!(
            "**Roll back:** [run the rollback workflow]({}) with `rollback-to: {rollback_to}`, or\n\n```sh\n{}\n```\n\n",
            link.page,
            link.command(rollback_to)
        ));
    }
    let steps: Vec<_> = report.hosts.iter().flat_map(|h| h.instances.iter().map(move |i| (h, i))).collect();
    if steps.iter().any(|(_, i)| !i.steps.is_empty()) {
        out.push_str("```mermaid\ngantt\n  dateFormat x\n  axisFormat %M:%S\n");
        for (h, i) in steps {
            out.push_str(&format!("  section {} {}\n", mermaid(&h.host), mermaid(&i.name)));
            for s in &i.steps {
                let tag = if s.ok { "" } else { "crit, " };
                // Zero-length bars do not render: at least 1 ms.
                let end = s.started_ms + s.duration_ms.max(1);
                out.push_str(&format!("  {} :{tag}{}, {end}\n", mermaid(&s.step), s.started_ms));
            }
        }
        out.push_str("```\n");
    }
    out
}

/// Mermaid gantt names may not carry `:` or `#`.
fn mermaid(s: &str) -> String {
    s.replace([':', '#', ';'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::InstanceOutcome;
    use crate::output::events::StepEvent;
    use crate::output::report::{HostReport, InstanceReport};

    fn report() -> Report {
        let step = |name: &str, start: u64, d: u64, ok: bool| StepEvent {
            host: String::new(),
            service: String::new(),
            instance: String::new(),
            step: name.into(),
            started_ms: start,
            duration_ms: d,
            ok,
            detail: String::new(),
        };
        Report {
            app: "shop".into(),
            command: RunCommand::Deploy,
            version: Some("v1.4.2".into()),
            outcome: RunOutcome::RolledBack,
            duration_ms: 9_000,
            hosts: vec![HostReport {
                host: "deployer@10.0.0.1:22".into(),
                outcome: None,
                timing: Default::default(),
                instances: vec![InstanceReport {
                    service: "web".into(),
                    name: "web-1".into(),
                    from_image: "r/web@sha256:0123456789abcdef0123".into(),
                    to_image: "r/web@sha256:fedcba9876543210fedc".into(),
                    outcome: Some(InstanceOutcome::Reverted),
                    steps: vec![step("drain", 100, 400, true), step("health", 600, 3000, false)],
                }],
                reloads: Default::default(),
            }],
            build: vec![],
            gates: vec![],
            plan: None,
            error: Some("web-1: not healthy | after 3s".into()),
            previous: None,
        }
    }

    #[test]
    fn summary_has_the_table_the_link_and_the_timeline() {
        let link = RollbackLink::new("https://github.com", "acme/shop", "acme/shop/.github/workflows/deploy.yml@refs/tags/v1.4.2").unwrap();
        assert_eq!(link.page, "https://github.com/acme/shop/actions/workflows/deploy.yml");
        let md = render(&report(), Some(&link), "previous");
        assert!(md.starts_with("## ↩️ capstan deploy v1.4.2: rolled back\n"), "{md}");
        assert!(md.contains("> web-1: not healthy \\| after 3s"), "{md}");
        assert!(md.contains("| deployer@10.0.0.1:22 | web/web-1 | `r/web@sha256:0123456789ab` | `r/web@sha256:fedcba987654` | reverted | 3.4 s |"), "{md}");
        // A release that was reverted needs no rollback; a good one names the release to go back to.
        assert!(!md.contains("gh workflow run"), "{md}");
        let good = Report { outcome: RunOutcome::Succeeded, ..report() };
        assert!(render(&good, Some(&link), "v1.4.1").contains("gh workflow run deploy.yml -f rollback-to=v1.4.1"));
        assert!(md.contains("```mermaid\ngantt\n  dateFormat x\n"), "{md}");
        assert!(md.contains("  section deployer@10.0.0.1 22 web-1\n  drain :100, 500\n  health :crit, 600, 3600\n"), "{md}");
        assert!(!md.contains("| host | outcome | connect |"), "one host needs no hosts table: {md}");
    }

    #[test]
    fn several_hosts_get_a_table_of_their_outcomes_and_times() {
        use crate::output::report::{HostReport, HostTiming};
        let mut r = report();
        r.hosts[0].outcome = Some(RunOutcome::RolledBack);
        r.hosts[0].timing = HostTiming { connect_ms: Some(310), started_ms: Some(1200), duration_ms: Some(8400), canary: true, note: None };
        r.hosts.push(HostReport {
            host: "deployer@10.0.0.2:22".into(),
            outcome: Some(RunOutcome::Skipped),
            timing: HostTiming { connect_ms: Some(290), note: Some("deployer@10.0.0.1:22 rolled back".into()), ..Default::default() },
            instances: vec![],
            reloads: Default::default(),
        });
        let md = render(&r, None, "previous");
        assert!(md.contains("| deployer@10.0.0.1:22 | rolled back | 0.3 s | +1.2 s | 8.4 s | canary |"), "{md}");
        assert!(md.contains("| deployer@10.0.0.2:22 | skipped | 0.3 s | — | — | deployer@10.0.0.1:22 rolled back |"), "{md}");
    }
}
