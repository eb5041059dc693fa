//! nginx's access log, read for the traffic gates (pure: lines in, entries out).
//!
//! nginx knows, for every request, which upstream served it, with what status
//! and how fast. The README gives a `log_format` that writes this ([`LOG_FORMAT`],
//! or [`LOG_FORMAT_JSON`] with `escape=json`); [`parse_line`] reads either, and
//! [`parse`] a whole text, skipping and counting the lines of any other format
//! (the default `combined` format, error-log lines from a container's output):
//! never an error, since an access log may be shared.
//!
//! The upstream variables hold one value per server tried: `10.0.0.2:80,
//! 10.0.0.3:80` with statuses `502, 200` and times `0.001, 0.012` when the first
//! failed and the request was retried on the second; values of two upstream
//! groups (an internal redirect, `error_page` or `X-Accel-Redirect`) are joined
//! by ` : `. A request nginx answered itself has `-` there. Each server tried is
//! an [`Attempt`], so a failed first try counts against the server that failed
//! even when the client got the retry's 200.

use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

/// The text `log_format` the README gives (in nginx's `http { }` block; `access_log
/// /var/log/nginx/capstan.log capstan;` in the `server { }` that proxies). The upstream
/// variables are quoted since their lists hold spaces; the parser takes them unquoted too.
pub const LOG_FORMAT: &str =
    r#"log_format capstan '$remote_addr [$time_iso8601] "$request" $status "$upstream_addr" "$upstream_status" "$upstream_response_time" $request_time';"#;

/// The JSON one, for a log that other tools read too.
pub const LOG_FORMAT_JSON: &str = r#"log_format capstan_json escape=json '{"time":"$time_iso8601","remote_addr":"$remote_addr","request":"$request","status":"$status","upstream_addr":"$upstream_addr","upstream_status":"$upstream_status","upstream_response_time":"$upstream_response_time","request_time":"$request_time"}';"#;

/// One request as nginx logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When nginx wrote the line: at the end of the request.
    pub time: OffsetDateTime,
    /// The status the client got.
    pub status: u16,
    /// The request line (`GET /pay HTTP/1.1`), as logged.
    pub request: String,
    /// From the first byte read from the client to the last one sent.
    pub request_time: Option<Duration>,
    /// Each upstream server tried, in order; empty when nginx answered itself.
    pub attempts: Vec<Attempt>,
}

/// One server tried for a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// As nginx wrote it: `172.18.0.3:8080`, `unix:/run/app.sock`, or the upstream
    /// group's name when no server could be selected.
    pub addr: String,
    /// The status it answered; `None` (`-`) when none was received.
    pub status: Option<u16>,
    pub response_time: Option<Duration>,
}

impl Attempt {
    /// A server error: a 5xx, including the 502 and 504 nginx records when the
    /// server could not be reached or did not answer in time, or no answer at all.
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// The entries of a text, and how many of its lines were of another format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    /// Non-empty lines that were not an entry.
    pub skipped: usize,
}

/// Every line of `text`: entries in order, other lines counted.
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_line(line) {
            Some(e) => out.entries.push(e),
            None => out.skipped += 1,
        }
    }
    out
}

/// One line in the text or the JSON format; `None` for anything else.
pub fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim();
    if line.starts_with('{') {
        parse_json(line)
    } else {
        parse_text(line)
    }
}

/// `$remote_addr [$time] "$request" $status $upstream_addr $upstream_status
/// $upstream_response_time $request_time`, the upstream fields quoted or not.
fn parse_text(line: &str) -> Option<Entry> {
    let (_remote, rest) = line.split_once(' ')?;
    let rest = rest.strip_prefix('[')?;
    let (time, rest) = rest.split_once(']')?;
    let time = parse_time(time)?;
    let rest = rest.strip_prefix(" \"")?;
    let (request, rest) = quoted_rest(rest)?;
    let fields = fields(rest.trim_start())?;
    let [status, addr, ustatus, utime, rtime] = fields.as_slice() else { return None };
    Some(Entry { time, status: parse_status(status)?, request, request_time: parse_seconds(rtime)?, attempts: attempts(addr, ustatus, utime)? })
}

/// The rest of a quoted string whose opening quote is consumed: its text (escapes as
/// logged) and what follows the closing quote. nginx writes `"` inside as `\x22`, and
/// a JSON escape as `\"`.
fn quoted_rest(s: &str) -> Option<(String, &str)> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((s[..i].to_string(), &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The fields after the request: each quoted, or a run of words where a word ending
/// in `,` or a lone `:` joins the next (an upstream list written unquoted).
fn fields(mut s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        if let Some(q) = s.strip_prefix('"') {
            let (text, rest) = quoted_rest(q)?;
            if !(rest.is_empty() || rest.starts_with(' ')) {
                return None;
            }
            out.push(text);
            s = rest.trim_start();
            continue;
        }
        let mut field = String::new();
        loop {
            let end = s.find(' ').unwrap_or(s.len());
            let word = &s[..end];
            s = s[end..].trim_start();
            if !field.is_empty() {
                field.push(' ');
            }
            field.push_str(word);
            let joins = word.ends_with(',') || word == ":" || s.starts_with(": ") || s == ":";
            if !joins || s.is_empty() {
                break;
            }
        }
        out.push(field);
    }
    Some(out)
}

#[derive(Deserialize)]
struct JsonLine {
    time: Option<String>,
    msec: Option<NumOrText>,
    #[serde(default)]
    request: String,
    status: NumOrText,
    upstream_addr: String,
    #[serde(default)]
    upstream_status: Option<NumOrText>,
    #[serde(default)]
    upstream_response_time: Option<NumOrText>,
    #[serde(default)]
    request_time: Option<NumOrText>,
}

/// A JSON value written as `"200"` or `200`.
#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(serde_json::Number),
    Text(String),
}

impl NumOrText {
    fn text(&self) -> String {
        match self {
            NumOrText::Num(n) => n.to_string(),
            NumOrText::Text(t) => t.clone(),
        }
    }
}

fn parse_json(line: &str) -> Option<Entry> {
    let j: JsonLine = serde_json::from_str(line).ok()?;
    let time = match (&j.time, &j.msec) {
        (Some(t), _) => parse_time(t)?,
        (None, Some(m)) => parse_time(&m.text())?,
        (None, None) => return None,
    };
    let dash = || "-".to_string();
    Some(Entry {
        time,
        status: parse_status(&j.status.text())?,
        request: j.request,
        request_time: parse_seconds(&j.request_time.as_ref().map(NumOrText::text).unwrap_or_else(dash))?,
        attempts: attempts(
            &j.upstream_addr,
            &j.upstream_status.as_ref().map(NumOrText::text).unwrap_or_else(dash),
            &j.upstream_response_time.as_ref().map(NumOrText::text).unwrap_or_else(dash),
        )?,
    })
}

/// `$time_iso8601` (`2024-05-01T12:00:03+00:00`), `$msec` (`1714564803.123`) or
/// `$time_local` (`01/May/2024:12:00:03 +0000`).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    if let Some((secs, frac)) = s.split_once('.').or(Some((s, ""))) {
        if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit()) && frac.len() <= 9 {
            let nanos: i128 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
            let total = secs.parse::<i128>().ok()? * 1_000_000_000 + nanos;
            return OffsetDateTime::from_unix_timestamp_nanos(total).ok();
        }
    }
    let local = time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]");
    OffsetDateTime::parse(s, &local).ok()
}

fn parse_status(s: &str) -> Option<u16> {
    let s = s.trim();
    if s.len() != 3 {
        return None;
    }
    s.parse().ok().filter(|n| (100..600).contains(n))
}

/// `0.012` seconds (nginx's millisecond resolution); `-` is `Some(None)`; anything else `None`.
fn parse_seconds(s: &str) -> Option<Option<Duration>> {
    let s = s.trim();
    if s == "-" || s.is_empty() {
        return Some(None);
    }
    let v: f64 = s.parse().ok()?;
    if !(v.is_finite() && v >= 0.0) {
        return None;
    }
    Some(Some(Duration::from_secs_f64(v)))
}

/// Splits an upstream variable into its values: `, ` between servers, ` : ` between groups.
fn values(s: &str) -> Vec<&str> {
    s.split(" : ").flat_map(|group| group.split(',')).map(str::trim).collect()
}

/// The servers tried, from the three upstream variables; `None` when they disagree
/// on the number of servers (a line of another format).
fn attempts(addr: &str, status: &str, time: &str) -> Option<Vec<Attempt>> {
    let addr = addr.trim();
    if addr == "-" || addr.is_empty() {
        return Some(Vec::new());
    }
    let addrs = values(addr);
    let n = addrs.len();
    let statuses = values(status);
    let times = values(time);
    // A whole variable may be `-` (no server answered at all).
    let statuses = if statuses == ["-"] { vec!["-"; n] } else { statuses };
    let times = if times == ["-"] { vec!["-"; n] } else { times };
    if statuses.len() != n || times.len() != n {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for ((a, s), t) in addrs.into_iter().zip(statuses).zip(times) {
        if a.is_empty() || a.contains(char::is_whitespace) {
            return None;
        }
        let status = if s == "-" { None } else { Some(parse_status(s)?) };
        out.push(Attempt { addr: a.to_string(), status, response_time: parse_seconds(t)? });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn at(addr: &str, status: Option<u16>, time: Option<Duration>) -> Attempt {
        Attempt { addr: addr.into(), status, response_time: time }
    }

    /// (line, the client's status, the attempts); `None`: skipped as another format.
    #[test]
    fn lines() {
        type Case = (&'static str, Option<(u16, Vec<Attempt>)>);
        let cases: Vec<Case> = vec![
            // The README's text format, one server.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "172.18.0.3:8080" "200" "0.012" 0.013"#,
                Some((200, vec![at("172.18.0.3:8080", Some(200), ms(12))])),
            ),
            // A retry: the first server failed, the second answered.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "10.0.0.2:80, 10.0.0.3:80" "502, 200" "0.001, 0.012" 0.014"#,
                Some((200, vec![at("10.0.0.2:80", Some(502), ms(1)), at("10.0.0.3:80", Some(200), ms(12))])),
            ),
            // The same unquoted, as the brief's format writes it.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 10.0.0.2:80, 10.0.0.3:80 502, 200 0.001, 0.012 0.014"#,
                Some((200, vec![at("10.0.0.2:80", Some(502), ms(1)), at("10.0.0.3:80", Some(200), ms(12))])),
            ),
            // An internal redirect to another group: ` : ` between the groups.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET /x HTTP/1.1" 200 "10.0.0.2:80 : 10.0.1.5:80" "404 : 200" "0.002 : 0.004" 0.007"#,
                Some((200, vec![at("10.0.0.2:80", Some(404), ms(2)), at("10.0.1.5:80", Some(200), ms(4))])),
            ),
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET /x HTTP/1.1" 200 10.0.0.2:80 : 10.0.1.5:80 404 : 200 0.002 : 0.004 0.007"#,
                Some((200, vec![at("10.0.0.2:80", Some(404), ms(2)), at("10.0.1.5:80", Some(200), ms(4))])),
            ),
            // Answered by nginx itself: no server tried.
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET /nginx_status HTTP/1.1" 200 "-" "-" "-" 0.000"#, Some((200, vec![]))),
            // A timeout: nginx's 504, the server's status unknown per value.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 504 "172.18.0.3:8080" "504" "60.001" 60.001"#,
                Some((504, vec![at("172.18.0.3:8080", Some(504), Some(Duration::from_secs_f64(60.001)))])),
            ),
            // The client went away before an answer: 499, no upstream status.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 499 "172.18.0.3:8080" "-" "-" 0.300"#,
                Some((499, vec![at("172.18.0.3:8080", None, None)])),
            ),
            // No live upstreams: the group's name and 502.
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 502 "web" "502" "0.000" 0.000"#, Some((502, vec![at("web", Some(502), ms(0))]))),
            // A request line holding an escaped quote.
            (
                r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET /?q=\x22a b\x22 HTTP/1.1" 200 "172.18.0.3:8080" "200" "0.001" 0.001"#,
                Some((200, vec![at("172.18.0.3:8080", Some(200), ms(1))])),
            ),
            // $msec and $time_local for the time.
            (
                r#"10.0.0.9 [1714564803.123] "GET / HTTP/1.1" 200 "172.18.0.3:8080" "200" "0.001" 0.001"#,
                Some((200, vec![at("172.18.0.3:8080", Some(200), ms(1))])),
            ),
            (
                r#"10.0.0.9 [01/May/2024:12:00:03 +0000] "GET / HTTP/1.1" 200 "172.18.0.3:8080" "200" "0.001" 0.001"#,
                Some((200, vec![at("172.18.0.3:8080", Some(200), ms(1))])),
            ),
            // The JSON format, quoted numbers or not.
            (
                r#"{"time":"2024-05-01T12:00:03+00:00","remote_addr":"10.0.0.9","request":"GET / HTTP/1.1","status":"200","upstream_addr":"10.0.0.2:80, 10.0.0.3:80","upstream_status":"502, 200","upstream_response_time":"0.001, 0.012","request_time":"0.014"}"#,
                Some((200, vec![at("10.0.0.2:80", Some(502), ms(1)), at("10.0.0.3:80", Some(200), ms(12))])),
            ),
            (
                r#"{"time":"2024-05-01T12:00:03+00:00","request":"GET / HTTP/1.1","status":500,"upstream_addr":"172.18.0.3:8080","upstream_status":"500","upstream_response_time":"0.020","request_time":0.021}"#,
                Some((500, vec![at("172.18.0.3:8080", Some(500), ms(20))])),
            ),
            (
                r#"{"time":"2024-05-01T12:00:03+00:00","request":"GET / HTTP/1.1","status":"200","upstream_addr":"","upstream_status":"","upstream_response_time":"","request_time":"0.000"}"#,
                Some((200, vec![])),
            ),
            // Other formats: skipped, never an error.
            (r#"10.0.0.9 - - [01/May/2024:12:00:03 +0000] "GET / HTTP/1.1" 200 612 "-" "curl/8.0""#, None),
            ("2024/05/01 12:00:03 [error] 29#29: *1 connect() failed (111: Connection refused) while connecting to upstream", None),
            ("/docker-entrypoint.sh: Configuration complete; ready for start up", None),
            (r#"{"level":"info","msg":"started"}"#, None),
            (r#"{"time":"yesterday","status":"200","upstream_addr":"-"}"#, None),
            // Counts that disagree, a status that is no status, a line cut short.
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "10.0.0.2:80, 10.0.0.3:80" "200" "0.001" 0.001"#, None),
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" OK "172.18.0.3:8080" "200" "0.001" 0.001"#, None),
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "172.18.0.3:8080" "200""#, None),
            (r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "172.18.0.3:8080" "200" "0.001" 0.001 extra"#, None),
        ];
        for (line, want) in cases {
            let got = parse_line(line).map(|e| (e.status, e.attempts));
            assert_eq!(got, want, "{line}");
        }
    }

    /// Lines nginx 1.22 wrote with the three formats (the README's, the JSON one, and the
    /// same unquoted) for one set of requests: a retry after a refused connection, a 500
    /// then no live server left (the group's name), a server down, a request nginx
    /// answered itself, and an `error_page` redirect to another group.
    #[test]
    fn lines_nginx_wrote() {
        let text = r#"127.0.0.1 [2026-11-30T17:56:27+00:00] "GET / HTTP/1.1" 200 "127.0.0.1:1, 127.0.0.1:18932" "502, 200" "0.000, 0.001" 0.001
127.0.0.1 [2026-11-30T17:56:27+00:00] "GET / HTTP/1.1" 502 "127.0.0.1:18932, web" "500, 502" "0.000, 0.000" 0.001
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /dead HTTP/1.1" 502 "127.0.0.1:1" "502" "0.000" 0.000
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /local HTTP/1.1" 200 "-" "-" "-" 0.000
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /redir HTTP/1.1" 502 "127.0.0.1:18932 : web" "404 : 502" "0.017 : 0.000" 0.017"#;
        let plain = r#"127.0.0.1 [2026-11-30T17:56:27+00:00] "GET / HTTP/1.1" 200 127.0.0.1:1, 127.0.0.1:18932 502, 200 0.000, 0.001 0.001
127.0.0.1 [2026-11-30T17:56:27+00:00] "GET / HTTP/1.1" 502 127.0.0.1:18932, web 500, 502 0.000, 0.000 0.001
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /dead HTTP/1.1" 502 127.0.0.1:1 502 0.000 0.000
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /local HTTP/1.1" 200 - - - 0.000
127.0.0.1 [2026-11-30T17:56:28+00:00] "GET /redir HTTP/1.1" 502 127.0.0.1:18932 : web 404 : 502 0.017 : 0.000 0.017"#;
        let json = r#"{"time":"2026-11-30T17:56:27+00:00","remote_addr":"127.0.0.1","request":"GET / HTTP/1.1","status":"200","upstream_addr":"127.0.0.1:1, 127.0.0.1:18932","upstream_status":"502, 200","upstream_response_time":"0.000, 0.001","request_time":"0.001"}
{"time":"2026-11-30T17:56:27+00:00","remote_addr":"127.0.0.1","request":"GET / HTTP/1.1","status":"502","upstream_addr":"127.0.0.1:18932, web","upstream_status":"500, 502","upstream_response_time":"0.000, 0.000","request_time":"0.001"}
{"time":"2026-11-30T17:56:28+00:00","remote_addr":"127.0.0.1","request":"GET /dead HTTP/1.1","status":"502","upstream_addr":"127.0.0.1:1","upstream_status":"502","upstream_response_time":"0.000","request_time":"0.000"}
{"time":"2026-11-30T17:56:28+00:00","remote_addr":"127.0.0.1","request":"GET /local HTTP/1.1","status":"200","upstream_addr":"","upstream_status":"","upstream_response_time":"","request_time":"0.000"}
{"time":"2026-11-30T17:56:28+00:00","remote_addr":"127.0.0.1","request":"GET /redir HTTP/1.1","status":"502","upstream_addr":"127.0.0.1:18932 : web","upstream_status":"404 : 502","upstream_response_time":"0.017 : 0.000","request_time":"0.017"}"#;
        let read = parse(text);
        assert_eq!(read.skipped, 0);
        let tried: Vec<Vec<(&str, Option<u16>)>> = read.entries.iter().map(|e| e.attempts.iter().map(|a| (a.addr.as_str(), a.status)).collect()).collect();
        assert_eq!(
            tried,
            [
                vec![("127.0.0.1:1", Some(502)), ("127.0.0.1:18932", Some(200))],
                vec![("127.0.0.1:18932", Some(500)), ("web", Some(502))],
                vec![("127.0.0.1:1", Some(502))],
                vec![],
                vec![("127.0.0.1:18932", Some(404)), ("web", Some(502))],
            ]
        );
        assert_eq!(read.entries[4].attempts[0].response_time, ms(17));
        assert_eq!(parse(plain), read, "unquoted");
        assert_eq!(parse(json), read, "JSON");
    }

    #[test]
    fn times_and_request() {
        let e = parse_line(r#"10.0.0.9 [2024-05-01T14:00:03+02:00] "GET /pay HTTP/1.1" 201 "a:1" "201" "0.250" 0.251"#).unwrap();
        assert_eq!(e.time, time::macros::datetime!(2024-05-01 12:00:03 UTC));
        assert_eq!(e.request, "GET /pay HTTP/1.1");
        assert_eq!(e.request_time, Some(Duration::from_millis(251)));
        let cases: &[(&str, Option<OffsetDateTime>)] = &[
            ("2024-05-01T12:00:03+00:00", Some(time::macros::datetime!(2024-05-01 12:00:03 UTC))),
            ("1714564803.123", Some(time::macros::datetime!(2024-05-01 12:00:03.123 UTC))),
            ("1714564803", Some(time::macros::datetime!(2024-05-01 12:00:03 UTC))),
            ("01/May/2024:14:00:03 +0200", Some(time::macros::datetime!(2024-05-01 12:00:03 UTC))),
            ("May 1", None),
            ("", None),
            (".5", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_time(s), *want, "{s:?}");
        }
    }

    #[test]
    fn a_text_counts_what_it_skips() {
        let text = format!(
            "{}\n\nnginx: [warn] something\n{}\n",
            r#"10.0.0.9 [2024-05-01T12:00:03+00:00] "GET / HTTP/1.1" 200 "a:1" "200" "0.001" 0.001"#,
            r#"10.0.0.9 [2024-05-01T12:00:04+00:00] "GET / HTTP/1.1" 500 "a:1" "500" "0.002" 0.002"#,
        );
        let p = parse(&text);
        assert_eq!((p.entries.len(), p.skipped), (2, 1));
        assert!(p.entries[1].attempts[0].failed() && !p.entries[0].attempts[0].failed());
    }

    /// The formats the README gives are the ones read: a line nginx would write with each.
    #[test]
    fn the_given_formats_read_back() {
        let fill = |f: &str| {
            f.replace("$remote_addr", "10.0.0.9")
                .replace("$time_iso8601", "2024-05-01T12:00:03+00:00")
                .replace("$request_time", "0.013")
                .replace("$request", "GET / HTTP/1.1")
                .replace("$status", "200")
                .replace("$upstream_addr", "10.0.0.2:80, 10.0.0.3:80")
                .replace("$upstream_status", "502, 200")
                .replace("$upstream_response_time", "0.001, 0.012")
        };
        for format in [LOG_FORMAT, LOG_FORMAT_JSON] {
            let body = format.split_once(" '").unwrap().1.trim_end_matches("';");
            let e = parse_line(&fill(body)).unwrap_or_else(|| panic!("{format}"));
            assert_eq!(e.attempts.len(), 2, "{format}");
            assert_eq!(e.request_time, ms(13));
        }
    }
}
