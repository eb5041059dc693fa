//! The gates on real traffic (`gates:`): a window of what an instance's users saw,
//! read from the host in a round trip per source (nginx's access log since a byte
//! offset or a time, the engine's stats, each Prometheus query), judged by `core`
//! (`traffic`, `resources`, `prometheus`) and emitted as `Gate` events with their
//! verdicts. Run after each instance's traffic check (before the next one is touched),
//! in validation and through the bake window; a breach fails the step it runs in, so it
//! reverts like any failed step.

use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use crate::core::access_log;
use crate::core::config::{AccessLog, Gates, Service};
use crate::core::prometheus;
use crate::core::resources::{self, Usage};
use crate::core::traffic::{self, Traffic};
use crate::core::upstream::Identity;
use crate::core::verdict::{count, GateKind, Outcome, Verdict};
use crate::host::drain::Target;
use crate::host::gauges::{self, Offset};
use crate::output::events::{Event, Gate};
use crate::rollout::steps::{StepError, StepResult};
use crate::rollout::Rollout;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `gates` has anything to judge.
pub(super) fn watched(gates: &Gates) -> bool {
    gates.traffic.is_some() || gates.resources.is_some() || gates.prometheus.is_some()
}

/// Where a window starts: a time, and for an access log file the byte it ended at then.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mark {
    pub(super) at: OffsetDateTime,
    pub(super) started: Instant,
    offset: Option<Offset>,
}

/// One instance as the gates see it.
struct Subject {
    /// Its container.
    name: String,
    /// The names nginx logs it by.
    id: Identity,
    /// `{address}` in a query: `127.0.0.1:PORT` where it publishes its port on the host, else `IP:PORT`.
    address: String,
}

/// What a window read and found.
pub(super) struct Judged {
    pub(super) verdicts: Vec<Verdict>,
    /// Where the next window of the same log starts.
    pub(super) next: Mark,
    /// How much of the access log crossed the connection, and how long the reading took.
    read: Option<(u64, Duration)>,
}

impl Judged {
    /// The first verdict that reverts, as the step's error.
    pub(super) fn breach(&self) -> Option<String> {
        self.verdicts.iter().find(|v| v.reverts()).map(|v| v.to_string())
    }

    /// The step's detail: every verdict, and what the log reading cost.
    pub(super) fn detail(&self) -> String {
        let mut parts: Vec<String> = self.verdicts.iter().map(|v| v.to_string()).collect();
        if let Some((bytes, took)) = self.read {
            parts.push(format!("read {} bytes of the access log in {} ms", count(bytes), took.as_millis()));
        }
        parts.join("; ")
    }
}

impl Rollout<'_> {
    /// The start of a window for `svc`'s gates: now, and where its access log file ends.
    pub(super) async fn mark(&self, svc: &Service) -> Mark {
        let offset = match svc.gates.traffic.as_ref().map(|t| &t.access_log) {
            Some(AccessLog::File(path)) => match gauges::log_end(self.host.shell.as_ref(), path).await {
                Ok(o) => Some(o),
                Err(e) => {
                    self.warn(format!("the traffic gate cannot read {path}: {e}"));
                    None
                }
            },
            _ => None,
        };
        Mark { at: OffsetDateTime::now_utc(), started: Instant::now(), offset }
    }

    /// The per-instance window: waits out `gates.window` since `mark` (taken when `name`
    /// was put back), then judges it against the service's instances still on the old release.
    pub(super) async fn instance_window(&self, svc: &Service, name: &str, to_image: &str, mark: &Mark) -> StepResult<()> {
        let left = svc.gates.window.saturating_sub(mark.started.elapsed());
        self.wait(left, true).await?;
        let mut old = Vec::new();
        for other in svc.instances.iter().filter(|i| i.as_str() != name) {
            if let Ok(Some(c)) = self.host.engine.inspect_container(other).await {
                if c.running && c.image_ref != to_image {
                    old.push(c.name);
                }
            }
        }
        let judged = self.judge(svc, "window", mark, &[name.to_string()], &old).await;
        match judged.breach() {
            Some(why) => Err(StepError::Failed(why)),
            None => Ok(((), judged.detail())),
        }
    }

    /// Judges `new` (and `old`, to compare with) over the window since `mark`; every
    /// verdict is emitted as gate `{at} {gate}` (`window traffic`, `bake resources`…).
    pub(super) async fn judge(&self, svc: &Service, at: &str, mark: &Mark, new: &[String], old: &[String]) -> Judged {
        let new = self.subjects(svc, new).await;
        let old = self.subjects(svc, old).await;
        let mut verdicts = Vec::new();
        let mut next = Mark { at: OffsetDateTime::now_utc(), started: Instant::now(), offset: mark.offset };
        let mut read = None;
        if let Some(gate) = &svc.gates.traffic {
            let t0 = Instant::now();
            let text = match (&gate.access_log, mark.offset) {
                (AccessLog::File(path), Some(from)) => gauges::read_log(self.host.shell.as_ref(), path, from).await.map_err(|e| e.to_string()).map(|r| {
                    // Offsets slice a file: the next window starts where this read ended.
                    next.offset = Some(r.next);
                    next.at = mark.at;
                    read = Some((r.bytes, t0.elapsed()));
                    r.text
                }),
                (AccessLog::File(path), None) => Err(format!("{path} could not be read when the window began")),
                (AccessLog::Container(c), _) => {
                    gauges::container_log(self.host.engine.as_ref(), c, mark.at.unix_timestamp()).await.map_err(|e| e.to_string()).inspect(|t| {
                        read = Some((t.len() as u64, t0.elapsed()));
                    })
                }
            };
            match text {
                Ok(text) => {
                    let parsed = access_log::parse(&text);
                    let window = Traffic::collect(&parsed.entries, mark.at, None);
                    let olds = (!old.is_empty()).then(|| window.stats(|a| old.iter().any(|o| o.id.serves(a))));
                    for s in &new {
                        let mut v = traffic::judge(gate, &s.name, &window.stats(|a| s.id.serves(a)), olds.as_ref());
                        if parsed.entries.is_empty() && parsed.skipped > 0 {
                            v.notes.push(format!("none of the {} lines read is in capstan's log_format (see the README)", count(parsed.skipped as u64)));
                        }
                        verdicts.push(v);
                    }
                }
                Err(e) => {
                    for s in &new {
                        let passes = gate.too_little_traffic == crate::core::config::IfUndecided::Pass;
                        let then = if passes { "not reverted" } else { "reverted (too_little_traffic: fail)" };
                        verdicts.push(undecided(GateKind::Traffic, "traffic", &s.name, passes, format!("no traffic verdict on {}: {e}: {then}", s.name)));
                    }
                }
            }
        }
        if let Some(gate) = &svc.gates.resources {
            let names: Vec<&str> = new.iter().chain(&old).map(|s| s.name.as_str()).collect();
            let samples = gauges::stats(self.host.engine.as_ref(), &names).await;
            let usage: Vec<Option<Usage>> = samples.iter().map(|s| s.as_ref().ok().map(Usage::of)).collect();
            let old_usage: Vec<Usage> = usage[new.len()..].iter().flatten().copied().collect();
            let old_mean = Usage::mean(&old_usage);
            for (i, s) in new.iter().enumerate() {
                match (&usage[i], &samples[i]) {
                    (Some(u), _) => verdicts.push(resources::judge(gate, &s.name, u, old_mean.as_ref())),
                    (None, Err(e)) => verdicts.push(undecided(GateKind::Resources, "resources", &s.name, false, format!("no stats of {}: {e}", s.name))),
                    (None, Ok(_)) => {}
                }
            }
        }
        if let Some(gate) = &svc.gates.prometheus {
            for s in &new {
                for q in &gate.queries {
                    let subject = prometheus::Subject { instance: &s.name, address: &s.address, service: &svc.name };
                    let promql = prometheus::query_for(q, &subject);
                    let answer = gauges::query(self.host.probe.as_ref(), &gate.url, &promql, QUERY_TIMEOUT).await;
                    verdicts.push(prometheus::judge(q, &s.name, &answer));
                }
            }
        }
        for v in &verdicts {
            let mut g = Gate::new(&self.host.name, format!("{at} {}", v.name), !v.reverts(), v.to_string(), "");
            g.verdict = Some(v.clone());
            self.events.emit(Event::Gate(g));
        }
        Judged { verdicts, next, read }
    }

    /// The containers `names` as nginx and Prometheus know them (gone ones left out).
    async fn subjects(&self, svc: &Service, names: &[String]) -> Vec<Subject> {
        let mut out = Vec::new();
        for n in names {
            let Ok(Some(c)) = self.host.engine.inspect_container(n).await else { continue };
            let t = Target::of(svc, &c);
            let port = t.id.ports.first().copied();
            let address = match (t.id.published.first(), c.addresses.first(), port) {
                (Some(p), _, _) => format!("127.0.0.1:{p}"),
                (None, Some(ip), Some(port)) => format!("{ip}:{port}"),
                (None, Some(ip), None) => ip.clone(),
                (None, None, _) => n.clone(),
            };
            out.push(Subject { name: n.clone(), id: t.id, address });
        }
        out
    }
}

/// A verdict with no figures: what `then` says decides.
fn undecided(gate: GateKind, name: &str, instance: &str, passes: bool, note: String) -> Verdict {
    Verdict {
        gate,
        name: name.into(),
        instance: instance.into(),
        outcome: Outcome::Undecided { passes },
        checks: Vec::new(),
        requests: None,
        old_requests: None,
        notes: vec![note],
    }
}
