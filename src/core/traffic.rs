//! Real traffic over a window, per upstream server, and the traffic gate's
//! verdict (pure: entries of the access log in, figures and a verdict out).
//!
//! [`Traffic::collect`] keeps, for each server nginx tried in the window, how
//! many requests it got, how many failed (a 5xx, or no answer: see
//! [`Attempt::failed`]) and their response times; [`Traffic::stats`] merges the
//! servers of one instance, or of all the instances still on the old release,
//! into [`Stats`] (count, error rate, p50/p95/p99); [`judge`] holds the new
//! instance's figures to the gate's limits, absolute and relative to the old
//! instances' over the same window.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use crate::core::access_log::{Attempt, Entry};
use crate::core::config::{IfUndecided, TrafficGate};
use crate::core::verdict::{count, Check, GateKind, Limit, Metric, Outcome, Value, Verdict};

/// What nginx logged per upstream server over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    by_addr: BTreeMap<String, Samples>,
    /// Entries in the window (requests, whichever servers they reached).
    pub entries: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Samples {
    requests: u64,
    errors: u64,
    /// Response times in milliseconds of the attempts that have one.
    times: Vec<f64>,
}

impl Samples {
    fn add(&mut self, a: &Attempt) {
        self.requests += 1;
        if a.failed() {
            self.errors += 1;
        }
        if let Some(t) = a.response_time {
            self.times.push(ms(t));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Traffic {
    /// The attempts of the entries logged from `since` (inclusive) to `until`
    /// (exclusive; `None`: to the end). The text format's times are whole seconds,
    /// so the window opens at the start of `since`'s second: an instance put back
    /// at 12:00:03.700 counts what was logged at 12:00:03 (it served nothing
    /// before, while drained).
    pub fn collect<'a>(entries: impl IntoIterator<Item = &'a Entry>, since: OffsetDateTime, until: Option<OffsetDateTime>) -> Traffic {
        let since = since.replace_nanosecond(0).unwrap_or(since);
        let mut out = Traffic::default();
        for e in entries {
            if e.time < since || until.is_some_and(|u| e.time >= u) {
                continue;
            }
            out.entries += 1;
            for a in &e.attempts {
                out.by_addr.entry(a.addr.clone()).or_default().add(a);
            }
        }
        out
    }

    /// Every upstream address seen, with its request count.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_addr.iter().map(|(a, s)| (a.as_str(), s.requests))
    }

    /// The figures of the servers whose address `is_one` accepts, merged (the
    /// percentiles from all their times, not averaged).
    pub fn stats(&self, is_one: impl Fn(&str) -> bool) -> Stats {
        let mut requests = 0;
        let mut errors = 0;
        let mut times = Vec::new();
        for (_, s) in self.by_addr.iter().filter(|(a, _)| is_one(a)) {
            requests += s.requests;
            errors += s.errors;
            times.extend_from_slice(&s.times);
        }
        times.sort_by(f64::total_cmp);
        Stats { requests, errors, p50: percentile(&times, 50.0), p95: percentile(&times, 95.0), p99: percentile(&times, 99.0) }
    }
}

/// One instance's (or the old instances') figures over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    /// Response times in milliseconds; `None` without any.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

impl Stats {
    /// Failed requests as a fraction of all; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The nearest-rank percentile of sorted values: the smallest value with at least
/// `p` percent of the values at or below it.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// nginx logs times in whole milliseconds: a p95 of 0 ms is "under a millisecond",
/// and a ratio to it is taken to 1 ms.
const RESOLUTION_MS: f64 = 1.0;

/// The traffic gate's verdict on `instance` from its figures and, when instances on
/// the old release served over the same window, theirs (`old`; `None`: none left).
pub fn judge(gate: &TrafficGate, instance: &str, new: &Stats, old: Option<&Stats>) -> Verdict {
    let mut v = Verdict {
        gate: GateKind::Traffic,
        name: "traffic".into(),
        instance: instance.to_string(),
        outcome: Outcome::Pass,
        checks: Vec::new(),
        requests: Some(new.requests),
        old_requests: old.map(|o| o.requests),
        notes: Vec::new(),
    };
    if new.requests < gate.min_requests {
        let passes = gate.too_little_traffic == IfUndecided::Pass;
        let then = if passes { "not reverted" } else { "reverted (too_little_traffic: fail)" };
        v.notes.push(format!("not enough traffic on {instance} for a verdict ({} < {} requests): {then}", count(new.requests), count(gate.min_requests)));
        v.outcome = Outcome::Undecided { passes };
        return v;
    }
    // The old instances count as a baseline only with enough requests of their own.
    let baseline = old.filter(|o| o.requests >= gate.min_requests);
    let relative = gate.max_error_rate_increase.is_some() || gate.max_p95_ratio.is_some();
    if relative {
        match old {
            None => v.notes.push("no instance left on the old release to compare with".into()),
            Some(o) if baseline.is_none() => {
                v.notes.push(format!("the old instances served {} requests, too few to compare with (< {})", count(o.requests), count(gate.min_requests)))
            }
            Some(_) => {}
        }
    }
    let rate = new.error_rate();
    let old_rate = baseline.map(|o| Value::Ratio(o.error_rate()));
    if let Some(max) = gate.max_error_rate {
        v.checks.push(Check {
            metric: Metric::ErrorRate,
            measured: Value::Ratio(rate),
            limit: Limit::Max { max: Value::Ratio(max) },
            old: old_rate,
            series: None,
            ok: rate <= max + f64::EPSILON,
        });
    }
    if let (Some(by), Some(o)) = (gate.max_error_rate_increase, baseline) {
        v.checks.push(Check {
            metric: Metric::ErrorRate,
            measured: Value::Ratio(rate),
            limit: Limit::MaxIncrease { by: Value::Ratio(by) },
            old: old_rate,
            series: None,
            ok: rate - o.error_rate() <= by + 1e-12,
        });
    }
    let old_p95 = baseline.and_then(|o| o.p95);
    if let (Some(max), Some(p95)) = (gate.max_p95, new.p95) {
        let max = ms(max);
        v.checks.push(Check {
            metric: Metric::P95,
            measured: Value::Ms(p95),
            limit: Limit::Max { max: Value::Ms(max) },
            old: old_p95.map(Value::Ms),
            series: None,
            ok: p95 <= max,
        });
    }
    if let (Some(ratio), Some(p95), Some(o)) = (gate.max_p95_ratio, new.p95, old_p95) {
        v.checks.push(Check {
            metric: Metric::P95,
            measured: Value::Ms(p95),
            limit: Limit::MaxRatio { ratio },
            old: Some(Value::Ms(o)),
            series: None,
            ok: p95 <= ratio * o.max(RESOLUTION_MS),
        });
    }
    if v.checks.iter().any(|c| !c.ok) {
        v.outcome = Outcome::Breach;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::access_log::parse;
    use crate::core::config::AccessLog;
    use time::macros::datetime;

    /// A log line at second `s` past 12:00:00 for `attempts` like `a:1 200 12` (address, status, ms), `;`-separated.
    fn line(s: u32, status: u16, attempts: &str) -> String {
        let parts: Vec<Vec<&str>> = attempts.split(';').map(|a| a.split_whitespace().collect()).collect();
        let join = |i: usize| parts.iter().map(|p| p[i]).collect::<Vec<_>>().join(", ");
        let secs = |t: &str| if t == "-" { "-".to_string() } else { format!("{:.3}", t.parse::<f64>().unwrap() / 1000.0) };
        let times = parts.iter().map(|p| secs(p[2])).collect::<Vec<_>>().join(", ");
        format!(r#"10.0.0.9 [2024-05-01T12:00:{s:02}+00:00] "GET / HTTP/1.1" {status} "{}" "{}" "{times}" 0.100"#, join(0), join(1))
    }

    fn stats(log: &str, since: u32, addr: &str) -> Stats {
        let p = parse(log);
        let since = datetime!(2024-05-01 12:00:00 UTC) + Duration::from_secs(since.into());
        Traffic::collect(&p.entries, since, None).stats(|a| a == addr)
    }

    #[test]
    fn figures_per_server() {
        let log = [
            line(1, 200, "old:1 200 5"),
            line(2, 200, "new:1 200 10"),
            line(3, 200, "new:1 502 1;old:1 200 7"),
            line(3, 500, "new:1 500 30"),
            line(4, 504, "new:1 504 60000"),
            line(5, 499, "new:1 - -"),
            line(6, 200, "new:1 200 20"),
        ]
        .join("\n");
        /// (window from second, address, requests, errors, p50, p95)
        type Case = (u32, &'static str, u64, u64, Option<f64>, Option<f64>);
        let cases: &[Case] = &[
            (0, "new:1", 6, 4, Some(20.0), Some(60000.0)),
            (0, "old:1", 2, 0, Some(5.0), Some(7.0)),
            (4, "new:1", 3, 2, Some(20.0), Some(60000.0)),
            (7, "new:1", 0, 0, None, None),
            (0, "nobody:1", 0, 0, None, None),
        ];
        for &(since, addr, requests, errors, p50, p95) in cases {
            let s = stats(&log, since, addr);
            assert_eq!((s.requests, s.errors, s.p50, s.p95), (requests, errors, p50, p95), "from {since}s, {addr}");
        }
        // Several servers merged: the percentiles of all their times.
        let p = parse(&log);
        let all = Traffic::collect(&p.entries, datetime!(2024-05-01 12:00:00 UTC), None).stats(|_| true);
        assert_eq!((all.requests, all.errors), (8, 4));
        assert_eq!(all.error_rate(), 0.5);
        // The window opens at the start of the second (whole-second times) and `until` closes it.
        let p = parse(&log);
        let t = Traffic::collect(&p.entries, datetime!(2024-05-01 12:00:03.700 UTC), Some(datetime!(2024-05-01 12:00:05 UTC)));
        assert_eq!(t.entries, 3);
        assert_eq!(t.addresses().collect::<Vec<_>>(), [("new:1", 3), ("old:1", 1)]);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!([percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0)], [Some(50.0), Some(95.0), Some(99.0)]);
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        let twenty: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&twenty, 95.0), Some(19.0));
    }

    fn gate() -> TrafficGate {
        TrafficGate {
            access_log: AccessLog::File("/var/log/nginx/capstan.log".into()),
            min_requests: 100,
            too_little_traffic: IfUndecided::Pass,
            max_error_rate: Some(0.01),
            max_error_rate_increase: Some(0.005),
            max_p95: Some(Duration::from_millis(500)),
            max_p95_ratio: Some(2.0),
        }
    }

    fn st(requests: u64, errors: u64, p95: f64) -> Stats {
        Stats { requests, errors, p50: Some(p95 / 2.0), p95: Some(p95), p99: Some(p95 * 1.5) }
    }

    /// (gate, new, old, outcome, the verdict as read)
    #[test]
    fn verdicts() {
        let g = gate();
        let only_abs = TrafficGate { max_error_rate_increase: None, max_p95_ratio: None, max_p95: Some(Duration::from_millis(100)), ..gate() };
        let strict = TrafficGate { too_little_traffic: IfUndecided::Fail, ..gate() };
        let cases: Vec<(&TrafficGate, Stats, Option<Stats>, Outcome, &str)> = vec![
            (&g, st(2140, 0, 40.0), Some(st(4000, 0, 41.0)), Outcome::Pass, "error rate 0 % ≤ 1 %, error rate 0 % ≤ old + 0.5 points, p95 40 ms ≤ 500 ms, p95 40 ms ≤ 2 × old on web-1 (old instances: error rate 0 %, p95 41 ms), 2,140 requests"),
            // 2 % of 500s: over the absolute limit and the increase.
            (&g, st(2000, 40, 40.0), Some(st(4000, 4, 41.0)), Outcome::Breach, "error rate 2 % > 1 %, error rate 2 % > old + 0.5 points on web-1 (old instances: 0.1 %), 2,000 requests"),
            // Within the absolute limit, but 0.6 points over the old instances.
            (&g, st(1000, 8, 40.0), Some(st(4000, 8, 41.0)), Outcome::Breach, "error rate 0.8 % > old + 0.5 points on web-1 (old instances: 0.2 %), 1,000 requests"),
            // p95 of 300 ms: under 500 ms, but over 2 × the old 41 ms.
            (&g, st(2140, 0, 300.0), Some(st(4000, 0, 41.0)), Outcome::Breach, "p95 300 ms > 2 × old on web-1 (old instances: 41 ms), 2,140 requests"),
            (&only_abs, st(2140, 0, 312.0), Some(st(4000, 0, 41.0)), Outcome::Breach, "p95 312 ms > 100 ms on web-1 (old instances: 41 ms), 2,140 requests"),
            // Old instances answering in under a millisecond: the ratio is to 1 ms.
            (&g, st(500, 0, 2.0), Some(st(500, 0, 0.0)), Outcome::Pass, "error rate 0 % ≤ 1 %, error rate 0 % ≤ old + 0.5 points, p95 2 ms ≤ 500 ms, p95 2 ms ≤ 2 × old on web-1 (old instances: error rate 0 %, p95 0 ms), 500 requests"),
            // Too little traffic: said so, not reverted, or reverted when the config says so.
            (&g, st(12, 12, 900.0), Some(st(4000, 0, 41.0)), Outcome::Undecided { passes: true }, "not enough traffic on web-1 for a verdict (12 < 100 requests): not reverted"),
            (&strict, st(0, 0, 0.0), None, Outcome::Undecided { passes: false }, "not enough traffic on web-1 for a verdict (0 < 100 requests): reverted (too_little_traffic: fail)"),
            // No old instances (the last one replaced), or too few of their requests: absolute limits only.
            (&g, st(300, 0, 40.0), None, Outcome::Pass, "error rate 0 % ≤ 1 %, p95 40 ms ≤ 500 ms on web-1, 300 requests; no instance left on the old release to compare with"),
            (&g, st(300, 6, 40.0), Some(st(50, 0, 5.0)), Outcome::Breach, "error rate 2 % > 1 % on web-1, 300 requests; the old instances served 50 requests, too few to compare with (< 100)"),
        ];
        for (gate, new, old, outcome, text) in cases {
            let v = judge(gate, "web-1", &new, old.as_ref());
            assert_eq!((v.outcome, v.to_string().as_str()), (outcome, text));
            assert_eq!(v.reverts(), matches!(outcome, Outcome::Breach | Outcome::Undecided { passes: false }));
        }
    }
}
