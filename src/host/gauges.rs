//! What the traffic gates read from a host, each in one round trip: nginx's access log
//! since a byte offset (one `sh` on the host; a file), or a container's output since a
//! time (the engine's logs API); the engine's stats of several containers at once; a
//! Prometheus query, asked from the host. The parsing and the verdicts are `core`'s.

use std::time::Duration;

use crate::core::promql::{self, Answer, AnswerError};
use crate::core::resources::StatsSample;
use crate::host::{probe_target, Engine, EngineError, Probe, Shell, ShellError};

/// Prints the log's size in bytes (0 when it does not exist yet) on the first line; with
/// an offset in `$2`, the bytes from that offset up to that size after it (all of them when
/// the file is now shorter than the offset: rotated).
const READ_FROM: &str = r#"f=$1; s=$(stat -c %s "$f" 2>/dev/null || echo 0); echo "$s"
[ -z "$2" ] && exit 0
o=$2; [ "$o" -gt "$s" ] && o=0
tail -c +$((o + 1)) "$f" 2>/dev/null | head -c $((s - o))"#;

/// Where a file's reading stopped: the byte after the last whole line read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub u64);

/// One read of an access log file.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    /// The whole lines read.
    pub text: String,
    /// Where the next read starts (a partly written last line is read again then).
    pub next: Offset,
    /// Bytes that crossed the connection.
    pub bytes: u64,
}

async fn read_from(shell: &dyn Shell, path: &str, from: Option<Offset>) -> Result<(u64, String), ShellError> {
    let from = from.map(|o| o.0.to_string()).unwrap_or_default();
    let out = shell.run(&["sh", "-c", READ_FROM, "capstan-log", path, &from], None).await?;
    if !out.ok() {
        return Err(ShellError(format!("reading {path}: exit {}: {}", out.status, out.stderr.trim())));
    }
    let (size, rest) = out.stdout.split_once('\n').unwrap_or((out.stdout.as_str(), ""));
    let size = size.trim().parse().map_err(|_| ShellError(format!("reading {path}: unexpected answer {:?}", size)))?;
    Ok((size, rest.to_string()))
}

/// The end of `path` now: where a window's reading starts.
pub async fn log_end(shell: &dyn Shell, path: &str) -> Result<Offset, ShellError> {
    Ok(Offset(read_from(shell, path, None).await?.0))
}

/// The whole lines of `path` written since `from`.
pub async fn read_log(shell: &dyn Shell, path: &str, from: Offset) -> Result<Read, ShellError> {
    let (size, text) = read_from(shell, path, Some(from)).await?;
    let start = if from.0 > size { 0 } else { from.0 };
    let bytes = text.len() as u64;
    let whole = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let mut text = text;
    text.truncate(whole);
    Ok(Read { text, next: Offset(start + whole as u64), bytes })
}

/// A container's output since `since` (Unix seconds; whole seconds, so a second more may come).
pub async fn container_log(engine: &dyn Engine, container: &str, since: i64) -> Result<String, EngineError> {
    engine.logs_since(container, since).await
}

/// The engine's stats of each container, asked at once (each answer takes the engine about a second).
pub async fn stats(engine: &dyn Engine, containers: &[&str]) -> Vec<Result<StatsSample, EngineError>> {
    futures_util::future::join_all(containers.iter().map(|c| engine.stats(c))).await
}

/// `GET {url}/api/v1/query?query=…` from the host, read as Prometheus' answer.
pub async fn query(probe: &dyn Probe, url: &str, promql: &str, timeout: Duration) -> Result<Answer, AnswerError> {
    let full = query_url(url, promql).map_err(|e| AnswerError::Unreachable(e.to_string()))?;
    let (addr, port, path) = probe_target(&full).map_err(|e| AnswerError::Unreachable(e.to_string()))?;
    match probe.http_get(&addr, port, &path, timeout).await {
        Ok(a) => promql::parse_answer(&a.body),
        Err(e) => Err(AnswerError::Unreachable(format!("GET {url}/api/v1/query: {e}"))),
    }
}

/// A Prometheus URL that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {why}")]
pub struct BadPrometheusUrl {
    pub url: String,
    /// What the URL parser said.
    pub why: String,
}

/// The query API's URL under `base` (which may have a path prefix), the query encoded.
pub fn query_url(base: &str, promql: &str) -> Result<String, BadPrometheusUrl> {
    let mut u = reqwest::Url::parse(&format!("{}/api/v1/query", base.trim_end_matches('/')))
        .map_err(|e| BadPrometheusUrl { url: base.to_string(), why: e.to_string() })?;
    u.query_pairs_mut().append_pair("query", promql);
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_encoded_under_the_base() {
        let cases = [
            ("http://127.0.0.1:9090", "up", "http://127.0.0.1:9090/api/v1/query?query=up"),
            ("http://p:9090/prom/", r#"sum(x{a="b"}) < 1"#, "http://p:9090/prom/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29+%3C+1"),
        ];
        for (base, q, want) in cases {
            assert_eq!(query_url(base, q).unwrap(), want);
        }
    }
}
