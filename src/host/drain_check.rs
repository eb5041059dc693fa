//! What a drain would refuse, refused before any change (`check`, `--dry-run` and
//! `deploy` alike): each instance's one `server` line in its upstream file, and an
//! nginx container that reads that file. The files are read once each, beside the
//! first looks at the host.

use std::collections::HashMap;

use crate::core::config::{DrainMethod, Nginx, Service};
use crate::core::observed::{ContainerInfo, Listed};
use crate::core::upstream::{self, Identity};
use crate::host::drain::{effective, last_lines, pick_container, read, DrainError, Target};
use crate::host::nginx_reload::dump_in_container;
use crate::host::Host;

/// The upstream files of these services' nginx drains by path, each read once, all at
/// once: what [`check`] looks in, read beside the first looks at the host.
pub async fn read_files(host: &Host, services: &[&Service]) -> HashMap<String, Result<String, DrainError>> {
    let mut paths: Vec<&str> = services
        .iter()
        .filter_map(|s| match &s.drain.method {
            DrainMethod::Nginx(n) => Some(n.upstream_conf.as_str()),
            _ => None,
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    let texts = futures_util::future::join_all(paths.iter().map(|p| read(host, p))).await;
    paths.into_iter().map(String::from).zip(texts).collect()
}

/// Every nginx drain of
/// these services can find each instance's one `server` line in its file, no line
/// reaches two instances, and an nginx container reads that file (its `nginx -T`
/// shows the lines). `containers`: each instance's container as observed. One problem
/// per line, naming the host, the file and the instance. `files`: as [`read_files`] read them.
/// `listed`: every container on the host as observed, where an nginx container is found;
/// `docker_socket`: the engine's socket on the host, for the Docker CLI where it has one.
pub async fn check(
    host: &Host,
    services: &[(&Service, Vec<&ContainerInfo>)],
    files_read: &HashMap<String, Result<String, DrainError>>,
    listed: &[Listed],
    docker_socket: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    // Per upstream file: the nginx settings and every instance that lives in it.
    let mut files: Vec<(&Nginx, Vec<Target>)> = Vec::new();
    for (svc, containers) in services {
        let DrainMethod::Nginx(n) = &svc.drain.method else { continue };
        let targets = containers.iter().map(|c| Target::of(svc, c));
        match files.iter_mut().find(|(f, _)| f.upstream_conf == n.upstream_conf) {
            Some((_, t)) => t.extend(targets),
            None => files.push((n, targets.collect())),
        }
    }
    for (n, targets) in files {
        let file = &n.upstream_conf;
        // Read beside the first looks; a file not read then is read now.
        let read_now;
        let was_read = match files_read.get(file) {
            Some(r) => r,
            None => {
                read_now = read(host, file).await;
                &read_now
            }
        };
        let text = match was_read {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: drain.nginx.upstream_conf: {e}", host.name));
                continue;
            }
        };
        let ids: Vec<Identity> = targets.iter().map(|t| t.id.clone()).collect();
        if let Err(e) = upstream::locate(file, text, &ids) {
            problems.push(format!("{}: {e}", host.name));
            continue;
        }
        let Some(name) = &n.container else { continue };
        let project = targets.first().and_then(|t| t.project.as_deref());
        let container = match pick_container(listed, name, project) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{}: {e}", host.name));
                continue;
            }
        };
        let nginx = n.reload_argv().first().cloned().unwrap_or_else(|| "nginx".into());
        // Through the Docker CLI on the host (one round trip) where its answer shows every
        // line; else, and to be sure of a problem, through the engine's execs.
        let through_cli = match dump_in_container(host, docker_socket, &container, &nginx).await {
            Ok(Some((0, dump))) => {
                Some(upstream::down_in_effective(&dump, None, &ids)).filter(|seen| seen.iter().all(Option::is_some)).map(|seen| (0, dump, seen))
            }
            _ => None,
        };
        let answer = match through_cli {
            Some(a) => Ok(a),
            None => effective(host, &container, &nginx, &ids, |seen| seen.iter().all(Option::is_some)).await,
        };
        match answer {
            Ok((0, _, seen)) => {
                let missing: Vec<&str> = targets.iter().zip(&seen).filter(|(_, s)| s.is_none()).map(|(t, _)| t.instance.as_str()).collect();
                if !missing.is_empty() {
                    problems.push(format!(
                        "{}: nginx in {container} has no server line for {} although {file} has: is {file} the file nginx reads (drain.nginx.upstream_conf)?",
                        host.name,
                        missing.join(", ")
                    ));
                }
            }
            Ok((code, out, _)) => problems.push(format!("{}: `{nginx} -T` in {container} failed with exit {code}: {}", host.name, last_lines(&out))),
            Err(e) => problems.push(format!("{}: {e}", host.name)),
        }
    }
    problems
}
