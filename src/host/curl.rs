//! One HTTP GET made on the host with `curl`, as a short command (over the kept
//! shell, one round trip), where a tunnel from the runner costs a channel per
//! connection besides the request. The answer is the same [`HttpAnswer`] (the
//! body's first 64 KiB) or [`ProbeError`]; a host without `curl` answers None and
//! the caller tunnels instead.

use std::time::Duration;

use crate::host::{HttpAnswer, ProbeError, Shell};

/// `$1` seconds, `$2` Host header, `$3` URL. Prints curl's status and exit code on a
/// line, then the body's first 64 KiB.
const GET: &str = r#"command -v curl >/dev/null 2>&1 || { echo nocurl; exit 0; }
b=$(mktemp) || exit 1
s=$(curl -s -o "$b" -m "$1" -H "Host: $2" -w '%{http_code}' -- "$3"); e=$?
echo "$s $e"; dd if="$b" bs=65536 count=1 2>/dev/null; rm -f "$b""#;

/// `GET http://{addr}:{port}{path}` from the host. None: the host has no `curl`.
pub async fn get(shell: &dyn Shell, addr: &str, port: u16, path: &str, timeout: Duration) -> Result<Option<HttpAnswer>, ProbeError> {
    let authority = if addr.contains(':') { format!("[{addr}]:{port}") } else { format!("{addr}:{port}") };
    let url = format!("http://{authority}{path}");
    let secs = format!("{:.3}", timeout.as_secs_f64());
    let out = shell.run(&["sh", "-c", GET, "capstan-http", &secs, &authority, &url], None).await.map_err(|e| ProbeError::Request(e.0))?;
    if !out.ok() {
        return Err(ProbeError::Request(format!("the request could not be made on the host (exit {}): {}", out.status, out.stderr.trim())));
    }
    parse(&out.stdout, timeout)
}

fn parse(stdout: &str, timeout: Duration) -> Result<Option<HttpAnswer>, ProbeError> {
    let (first, body) = stdout.split_once('\n').unwrap_or((stdout, ""));
    if first.trim() == "nocurl" {
        return Ok(None);
    }
    let (status, exit) = first.trim().split_once(' ').unwrap_or((first.trim(), ""));
    match (status.parse::<u16>().unwrap_or(0), exit) {
        (0, "7") => Err(ProbeError::Refused),
        (0, "28") => Err(ProbeError::TimedOut),
        (0, exit) => Err(ProbeError::Request(crate::host::lb_batch::curl_exit(exit, timeout))),
        (status, _) => Ok(Some(HttpAnswer { status, body: body.to_string() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_the_script_prints_them() {
        let t = Duration::from_secs(2);
        assert_eq!(parse("200 0\nok\n", t).unwrap(), Some(HttpAnswer { status: 200, body: "ok\n".into() }));
        assert_eq!(parse("503 0\n", t).unwrap().unwrap().status, 503);
        assert!(matches!(parse("000 7\n", t), Err(ProbeError::Refused)));
        assert!(matches!(parse("000 28\n", t), Err(ProbeError::TimedOut)));
        assert_eq!(parse("000 52\n", t).unwrap_err().to_string(), "closed with no answer");
        assert_eq!(parse("nocurl\n", t).unwrap(), None);
    }

    /// The script under a local shell, against a local listener and a closed port.
    #[tokio::test]
    async fn the_script_runs_under_sh() {
        let fake = crate::host::fake::FakeHost::new();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Some(Ok(mut s)) = listener.incoming().next() {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let host = String::from_utf8_lossy(&buf[..n]).lines().find(|l| l.starts_with("Host:")).unwrap_or("").to_string();
                let _ = s.write_all(format!("HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{host}", host.len()).as_bytes());
            }
        });
        // curl is one of the packages `scripts/setup` installs.
        let a = get(fake.as_ref(), "127.0.0.1", port, "/x?y=1", Duration::from_secs(2)).await.unwrap().expect("curl");
        assert_eq!((a.status, a.body.as_str()), (201, format!("Host: 127.0.0.1:{port}").as_str()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(matches!(get(fake.as_ref(), "127.0.0.1", closed, "/", Duration::from_secs(2)).await, Err(ProbeError::Refused)));
    }
}
