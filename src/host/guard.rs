//! The guard: a process on the host that outlives the SSH connection and puts
//! the host back when the run that started it stops renewing its lease.
//!
//! Armed once per host, before the first instance is touched, in one round
//! trip: a tar of its files on stdin, extracted under `<state_dir>/guard/<id>/`,
//! and a detached `sh` running [`GUARD`] with positional arguments. It watches
//! the lock: while `lock.json` holds the run's lease and was renewed within the
//! bound, it sleeps. When the lease is gone (the run released it) it exits. When
//! the lease is older than the bound, it takes the lock over (so that a run
//! whose link comes back cannot renew it, and stops touching the host) and:
//!
//! - if the run had staged its final record (`done`: the host finished), it
//!   appends that record, releases the lock and exits, changing nothing;
//! - else, for each planned instance whose `<name>.capstan-old` exists (the run
//!   replaced it or was replacing it), last first: drains it (the upstream file
//!   with that instance `down`, as the run rendered it), removes the new
//!   container, renames the kept one back, starts it and waits until it runs
//!   and answers; then writes the upstream file as it was before the run,
//!   reloads, appends a `recover` record and releases the lock.
//!
//! Everything it runs is this constant script and the files the run wrote;
//! names, paths and commands reach it as arguments and file contents, never
//! pasted into script text.

use std::time::Duration;

use crate::host::{Shell, ShellError};

/// `$1` state dir, `$2` lease id, `$3` bound in seconds. Files in `$1/guard/$2/`:
/// `plan` (one instance a line: name, kept name, file with it drained or `-`,
/// drain wait in ms, seconds to wait for it to run, probe port or `-`, probe
/// path, its record JSON with `@OUTCOME@`), `lb` (upstream file, copy as it
/// was, reload command: three lines), `record` (the recover record with
/// `@TIME@`, `@OUTCOME@` and `@INSTANCES@`), and `done` once the host finished.
pub const GUARD: &str = r#"d=$1; id=$2; bound=$3; g="$d/guard/$id"; log="$g/guard.log"
say() { echo "$(date -u +%H:%M:%S) $*" >> "$log"; }
ours() { grep -q "\"id\":\"$1\"" "$d/lock.json" 2>/dev/null; }
while :; do
  [ -d "$g" ] || exit 0
  ours "$id" || { rm -rf "$g"; exit 0; }
  age=$(( $(date +%s) - $(stat -c %Y "$d/lock.json") ))
  [ "$age" -gt "$bound" ] && break
  sleep 1
done
say "lease not renewed for ${age}s: taking over"
t="$d/.lock.guard.$id"
sed "s/\"id\":\"$id\"/\"id\":\"$id-guard\"/" "$d/lock.json" > "$t" && mv -f "$t" "$d/lock.json"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [ -f "$g/done" ]; then
  sed "s/@TIME@/$now/" "$g/done" >> "$d/deploys.jsonl"
  ours "$id-guard" && rm -f "$d/lock.json"
  say "the run had finished: its record appended, lock released"; rm -rf "$g"; exit 0
fi
conf=; orig=; reload=
if [ -f "$g/lb" ]; then { read -r conf; read -r orig; read -r reload; } < "$g/lb"; fi
reload_lb() { [ -z "$reload" ] || sh -c "$reload" >> "$log" 2>&1 || say "reload failed"; }
probe() { # $1 container $2 port $3 path: one good answer from any of its addresses
  [ "$2" = - ] && return 0
  for a in $(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" 2>/dev/null); do
    if command -v curl >/dev/null; then curl -fsS -m 2 -o /dev/null "http://$a:$2$3" 2>/dev/null && return 0
    elif command -v wget >/dev/null; then wget -q -T 2 -O /dev/null "http://$a:$2$3" 2>/dev/null && return 0
    else return 0; fi
  done
  return 1
}
ready() { # $1 container $2 seconds $3 port $4 path
  i=0
  while [ "$i" -lt $(( $2 * 5 )) ]; do
    s=$(docker inspect -f '{{.State.Running}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1" 2>/dev/null)
    case "$s" in "true "|"true healthy") probe "$1" "$3" "$4" && return 0;; esac
    sleep 0.2; i=$(( i + 1 ))
  done
  return 1
}
outcome=succeeded; done_json=
tac "$g/plan" > "$g/plan.rev"
while IFS="$(printf '\t')" read -r name old down wait settle port path json; do
  docker container inspect "$old" >/dev/null 2>&1 || continue
  say "putting $old back as $name"
  if [ "$down" != - ] && [ -n "$conf" ]; then cat "$g/$down" > "$conf"; reload_lb; sleep "$(( wait / 1000 )).$(printf '%03d' $(( wait % 1000 )))"; fi
  r=reverted
  if docker container inspect "$name" >/dev/null 2>&1; then docker rm -f "$name" >> "$log" 2>&1 || r=failed; fi
  [ "$r" = reverted ] && { docker rename "$old" "$name" >> "$log" 2>&1 || r=failed; }
  [ "$r" = reverted ] && { docker start "$name" >> "$log" 2>&1 || r=failed; }
  [ "$r" = reverted ] && { ready "$name" "$settle" "$port" "$path" || r=failed; }
  [ "$r" = reverted ] || outcome=failed
  say "$name: $r"
  j=$(printf '%s' "$json" | sed "s/@OUTCOME@/$r/")
  done_json="${done_json:+$done_json,}$j"
done < "$g/plan.rev"
if [ -n "$conf" ]; then cat "$orig" > "$conf"; reload_lb; fi
sed -e "s/@TIME@/$now/" -e "s/@OUTCOME@/$outcome/" "$g/record" | I="$done_json" awk '{ p = index($0, "@INSTANCES@"); if (p) $0 = substr($0, 1, p - 1) ENVIRON["I"] substr($0, p + 11); print }' >> "$d/deploys.jsonl"
ours "$id-guard" && rm -f "$d/lock.json"
say "done: $outcome"; mv "$g/guard.log" "$d/guard-$id.log" 2>/dev/null; rm -rf "$g""#;

/// Extracts the guard's files from the tar on stdin and starts it, detached
/// from the SSH session (its own session, no terminal, output to its log).
const ARM: &str = r#"set -eu
d=$1; g="$d/guard/$2"; mkdir -p "$g"; tar -xf - -C "$g"
setsid sh -c "$4" capstan-guard "$d" "$2" "$3" < /dev/null >> "$g/guard.log" 2>&1 &
echo armed"#;

/// Stages the host's final record: a guard that fires from now on appends it
/// and releases the lock, and changes nothing else.
const DONE: &str = r#"set -eu
g="$1/guard/$2"; [ -d "$g" ] || exit 0; cat > "$g/done.tmp"; mv -f "$g/done.tmp" "$g/done"; echo staged"#;

/// One instance the guard may have to put back.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardInstance {
    pub name: String,
    /// The upstream file with this instance drained, as the run would write it (when there is one).
    pub drained_conf: Option<String>,
    pub drain_wait: Duration,
    /// How long it may take the kept container to run again and answer.
    pub settle: Duration,
    /// The HTTP probe's port and path, when the service has one.
    pub probe: Option<(u16, String)>,
    /// Its `recover` record entry, with `@OUTCOME@` where the outcome goes.
    pub record_json: String,
}

/// The load balancer the guard puts back as it was.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardLb {
    pub upstream_conf: String,
    /// The file as it was before the run.
    pub original: String,
    /// A shell command on the host that reloads it.
    pub reload: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardPlan {
    pub dir: String,
    pub lease_id: String,
    pub bound: Duration,
    pub instances: Vec<GuardInstance>,
    pub lb: Option<GuardLb>,
    /// The `recover` record, with `@TIME@`, `@OUTCOME@` and `@INSTANCES@` to fill in.
    pub record_json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot start the guard on the host: {0}")]
    Host(String),
}

impl From<ShellError> for GuardError {
    fn from(e: ShellError) -> Self {
        GuardError::Host(e.0)
    }
}

/// The guard's files, as a tar archive.
pub fn archive(plan: &GuardPlan) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut lines = String::new();
    for (i, inst) in plan.instances.iter().enumerate() {
        let down = match &inst.drained_conf {
            Some(text) => {
                let f = format!("down.{i}");
                files.push((f.clone(), text.as_bytes().to_vec()));
                f
            }
            None => "-".into(),
        };
        let (port, path) = inst.probe.as_ref().map(|(p, path)| (p.to_string(), path.clone())).unwrap_or(("-".into(), "/".into()));
        let fields = [
            inst.name.clone(),
            format!("{}{}", inst.name, crate::core::plan::OLD_SUFFIX),
            down,
            inst.drain_wait.as_millis().to_string(),
            inst.settle.as_secs().max(1).to_string(),
            port,
            path,
            inst.record_json.clone(),
        ];
        lines.push_str(&fields.iter().map(|f| f.replace(['\t', '\n'], " ")).collect::<Vec<_>>().join("\t"));
        lines.push('\n');
    }
    files.push(("plan".into(), lines.into_bytes()));
    if let Some(lb) = &plan.lb {
        files.push(("original".into(), lb.original.as_bytes().to_vec()));
        let orig = format!("{}/guard/{}/original", plan.dir, plan.lease_id);
        files.push(("lb".into(), format!("{}\n{orig}\n{}\n", lb.upstream_conf, lb.reload.replace('\n', " ")).into_bytes()));
    }
    files.push(("record".into(), format!("{}\n", plan.record_json).into_bytes()));
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).expect("a tar in memory");
    }
    b.into_inner().expect("a tar in memory")
}

/// Arms the guard on the host: one round trip.
pub async fn arm(shell: &dyn Shell, plan: &GuardPlan) -> Result<(), GuardError> {
    let bound = plan.bound.as_secs().max(1).to_string();
    let r = shell.run(&["sh", "-c", ARM, "capstan-arm", &plan.dir, &plan.lease_id, &bound, GUARD], Some(&archive(plan))).await?;
    if !r.ok() || r.stdout.trim() != "armed" {
        return Err(GuardError::Host(format!("exit {}: {}", r.status, r.stderr.trim())));
    }
    Ok(())
}

/// Stages the host's final record (with `@TIME@` for the time): from now on a
/// guard that fires records it and releases the lock, nothing more.
pub async fn stage_done(shell: &dyn Shell, dir: &str, lease_id: &str, record_json: &str) -> Result<(), GuardError> {
    let r = shell.run(&["sh", "-c", DONE, "capstan-done", dir, lease_id], Some(format!("{record_json}\n").as_bytes())).await?;
    if !r.ok() {
        return Err(GuardError::Host(format!("exit {}: {}", r.status, r.stderr.trim())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> GuardPlan {
        GuardPlan {
            dir: "/var/lib/capstan/shop".into(),
            lease_id: "abc".into(),
            bound: Duration::from_secs(30),
            instances: vec![
                GuardInstance {
                    name: "web-1".into(),
                    drained_conf: Some("server a down;\n".into()),
                    drain_wait: Duration::from_millis(300),
                    settle: Duration::from_secs(20),
                    probe: Some((8080, "/health".into())),
                    record_json: r#"{"name":"web-1","outcome":"@OUTCOME@"}"#.into(),
                },
                GuardInstance {
                    name: "web\t2".into(),
                    drained_conf: None,
                    drain_wait: Duration::ZERO,
                    settle: Duration::from_millis(10),
                    probe: None,
                    record_json: "{}".into(),
                },
            ],
            lb: Some(GuardLb { upstream_conf: "/etc/nginx/up.conf".into(), original: "server a;\n".into(), reload: "nginx -s reload".into() }),
            record_json: r#"{"time":"@TIME@","instances":[@INSTANCES@]}"#.into(),
        }
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, String)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                (name, s)
            })
            .collect()
    }

    #[test]
    fn the_archive_holds_one_plan_line_per_instance_and_the_files_it_names() {
        let files = entries(&archive(&plan()));
        let get = |n: &str| files.iter().find(|(f, _)| f == n).map(|(_, s)| s.clone()).unwrap_or_else(|| panic!("no {n} in {files:?}"));
        let lines: Vec<Vec<String>> = get("plan").lines().map(|l| l.split('\t').map(String::from).collect()).collect();
        assert_eq!(lines[0], ["web-1", "web-1.capstan-old", "down.0", "300", "20", "8080", "/health", r#"{"name":"web-1","outcome":"@OUTCOME@"}"#]);
        // A tab in a field cannot shift the fields after it; a sub-second settle is a second.
        assert_eq!(lines[1], ["web 2", "web\t2.capstan-old".replace('\t', " ").as_str(), "-", "0", "1", "-", "/", "{}"]);
        assert_eq!(get("down.0"), "server a down;\n");
        assert_eq!(get("original"), "server a;\n");
        assert_eq!(get("lb"), "/etc/nginx/up.conf\n/var/lib/capstan/shop/guard/abc/original\nnginx -s reload\n");
        assert_eq!(get("record"), "{\"time\":\"@TIME@\",\"instances\":[@INSTANCES@]}\n");
    }

    #[test]
    fn the_guard_script_is_valid_sh() {
        for script in [GUARD, ARM, DONE] {
            let out = std::process::Command::new("sh").args(["-n", "-c", script]).output().expect("sh");
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
