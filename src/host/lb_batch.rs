//! The traffic check's batch, run on the host in one `sh`: the instance's received
//! bytes (its network namespace's `/proc/<pid>/net/dev`), every request through the
//! load balancer at once with `curl`, the counter again. One round trip over a slow
//! link where asking from the runner takes a channel per request and an exec per
//! counter read. A host without `curl`, or whose counters cannot be read, answers
//! None: the caller asks from the runner instead.

use crate::host::{Host, ShellError};

/// `$1` pid, `$2` url, `$3` requests. Prints the counters, `@@`, one line a request
/// (its status, `000` for no answer, and curl's exit code, in one write so that the
/// requests' lines never interleave), `@@`, the counters.
const BATCH: &str = r#"pid=$1 url=$2 n=$3
command -v curl >/dev/null 2>&1 || { echo nocurl; exit 0; }
cat "/proc/$pid/net/dev" 2>/dev/null || { echo nocounters; exit 0; }
echo @@
i=0
while [ "$i" -lt "$n" ]; do ( s=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$url"); echo "$s $?" ) & i=$((i+1)); done
wait
echo @@
cat "/proc/$pid/net/dev""#;

/// What one batch saw.
#[derive(Debug, PartialEq)]
pub struct Seen {
    /// Bytes the instance received during the batch.
    pub received: u64,
    /// Each request's status; 0: no answer.
    pub statuses: Vec<u16>,
    /// Why the last request that got no answer got none, if one did.
    pub error: Option<String>,
}

/// Sends `requests` GETs of `url` from the host at once and counts what the instance
/// whose main process is `pid` received meanwhile. None: this host cannot (no curl,
/// no counters).
pub async fn send(host: &Host, pid: i64, url: &str, requests: u32) -> Result<Option<Seen>, ShellError> {
    let (pid, n) = (pid.to_string(), requests.to_string());
    let out = host.shell.run(&["sh", "-c", BATCH, "capstan-traffic", &pid, url, &n], None).await?;
    if !out.ok() {
        return Ok(None);
    }
    Ok(parse(&out.stdout))
}

fn parse(stdout: &str) -> Option<Seen> {
    let parts: Vec<&str> = stdout.split("@@\n").collect();
    let [before, answers, after] = parts.as_slice() else { return None };
    let received = net_dev_rx(after)?.saturating_sub(net_dev_rx(before)?);
    let (mut statuses, mut error) = (Vec::new(), None);
    for line in answers.lines() {
        let (status, exit) = line.split_once(' ').unwrap_or((line, ""));
        let status = status.trim().parse().unwrap_or(0);
        if status == 0 {
            error = Some(curl_exit(exit.trim(), std::time::Duration::from_secs(5)));
        }
        statuses.push(status);
    }
    Some(Seen { received, statuses, error })
}

/// What curl's exit code says of a request (given `timeout`) that got no answer.
pub(crate) fn curl_exit(code: &str, timeout: std::time::Duration) -> String {
    match code {
        "6" => "cannot resolve the host".into(),
        "7" => "connection refused".into(),
        "28" => format!("timed out after {}", humantime::format_duration(timeout)),
        "52" => "closed with no answer".into(),
        "56" => "connection reset".into(),
        other => format!("no answer (curl exit {other})"),
    }
}

/// Received bytes summed over every interface but loopback, from `/proc/net/dev` text.
pub fn net_dev_rx(text: &str) -> Option<u64> {
    let mut total = None;
    for line in text.lines().skip(2) {
        let (iface, counters) = line.split_once(':')?;
        if iface.trim() == "lo" {
            continue;
        }
        let rx: u64 = counters.split_whitespace().next()?.parse().ok()?;
        total = Some(total.unwrap_or(0) + rx);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    7942     103    0    0    0     0          0         0     9117      89    0    0    0     0       0          0\n  eth1:      58       1    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n";

    #[test]
    fn net_dev_counters() {
        assert_eq!(net_dev_rx(DEV), Some(8000));
        assert_eq!(net_dev_rx("garbage"), None);
    }

    #[test]
    fn a_batch_as_the_script_prints_it() {
        let after = DEV.replace("7942", "9942");
        let out = format!("{DEV}@@\n200 0\n200 0\n000 7\n502 22\n@@\n{after}");
        let seen = parse(&out).unwrap();
        assert_eq!(seen, Seen { received: 2000, statuses: vec![200, 200, 0, 502], error: Some("connection refused".into()) });
        assert_eq!(parse(&format!("{DEV}@@\n000 28\n@@\n{DEV}")).unwrap().error.as_deref(), Some("timed out after 5s"));
        assert_eq!(parse("nocurl\n"), None);
        assert_eq!(parse("nocounters\n"), None);
    }

    /// The script itself, run by a local shell against a local listener: statuses and
    /// counters come back in the shape `parse` reads.
    #[tokio::test]
    async fn the_script_runs_under_sh() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for s in listener.incoming().take(3) {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        // curl is one of the packages `scripts/setup` installs.
        let seen = send(&host, std::process::id() as i64, &format!("http://127.0.0.1:{port}/"), 3).await.unwrap().expect("curl and /proc/<pid>/net/dev");
        assert_eq!(seen.statuses, [204, 204, 204]);
        assert_eq!(seen.error, None);
        // No answer: status 0 and curl's reason.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let seen = send(&host, std::process::id() as i64, &format!("http://127.0.0.1:{closed}/"), 2).await.unwrap().unwrap();
        assert_eq!((seen.statuses, seen.error.as_deref()), (vec![0, 0], Some("connection refused")));
    }
}
