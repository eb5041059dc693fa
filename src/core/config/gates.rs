//! The validator's half for `gates:` (the top level's and each service's): the traffic
//! gate (nginx's access log), the resource gate, the Prometheus queries, and how a
//! service's own gates override the top level's, gate by gate. Same rules as
//! `validate.rs`: every problem collected, not the first.

use std::time::Duration;

use super::raw::*;
use super::validate::Validator;
use super::*;
use crate::core::names;

/// `gates:` as validated where it is written, before it is given to each service.
#[derive(Clone, Default)]
pub(super) struct GateSet {
    window: Option<Duration>,
    /// The gate, its access log as written (`None`: from the service's nginx container), the key path.
    traffic: Option<(TrafficGate, Option<AccessLog>, String)>,
    resources: Option<ResourceGate>,
    prometheus: Option<PrometheusGate>,
}

impl Validator {
    /// One `gates:` block at `p` (`gates` or `services.web.gates`).
    pub(super) fn gate_set(&mut self, p: &str, g: RawGates) -> GateSet {
        let window = g.window.as_deref().map(|w| {
            let d = self.duration(&format!("{p}.window"), Some(w), Gates::DEFAULT_WINDOW);
            if d.is_zero() {
                self.issue(format!("{p}.window"), "expected a duration above zero, like 30s");
            }
            d
        });
        let traffic = g.traffic.map(|t| self.traffic_gate(&format!("{p}.traffic"), t));
        let resources = g.resources.map(|r| self.resource_gate(&format!("{p}.resources"), r));
        let prometheus = g.prometheus.map(|q| self.prometheus_gate(&format!("{p}.prometheus"), q));
        GateSet { window, traffic, resources, prometheus }
    }

    /// A service's gates: its own, gate by gate, over the top level's.
    pub(super) fn service_gates(&mut self, p: &str, top: &GateSet, own: Option<RawGates>, drain: &Drain, swarm: bool) -> Gates {
        let own = own.map(|g| self.gate_set(&format!("{p}.gates"), g)).unwrap_or_default();
        let own_traffic = own.traffic.is_some();
        let nginx = match &drain.method {
            DrainMethod::Nginx(n) => Some(n),
            _ => None,
        };
        let traffic = match (own.traffic, nginx) {
            (Some((_, _, path)), None) => {
                let why = if swarm { "a target: swarm service has no nginx drain" } else { "this service is not drained through nginx (drain.nginx)" };
                self.issue(path, format!("reads nginx's access log to tell this service's instances apart, but {why}"));
                None
            }
            (Some(t), Some(n)) => Some(t).map(|t| (t, n)),
            // The top level's traffic gate: only for the services behind nginx.
            (None, Some(n)) => top.traffic.clone().map(|t| (t, n)),
            (None, None) => None,
        };
        let traffic = traffic.and_then(|((mut gate, log, path), nginx)| {
            gate.access_log = match (log, &nginx.container) {
                (Some(log), _) => log,
                (None, Some(c)) => AccessLog::Container(c.clone()),
                (None, None) => {
                    let whose = if own_traffic { String::new() } else { format!(" for {p}") };
                    self.issue(
                        format!("{path}.access_log"),
                        format!(
                            "expected the file nginx writes the capstan log_format to, like /var/log/nginx/capstan.log, or {{ container: NAME }}{whose} (its drain.nginx names no container to read the output of)"
                        ),
                    );
                    return None;
                }
            };
            Some(gate)
        });
        Gates {
            window: own.window.or(top.window).unwrap_or(Gates::DEFAULT_WINDOW),
            traffic,
            resources: own.resources.or_else(|| top.resources.clone()),
            prometheus: own.prometheus.or_else(|| top.prometheus.clone()),
        }
    }

    fn traffic_gate(&mut self, p: &str, t: RawTrafficGate) -> (TrafficGate, Option<AccessLog>, String) {
        let access_log = t.access_log.map(|l| match l {
            RawAccessLog::File(f) => {
                if !f.starts_with('/') || f.contains('\n') {
                    self.issue(format!("{p}.access_log"), format!("expected an absolute path on the host, like /var/log/nginx/capstan.log, got {f:?}"));
                }
                AccessLog::File(f)
            }
            RawAccessLog::Container { container } => {
                self.name(&format!("{p}.access_log.container"), "container name", &container, names::check_container);
                AccessLog::Container(container)
            }
        });
        let min_requests = t.min_requests.unwrap_or(100);
        if min_requests == 0 {
            self.issue(format!("{p}.min_requests"), "expected at least 1 request before a verdict");
        }
        let too_little_traffic = self.if_undecided(&format!("{p}.too_little_traffic"), t.too_little_traffic.as_deref(), IfUndecided::Pass);
        let max_error_rate = t.max_error_rate.as_ref().and_then(|r| self.percent(&format!("{p}.max_error_rate"), r, 100.0)).map(|v| v / 100.0);
        let max_error_rate_increase =
            t.max_error_rate_increase.as_ref().and_then(|r| self.percent(&format!("{p}.max_error_rate_increase"), r, 100.0)).map(|v| v / 100.0);
        let max_p95 = t.max_p95.as_deref().map(|d| {
            let d = self.duration(&format!("{p}.max_p95"), Some(d), Duration::ZERO);
            if d.is_zero() {
                self.issue(format!("{p}.max_p95"), "expected a duration above zero, like 500ms");
            }
            d
        });
        let max_p95_ratio = t.max_p95_ratio.as_ref().and_then(|r| self.ratio(&format!("{p}.max_p95_ratio"), r));
        if max_error_rate.is_none() && max_error_rate_increase.is_none() && max_p95.is_none() && max_p95_ratio.is_none() {
            self.issue(p, "expected at least one limit: max_error_rate, max_error_rate_increase, max_p95 or max_p95_ratio");
        }
        let gate = TrafficGate {
            access_log: AccessLog::File(String::new()),
            min_requests,
            too_little_traffic,
            max_error_rate,
            max_error_rate_increase,
            max_p95,
            max_p95_ratio,
        };
        (gate, access_log, p.to_string())
    }

    fn resource_gate(&mut self, p: &str, r: RawResourceGate) -> ResourceGate {
        let max_cpu = r.max_cpu.as_ref().and_then(|c| self.percent(&format!("{p}.max_cpu"), c, f64::MAX));
        if max_cpu == Some(0.0) {
            self.issue(format!("{p}.max_cpu"), "expected a percentage above zero, like 80%");
        }
        let max_memory = r.max_memory.and_then(|s| match s.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => Some(b.as_u64()),
            _ => {
                self.issue(format!("{p}.max_memory"), format!("expected a size like 512MiB or 2GiB, got {s:?}"));
                None
            }
        });
        let max_memory_ratio = r.max_memory_ratio.as_ref().and_then(|m| self.ratio(&format!("{p}.max_memory_ratio"), m));
        if max_cpu.is_none() && max_memory.is_none() && max_memory_ratio.is_none() {
            self.issue(p, "expected at least one limit: max_cpu, max_memory or max_memory_ratio");
        }
        ResourceGate { max_cpu, max_memory, max_memory_ratio }
    }

    fn prometheus_gate(&mut self, p: &str, g: RawPrometheusGate) -> PrometheusGate {
        let url = g.url.trim().to_string();
        let ok = (url.starts_with("http://") || url.starts_with("https://")) && !url.contains(char::is_whitespace);
        if !ok {
            self.issue(format!("{p}.url"), format!("expected Prometheus' http:// URL as seen from the host, like http://127.0.0.1:9090, got {:?}", g.url));
        }
        if g.queries.is_empty() {
            self.issue(format!("{p}.queries"), "expected at least one query: { query: PROMQL, expect: \"< 0.01\" }");
        }
        let mut queries: Vec<QueryGate> = Vec::new();
        for (i, q) in g.queries.into_iter().enumerate() {
            let qp = format!("{p}.queries[{i}]");
            if q.query.trim().is_empty() {
                self.issue(format!("{qp}.query"), "expected a PromQL query");
            }
            for word in placeholders(&q.query) {
                if !crate::core::promql::PLACEHOLDERS.contains(&word.as_str()) {
                    self.issue(format!("{qp}.query"), format!("unknown placeholder {word}: expected {}", crate::core::promql::PLACEHOLDERS.join(", ")));
                }
            }
            let expect = match crate::core::promql::Comparison::parse(&q.expect) {
                Ok(c) => c,
                Err(e) => {
                    self.issue(format!("{qp}.expect"), e.to_string());
                    crate::core::promql::Comparison { op: crate::core::promql::Op::Lt, threshold: 0.0 }
                }
            };
            let no_data = self.if_undecided(&format!("{qp}.no_data"), q.no_data.as_deref(), IfUndecided::Fail);
            let name = q.name.unwrap_or_else(|| format!("query {}", i + 1));
            if name.trim().is_empty() || queries.iter().any(|o| o.name == name) {
                self.issue(format!("{qp}.name"), format!("expected a name of its own for the query, got {name:?}"));
            }
            queries.push(QueryGate { name, query: q.query, expect, no_data });
        }
        PrometheusGate { url, queries }
    }

    fn if_undecided(&mut self, path: &str, raw: Option<&str>, default: IfUndecided) -> IfUndecided {
        match raw {
            None => default,
            Some("pass") => IfUndecided::Pass,
            Some("fail") => IfUndecided::Fail,
            Some(other) => {
                self.issue(path, format!("expected pass or fail, got {other:?}"));
                default
            }
        }
    }

    /// `1%`, `0.1 %`: the percentage (1.0, 0.1), from 0 to `max`.
    fn percent(&mut self, path: &str, raw: &RawNumber, max: f64) -> Option<f64> {
        let parsed = match raw {
            RawNumber::Text(t) => t.trim().strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()),
            RawNumber::Number(_) => None,
        };
        match parsed {
            Some(v) if v.is_finite() && (0.0..=max).contains(&v) => Some(v),
            _ => {
                let got = match raw {
                    RawNumber::Text(t) => format!("{t:?}"),
                    RawNumber::Number(n) => n.to_string(),
                };
                let range = if max == 100.0 { " from 0% to 100%" } else { "" };
                self.issue(path, format!("expected a percentage like 1% or 0.1%{range}, got {got}"));
                None
            }
        }
    }

    /// `2.0`, `1.5`: a ratio to the old instances, at least 1 (less would fail a release as good as the old one).
    fn ratio(&mut self, path: &str, raw: &RawNumber) -> Option<f64> {
        let parsed = match raw {
            RawNumber::Number(n) => Some(*n),
            RawNumber::Text(t) => t.trim().trim_end_matches(['x', '×']).trim().parse::<f64>().ok(),
        };
        match parsed {
            Some(v) if v.is_finite() && v >= 1.0 => Some(v),
            _ => {
                let got = match raw {
                    RawNumber::Text(t) => format!("{t:?}"),
                    RawNumber::Number(n) => n.to_string(),
                };
                self.issue(path, format!("expected a ratio to the old instances of at least 1, like 2.0, got {got}"));
                None
            }
        }
    }
}

/// The `{word}` tokens of a query that look like placeholders (a bare identifier in
/// braces: label matchers always hold an operator and a quote).
fn placeholders(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in query.match_indices('{') {
        let after = &query[i + 1..];
        let word: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !word.is_empty() && after[word.len()..].starts_with('}') {
            out.push(format!("{{{word}}}"));
        }
    }
    out
}
