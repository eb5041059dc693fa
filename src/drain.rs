//! Taking an instance out of the load balancer and putting it back.
//!
//! The nginx method edits the upstream file: the `server` line whose port is
//! the instance's published port gets the `down` flag (pure: [`set_down`]),
//! the file is replaced atomically on the host and nginx reloaded (one round
//! trip when the file is as capstan last wrote it). The
//! command method runs the user's commands with the instance in the environment.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Replaces file `$1` atomically with the content on stdin, then runs the reload
/// command `$3`. With a SHA-256 in `$2`, only if the file still has that digest
/// (else it prints `stale` and changes nothing).
const WRITE_AND_RELOAD: &str = r#"set -e; f=$1
if [ -n "$2" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" != "$2" ]; then cat >/dev/null; echo stale; exit 0; fi
t="$f.capstan.$$"; cat > "$t"; chmod --reference="$f" "$t" 2>/dev/null || true; mv -f "$t" "$f"
sh -c "$3"; echo written"#;

pub struct Target<'a> {
    pub service: &'a str,
    pub instance: &'a str,
    pub host_port: u16,
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Drains and undrains instances. Remembers what it last wrote to each
/// upstream file, so that the next edit is one round trip (write if unchanged,
/// reload) instead of two (read, then write and reload).
#[derive(Default)]
pub struct Drainer {
    known: Mutex<HashMap<String, String>>,
}

impl Drainer {
    /// Drains (`down = true`) or undrains an instance. Returns a short description of what was done.
    pub async fn apply(&self, shell: &dyn Shell, method: &DrainMethod, t: &Target<'_>, down: bool) -> Result<String, DrainError> {
        match method {
            DrainMethod::None => Ok("no load balancer configured".into()),
            DrainMethod::Nginx { upstream_conf, reload, port } => {
                let port = port.unwrap_or(t.host_port);
                let known = self.known.lock().unwrap().get(upstream_conf).cloned();
                if let Some(current) = known {
                    if self.write(shell, upstream_conf, reload, &current, port, down, true).await? {
                        return Ok(format!("{} server :{port} in {upstream_conf}", if down { "down" } else { "up" }));
                    }
                }
                let read = shell.run(&["cat", "--", upstream_conf], None).await.map_err(|e| DrainError::Host(e.0))?;
                if !read.ok() {
                    return Err(DrainError::Host(format!("cannot read {upstream_conf}: {}", read.stderr.trim())));
                }
                self.write(shell, upstream_conf, reload, &read.stdout, port, down, false).await?;
                Ok(format!("{} server :{port} in {upstream_conf}", if down { "down" } else { "up" }))
            }
            DrainMethod::Command { drain, undrain } => {
                let cmd = if down { drain } else { undrain };
                let inst = format!("CAPSTAN_INSTANCE={}", t.instance);
                let svc = format!("CAPSTAN_SERVICE={}", t.service);
                let port = format!("CAPSTAN_PORT={}", t.host_port);
                let r = shell.run(&["env", &inst, &svc, &port, "sh", "-c", cmd], None).await.map_err(|e| DrainError::Host(e.0))?;
                if !r.ok() {
                    return Err(DrainError::Host(format!("`{cmd}` failed with exit {}: {}", r.status, r.stderr.trim())));
                }
                Ok(format!("ran `{cmd}`"))
            }
        }
    }

    /// Writes `current` edited for `port` and reloads. With `guarded`, only if the
    /// file on the host is still `current`: returns false when it was not.
    #[allow(clippy::too_many_arguments)]
    async fn write(&self, shell: &dyn Shell, file: &str, reload: &str, current: &str, port: u16, down: bool, guarded: bool) -> Result<bool, DrainError> {
        let edited = set_down(file, current, port, down)?;
        let guard = if guarded { sha256_hex(current) } else { String::new() };
        let r = shell
            .run(&["sh", "-c", WRITE_AND_RELOAD, "capstan-drain", file, &guard, reload], Some(edited.as_bytes()))
            .await
            .map_err(|e| DrainError::Host(e.0))?;
        if r.ok() && r.stdout.trim_end().ends_with("stale") {
            self.known.lock().unwrap().remove(file);
            return Ok(false);
        }
        if !r.ok() {
            self.known.lock().unwrap().remove(file);
            // Put the file back as it was so that the next reload does not surprise anyone.
            let _ = shell.run(&["sh", "-c", WRITE_AND_RELOAD, "capstan-drain", file, "", "true"], Some(current.as_bytes())).await;
            return Err(DrainError::Host(format!("`{reload}` failed with exit {}: {}", r.status, r.stderr.trim())));
        }
        self.known.lock().unwrap().insert(file.to_string(), edited);
        Ok(true)
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

    /// The real script, run by a local shell: one round trip when the file is as
    /// last written, a re-read when someone else changed it meanwhile.
    #[tokio::test]
    async fn edits_in_one_round_trip_unless_the_file_changed() {
        let host = crate::fake::FakeHost::new();
        let file = host.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let marker = host.dir.path().join("reloads");
        let method = DrainMethod::Nginx { upstream_conf: file.display().to_string(), reload: format!("echo reload >> {}", marker.display()), port: None };
        let t = Target { service: "web", instance: "web-1", host_port: 8081 };
        let d = Drainer::default();
        let runs = || host.state.lock().unwrap().log.iter().filter(|l| l.starts_with("run ")).count();
        d.apply(host.as_ref(), &method, &t, true).await.unwrap();
        assert_eq!(runs(), 2, "read, then write and reload");
        assert!(std::fs::read_to_string(&file).unwrap().contains("server 127.0.0.1:8081 down;"));
        d.apply(host.as_ref(), &method, &t, false).await.unwrap();
        assert_eq!(runs(), 3, "the undrain needs no read");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONF);
        // Someone edits the file between two drains: capstan notices, re-reads, keeps their edit.
        let theirs = CONF.replace("max_fails=3", "max_fails=5");
        std::fs::write(&file, &theirs).unwrap();
        d.apply(host.as_ref(), &method, &t, true).await.unwrap();
        assert_eq!(runs(), 6, "a stale write, a read, a write");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), theirs.replace("server 127.0.0.1:8081;", "server 127.0.0.1:8081 down;"));
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 3, "reloaded once per edit");
    }

    /// The generic method runs the user's commands with the instance in the environment.
    #[tokio::test]
    async fn command_drain_gets_the_instance_in_its_environment() {
        let host = crate::fake::FakeHost::new();
        let out = host.dir.path().join("calls");
        let method = DrainMethod::Command {
            drain: format!("echo \"drain $CAPSTAN_SERVICE $CAPSTAN_INSTANCE $CAPSTAN_PORT\" >> {}", out.display()),
            undrain: format!("echo \"undrain $CAPSTAN_INSTANCE\" >> {}", out.display()),
        };
        let t = Target { service: "web", instance: "web-1", host_port: 8081 };
        let d = Drainer::default();
        d.apply(host.as_ref(), &method, &t, true).await.unwrap();
        d.apply(host.as_ref(), &method, &t, false).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "drain web web-1 8081\nundrain web-1\n");
        let failing = DrainMethod::Command { drain: "exit 3".into(), undrain: "true".into() };
        let err = d.apply(host.as_ref(), &failing, &t, true).await.unwrap_err();
        assert!(err.to_string().contains("`exit 3` failed with exit 3"), "{err}");
    }
}
