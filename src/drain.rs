//! Taking an instance out of the load balancer and putting it back.
//!
//! The nginx method edits the upstream file: the `server` line whose port is
//! the instance's published port gets the `down` flag (pure: [`set_down`]),
//! the file is replaced atomically on the host and nginx reloaded. The
//! command method runs the user's commands with the instance in the environment.

use crate::config::DrainMethod;
use crate::host::Shell;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DrainError {
    #[error("{file}: no `server …:{port};` line for this instance's published port {port}")]
    NoServerLine { file: String, port: u16 },
    #[error("{file}: {count} `server` lines use port {port}; capstan cannot tell which one is this instance")]
    Ambiguous { file: String, port: u16, count: usize },
    #[error("{0}")]
    Host(String),
}

/// Marks (or unmarks) as `down` the upstream `server` line whose address has `port`.
pub fn set_down(file: &str, conf: &str, port: u16, down: bool) -> Result<String, DrainError> {
    let mut out = Vec::new();
    let mut matched = 0;
    for line in conf.split_inclusive('\n') {
        match edit_server_line(line, port, down) {
            Some(edited) => {
                matched += 1;
                out.push(edited);
            }
            None => out.push(line.to_string()),
        }
    }
    match matched {
        0 => Err(DrainError::NoServerLine { file: file.into(), port }),
        1 => Ok(out.concat()),
        n => Err(DrainError::Ambiguous { file: file.into(), port, count: n }),
    }
}

/// The edited line when `line` is `server ADDR:port [params];`, else `None`.
fn edit_server_line(line: &str, port: u16, down: bool) -> Option<String> {
    let (body, comment) = match line.find('#') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    };
    let indent_len = body.len() - body.trim_start().len();
    let indent = &body[..indent_len];
    let trimmed = body.trim();
    let inner = trimmed.strip_suffix(';')?.trim_end();
    let mut tokens = inner.split_whitespace();
    if tokens.next()? != "server" {
        return None;
    }
    let addr = tokens.next()?;
    if addr.starts_with("unix:") || addr == "{" {
        return None;
    }
    let addr_port = addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok())?;
    if addr_port != port {
        return None;
    }
    let mut params: Vec<&str> = tokens.filter(|t| *t != "down").collect();
    if down {
        params.push("down");
    }
    let mut rebuilt = format!("{indent}server {addr}");
    for p in params {
        rebuilt.push(' ');
        rebuilt.push_str(p);
    }
    rebuilt.push(';');
    let newline = if line.ends_with('\n') && !comment.ends_with('\n') { "\n" } else { "" };
    if comment.is_empty() {
        Some(format!("{rebuilt}{newline}"))
    } else {
        Some(format!("{rebuilt} {comment}{newline}"))
    }
}

/// Replaces file `$1` atomically with the content on stdin, then runs the reload command `$2`.
const WRITE_AND_RELOAD: &str = r#"set -e; t="$1.capstan.$$"; cat > "$t"; chmod --reference="$1" "$t" 2>/dev/null || true; mv -f "$t" "$1"; sh -c "$2""#;

pub struct Target<'a> {
    pub service: &'a str,
    pub instance: &'a str,
    pub host_port: u16,
}

/// Drains (`down = true`) or undrains an instance. Returns a short description of what was done.
pub async fn apply(shell: &dyn Shell, method: &DrainMethod, t: &Target<'_>, down: bool) -> Result<String, DrainError> {
    match method {
        DrainMethod::None => Ok("no load balancer configured".into()),
        DrainMethod::Nginx { upstream_conf, reload, port } => {
            let port = port.unwrap_or(t.host_port);
            let read = shell.run(&["cat", "--", upstream_conf], None).await.map_err(|e| DrainError::Host(e.0))?;
            if !read.ok() {
                return Err(DrainError::Host(format!("cannot read {upstream_conf}: {}", read.stderr.trim())));
            }
            let edited = set_down(upstream_conf, &read.stdout, port, down)?;
            // One round trip: replace the file, then reload.
            let r = shell
                .run(&["sh", "-c", WRITE_AND_RELOAD, "capstan-drain", upstream_conf, reload], Some(edited.as_bytes()))
                .await
                .map_err(|e| DrainError::Host(e.0))?;
            if !r.ok() {
                // Put the file back as it was so that the next reload does not surprise anyone.
                let _ = shell.run(&["sh", "-c", WRITE_AND_RELOAD, "capstan-drain", upstream_conf, "true"], Some(read.stdout.as_bytes())).await;
                return Err(DrainError::Host(format!("`{reload}` failed with exit {}: {}", r.status, r.stderr.trim())));
            }
            Ok(format!("{} server :{port} in {upstream_conf}", if down { "down" } else { "up" }))
        }
        DrainMethod::Command { drain, undrain } => {
            let cmd = if down { drain } else { undrain };
            let inst = format!("CAPSTAN_INSTANCE={}", t.instance);
            let svc = format!("CAPSTAN_SERVICE={}", t.service);
            let port = format!("CAPSTAN_PORT={}", t.host_port);
            let r = shell
                .run(&["env", &inst, &svc, &port, "sh", "-c", cmd], None)
                .await
                .map_err(|e| DrainError::Host(e.0))?;
            if !r.ok() {
                return Err(DrainError::Host(format!("`{cmd}` failed with exit {}: {}", r.status, r.stderr.trim())));
            }
            Ok(format!("ran `{cmd}`"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "upstream shop {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082 max_fails=3; # web-2\n    server unix:/run/app.sock;\n}\nserver {\n    listen 80;\n    server_name shop;\n}\n";

    #[test]
    fn marks_only_the_instance_line() {
        let cases: &[(u16, bool, &str, &str)] = &[
            (8081, true, "    server 127.0.0.1:8081;\n", "    server 127.0.0.1:8081 down;\n"),
            (8082, true, "    server 127.0.0.1:8082 max_fails=3; # web-2\n", "    server 127.0.0.1:8082 max_fails=3 down; # web-2\n"),
        ];
        for (port, down, from, to) in cases {
            let out = set_down("f", CONF, *port, *down).unwrap();
            assert_eq!(out, CONF.replace(from, to), "port {port}");
            // And back.
            assert_eq!(set_down("f", &out, *port, false).unwrap(), CONF);
        }
    }

    #[test]
    fn draining_twice_keeps_one_down_flag() {
        let once = set_down("f", CONF, 8081, true).unwrap();
        assert_eq!(set_down("f", &once, 8081, true).unwrap(), once);
    }

    #[test]
    fn refuses_when_the_port_is_missing_or_ambiguous() {
        assert_eq!(set_down("f", CONF, 9999, true), Err(DrainError::NoServerLine { file: "f".into(), port: 9999 }));
        let two = "server 10.0.0.1:8081;\nserver 10.0.0.2:8081;\n";
        assert!(matches!(set_down("f", two, 8081, true), Err(DrainError::Ambiguous { count: 2, .. })));
    }

    #[test]
    fn ipv6_and_hostnames() {
        assert_eq!(set_down("f", "server [::1]:8081;", 8081, true).unwrap(), "server [::1]:8081 down;");
        assert_eq!(set_down("f", "  server app:8081 weight=2;", 8081, true).unwrap(), "  server app:8081 weight=2 down;");
    }
}
