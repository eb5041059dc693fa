//! The query gate (pure): a query of `gates.prometheus` for one instance, and the
//! verdict on Prometheus' answer. Reading the answer is `promql.rs`'s.

use crate::core::config::{IfUndecided, QueryGate};
use crate::core::promql::{self, Answer, AnswerError};
use crate::core::verdict::{Check, GateKind, Limit, Metric, Outcome, Value, Verdict};

/// What a query is asked about: the instance's container name, its address as
/// nginx and Prometheus see it (`172.18.0.3:8080`), its service.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub instance: &'a str,
    pub address: &'a str,
    pub service: &'a str,
}

/// The PromQL sent for `subject`.
pub fn query_for(gate: &QueryGate, subject: &Subject<'_>) -> String {
    promql::fill(&gate.query, &[("instance", subject.instance), ("address", subject.address), ("service", subject.service)])
}

/// The verdict on an answer (or on why there is none: a refused query is a breach,
/// since it can never pass). Every series must meet the condition; NaN (a ratio
/// over nothing) and an empty answer are no data, which `no_data` decides.
pub fn judge(gate: &QueryGate, instance: &str, answer: &Result<Answer, AnswerError>) -> Verdict {
    let mut v = Verdict {
        gate: GateKind::Query,
        name: gate.name.clone(),
        instance: instance.to_string(),
        outcome: Outcome::Pass,
        checks: Vec::new(),
        requests: None,
        old_requests: None,
        notes: Vec::new(),
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            v.notes.push(format!("{} on {instance}: {e}", gate.name));
            v.outcome = Outcome::Breach;
            return v;
        }
    };
    let several = matches!(answer, Answer::Vector(s) if s.len() > 1);
    for (series, value) in answer.values() {
        if value.is_nan() {
            continue;
        }
        v.checks.push(Check {
            metric: Metric::Value,
            measured: Value::Number(value),
            limit: Limit::Expect(gate.expect),
            old: None,
            series: series.filter(|_| several).map(|s| s.describe()),
            ok: gate.expect.holds(value),
        });
    }
    if v.checks.is_empty() {
        let passes = gate.no_data == IfUndecided::Pass;
        let then = if passes { "not reverted (no_data: pass)" } else { "reverted (no_data: fail)" };
        let what = if answer.values().is_empty() { "no series" } else { "only NaN" };
        v.notes.push(format!("no data from {} on {instance} ({what}): {then}", gate.name));
        v.outcome = Outcome::Undecided { passes };
    } else if v.checks.iter().any(|c| !c.ok) {
        v.outcome = Outcome::Breach;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::promql::{parse_answer, Comparison};

    fn gate(no_data: IfUndecided) -> QueryGate {
        QueryGate {
            name: "5xx ratio".into(),
            query: r#"sum(rate(demo_requests_total{instance="{address}",status=~"5.."}[1m])) / sum(rate(demo_requests_total{instance="{address}"}[1m]))"#
                .into(),
            expect: Comparison::parse("< 0.01").unwrap(),
            no_data,
        }
    }

    fn vector(values: &[(&str, &str)]) -> String {
        let series: Vec<String> = values.iter().map(|(inst, v)| format!(r#"{{"metric":{{"instance":"{inst}"}},"value":[1714564803.1,"{v}"]}}"#)).collect();
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, series.join(","))
    }

    #[test]
    fn the_query_names_the_instance() {
        let s = Subject { instance: "web-1", address: "172.18.0.3:8080", service: "web" };
        assert!(query_for(&gate(IfUndecided::Fail), &s).contains(r#"demo_requests_total{instance="172.18.0.3:8080",status=~"5.."}"#));
    }

    #[test]
    fn verdicts() {
        let cases: Vec<(IfUndecided, String, Outcome, &str)> = vec![
            (IfUndecided::Fail, vector(&[("a:1", "0.002")]), Outcome::Pass, "5xx ratio 0.002 < 0.01 on web-1"),
            (IfUndecided::Fail, vector(&[("a:1", "0.02")]), Outcome::Breach, "5xx ratio 0.02, expected < 0.01 on web-1"),
            (IfUndecided::Fail, vector(&[("a:1", "0.001"), ("a:2", "0.5")]), Outcome::Breach, r#"5xx ratio {instance="a:2"} 0.5, expected < 0.01 on web-1"#),
            (IfUndecided::Fail, r#"{"status":"success","data":{"resultType":"scalar","result":[1,"0"]}}"#.into(), Outcome::Pass, "5xx ratio 0 < 0.01 on web-1"),
            (IfUndecided::Fail, vector(&[]), Outcome::Undecided { passes: false }, "no data from 5xx ratio on web-1 (no series): reverted (no_data: fail)"),
            (
                IfUndecided::Pass,
                vector(&[("a:1", "NaN")]),
                Outcome::Undecided { passes: true },
                "no data from 5xx ratio on web-1 (only NaN): not reverted (no_data: pass)",
            ),
            (IfUndecided::Pass, vector(&[("a:1", "NaN"), ("a:2", "0.03")]), Outcome::Breach, "5xx ratio {instance=\"a:2\"} 0.03, expected < 0.01 on web-1"),
            (
                IfUndecided::Pass,
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
                Outcome::Breach,
                "5xx ratio on web-1: Prometheus refused the query (bad_data): parse error",
            ),
        ];
        for (no_data, body, outcome, text) in cases {
            let v = judge(&gate(no_data), "web-1", &parse_answer(&body));
            assert_eq!((v.outcome, v.to_string().as_str()), (outcome, text), "{body}");
        }
    }
}
