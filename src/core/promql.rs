//! Prometheus' side of a query gate, pure: the query with an instance's values
//! filled in ([`fill`]), the answer of `GET /api/v1/query` read ([`parse_answer`]:
//! an instant vector or a scalar; `NaN`, `±Inf` and an empty result kept as such),
//! and the condition a value must meet ([`Comparison`], like `< 0.01`).
//!
//! Uses nothing else of capstan's (std and serde_json only): the integration
//! tests read a real Prometheus' answers through this file.

use std::collections::BTreeMap;
use std::fmt;

/// The placeholders a query may hold.
pub const PLACEHOLDERS: [&str; 3] = ["{instance}", "{address}", "{service}"];

/// `query` with each `{name}` of `vars` replaced by its value, escaped for a PromQL
/// string literal (the placeholders stand inside quotes: `up{instance="{address}"}`).
/// Other braces (label matchers) are left as they are.
pub fn fill(query: &str, vars: &[(&str, &str)]) -> String {
    let mut out = query.to_string();
    for (name, value) in vars {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\'', "\\'").replace('\n', "\\n");
        out = out.replace(&format!("{{{name}}}"), &escaped);
    }
    out
}

/// What an instant query answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Scalar(f64),
    /// One value per series; empty when nothing matched.
    Vector(Vec<Series>),
}

/// One series of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    /// `{instance="10.0.0.2:8080", job="web"}`, or `{}`.
    pub fn describe(&self) -> String {
        let inner: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{{{}}}", inner.join(", "))
    }
}

impl Answer {
    /// Every value, with its series (none for a scalar).
    pub fn values(&self) -> Vec<(Option<&Series>, f64)> {
        match self {
            Answer::Scalar(v) => vec![(None, *v)],
            Answer::Vector(s) => s.iter().map(|s| (Some(s), s.value)).collect(),
        }
    }
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerError {
    /// Not Prometheus' JSON envelope at all (a proxy's error page, a cut body).
    NotJson(String),
    /// `"status": "error"`: the query was refused (`bad_data` for a PromQL syntax error).
    Refused {
        kind: String,
        message: String,
    },
    /// A range vector or a string: the query must give one value per series.
    Unsupported(String),
    Malformed(String),
    /// No HTTP answer at all (refused, timed out), in the transport's words.
    Unreachable(String),
}

impl fmt::Display for AnswerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerError::NotJson(e) => write!(f, "not an answer of Prometheus' query API: {e}"),
            AnswerError::Refused { kind, message } => write!(f, "Prometheus refused the query ({kind}): {message}"),
            AnswerError::Unsupported(t) => write!(f, "the query gives a {t}; a gate needs an instant vector or a scalar"),
            AnswerError::Malformed(e) => write!(f, "unexpected answer from Prometheus: {e}"),
            AnswerError::Unreachable(e) => write!(f, "Prometheus did not answer: {e}"),
        }
    }
}

impl std::error::Error for AnswerError {}

/// The body of `GET /api/v1/query` (any HTTP status: Prometheus sends its errors in the
/// same envelope with 400 or 422).
pub fn parse_answer(body: &str) -> Result<Answer, AnswerError> {
    use serde_json::Value;
    let v: Value = serde_json::from_str(body).map_err(|e| AnswerError::NotJson(e.to_string()))?;
    let status = v.get("status").and_then(Value::as_str).ok_or_else(|| AnswerError::NotJson("no status".into()))?;
    if status != "success" {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        return Err(AnswerError::Refused { kind: text("errorType"), message: text("error") });
    }
    let data = v.get("data").ok_or_else(|| AnswerError::Malformed("no data".into()))?;
    let kind = data.get("resultType").and_then(Value::as_str).ok_or_else(|| AnswerError::Malformed("no resultType".into()))?;
    let result = data.get("result").ok_or_else(|| AnswerError::Malformed("no result".into()))?;
    match kind {
        "scalar" => Ok(Answer::Scalar(sample_value(result)?)),
        "vector" => {
            let list = result.as_array().ok_or_else(|| AnswerError::Malformed("result is not a list".into()))?;
            let mut out = Vec::with_capacity(list.len());
            for s in list {
                let labels = match s.get("metric") {
                    Some(Value::Object(m)) => m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect(),
                    None | Some(Value::Null) => BTreeMap::new(),
                    Some(_) => return Err(AnswerError::Malformed("metric is not an object".into())),
                };
                let value = sample_value(s.get("value").ok_or_else(|| AnswerError::Malformed("a series without a value".into()))?)?;
                out.push(Series { labels, value });
            }
            Ok(Answer::Vector(out))
        }
        "matrix" => Err(AnswerError::Unsupported("range vector (matrix)".into())),
        other => Err(AnswerError::Unsupported(other.to_string())),
    }
}

/// `[1714564803.123, "0.25"]`: the value, as Prometheus writes it (`NaN`, `+Inf`, `-Inf` too).
fn sample_value(v: &serde_json::Value) -> Result<f64, AnswerError> {
    let pair = v.as_array().filter(|a| a.len() == 2).ok_or_else(|| AnswerError::Malformed(format!("expected [time, \"value\"], got {v}")))?;
    let text = pair[1].as_str().ok_or_else(|| AnswerError::Malformed(format!("expected the value as a string, got {}", pair[1])))?;
    parse_float(text).ok_or_else(|| AnswerError::Malformed(format!("not a number: {text:?}")))
}

/// Go's float text: `0.25`, `1e-05`, `NaN`, `+Inf`, `-Inf`.
fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// How a value compares to a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

/// What a query's value must be: `< 0.01`, `>= 1`, `== 0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub op: Op,
    pub threshold: f64,
}

impl Comparison {
    /// `< 0.01` (the space optional); the threshold a finite number.
    pub fn parse(s: &str) -> Result<Comparison, ComparisonError> {
        let s = s.trim();
        let ops = [("<=", Op::Le), (">=", Op::Ge), ("==", Op::Eq), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt)];
        let Some((op, rest)) = ops.iter().find_map(|(t, op)| s.strip_prefix(t).map(|r| (*op, r))) else {
            return Err(ComparisonError::NoOperator(s.to_string()));
        };
        match rest.trim().parse::<f64>() {
            Ok(t) if t.is_finite() => Ok(Comparison { op, threshold: t }),
            _ => Err(ComparisonError::NoNumber { op, after: rest.trim().to_string() }),
        }
    }

    /// Whether `v` meets it. NaN meets nothing.
    pub fn holds(&self, v: f64) -> bool {
        let t = self.threshold;
        match self.op {
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Eq => v == t,
            Op::Ne => !v.is_nan() && v != t,
        }
    }
}

/// Why a comparison could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum ComparisonError {
    /// It does not start with one of `<`, `<=`, `>`, `>=`, `==`, `!=`.
    NoOperator(String),
    /// The operator is not followed by a finite number.
    NoNumber { op: Op, after: String },
}

impl fmt::Display for ComparisonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComparisonError::NoOperator(s) => write!(f, "expected a comparison like \"< 0.01\" (one of < <= > >= == != and a number), got {s:?}"),
            ComparisonError::NoNumber { op, after } => write!(f, "expected a number after {}, got {after:?}", op.as_str()),
        }
    }
}

impl std::error::Error for ComparisonError {}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], value: f64) -> Series {
        Series { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), value }
    }

    #[test]
    fn answers() {
        let cases: Vec<(&str, Result<Answer, &str>)> = vec![
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"instance":"10.0.0.2:8080","job":"web"},"value":[1714564803.123,"0.25"]}]}}"#,
                Ok(Answer::Vector(vec![series(&[("instance", "10.0.0.2:8080"), ("job", "web")], 0.25)])),
            ),
            (r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#, Ok(Answer::Vector(vec![]))),
            (r#"{"status":"success","data":{"resultType":"scalar","result":[1714564803.1,"1e-05"]}}"#, Ok(Answer::Scalar(1e-5))),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"+Inf"]}]}}"#,
                Ok(Answer::Vector(vec![series(&[], f64::INFINITY)])),
            ),
            (
                r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#,
                Err("Prometheus refused the query (bad_data): invalid parameter"),
            ),
            (r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#, Err("range vector")),
            (r#"{"status":"success","data":{"resultType":"string","result":[1,"x"]}}"#, Err("gives a string")),
            (r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,0.5]}]}}"#, Err("value as a string")),
            (r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"many"]}]}}"#, Err("not a number")),
            ("<html>502 Bad Gateway</html>", Err("not an answer of Prometheus' query API")),
            ("", Err("not an answer")),
        ];
        for (body, want) in cases {
            match (parse_answer(body), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{body}"),
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{body}: {e}"),
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        // NaN is kept as NaN (0/0: a rate over no requests).
        let nan = parse_answer(r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#).unwrap();
        assert!(nan.values()[0].1.is_nan());
    }

    #[test]
    fn comparisons() {
        let cases: &[(&str, f64, bool)] = &[
            ("< 0.01", 0.001, true),
            ("< 0.01", 0.01, false),
            ("<=0.01", 0.01, true),
            ("> 0", 0.0, false),
            (">= 1", 1.0, true),
            ("== 0", 0.0, true),
            ("!= 0", 2.0, true),
            ("< 0.01", f64::NAN, false),
            ("!= 0", f64::NAN, false),
            ("< 100", f64::INFINITY, false),
        ];
        for (text, v, want) in cases {
            let c = Comparison::parse(text).unwrap();
            assert_eq!(c.holds(*v), *want, "{v} {text}");
        }
        assert_eq!(Comparison::parse(" <0.5 ").unwrap().to_string(), "< 0.5");
        for bad in ["0.01", "< ", "=< 1", "< NaN", "< inf", "~ 3"] {
            assert!(Comparison::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn placeholders_are_filled_and_escaped() {
        let vars = [("instance", "web-1"), ("address", "172.18.0.3:8080"), ("service", "web")];
        assert_eq!(
            fill(r#"sum(rate(demo_requests_total{instance="{address}",status=~"5.."}[1m])) / sum(rate(demo_requests_total{instance="{address}"}[1m]))"#, &vars),
            r#"sum(rate(demo_requests_total{instance="172.18.0.3:8080",status=~"5.."}[1m])) / sum(rate(demo_requests_total{instance="172.18.0.3:8080"}[1m]))"#
        );
        assert_eq!(fill("x{name=\"{instance}\"} # {service} {job}", &vars), "x{name=\"web-1\"} # web {job}");
        assert_eq!(fill("{instance}", &[("instance", "a\"b\\c")]), "a\\\"b\\\\c");
    }
}
