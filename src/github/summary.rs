//! The job summary (`GITHUB_STEP_SUMMARY`) of a run, rendered from its report:
//! outcome and version, hosts × instances with from → to and durations, the
//! gates, the rollback link, and a Mermaid `gantt` timeline of the steps. Pure.
//!
//! Within GitHub's limits: a step's summary over 1 MiB is refused whole, so the
//! host tables keep only as many hosts as fit and say how many more there are
//! (the JSON report has them all); a Mermaid diagram over its 50,000
//! characters does not render, so the timeline keeps the hosts that fit.

use crate::core::config::ConfigError;
use crate::core::image::short;
use crate::core::record::{RunCommand, RunOutcome};
use crate::output::report::Report;

/// GitHub's limit for one step's summary is 1 MiB; capstan keeps 16 KiB of it
/// for what other steps or a second write may add.
pub const MAX_SUMMARY: usize = 1024 * 1024 - 16 * 1024;
/// Mermaid's default `maxTextSize`: a larger diagram shows an error instead.
pub const MAX_MERMAID: usize = 50_000;
/// The run's error is quoted up to this many characters (the log has all of it).
const MAX_ERROR: usize = 8_000;

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

/// The job summary of a run, under [`MAX_SUMMARY`]. The undo command names
/// `report.previous`, the release the hosts ran before; without one (the first
/// release in the hosts' log) it says there is nothing to roll back to.
pub fn render(report: &Report, rollback: Option<&RollbackLink>) -> String {
    render_within(report, rollback, MAX_SUMMARY)
}

/// The summary in at most `max` bytes: every host if they fit, else the most
/// hosts per table that do (the same first ones in every table).
pub fn render_within(report: &Report, rollback: Option<&RollbackLink>, max: usize) -> String {
    let hosts = report.hosts.len().max(report.plan.as_ref().map_or(0, |p| p.hosts.len())).max(gate_hosts(report).len());
    let all = render_hosts(report, rollback, hosts);
    if all.len() <= max {
        return all;
    }
    // The largest number of hosts that fits: `lo` fits (or is 0), `hi` does not.
    let (mut lo, mut hi) = (0, hosts);
    let mut best = render_hosts(report, rollback, 0);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let text = render_hosts(report, rollback, mid);
        if text.len() <= max {
            (lo, best) = (mid, text);
        } else {
            hi = mid;
        }
    }
    if best.len() > max {
        let mut cut = max;
        while !best.is_char_boundary(cut) {
            cut -= 1;
        }
        best.truncate(cut);
    }
    best
}

/// The hosts the gates were measured on, in order.
fn gate_hosts(report: &Report) -> Vec<&str> {
    let mut seen: Vec<&str> = Vec::new();
    for g in &report.gates {
        if !seen.contains(&g.host.as_str()) {
            seen.push(&g.host);
        }
    }
    seen
}

/// Below a table cut at `shown` of `total` hosts: how many more, and where they are.
fn more_hosts(out: &mut String, total: usize, shown: usize) {
    let hidden = total.saturating_sub(shown);
    if hidden > 0 {
        let s = if hidden == 1 { "" } else { "s" };
        out.push_str(&format!("_… and {hidden} more host{s} (see the JSON report: the action's `report` output, or `--json`)_\n\n"));
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn clip_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The summary with at most `shown` hosts in each table.
fn render_hosts(report: &Report, rollback: Option<&RollbackLink>, shown: usize) -> String {
    let icon = match report.outcome {
        RunOutcome::Succeeded => "✅",
        RunOutcome::RolledBack => "↩️",
        RunOutcome::Refused => "⛔",
        RunOutcome::Failed | RunOutcome::Skipped => "❌",
    };
    let mut out = format!("## {icon} capstan {} {}: {}\n\n", report.command, report.version.as_deref().unwrap_or(""), report.outcome.in_words());
    out.push_str(&format!("{} in {}", report.app, secs(report.duration_ms)));
    if let Some(e) = &report.error {
        out.push_str(&format!("\n\n> {}", cell(&clip_chars(e, MAX_ERROR))));
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
        for h in report.hosts.iter().take(shown) {
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
        more_hosts(&mut out, report.hosts.len(), shown);
    }
    if report.hosts.iter().any(|h| !h.instances.is_empty()) {
        out.push_str("| host | instance | from | to | outcome | time |\n|---|---|---|---|---|---|\n");
        for h in report.hosts.iter().take(shown) {
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
        more_hosts(&mut out, report.hosts.len(), shown);
    }
    if let (Some(plan), true) = (&report.plan, report.hosts.iter().all(|h| h.instances.is_empty())) {
        out.push_str("**Plan**\n\n| host | instance | now | would run | change |\n|---|---|---|---|---|\n");
        for h in plan.hosts.iter().take(shown) {
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
        more_hosts(&mut out, plan.hosts.len(), shown);
    }
    if !report.gates.is_empty() {
        out.push_str("| host | check | | measured | limit |\n|---|---|---|---|---|\n");
        let hosts = gate_hosts(report);
        for g in report.gates.iter().filter(|g| hosts.iter().take(shown).any(|h| *h == g.host)) {
            out.push_str(&format!("| {} | {} | {} | {} | {} |\n", g.host, cell(&g.gate), if g.ok { "✅" } else { "❌" }, cell(&g.measured), cell(&g.limit)));
        }
        out.push('\n');
        more_hosts(&mut out, hosts.len(), shown);
    }
    if let (Some(link), RunOutcome::Succeeded, RunCommand::Deploy | RunCommand::Rollback) = (rollback, report.outcome, report.command) {
        match report.previous.as_deref() {
            Some(to) => out.push_str(&format!(
                "**Roll back:** [run the rollback workflow]({}) with `rollback-to: {to}`, or\n\n```sh\n{}\n```\n\n",
                link.page,
                link.command(to)
            )),
            // `previous` would name this very release once another follows it.
            None => out.push_str("**Roll back:** nothing to roll back to: the hosts' log has no release before this one.\n\n"),
        }
    }
    if report.hosts.iter().flat_map(|h| &h.instances).any(|i| !i.steps.is_empty()) {
        let mut gantt = String::new();
        let mut drawn = 0;
        for h in report.hosts.iter().take(shown) {
            let mut section = String::new();
            for i in &h.instances {
                section.push_str(&format!("  section {} {}\n", mermaid(&h.host), mermaid(&i.name)));
                for s in &i.steps {
                    let tag = if s.ok { "" } else { "crit, " };
                    // Zero-length bars do not render: at least 1 ms.
                    let end = s.started_ms + s.duration_ms.max(1);
                    section.push_str(&format!("  {} :{tag}{}, {end}\n", mermaid(&s.step), s.started_ms));
                }
            }
            if gantt.len() + section.len() > MAX_MERMAID - 100 {
                break;
            }
            gantt.push_str(&section);
            drawn += 1;
        }
        if drawn > 0 {
            out.push_str("```mermaid\ngantt\n  dateFormat x\n  axisFormat %M:%S\n");
            out.push_str(&gantt);
            out.push_str("```\n");
        }
        if drawn < report.hosts.len() {
            let s = if drawn == 1 { "" } else { "s" };
            out.push_str(&format!("\n_The timeline shows the first {drawn} host{s} of {}; the JSON report has every step._\n", report.hosts.len()));
        }
    }
    out
}

/// The job summary of a config that does not load: every problem on its line,
/// under [`MAX_SUMMARY`] (the annotations show only the first few).
pub fn config_error(e: &ConfigError, file: &str) -> String {
    let n = e.issues.len();
    let mut out = format!("## ⛔ capstan: `{}` has {n} problem{}\n\nNothing was changed on any host.\n\n", cell(file), if n == 1 { "" } else { "s" });
    out.push_str("| line | problem |\n|---|---|\n");
    for (k, i) in e.issues.iter().enumerate() {
        let row = format!("| {} | {} |\n", i.line.map(|l| l.to_string()).unwrap_or_else(|| "—".into()), cell(&clip_chars(&i.describe(), 2_000)));
        if out.len() + row.len() > MAX_SUMMARY - 200 {
            out.push_str(&format!("\n_… and {} more problems (the log has every one)_\n", n - k));
            return out;
        }
        out.push_str(&row);
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
        let md = render(&report(), Some(&link));
        assert!(md.starts_with("## ↩️ capstan deploy v1.4.2: rolled back\n"), "{md}");
        assert!(md.contains("> web-1: not healthy \\| after 3s"), "{md}");
        assert!(md.contains("| deployer@10.0.0.1:22 | web/web-1 | `r/web@sha256:0123456789ab` | `r/web@sha256:fedcba987654` | reverted | 3.4 s |"), "{md}");
        // A release that was reverted needs no rollback; a good one names the release to go back to.
        assert!(!md.contains("gh workflow run"), "{md}");
        let good = Report { outcome: RunOutcome::Succeeded, previous: Some("v1.4.1".into()), ..report() };
        assert!(render(&good, Some(&link)).contains("gh workflow run deploy.yml -f rollback-to=v1.4.1"));
        // The first release in the hosts' log: no version to go back to, and no link naming this one.
        let first = Report { outcome: RunOutcome::Succeeded, ..report() };
        let md_first = render(&first, Some(&link));
        assert!(md_first.contains("**Roll back:** nothing to roll back to: the hosts' log has no release before this one."), "{md_first}");
        assert!(!md_first.contains("rollback-to"), "{md_first}");
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
        let md = render(&r, None);
        assert!(md.contains("| deployer@10.0.0.1:22 | rolled back | 0.3 s | +1.2 s | 8.4 s | canary |"), "{md}");
        assert!(md.contains("| deployer@10.0.0.2:22 | skipped | 0.3 s | — | — | deployer@10.0.0.1:22 rolled back |"), "{md}");
    }

    /// 50 hosts, each with its instances, gates and timeline.
    fn fleet(hosts: usize, instances: usize, note: &str) -> Report {
        use crate::output::events::{Gate, StepEvent};
        use crate::output::report::{HostReport, HostTiming, InstanceReport};
        let step = |name: &str, start: u64| StepEvent {
            host: String::new(),
            service: String::new(),
            instance: String::new(),
            step: name.into(),
            started_ms: start,
            duration_ms: 250,
            ok: true,
            detail: String::new(),
        };
        let host = |h: usize| format!("deployer@10.0.{}.{}:22", h / 250, h % 250 + 1);
        Report {
            outcome: RunOutcome::Succeeded,
            previous: Some("v1.4.1".into()),
            hosts: (0..hosts)
                .map(|h| HostReport {
                    host: host(h),
                    outcome: Some(RunOutcome::Succeeded),
                    timing: HostTiming { connect_ms: Some(300), started_ms: Some(1000), duration_ms: Some(9000), canary: h == 0, note: Some(note.into()) },
                    instances: (0..instances)
                        .map(|i| InstanceReport {
                            service: "web".into(),
                            name: format!("web-{i}"),
                            from_image: "r/web@sha256:0123456789abcdef0123".into(),
                            to_image: "r/web@sha256:fedcba9876543210fedc".into(),
                            outcome: Some(InstanceOutcome::Replaced),
                            steps: ["drain", "stop", "start", "health", "undrain"].iter().enumerate().map(|(k, s)| step(s, k as u64 * 300)).collect(),
                        })
                        .collect(),
                    reloads: Default::default(),
                })
                .collect(),
            gates: (0..hosts)
                .map(|h| Gate {
                    host: host(h),
                    gate: "preflight disk".into(),
                    ok: true,
                    measured: "41.2 GiB free".into(),
                    limit: "at least 2.0 GiB".into(),
                    output: String::new(),
                    verdict: None,
                })
                .collect(),
            ..report()
        }
    }

    #[test]
    fn fifty_hosts_fit_githubs_limits_and_nothing_is_cut_silently() {
        let link = RollbackLink::new("https://github.com", "acme/shop", "acme/shop/.github/workflows/deploy.yml@refs/tags/v1.4.2").unwrap();
        // 50 hosts of 8 instances: every host in every table; the timeline within Mermaid's limit says what it left out.
        let r = fleet(50, 8, "");
        let md = render(&r, Some(&link));
        assert!(md.len() < MAX_SUMMARY);
        assert!(md.contains("| deployer@10.0.0.50:22 | succeeded |"), "the 50th host is in the hosts table");
        assert!(md.contains("| deployer@10.0.0.50:22 | web/web-7 |"), "and in the instances table");
        assert!(!md.contains("more host"), "nothing cut from the tables");
        let gantt = &md[md.find("```mermaid").unwrap()..];
        let gantt = &gantt[..gantt[3..].find("```").unwrap() + 6];
        assert!(gantt.len() <= MAX_MERMAID, "{}", gantt.len());
        let drawn = md.lines().find(|l| l.starts_with("_The timeline shows the first ")).unwrap_or_else(|| panic!("{md}"));
        assert!(drawn.ends_with("of 50; the JSON report has every step._"), "{drawn}");
        assert!(md.contains("gh workflow run deploy.yml -f rollback-to=v1.4.1"));

        // 50 hosts of 200 instances with long notes: over 1 MiB in full; cut per table, and each cut says so.
        let r = fleet(50, 200, &"the canary deployer@10.0.0.1:22 finished first; ".repeat(40));
        let full = render_within(&r, Some(&link), usize::MAX);
        assert!(full.len() > 1024 * 1024, "{}", full.len());
        let md = render(&r, Some(&link));
        assert!(md.len() <= MAX_SUMMARY, "{}", md.len());
        assert!(md.starts_with("## ✅ capstan deploy v1.4.2: succeeded"), "{}", &md[..200]);
        let cut = md.lines().find(|l| l.starts_with("_… and ")).unwrap();
        let hidden: usize = cut["_… and ".len()..].split(' ').next().unwrap().parse().unwrap();
        assert!(hidden > 0 && hidden < 50, "{cut}");
        assert!(cut.ends_with("more hosts (see the JSON report: the action's `report` output, or `--json`)_"), "{cut}");
        let shown = 50 - hidden;
        assert!(md.contains(&format!("| deployer@10.0.0.{shown}:22 | web/web-199 |")), "the last host shown is whole");
        assert!(!md.contains(&format!("| deployer@10.0.0.{}:22 | web/web-0 |", shown + 1)), "the next is not");
        // The rollback link and the timeline come after the tables and are kept.
        assert!(md.contains("gh workflow run deploy.yml -f rollback-to=v1.4.1"));
        assert!(md.contains("```mermaid\ngantt"));
    }

    #[test]
    fn two_hundred_config_problems_all_reach_the_job_summary() {
        use crate::core::config::issue::Issue;
        let e = ConfigError {
            file: "/work/capstan.yml".into(),
            issues: (0..200)
                .map(|i| Issue { path: format!("services.s{i}.health.timeout"), line: Some(i + 3), message: "expected a duration".into() })
                .collect(),
        };
        let md = config_error(&e, "capstan.yml");
        assert!(md.starts_with("## ⛔ capstan: `capstan.yml` has 200 problems\n"), "{md}");
        assert_eq!(md.lines().filter(|l| l.starts_with("| ") && l.contains("expected a duration")).count(), 200);
        assert!(md.contains("| 202 | services.s199.health.timeout: expected a duration |"), "{md}");
    }
}
