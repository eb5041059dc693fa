//! Taking instances out of the load balancer and putting them back.
//!
//! The nginx method marks the instances' upstream `server` lines `down` (found by
//! any name nginx can reach an instance by: `upstream.rs`, pure), writes the file
//! on the host in place (a single-file bind mount into an nginx container keeps
//! seeing it), tests and reloads nginx, and proves that the nginx that runs took
//! the change: inside an nginx container, `nginx -T` must show the flag. One call
//! may edit several lines with one reload (the undrain of one instance and the
//! drain of the next). A failing `nginx -t` puts the file back and changes nothing
//! else. The command method runs the user's commands with the instance in the
//! environment.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::core::config::{DrainMethod, Nginx, Service};
use crate::core::observed::{ContainerInfo, Listed};
use crate::core::upstream::{self, Identity};
use crate::host::guard::GuardLb;
use crate::host::nginx_reload::{reload_in_container, Reloaded};
use crate::host::Host;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DrainError {
    #[error(transparent)]
    Match(#[from] upstream::MatchError),
    #[error("`nginx -t` in {container} refused the edited {file}, which was put back as it was: {output}")]
    Test { container: String, file: String, output: String },
    #[error(
        "nginx in {container} does not see the change to {file}: `nginx -T` shows {what}; is {file} the file nginx reads (a file replaced by rename is not seen through a single-file bind mount)? The file was put back"
    )]
    NotTaken { container: String, file: String, what: String },
    #[error("{0}")]
    Host(String),
}

/// One instance as the load balancer knows it.
#[derive(Debug, Clone)]
pub struct Target {
    pub service: String,
    /// The container's name.
    pub instance: String,
    /// Every name nginx may reach it by.
    pub id: Identity,
    /// For a command drain: the published port (`CAPSTAN_PORT`), if any.
    pub port: Option<u16>,
    /// For a command drain: its address on its network (`CAPSTAN_ADDRESS`), if any.
    pub address: Option<String>,
    /// Its Compose project, where `drain.nginx.container` names a Compose service.
    pub project: Option<String>,
}

/// The container port an instance serves on, as the config says it: `drain.nginx.port`, else the health port.
fn service_port(svc: &Service) -> Option<u16> {
    match &svc.drain.method {
        DrainMethod::Nginx(n) if n.port.is_some() => n.port,
        _ => svc.health.http.as_ref().map(|h| h.port),
    }
}

impl Target {
    /// `c` as the load balancer of `svc` knows it.
    pub fn of(svc: &Service, c: &ContainerInfo) -> Target {
        let port = service_port(svc);
        let published: Vec<u16> = match &svc.drain.method {
            // Today's meaning of `port`: the upstream line's port, whatever its address.
            DrainMethod::Nginx(n) if n.port.is_some() => n.port.into_iter().collect(),
            _ => port.and_then(|p| c.host_port_for(p)).or_else(|| c.ports.first().map(|p| p.host_port)).into_iter().collect(),
        };
        let mut hosts = vec![c.name.clone()];
        hosts.extend(c.compose_service.clone());
        hosts.extend(c.aliases.iter().cloned());
        hosts.dedup();
        // The instance as the config names it: its Compose service, else its container.
        let configured = match &c.compose_service {
            Some(s) if svc.instances.contains(s) => s.clone(),
            _ => c.name.clone(),
        };
        let explicit = match &svc.drain.method {
            DrainMethod::Nginx(Nginx { server: Some(s), .. }) => s.for_instance(&configured),
            _ => None,
        };
        let id =
            Identity { instance: c.name.clone(), hosts, ips: c.addresses.clone(), ports: port.into_iter().collect(), published: published.clone(), explicit };
        Target {
            service: svc.name.clone(),
            instance: c.name.clone(),
            id,
            port: published.first().copied(),
            address: c.addresses.first().cloned(),
            project: c.compose_project.clone(),
        }
    }
}

/// Writes file `$1` in place (same inode, so that a bind mount sees it) with the
/// content on stdin, then runs `$3` (the reload on the host; empty: none). With a
/// SHA-256 in `$2`, only if the file still has that digest (else it prints `stale`
/// and changes nothing).
/// With `$5` (a lease id), only while the lock in state dir `$4` holds that lease, and
/// under the guard's `busy` mark (as `host::swap`): an edit delivered after the guard
/// took over changes nothing.
const WRITE_IN_PLACE: &str = concat!(
    r#"set -e; f=$1 d=$4 id=$5
"#,
    crate::host::guard::lease_held!(),
    r#"if [ -n "$2" ] && [ "$(sha256sum < "$f" | cut -d' ' -f1)" != "$2" ]; then cat >/dev/null; echo stale; exit 0; fi
t=$(mktemp); trap 'rm -f "$t"; [ -z "$g" ] || rmdir "$g/busy" 2>/dev/null || true' EXIT; cat > "$t"; cat "$t" > "$f"
[ -z "$3" ] || sh -c "$3"; echo written"#
);

/// The SHA-256 of `s` in hex, as `sha256sum` prints it.
pub(crate) fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Drains and undrains instances. Remembers what it last wrote to each upstream
/// file (so that the next edit is one round trip, not a read and a write), which
/// container nginx runs in, and how many times it reloaded nginx per service.
#[derive(Default)]
pub struct Drainer {
    known: Mutex<HashMap<String, String>>,
    containers: Mutex<HashMap<String, String>>,
    reloads: Mutex<HashMap<String, u32>>,
    /// Once the guard is armed ([`Drainer::hold`]).
    held: Mutex<Option<Held>>,
}

/// What a drain knows once the guard is armed.
#[derive(Clone)]
struct Held {
    /// The state dir and the run's lease, which every edit checks on the host first.
    dir: String,
    id: String,
    /// The run's side of the guard, closed when an edit finds the lease lost.
    fence: std::sync::Arc<crate::host::guard::Fence>,
    /// The host's Docker socket, for the Docker CLI the guard needs there: an nginx
    /// container is tested and reloaded in one command beside the write, not through
    /// the engine's execs.
    docker_socket: String,
}

impl Drainer {
    /// From now on, an edit is made only while the lock in `dir` holds lease `id`; one
    /// that finds it lost closes `fence` (the guard acts; the run touches the host no more).
    /// The host's Docker CLI speaks to `docker_socket`.
    pub fn hold(&self, dir: &str, id: &str, fence: std::sync::Arc<crate::host::guard::Fence>, docker_socket: &str) {
        let held = Held { dir: dir.to_string(), id: id.to_string(), fence, docker_socket: docker_socket.to_string() };
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }

    /// Reloads of the load balancer so far, per service.
    pub fn reloads(&self) -> HashMap<String, u32> {
        self.reloads.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Drains (`true`) or undrains (`false`) each target, with one reload for all.
    /// Returns a short description of what was done.
    pub async fn apply(&self, host: &Host, method: &DrainMethod, edits: &[(&Target, bool)]) -> Result<String, DrainError> {
        match method {
            DrainMethod::None => Ok("no load balancer configured".into()),
            DrainMethod::Nginx(n) => self.nginx(host, n, edits).await,
            DrainMethod::Command { drain, undrain } => {
                let mut done = Vec::new();
                for (t, down) in edits {
                    let cmd = if *down { drain } else { undrain };
                    let inst = format!("CAPSTAN_INSTANCE={}", t.instance);
                    let svc = format!("CAPSTAN_SERVICE={}", t.service);
                    let port = format!("CAPSTAN_PORT={}", t.port.map(|p| p.to_string()).unwrap_or_default());
                    let addr = format!("CAPSTAN_ADDRESS={}", t.address.clone().unwrap_or_default());
                    let r = host.shell.run_apart(&["env", &inst, &svc, &port, &addr, "sh", "-c", cmd], None).await.map_err(|e| DrainError::Host(e.0))?;
                    if !r.ok() {
                        return Err(DrainError::Host(format!("`{cmd}` failed with exit {}: {}", r.status, r.stderr.trim())));
                    }
                    done.push(format!("ran `{cmd}` for {}", t.instance));
                }
                Ok(done.join("; "))
            }
        }
    }

    /// For the guard on the host: each target's upstream file as it is now and with
    /// that target drained, and the shell command that reloads nginx. None for a
    /// method the guard cannot replay (a drain command, or no load balancer).
    pub async fn guard_views(&self, host: &Host, method: &DrainMethod, targets: &[&Target]) -> Result<Vec<Option<GuardLb>>, DrainError> {
        let DrainMethod::Nginx(n) = method else { return Ok(targets.iter().map(|_| None).collect()) };
        let file = &n.upstream_conf;
        let current = self.read_once(host, method).await?.unwrap_or_default();
        let reload = match &n.container {
            Some(c) => {
                let container = self.nginx_container(host, c, targets.first().and_then(|t| t.project.as_deref())).await?;
                let mut argv = vec!["docker".to_string(), "exec".into(), container];
                argv.extend(n.reload_argv());
                shlex::try_join(argv.iter().map(String::as_str)).map_err(|e| DrainError::Host(format!("the reload command cannot be quoted: {e}")))?
            }
            None => n.reload.clone(),
        };
        let mut views = Vec::new();
        for t in targets {
            let (drained, _) = self.edit(file, &current, &[(t, true)])?;
            views.push(Some(GuardLb { upstream_conf: file.clone(), original: current.clone(), drained, reload: reload.clone() }));
        }
        Ok(views)
    }

    /// The upstream file of `method` as it is, read once (None: not nginx). The first drain
    /// then writes from it (guarded by its digest) without reading again; read ahead, it
    /// goes out beside other requests.
    pub async fn read_once(&self, host: &Host, method: &DrainMethod) -> Result<Option<String>, DrainError> {
        let DrainMethod::Nginx(n) = method else { return Ok(None) };
        let file = &n.upstream_conf;
        if let Some(c) = self.known.lock().unwrap_or_else(PoisonError::into_inner).get(file).cloned() {
            return Ok(Some(c));
        }
        let text = read(host, file).await?;
        self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(file.clone(), text.clone());
        Ok(Some(text))
    }

    /// The container nginx runs in: the configured name, or the container of that
    /// Compose service of the instances' project.
    async fn nginx_container(&self, host: &Host, name: &str, project: Option<&str>) -> Result<String, DrainError> {
        if let Some(c) = self.containers.lock().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Ok(c.clone());
        }
        let found = resolve_container(host, name, project).await?;
        self.containers.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), found.clone());
        Ok(found)
    }

    async fn nginx(&self, host: &Host, n: &Nginx, edits: &[(&Target, bool)]) -> Result<String, DrainError> {
        let file = &n.upstream_conf;
        let container = match &n.container {
            Some(c) => Some(self.nginx_container(host, c, edits.first().and_then(|(t, _)| t.project.as_deref())).await?),
            None => None,
        };
        let host_reload = if container.is_some() { "" } else { n.reload.as_str() };
        // From what capstan last wrote (one round trip), else from the file as it is. When
        // the file changed since (the guarded write says so), or no longer names these
        // instances, once more from the file as it is.
        for _ in 0..2 {
            let cached = self.known.lock().unwrap_or_else(PoisonError::into_inner).remove(file);
            let guarded = cached.is_some();
            let current = match cached {
                Some(c) => c,
                None => read(host, file).await?,
            };
            let (edited, lines) = match self.edit(file, &current, edits) {
                Ok(e) => e,
                Err(_) if guarded => continue,
                Err(e) => return Err(e),
            };
            let what: Vec<String> =
                edits.iter().zip(&lines).map(|((t, down), l)| format!("{} {} (line {})", if *down { "down" } else { "up" }, t.instance, l.line)).collect();
            let what = what.join(", ");
            if edited == current {
                self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(file.clone(), current);
                return Ok(format!("{what} in {file}: already so, no reload"));
            }
            let write = self.write(host, file, &edited, guarded.then(|| sha256_hex(&current)), host_reload);
            // With the Docker CLI on the host, the container's test, reload and `nginx -T` go
            // right behind the write on the kept shell: one round trip for all.
            let socket = self.held.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|h| h.docker_socket.clone());
            let (written, reloaded) = match (container.as_deref(), socket) {
                (Some(c), Some(socket)) => {
                    let sha = sha256_hex(&edited);
                    let (w, r) = tokio::join!(write, reload_in_container(host, &socket, c, n, file, &sha));
                    (w, r.ok().flatten())
                }
                _ => (write.await, None),
            };
            match written {
                Ok(true) => return self.after_write(host, n, container.as_deref(), file, &current, &edited, edits, &what, reloaded).await,
                Ok(false) => continue,
                Err(e) => {
                    // Put the file back as it was, so that the next reload surprises no one.
                    let _ = self.write(host, file, &current, None, "").await;
                    return Err(e);
                }
            }
        }
        Err(DrainError::Host(format!("{file} keeps changing under capstan; try again")))
    }

    /// The edited text and the lines it changed.
    fn edit(&self, file: &str, current: &str, edits: &[(&Target, bool)]) -> Result<(String, Vec<upstream::ServerLine>), DrainError> {
        let ids: Vec<Identity> = edits.iter().map(|(t, _)| t.id.clone()).collect();
        let lines = upstream::locate(file, current, &ids)?;
        let changes: Vec<(usize, &str, bool)> = lines.iter().zip(edits).map(|(l, (_, down))| (l.index, l.address.as_str(), *down)).collect();
        Ok((upstream::set_down(current, &changes), lines))
    }

    /// In a container: `nginx -t` (the file goes back when it fails), the reload, and
    /// `nginx -T` to prove nginx sees the change (`reloaded`: what the command beside the
    /// write said of them, else each is asked through the engine). Counts the reload.
    #[allow(clippy::too_many_arguments)]
    async fn after_write(
        &self,
        host: &Host,
        n: &Nginx,
        container: Option<&str>,
        file: &str,
        before: &str,
        edited: &str,
        edits: &[(&Target, bool)],
        what: &str,
        reloaded: Option<Reloaded>,
    ) -> Result<String, DrainError> {
        let put_back = || async {
            self.known.lock().unwrap_or_else(PoisonError::into_inner).remove(file);
            let _ = self.write(host, file, before, None, "").await;
        };
        let Some(c) = container else {
            self.count(edits);
            self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(file.to_string(), edited.to_string());
            return Ok(format!("{what} in {file}; reloaded"));
        };
        let argv = n.reload_argv();
        let nginx = argv.first().map(String::as_str).unwrap_or("nginx");
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let ids: Vec<Identity> = edits.iter().map(|(t, _)| t.id.clone()).collect();
        let wanted: Vec<Option<bool>> = edits.iter().map(|(_, down)| Some(*down)).collect();
        // What the command beside the write did; from where it stopped short, through the engine.
        let shown = match reloaded {
            Some(Reloaded::TestFailed(out)) => {
                put_back().await;
                return Err(DrainError::Test { container: c.into(), file: file.into(), output: last_lines(&out) });
            }
            Some(Reloaded::ReloadFailed { code, output }) => Some(Err((code, output))),
            Some(Reloaded::Shown(dump)) => Some(Ok(dump)),
            Some(Reloaded::NotWritten) | None => None,
        };
        if shown.is_none() {
            let (code, out) = host.engine.exec(c, &[nginx, "-t"]).await.map_err(|e| DrainError::Host(e.to_string()))?;
            if code != 0 {
                put_back().await;
                return Err(DrainError::Test { container: c.into(), file: file.into(), output: last_lines(&out) });
            }
        }
        // Once nginx was reloaded with the edit, putting the file back reloads it again:
        // nginx must never run a file that is no longer on disk (a later edit would find
        // the file "already so" while nginx routes otherwise).
        let put_back_and_reload = || async {
            put_back().await;
            if let Ok((0, _)) = host.engine.exec(c, &[nginx, "-t"]).await {
                let _ = host.engine.exec(c, &args).await;
            }
        };
        // The reload: as the command beside the write said, else through the engine.
        let reloaded = match shown {
            Some(said) => said.map(Some),
            None => match host.engine.exec(c, &args).await.map_err(|e| DrainError::Host(e.to_string()))? {
                (0, _) => Ok(None),
                failed => Err(failed),
            },
        };
        let dump = match reloaded {
            Ok(dump) => dump,
            Err((code, out)) => {
                put_back_and_reload().await;
                return Err(DrainError::Host(format!("`{}` in {c} failed with exit {code}: {}", n.reload, last_lines(&out))));
            }
        };
        self.count(edits);
        // `nginx -T` as the command beside the write printed it, if it shows the edit; else
        // asked through the engine (again while its output comes back short).
        let (code, dump, seen) = match dump.map(|dump| (upstream::down_in_effective(&dump, None, &ids), dump)) {
            Some((seen, dump)) if seen == wanted => (0, dump, seen),
            _ => effective(host, c, nginx, &ids, |seen| seen == wanted.as_slice()).await?,
        };
        let wrong: Vec<String> = edits
            .iter()
            .zip(&seen)
            .filter(|((_, down), seen)| **seen != Some(*down))
            .map(|((t, down), seen)| match seen {
                None => format!("no server line for {}", t.instance),
                Some(_) => format!("{} {}", t.instance, if *down { "not down" } else { "still down" }),
            })
            .collect();
        if code != 0 || !wrong.is_empty() {
            put_back_and_reload().await;
            let what = if code != 0 { format!("exit {code}: {}", last_lines(&dump)) } else { wrong.join(", ") };
            return Err(DrainError::NotTaken { container: c.into(), file: file.into(), what });
        }
        self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(file.to_string(), edited.to_string());
        Ok(format!("{what} in {file}; reloaded nginx in {c}, nginx -T shows it"))
    }

    fn count(&self, edits: &[(&Target, bool)]) {
        if let Some((t, _)) = edits.first() {
            *self.reloads.lock().unwrap_or_else(PoisonError::into_inner).entry(t.service.clone()).or_default() += 1;
        }
    }

    /// Writes `content` in place and runs `reload` on the host. With `guard`, only if
    /// the file still has that digest: false when it had changed.
    async fn write(&self, host: &Host, file: &str, content: &str, guard: Option<String>, reload: &str) -> Result<bool, DrainError> {
        let guard = guard.unwrap_or_default();
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let (dir, id) = held.as_ref().map(|h| (h.dir.as_str(), h.id.as_str())).unwrap_or(("", ""));
        let r = host
            .shell
            .run(&["sh", "-c", WRITE_IN_PLACE, "capstan-drain", file, &guard, reload, dir, id], Some(content.as_bytes()))
            .await
            .map_err(|e| DrainError::Host(e.0))?;
        match r.stdout.trim_end().lines().last().unwrap_or("") {
            "stale" if r.ok() => return Ok(false),
            "lease-lost" => {
                if let Some(h) = &held {
                    h.fence.taken_over();
                }
                return Err(DrainError::Host(format!("{file} left as it was: the host's lock no longer holds this run's lease (the guard took over)")));
            }
            "busy" => return Err(DrainError::Host(format!("{file} left as it was: the guard on the host was busy for 5s"))),
            _ => {}
        }
        if !r.ok() {
            return Err(DrainError::Host(match reload {
                "" => format!("cannot write {file}: {}", r.stderr.trim()),
                _ => format!("`{reload}` failed with exit {}: {}", r.status, r.stderr.trim()),
            }));
        }
        Ok(true)
    }
}

pub(super) async fn read(host: &Host, file: &str) -> Result<String, DrainError> {
    let r = host.shell.run(&["cat", "--", file], None).await.map_err(|e| DrainError::Host(e.0))?;
    if !r.ok() {
        return Err(DrainError::Host(format!("cannot read {file}: {}", r.stderr.trim())));
    }
    Ok(r.stdout)
}

/// `nginx -T` in the container: the configuration nginx would load, every file under a
/// `# configuration file PATH:` line, and what it says of each of `ids` (down or not,
/// None: no server line). An exec's output can come back short on a loaded machine
/// (none at all, or cut before the end): until it shows `wanted`, it is asked again, up
/// to four times in all. A file nginx does not read shows no line however often it is asked.
pub(super) async fn effective(
    host: &Host,
    container: &str,
    nginx: &str,
    ids: &[Identity],
    wanted: impl Fn(&[Option<bool>]) -> bool,
) -> Result<(i64, String, Vec<Option<bool>>), DrainError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (code, dump) = host.engine.exec(container, &[nginx, "-T"]).await.map_err(|e| DrainError::Host(e.to_string()))?;
        let seen = upstream::down_in_effective(&dump, None, ids);
        if code != 0 || wanted(&seen) || attempt == 4 {
            return Ok((code, dump, seen));
        }
        tracing::debug!(container, attempt, bytes = dump.len(), ?seen, "nginx -T does not show what was written; asking again");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The running container called `name`, else the one container of a Compose service `name`.
/// (Both asked at once: one round trip over a slow link.)
pub async fn resolve_container(host: &Host, name: &str, project: Option<&str>) -> Result<String, DrainError> {
    let (named, listed) = tokio::join!(host.engine.inspect_container(name), host.engine.list_containers());
    if named.map_err(|e| DrainError::Host(e.to_string()))?.is_some() {
        return Ok(name.to_string());
    }
    pick_container(&listed.map_err(|e| DrainError::Host(e.to_string()))?, name, project)
}

/// Among the containers `listed`: the one called `name`, else the one container of a
/// Compose service `name` (of `project`, when given).
pub fn pick_container(listed: &[Listed], name: &str, project: Option<&str>) -> Result<String, DrainError> {
    if listed.iter().any(|c| c.name == name) {
        return Ok(name.to_string());
    }
    let of_service: Vec<&str> = listed
        .iter()
        .filter(|c| c.compose_service.as_deref() == Some(name) && project.is_none_or(|p| c.compose_project.as_deref() == Some(p)))
        .filter(|c| !c.name.ends_with(crate::core::plan::OLD_SUFFIX))
        .map(|c| c.name.as_str())
        .collect();
    match of_service.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(DrainError::Host(format!("no container or Compose service {name} runs nginx on this host (drain.nginx.container)"))),
        many => Err(DrainError::Host(format!("Compose service {name} has {} containers ({}); name one in drain.nginx.container", many.len(), many.join(", ")))),
    }
}

/// The end of a command's output, for a message.
pub(super) fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = "upstream shop {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082 max_fails=3; # web-2\n    server unix:/run/app.sock;\n}\nserver {\n    listen 80;\n    server_name shop;\n}\n";

    fn target(name: &str, port: u16) -> Target {
        let id = Identity { instance: name.into(), hosts: vec![name.into()], published: vec![port], ..Default::default() };
        Target { service: "web".into(), instance: name.into(), id, port: Some(port), address: None, project: None }
    }

    fn nginx(file: &std::path::Path, reload: String) -> DrainMethod {
        DrainMethod::Nginx(Nginx { upstream_conf: file.display().to_string(), reload, port: None, container: None, server: None })
    }

    /// The real script, run by a local shell: one round trip when the file is as
    /// last written, a re-read when someone else changed it meanwhile; the file is
    /// written in place (its inode stays, as a bind mount needs).
    #[tokio::test]
    async fn edits_in_one_round_trip_unless_the_file_changed() {
        use std::os::unix::fs::MetadataExt;
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let file = fake.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        let marker = fake.dir.path().join("reloads");
        let method = nginx(&file, format!("echo reload >> {}", marker.display()));
        let t = target("web-1", 8081);
        let d = Drainer::default();
        let runs = || fake.state.lock().unwrap().log.iter().filter(|l| l.starts_with("run ")).count();
        d.apply(&host, &method, &[(&t, true)]).await.unwrap();
        assert_eq!(runs(), 2, "read, then write and reload");
        assert!(std::fs::read_to_string(&file).unwrap().contains("server 127.0.0.1:8081 down;"));
        d.apply(&host, &method, &[(&t, false)]).await.unwrap();
        assert_eq!(runs(), 3, "the undrain needs no read");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONF);
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode, "written in place");
        // Someone edits the file between two drains: capstan notices, re-reads, keeps their edit.
        let theirs = CONF.replace("max_fails=3", "max_fails=5");
        std::fs::write(&file, &theirs).unwrap();
        d.apply(&host, &method, &[(&t, true)]).await.unwrap();
        assert_eq!(runs(), 6, "a stale write, a read, a write");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), theirs.replace("server 127.0.0.1:8081;", "server 127.0.0.1:8081 down;"));
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 3, "reloaded once per edit");
        assert_eq!(d.reloads().get("web"), Some(&3));
    }

    /// The undrain of one instance and the drain of the next: one write, one reload.
    #[tokio::test]
    async fn several_edits_take_one_reload() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let file = fake.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let marker = fake.dir.path().join("reloads");
        let method = nginx(&file, format!("echo reload >> {}", marker.display()));
        let (one, two) = (target("web-1", 8081), target("web-2", 8082));
        let d = Drainer::default();
        d.apply(&host, &method, &[(&one, true)]).await.unwrap();
        d.apply(&host, &method, &[(&one, false), (&two, true)]).await.unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("server 127.0.0.1:8081;") && text.contains("server 127.0.0.1:8082 max_fails=3 down; # web-2"), "{text}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
        // Asking for what is already so reloads nothing.
        d.apply(&host, &method, &[(&two, true)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2);
    }

    /// A line that names no instance is refused before anything is written.
    #[tokio::test]
    async fn an_instance_with_no_line_changes_nothing() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let file = fake.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let err = Drainer::default().apply(&host, &nginx(&file, "true".into()), &[(&target("web-9", 9999), true)]).await.unwrap_err();
        assert!(matches!(err, DrainError::Match(upstream::MatchError::NoLine { .. })), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONF);
    }

    /// Once the guard is armed, an edit is made only while the lock holds the run's lease:
    /// after the guard took it over, the file stays as it is and the run's side is closed.
    #[tokio::test]
    async fn an_edit_after_the_guard_took_the_lock_over_changes_nothing() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let dir = fake.dir.path();
        let file = dir.join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let method = nginx(&file, "true".into());
        let fence = std::sync::Arc::new(crate::host::guard::Fence::new(std::time::Duration::from_secs(30)));
        fence.armed();
        let d = Drainer::default();
        d.hold(&dir.display().to_string(), "run1", fence.clone(), "/run/docker.sock");
        std::fs::write(dir.join("lock.json"), r#"{"id":"run1","holder":"t"}"#).unwrap();
        d.apply(&host, &method, &[(&target("web-1", 8081), true)]).await.unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains("8081 down;"));
        std::fs::write(dir.join("lock.json"), r#"{"id":"run1-guard","holder":"t"}"#).unwrap();
        let before = std::fs::read_to_string(&file).unwrap();
        let err = d.apply(&host, &method, &[(&target("web-1", 8081), false)]).await.unwrap_err();
        assert!(err.to_string().contains("no longer holds this run's lease"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), before);
        assert!(fence.closed().is_some(), "the run's side knows");
    }

    /// A failing reload puts the file back.
    #[tokio::test]
    async fn a_failed_reload_puts_the_file_back() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let file = fake.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        let err = Drainer::default().apply(&host, &nginx(&file, "echo broken >&2; exit 1".into()), &[(&target("web-1", 8081), true)]).await.unwrap_err();
        assert!(err.to_string().contains("failed with exit 1: broken"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONF);
    }

    /// nginx in a container called `lb` reading `file`; the fake's `exec`s answer in turn.
    fn nginx_in_container(file: &std::path::Path) -> DrainMethod {
        DrainMethod::Nginx(Nginx {
            upstream_conf: file.display().to_string(),
            reload: "nginx -s reload".into(),
            port: None,
            container: Some("lb".into()),
            server: None,
        })
    }

    fn dump(text: &str) -> (i64, String) {
        (0, format!("nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n# configuration file /etc/nginx/upstream.conf:\n{text}"))
    }

    /// A fake host with nginx in a container `lb`, and its upstream file holding `CONF`.
    fn with_lb() -> (std::sync::Arc<crate::host::fake::FakeHost>, std::path::PathBuf) {
        let fake = crate::host::fake::FakeHost::new();
        fake.add_container("lb", crate::host::fake::V1, 80);
        let file = fake.dir.path().join("upstream.conf");
        std::fs::write(&file, CONF).unwrap();
        (fake, file)
    }

    fn execs(fake: &crate::host::fake::FakeHost) -> Vec<String> {
        fake.state.lock().unwrap().log.iter().filter_map(|l| l.strip_prefix("exec lb ").map(String::from)).collect()
    }

    /// `nginx -T` whose output comes back short (as a loaded engine's exec can) is
    /// asked again until it shows the edit.
    #[tokio::test]
    async fn a_short_nginx_dump_is_asked_again() {
        let (fake, file) = with_lb();
        let host = fake.host();
        let drained = CONF.replace("server 127.0.0.1:8081;", "server 127.0.0.1:8081 down;");
        let cut = &drained[..drained.find("server 127.0.0.1:8081").unwrap()];
        fake.state.lock().unwrap().exec_answers.extend([(0, String::new()), (0, String::new()), (0, String::new()), dump(cut), dump(&drained)]);
        let done = Drainer::default().apply(&host, &nginx_in_container(&file), &[(&target("web-1", 8081), true)]).await.unwrap();
        assert!(done.contains("nginx -T shows it"), "{done}");
        assert_eq!(execs(&fake), ["nginx -t", "nginx -s reload", "nginx -T", "nginx -T", "nginx -T"]);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), drained);
    }

    /// nginx that never shows the edit: the file goes back, and since nginx was
    /// already reloaded with the edit, it is reloaded again, so that what runs is what
    /// the file says (else the next edit finds the file "already so" while nginx
    /// routes around an instance).
    #[tokio::test]
    async fn an_edit_nginx_does_not_show_is_put_back_and_reloaded() {
        let (fake, file) = with_lb();
        let host = fake.host();
        let err = Drainer::default().apply(&host, &nginx_in_container(&file), &[(&target("web-1", 8081), true)]).await.unwrap_err();
        assert!(matches!(&err, DrainError::NotTaken { what, .. } if what == "no server line for web-1"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), CONF);
        let reloads = ["nginx -t", "nginx -s reload"];
        let asked = ["nginx -T"; 4];
        assert_eq!(execs(&fake), [&reloads[..], &asked[..], &reloads[..]].concat());
    }

    /// The generic method runs the user's commands with the instance in the environment.
    #[tokio::test]
    async fn command_drain_gets_the_instance_in_its_environment() {
        let fake = crate::host::fake::FakeHost::new();
        let host = fake.host();
        let out = fake.dir.path().join("calls");
        let method = DrainMethod::Command {
            drain: format!("echo \"drain $CAPSTAN_SERVICE $CAPSTAN_INSTANCE $CAPSTAN_PORT\" >> {}", out.display()),
            undrain: format!("echo \"undrain $CAPSTAN_INSTANCE [$CAPSTAN_ADDRESS]\" >> {}", out.display()),
        };
        let mut t = target("web-1", 8081);
        t.address = Some("172.18.0.2".into());
        let d = Drainer::default();
        d.apply(&host, &method, &[(&t, true)]).await.unwrap();
        d.apply(&host, &method, &[(&t, false)]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "drain web web-1 8081\nundrain web-1 [172.18.0.2]\n");
        let failing = DrainMethod::Command { drain: "exit 3".into(), undrain: "true".into() };
        let err = d.apply(&host, &failing, &[(&t, true)]).await.unwrap_err();
        assert!(err.to_string().contains("`exit 3` failed with exit 3"), "{err}");
    }
}
