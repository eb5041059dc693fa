//! What a gate decided about one instance, with every value it measured next to
//! its limit (pure: data and how it reads).
//!
//! The traffic, resource and query gates each give a [`Verdict`]: pass, breach
//! (the release reverts), or undecided (too little traffic, no data: said so,
//! and passed or failed as the config says). Its [`Check`]s hold the measured
//! value, the limit and the old instances' value over the same window, so that
//! the printer, the report and the job summary show the same figures:
//! "p95 312 ms > 100 ms on web-1 (old instances: 41 ms), 2,140 requests".

use std::fmt;

use serde::Serialize;

use crate::core::promql::Comparison;

/// Which gate judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    /// Real requests, from nginx's access log.
    Traffic,
    /// The container's CPU and memory, from the engine.
    Resources,
    /// A Prometheus query.
    Query,
}

/// One gate's decision about one instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub gate: GateKind,
    /// `traffic`, `resources`, or the query's name.
    pub name: String,
    pub instance: String,
    pub outcome: Outcome,
    /// Every check made, passed or not.
    pub checks: Vec<Check>,
    /// Requests served by the instance in the window (traffic gates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Requests served by the old instances in the same window (traffic gates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_requests: Option<u64>,
    /// Said next to the figures: why there is no verdict, or why a relative limit was not applied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "is")]
pub enum Outcome {
    Pass,
    /// A limit was exceeded: the release reverts.
    Breach,
    /// Too little to judge (traffic, data); `passes` as the config says.
    Undecided {
        passes: bool,
    },
}

impl Verdict {
    /// Whether this verdict reverts the release.
    pub fn reverts(&self) -> bool {
        matches!(self.outcome, Outcome::Breach | Outcome::Undecided { passes: false })
    }

    /// The checks a reader is shown: the failed ones on a breach, else all.
    fn shown(&self) -> Vec<&Check> {
        match self.outcome {
            Outcome::Breach => self.checks.iter().filter(|c| !c.ok).collect(),
            _ => self.checks.iter().collect(),
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    P50,
    P95,
    P99,
    Cpu,
    Memory,
    /// A query's value (the verdict's name says which).
    Value,
}

impl Metric {
    pub fn label(&self) -> &'static str {
        match self {
            Metric::ErrorRate => "error rate",
            Metric::P50 => "p50",
            Metric::P95 => "p95",
            Metric::P99 => "p99",
            Metric::Cpu => "CPU",
            Metric::Memory => "memory",
            Metric::Value => "value",
        }
    }
}

/// A measured value or a limit, with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "unit", content = "value")]
pub enum Value {
    /// A fraction: 0.021 is 2.1 %.
    Ratio(f64),
    /// Milliseconds.
    Ms(f64),
    /// Percent of one CPU, as `docker stats` shows it (200 is two cores busy).
    CpuPercent(f64),
    Bytes(u64),
    /// A query's value.
    Number(f64),
}

impl Value {
    pub fn as_f64(&self) -> f64 {
        match *self {
            Value::Ratio(v) | Value::Ms(v) | Value::CpuPercent(v) | Value::Number(v) => v,
            Value::Bytes(b) => b as f64,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Ratio(r) => write!(f, "{} %", percent(r * 100.0)),
            Value::Ms(ms) if ms >= 10_000.0 => write!(f, "{} s", trim(ms / 1000.0, 1)),
            Value::Ms(ms) if ms >= 10.0 => write!(f, "{} ms", count(ms.round() as u64)),
            Value::Ms(ms) => write!(f, "{} ms", trim(ms, 1)),
            Value::CpuPercent(p) => write!(f, "{} %", trim(p, 1)),
            Value::Bytes(b) => f.write_str(&bytes(b)),
            Value::Number(v) => f.write_str(&number(v)),
        }
    }
}

/// The limit a check held the value to.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Limit {
    /// At most this.
    Max { max: Value },
    /// At most `ratio` times the old instances' value.
    MaxRatio { ratio: f64 },
    /// At most the old instances' value plus this (a rate: percentage points).
    MaxIncrease { by: Value },
    /// A query's condition, like `< 0.01`.
    #[serde(serialize_with = "comparison_text")]
    Expect(Comparison),
}

fn comparison_text<S: serde::Serializer>(c: &Comparison, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry("expect", &c.to_string())?;
    m.end()
}

/// One value held to one limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub metric: Metric,
    pub measured: Value,
    pub limit: Limit,
    /// The old instances' value over the same window, when there were enough of them to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// For a query over several series: which one this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    pub ok: bool,
}

impl Check {
    /// `p95 312 ms > 100 ms`, `p95 312 ms > 2 × old`, `error rate 2.1 % > old + 0.5 points`,
    /// `value 0.02, expected < 0.01`; with `≤` (or the condition met) when it passed.
    pub fn render(&self, name: &str) -> String {
        let label = match self.metric {
            Metric::Value => name.to_string(),
            m => m.label().to_string(),
        };
        let label = match &self.series {
            Some(s) => format!("{label} {s}"),
            None => label,
        };
        let rel = if self.ok { "≤" } else { ">" };
        match self.limit {
            Limit::Max { max } => format!("{label} {} {rel} {max}", self.measured),
            Limit::MaxRatio { ratio } => format!("{label} {} {rel} {} × old", self.measured, trim(ratio, 2)),
            Limit::MaxIncrease { by } => {
                let by = match by {
                    Value::Ratio(r) => format!("{} points", percent(r * 100.0)),
                    other => other.to_string(),
                };
                format!("{label} {} {rel} old + {by}", self.measured)
            }
            Limit::Expect(c) if self.ok => format!("{label} {} {c}", self.measured),
            Limit::Expect(c) => format!("{label} {}, expected {c}", self.measured),
        }
    }
}

impl fmt::Display for Verdict {
    /// `p95 312 ms > 100 ms on web-1 (old instances: 41 ms), 2,140 requests`, then the
    /// notes; a verdict without figures (undecided, a refused query) is its notes, which say why.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.shown();
        if matches!(self.outcome, Outcome::Undecided { .. }) || (shown.is_empty() && !self.notes.is_empty()) {
            return f.write_str(&self.notes.join("; "));
        }
        if shown.is_empty() {
            write!(f, "{}: nothing to check on {}", self.name, self.instance)?;
        } else {
            let checks: Vec<String> = shown.iter().map(|c| c.render(&self.name)).collect();
            write!(f, "{} on {}", checks.join(", "), self.instance)?;
        }
        // The old instances' value of each metric shown, once.
        let mut olds: Vec<(Metric, Value)> = Vec::new();
        for c in &shown {
            if let Some(o) = c.old {
                if !olds.iter().any(|(m, _)| *m == c.metric) {
                    olds.push((c.metric, o));
                }
            }
        }
        match olds.as_slice() {
            [] => {}
            [(_, one)] => write!(f, " (old instances: {one})")?,
            many => {
                let list: Vec<String> = many.iter().map(|(m, v)| format!("{} {v}", m.label())).collect();
                write!(f, " (old instances: {})", list.join(", "))?;
            }
        }
        if let Some(n) = self.requests {
            write!(f, ", {} request{}", count(n), if n == 1 { "" } else { "s" })?;
        }
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// `2,140`
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `v` with at most `places` decimals, trailing zeros dropped: `2.5`, `41`.
fn trim(v: f64, places: usize) -> String {
    let s = format!("{v:.places$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A percentage with two decimals at most, and small ones not shown as 0: `2.14`, `0.1`, `< 0.01`.
fn percent(p: f64) -> String {
    let s = trim(p, 2);
    if s == "0" && p > 0.0 {
        "< 0.01".into()
    } else {
        s
    }
}

/// `512 MiB`, `1.5 GiB`, `900 B`.
fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", trim(v, 1), UNITS[unit])
}

/// A query's value: short, exact enough to compare with its threshold.
fn number(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if v != 0.0 && (v.abs() < 0.001 || v.abs() >= 1e9) {
        return format!("{v:.3e}");
    }
    trim(v, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(metric: Metric, measured: Value, limit: Limit, old: Option<Value>, ok: bool) -> Check {
        Check { metric, measured, limit, old, series: None, ok }
    }

    fn verdict(outcome: Outcome, checks: Vec<Check>, requests: Option<u64>, notes: &[&str]) -> Verdict {
        Verdict {
            gate: GateKind::Traffic,
            name: "traffic".into(),
            instance: "web-1".into(),
            outcome,
            checks,
            requests,
            old_requests: None,
            notes: notes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn values_read_as_people_write_them() {
        let cases: &[(Value, &str)] = &[
            (Value::Ratio(0.021), "2.1 %"),
            (Value::Ratio(0.001), "0.1 %"),
            (Value::Ratio(0.00001), "< 0.01 %"),
            (Value::Ratio(0.0), "0 %"),
            (Value::Ratio(1.0), "100 %"),
            (Value::Ms(312.4), "312 ms"),
            (Value::Ms(4.26), "4.3 ms"),
            (Value::Ms(0.0), "0 ms"),
            (Value::Ms(2140.0), "2,140 ms"),
            (Value::Ms(60_001.0), "60 s"),
            (Value::CpuPercent(83.44), "83.4 %"),
            (Value::Bytes(512 * 1024 * 1024), "512 MiB"),
            (Value::Bytes(1536 * 1024 * 1024), "1.5 GiB"),
            (Value::Bytes(900), "900 B"),
            (Value::Number(0.0123), "0.0123"),
            (Value::Number(120.0), "120"),
            (Value::Number(0.00001234), "1.234e-5"),
            (Value::Number(f64::NAN), "NaN"),
        ];
        for (v, want) in cases {
            assert_eq!(v.to_string(), *want, "{v:?}");
        }
        assert_eq!([count(0), count(999), count(2140), count(1_234_567)], ["0", "999", "2,140", "1,234,567"]);
    }

    #[test]
    fn verdicts_read_with_their_figures() {
        let p95 = |ms: f64, ok| check(Metric::P95, Value::Ms(ms), Limit::Max { max: Value::Ms(100.0) }, Some(Value::Ms(41.0)), ok);
        let rate = |r: f64, ok| check(Metric::ErrorRate, Value::Ratio(r), Limit::Max { max: Value::Ratio(0.01) }, Some(Value::Ratio(0.001)), ok);
        let cases: Vec<(Verdict, &str)> = vec![
            (
                verdict(Outcome::Breach, vec![rate(0.0, true), p95(312.0, false)], Some(2140), &[]),
                "p95 312 ms > 100 ms on web-1 (old instances: 41 ms), 2,140 requests",
            ),
            (
                verdict(Outcome::Pass, vec![rate(0.0, true), p95(40.0, true)], Some(2140), &[]),
                "error rate 0 % ≤ 1 %, p95 40 ms ≤ 100 ms on web-1 (old instances: error rate 0.1 %, p95 41 ms), 2,140 requests",
            ),
            (
                verdict(
                    Outcome::Breach,
                    vec![check(Metric::P95, Value::Ms(312.0), Limit::MaxRatio { ratio: 2.0 }, Some(Value::Ms(41.0)), false)],
                    Some(2140),
                    &[],
                ),
                "p95 312 ms > 2 × old on web-1 (old instances: 41 ms), 2,140 requests",
            ),
            (
                verdict(
                    Outcome::Breach,
                    vec![check(Metric::ErrorRate, Value::Ratio(0.02), Limit::MaxIncrease { by: Value::Ratio(0.005) }, Some(Value::Ratio(0.003)), false)],
                    Some(1000),
                    &[],
                ),
                "error rate 2 % > old + 0.5 points on web-1 (old instances: 0.3 %), 1,000 requests",
            ),
            (
                verdict(
                    Outcome::Undecided { passes: true },
                    vec![],
                    Some(12),
                    &["not enough traffic on web-1 for a verdict (12 < 200 requests): not reverted"],
                ),
                "not enough traffic on web-1 for a verdict (12 < 200 requests): not reverted",
            ),
            (
                verdict(Outcome::Pass, vec![p95(40.0, true)], Some(1), &["no old instances to compare with"]),
                "p95 40 ms ≤ 100 ms on web-1 (old instances: 41 ms), 1 request; no old instances to compare with",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(v.to_string(), want);
        }
        let mut q = verdict(
            Outcome::Breach,
            vec![check(Metric::Value, Value::Number(0.02), Limit::Expect(Comparison::parse("< 0.01").unwrap()), None, false)],
            None,
            &[],
        );
        q.gate = GateKind::Query;
        q.name = "5xx ratio".into();
        assert_eq!(q.to_string(), "5xx ratio 0.02, expected < 0.01 on web-1");
        assert!(q.reverts());
    }

    #[test]
    fn the_report_gets_numbers_and_units() {
        let v = verdict(
            Outcome::Breach,
            vec![check(Metric::P95, Value::Ms(312.0), Limit::Max { max: Value::Ms(100.0) }, Some(Value::Ms(41.0)), false)],
            Some(2140),
            &[],
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["outcome"], serde_json::json!({"is": "breach"}));
        assert_eq!(json["checks"][0]["measured"], serde_json::json!({"unit": "ms", "value": 312.0}));
        assert_eq!(json["checks"][0]["limit"], serde_json::json!({"kind": "max", "max": {"unit": "ms", "value": 100.0}}));
        assert_eq!(json["requests"], 2140);
        let q = check(Metric::Value, Value::Number(0.5), Limit::Expect(Comparison::parse("< 1").unwrap()), None, true);
        assert_eq!(serde_json::to_value(&q).unwrap()["limit"], serde_json::json!({"kind": "expect", "expect": "< 1"}));
    }
}
