//! The safety net around a rollout: preflight checks on each host before
//! anything changes, the deploy hooks, and the checks that post-deploy
//! validation and the bake window repeat (endpoints, error lines in the new
//! containers' output). Each check ends as a [`Gate`]: what was measured,
//! against which limit, and any output — in the log, the report and the job
//! summary alike.
//!
//! The parsers of host command output are pure; the checks drive only the
//! [`Host`] traits.

use std::time::Duration;

use crate::core::config::{Config, Endpoint, Service, SwarmTarget};
use crate::core::observed::UpdateState;
use crate::core::plan::{HostPlan, Observed};
use crate::core::record::RunCommand;
use crate::host::Host;
use crate::output::events::Gate;
use crate::rollout::checks::{look_again, swarm_now};

/// What the lock looked like to the preflight (it is taken, or read, before).
pub enum LockSeen {
    Ours,
    Free,
    Held(String),
}

/// The read-only checks on one host. `check_health`: whether the instances about
/// to be replaced must be healthy (a deploy; a rollback goes over a broken state
/// on purpose); `force` lets a deploy go over unhealthy instances anyway. `seen`: the
/// host's containers as planning saw them (their probes go out beside the look).
#[allow(clippy::too_many_arguments)]
pub async fn preflight(
    config: &Config,
    host: &Host,
    services: &[&Service],
    plan: &HostPlan,
    seen: &Observed,
    lock: LockSeen,
    check_health: bool,
    force: bool,
) -> Vec<Gate> {
    use futures_util::future::{join_all, BoxFuture, FutureExt};
    let h = host.name.as_str();
    // Every check at once, reported in this order: over a slow link the checks cost one
    // round trip or two together instead of a few each, one after the other.
    let mut checks: Vec<BoxFuture<'_, Gate>> = Vec::new();
    checks.push(
        async move {
            match host.engine.version().await {
                Ok(v) => Gate::new(h, "preflight engine", true, format!("Docker {v}"), ""),
                Err(e) => Gate::new(h, "preflight engine", false, format!("unreachable: {e}"), "a reachable Docker engine"),
            }
        }
        .boxed(),
    );
    let lock_gate = match lock {
        LockSeen::Ours => Gate::new(h, "preflight lock", true, "free (taken by this run)", ""),
        LockSeen::Free => Gate::new(h, "preflight lock", true, "free", ""),
        LockSeen::Held(by) => Gate::new(h, "preflight lock", false, format!("held by {by}"), "free"),
    };
    checks.push(async move { lock_gate }.boxed());
    let p = &config.preflight;
    if let Some(min) = p.min_free_disk {
        checks.push(disk(host, min).boxed());
    }
    if let Some(max) = p.max_load_per_core {
        checks.push(load(host, max).boxed());
    }
    if let Some(b) = &p.backup {
        checks.push(backup(host, &b.path, b.max_age).boxed());
    }
    for sp in &plan.services {
        let Some(svc) = services.iter().find(|s| s.name == sp.service) else { continue };
        let Some(sw) = &svc.swarm else { continue };
        if sp.instances.iter().any(|i| i.replace) {
            checks.push(swarm_preflight(host, svc, sw, check_health, force).boxed());
        }
    }
    // The guard on the host is armed before the first container is touched: what it runs
    // must be there, or a lost link would leave the host as the run left it.
    if crate::rollout::guard::guarded(plan, services).next().is_some() {
        checks.push(guard_tools(host).boxed());
    }
    if check_health {
        for sp in &plan.services {
            let Some(svc) = services.iter().find(|s| s.name == sp.service) else { continue };
            if svc.swarm.is_some() {
                continue;
            }
            for ip in sp.instances.iter().filter(|i| i.replace) {
                checks.push(
                    async move {
                        let gate = format!("preflight health {}", ip.name);
                        let known = seen.containers.get(&ip.name).map(|(c, _)| c);
                        let (ok, measured) = match look_again(host, svc, &ip.name, known).await {
                            Ok(Some(h)) if h.serving() => (true, "healthy".to_string()),
                            Ok(Some(h)) => (false, h.to_string()),
                            Ok(None) => (false, "missing".to_string()),
                            Err(e) => (false, e.to_string()),
                        };
                        match (ok, force) {
                            (true, _) => Gate::new(h, gate, true, measured, "healthy"),
                            (false, true) => Gate::new(h, gate, true, format!("{measured}; deployed over it with --force"), "healthy"),
                            (false, false) => Gate::new(h, gate, false, format!("{measured} (deploy over it with --force)"), "healthy"),
                        }
                    }
                    .boxed(),
                );
            }
        }
    }
    join_all(checks).await
}

/// A Swarm service before its update: no update or rollback under way (capstan would
/// fight Swarm over it), and for a deploy every task running and healthy.
async fn swarm_preflight(host: &Host, svc: &Service, sw: &SwarmTarget, check_health: bool, force: bool) -> Gate {
    let h = host.name.as_str();
    let gate = format!("preflight swarm {}", sw.service);
    let current = match host.swarm.inspect_service(&sw.service).await {
        Ok(Some(s)) => s,
        Ok(None) => return Gate::new(h, gate, false, "missing", "a running Swarm service"),
        Err(e) => return Gate::new(h, gate, false, e.to_string(), "a running Swarm service"),
    };
    if let Some(state) = current.update.filter(|u| u.busy()) {
        let measured = format!("Swarm's {} is under way ({})", state.as_str(), current.update_message);
        return Gate::new(h, gate, false, measured, "no update under way");
    }
    if !check_health {
        return Gate::new(h, gate, true, "no update under way", "no update under way");
    }
    let (ok, measured) = swarm_now(host, svc, sw, None).await;
    let paused = current.update.filter(|u| matches!(u, UpdateState::Paused | UpdateState::RollbackPaused));
    let (ok, measured) = match paused {
        Some(p) => (false, format!("an earlier update is {} ({}); {measured}", p.as_str(), current.update_message)),
        None => (ok, measured),
    };
    match (ok, force) {
        (true, _) => Gate::new(h, gate, true, measured, "healthy"),
        (false, true) => Gate::new(h, gate, true, format!("{measured}; deployed over it with --force"), "healthy"),
        (false, false) => Gate::new(h, gate, false, format!("{measured} (deploy over it with --force)"), "healthy"),
    }
}

/// The tools the guard on the host runs (`host::guard`): the Docker CLI, `setsid`, `tar`.
async fn guard_tools(host: &Host) -> Gate {
    let h = &host.name;
    let want = "docker (the CLI), setsid and tar on the host";
    match crate::host::guard::missing_tools(host.shell.as_ref()).await {
        Ok(missing) if missing.is_empty() => Gate::new(h, "preflight guard", true, "docker, setsid and tar found", want),
        Ok(missing) => Gate::new(
            h,
            "preflight guard",
            false,
            format!("missing: {} (the guard that puts the host back if the link dies needs them)", missing.join(", ")),
            want,
        ),
        Err(e) => Gate::new(h, "preflight guard", false, e.to_string(), want),
    }
}

async fn disk(host: &Host, min: u64) -> Gate {
    let h = &host.name;
    let limit = format!("at least {}", size(min));
    let root = match host.engine.data_root().await {
        Ok(r) => r,
        Err(e) => return Gate::new(h, "preflight disk", false, format!("cannot find the engine's data root: {e}"), limit),
    };
    match host.shell.run(&["df", "-Pk", "--", &root], None).await {
        Ok(o) if o.ok() => match parse_df(&o.stdout) {
            Some(free) => Gate::new(h, "preflight disk", free >= min, format!("{} free on {root}", size(free)), limit),
            None => Gate::new(h, "preflight disk", false, format!("cannot read df's answer: {:?}", o.stdout.trim()), limit),
        },
        Ok(o) => Gate::new(h, "preflight disk", false, format!("df {root}: exit {}: {}", o.status, o.stderr.trim()), limit),
        Err(e) => Gate::new(h, "preflight disk", false, format!("df {root}: {e}"), limit),
    }
}

const LOAD: &str = "read one five fifteen rest < /proc/loadavg; echo \"$one $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)\"";

async fn load(host: &Host, max: f64) -> Gate {
    let h = &host.name;
    let limit = format!("at most {max:.2} per core");
    match host.shell.run(&["sh", "-c", LOAD], None).await {
        Ok(o) if o.ok() => match parse_load(&o.stdout) {
            Some((l, cores)) => {
                let per = l / cores as f64;
                Gate::new(h, "preflight load", per <= max, format!("{per:.2} per core (load {l:.2} on {cores} cores)"), limit)
            }
            None => Gate::new(h, "preflight load", false, format!("cannot read the load: {:?}", o.stdout.trim()), limit),
        },
        Ok(o) => Gate::new(h, "preflight load", false, format!("exit {}: {}", o.status, o.stderr.trim()), limit),
        Err(e) => Gate::new(h, "preflight load", false, e.to_string(), limit),
    }
}

/// The newest file matching the glob in `$1` (no word splitting, globbing only):
/// its mtime, the host's clock, its name.
const BACKUP: &str = "IFS=; newest=0; name=; for f in $1; do [ -f \"$f\" ] || continue; t=$(stat -c %Y -- \"$f\") || continue; if [ \"$t\" -gt \"$newest\" ]; then newest=$t; name=$f; fi; done; echo \"$newest $(date +%s) $name\"";

async fn backup(host: &Host, pattern: &str, max_age: Duration) -> Gate {
    let h = &host.name;
    let limit = format!("a file matching {pattern} newer than {}", humantime::format_duration(max_age));
    match host.shell.run(&["sh", "-c", BACKUP, "capstan-backup", pattern], None).await {
        Ok(o) if o.ok() => match parse_backup(&o.stdout) {
            Some((_, _, None)) => Gate::new(h, "preflight backup", false, format!("no file matches {pattern}"), limit),
            Some((newest, now, Some(name))) => {
                let age = Duration::from_secs(now.saturating_sub(newest).max(0) as u64);
                Gate::new(h, "preflight backup", age <= max_age, format!("{name} is {} old", humantime::format_duration(age)), limit)
            }
            None => Gate::new(h, "preflight backup", false, format!("cannot read the answer: {:?}", o.stdout.trim()), limit),
        },
        Ok(o) => Gate::new(h, "preflight backup", false, format!("exit {}: {}", o.status, o.stderr.trim()), limit),
        Err(e) => Gate::new(h, "preflight backup", false, e.to_string(), limit),
    }
}

/// What hooks find in their environment.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub app: String,
    pub version: String,
    pub previous_version: String,
    pub command: RunCommand,
}

/// Runs a hook on the host with `sh -c`; the gate carries its output.
pub async fn hook(host: &Host, which: &str, command: &str, env: &HookEnv) -> Gate {
    let vars = [
        format!("CAPSTAN_APP={}", env.app),
        format!("CAPSTAN_VERSION={}", env.version),
        format!("CAPSTAN_PREVIOUS_VERSION={}", env.previous_version),
        format!("CAPSTAN_COMMAND={}", env.command),
        format!("CAPSTAN_HOST={}", host.name),
    ];
    let mut argv: Vec<&str> = vec!["env"];
    argv.extend(vars.iter().map(String::as_str));
    argv.extend(["sh", "-c", command]);
    let gate = format!("{which} hook");
    match host.shell.run_apart(&argv, None).await {
        Ok(o) => {
            let mut g = Gate::new(&host.name, gate, o.ok(), format!("exit {}", o.status), "exit 0");
            g.output = tail(&format!("{}{}", o.stdout, o.stderr));
            g
        }
        Err(e) => Gate::new(&host.name, gate, false, e.to_string(), "exit 0"),
    }
}

/// `GET` an endpoint from the host: the expected status and, if given, a substring of the body.
pub async fn endpoint(host: &Host, e: &Endpoint) -> Gate {
    let gate = format!("validate {}", e.url);
    let limit = match &e.body {
        Some(b) => format!("status {} and a body with {b:?}", e.status),
        None => format!("status {}", e.status),
    };
    let Ok((addr, port, path)) = crate::host::probe_target(&e.url) else {
        return Gate::new(&host.name, gate, false, "not a URL", limit);
    };
    match host.probe.http_get(&addr, port, &path, Duration::from_secs(10)).await {
        Ok(a) => {
            let body_ok = e.body.as_ref().is_none_or(|b| a.body.contains(b.as_str()));
            let measured = if body_ok || a.status != e.status {
                format!("status {}", a.status)
            } else {
                format!("status {}, body without {:?}", a.status, e.body.as_deref().unwrap_or(""))
            };
            Gate::new(&host.name, gate, a.status == e.status && body_ok, measured, limit)
        }
        Err(err) => Gate::new(&host.name, gate, false, err.to_string(), limit),
    }
}

/// Counts the lines of `logs` that match `pattern`, and keeps the last few of them.
pub fn count_errors(logs: &str, pattern: &regex::Regex) -> (usize, Vec<String>) {
    let hits: Vec<&str> = logs.lines().filter(|l| pattern.is_match(l)).collect();
    let last = hits.iter().rev().take(5).rev().map(|l| l.to_string()).collect();
    (hits.len(), last)
}

/// The error lines of the new containers: one gate for all of them.
pub async fn errors(host: &Host, names: &[String], pattern: &str, max: u32, gate: &str) -> Gate {
    let limit = format!("at most {max} lines matching /{pattern}/");
    let re = match regex::Regex::new(pattern) {
        Ok(r) => r,
        Err(e) => return Gate::new(&host.name, gate, false, e.to_string(), limit),
    };
    let mut total = 0;
    let mut samples = Vec::new();
    for n in names {
        match host.engine.logs(n).await {
            Ok(l) => {
                let (count, last) = count_errors(&l, &re);
                total += count;
                samples.extend(last.into_iter().map(|l| format!("{n}: {l}")));
            }
            Err(e) => return Gate::new(&host.name, gate, false, format!("cannot read the output of {n}: {e}"), limit),
        }
    }
    let mut g = Gate::new(&host.name, gate, total <= max as usize, format!("{total} matching lines in {}", names.join(", ")), limit);
    g.output = samples.join("\n");
    g
}

/// `df -Pk` -> bytes available.
pub fn parse_df(out: &str) -> Option<u64> {
    let line = out.lines().nth(1)?;
    let avail: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail * 1024)
}

/// `"0.52 4"` -> (0.52, 4).
pub fn parse_load(out: &str) -> Option<(f64, u32)> {
    let mut it = out.split_whitespace();
    let l: f64 = it.next()?.parse().ok()?;
    let cores: u32 = it.next()?.parse().ok()?;
    (cores > 0).then_some((l, cores))
}

/// `"<newest mtime> <now> <name>"` -> (newest, now, name if any).
pub fn parse_backup(out: &str) -> Option<(i64, i64, Option<String>)> {
    let line = out.trim_end_matches('\n');
    let mut it = line.splitn(3, ' ');
    let newest: i64 = it.next()?.trim().parse().ok()?;
    let now: i64 = it.next()?.trim().parse().ok()?;
    let name = it.next().map(str::to_string).filter(|n| !n.is_empty() && newest > 0);
    Some((newest, now, name))
}

fn size(b: u64) -> String {
    bytesize::ByteSize::b(b).display().iec().to_string()
}

/// The last 64 KiB of a command's output.
fn tail(s: &str) -> String {
    const MAX: usize = 64 * 1024;
    if s.len() <= MAX {
        return s.trim_end().to_string();
    }
    let mut start = s.len() - MAX;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        let df = "Filesystem     1024-blocks      Used Available Capacity Mounted on\n/dev/sda1        102400000  51200000  40960000      56% /\n";
        assert_eq!(parse_df(df), Some(40_960_000 * 1024));
        assert_eq!(parse_df("garbage"), None);
        assert_eq!(parse_load("0.52 4\n"), Some((0.52, 4)));
        assert_eq!(parse_load("0.52 0\n"), None);
        assert_eq!(parse_backup("1700000000 1700003600 /var/backups/db 1.sql\n"), Some((1_700_000_000, 1_700_003_600, Some("/var/backups/db 1.sql".into()))));
        assert_eq!(parse_backup("0 1700003600 \n"), Some((0, 1_700_003_600, None)));
    }

    #[test]
    fn error_lines() {
        let re = regex::Regex::new("ERROR|panic").unwrap();
        let (n, last) = count_errors("ok\nERROR one\nfine\npanic: two\n", &re);
        assert_eq!((n, last), (2, vec!["ERROR one".to_string(), "panic: two".to_string()]));
    }

    #[tokio::test]
    async fn host_checks_run_the_real_scripts() {
        let w = crate::host::fake::world("");
        let host = w.fake.host();
        // The backup script, against real files.
        let dir = w.fake.dir.path().join("backups");
        std::fs::create_dir_all(&dir).unwrap();
        let g = backup(&host, &format!("{}/*.sql", dir.display()), Duration::from_secs(60)).await;
        assert!(!g.ok && g.measured.starts_with("no file matches"), "{g:?}");
        std::fs::write(dir.join("db one.sql"), "x").unwrap();
        let g = backup(&host, &format!("{}/*.sql", dir.display()), Duration::from_secs(60)).await;
        assert!(g.ok && g.measured.contains("db one.sql is"), "{g:?}");
        // Disk and load, on this machine.
        assert!(disk(&host, 1).await.ok);
        assert!(!disk(&host, u64::MAX / 2).await.ok);
        assert!(load(&host, 1000.0).await.ok);
        // A hook sees its environment and its output is kept.
        let env = HookEnv { app: "shop".into(), version: "v2".into(), previous_version: "v1".into(), command: RunCommand::Deploy };
        let g = hook(&host, "pre_deploy", "echo \"$CAPSTAN_APP $CAPSTAN_VERSION $CAPSTAN_PREVIOUS_VERSION $CAPSTAN_HOST\"; exit 3", &env).await;
        assert_eq!((g.ok, g.measured.as_str(), g.output.as_str()), (false, "exit 3", "shop v2 v1 fake"));
        // The guard's tools, on this machine (scripts/setup installs them).
        let g = guard_tools(&host).await;
        assert!(g.ok, "{g:?}");
    }
}
