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

/// `$1` state dir, `$2` lease id, `$3` bound in seconds, `$4` the Docker socket.
/// Files in `$1/guard/$2/`: `plan` (one instance a line, tab-separated: name, kept
/// name, the file with it drained or `-`, drain wait in ms, seconds to wait for
/// it to run, probe port or `-`, probe path, its upstream file, the file as it
/// was before the run or `-`, the reload command, its record JSON with
/// `@OUTCOME@`), `record` (the recover record with `@TIME@`, `@OUTCOME@` and
/// `@INSTANCES@`), and `done` once the host finished.
pub const GUARD: &str = r#"d=$1; id=$2; bound=$3; export DOCKER_HOST="unix://$4"; g="$d/guard/$id"; log="$g/guard.log"
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
# A change of the run's that found its lease in the lock (host::swap, host::drain) ends before the takeover.
n=0; until mkdir "$g/busy" 2>/dev/null || [ "$n" -ge 600 ]; do sleep 0.1; n=$((n+1)); done
t="$d/.lock.guard.$id"
# Ours now, for long enough that no run takes it over while the guard works.
until=$(date -u -d "+300 seconds" +%Y-%m-%dT%H:%M:%SZ)
sed -e "s/\"id\":\"$id\"/\"id\":\"$id-guard\"/" -e "s/\"expires_at\":\"[^\"]*\"/\"expires_at\":\"$until\"/" "$d/lock.json" > "$t" && mv -f "$t" "$d/lock.json"
rmdir "$g/busy" 2>/dev/null
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tab="$(printf '\t')"
reload_lb() { [ -z "$1" ] || sh -c "$1" >> "$log" 2>&1 || say "reload failed: $1"; }
# Every upstream file as it was before the run, each reloaded once.
restore_lbs() {
  seen=
  while IFS="$tab" read -r name old down wait settle port path conf orig reload json; do
    [ "$orig" = - ] && continue
    case "$seen" in *"|$orig|"*) continue;; esac
    seen="$seen|$orig|"; cat "$g/$orig" > "$conf"; reload_lb "$reload"
  done < "$g/plan"
}
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
swap_back() { # $1 name $2 kept: the kept container in the name's place, started
  if docker container inspect "$1" >/dev/null 2>&1; then docker rm -f "$1" >> "$log" 2>&1 || return 1; fi
  docker rename "$2" "$1" >> "$log" 2>&1 && docker start "$1" >> "$log" 2>&1
}
start_stopped() { # $1 name: started when it exists and does not run (true: it did not run)
  [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = false ] || return 1
  say "starting $1"; docker start "$1" >> "$log" 2>&1 || say "$1: failed"
}
if [ -f "$g/done" ]; then
  # The host had finished: a kept container is garbage now, and the record is the run's. An
  # instance that does not run (the run was putting the host back after another host
  # failed) gets the container it kept back, and the load balancer its files as they were.
  fixed=
  while IFS="$tab" read -r name old rest; do
    if running "$name"; then docker rm -f "$old" >> "$log" 2>&1 || true
    elif docker container inspect "$old" >/dev/null 2>&1; then
      say "$name does not run: putting $old back"; fixed=1
      swap_back "$name" "$old" || say "$name: failed"
    elif start_stopped "$name"; then fixed=1
    fi
  done < "$g/plan"
  [ -z "$fixed" ] || restore_lbs
  sed "s/@TIME@/$now/" "$g/done" >> "$d/deploys.jsonl"
  ours "$id-guard" && rm -f "$d/lock.json"
  say "the run had finished: its record appended, lock released"; rm -rf "$g"; exit 0
fi
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
while IFS="$tab" read -r name old down wait settle port path conf orig reload json; do
  # A successor created ahead and never swapped in served nothing: it goes (never a running one).
  docker rm "$name.capstan-new" >/dev/null 2>&1 || true
  if ! docker container inspect "$old" >/dev/null 2>&1; then
    # Nothing kept: the run put it back itself, or was doing so (renamed back, not yet started).
    start_stopped "$name" || true
    continue
  fi
  say "putting $old back as $name"
  if [ "$down" != - ]; then cat "$g/$down" > "$conf"; reload_lb "$reload"; sleep "$(( wait / 1000 )).$(printf '%03d' $(( wait % 1000 )))"; fi
  r=reverted
  swap_back "$name" "$old" || r=failed
  [ "$r" = reverted ] && { ready "$name" "$settle" "$port" "$path" || r=failed; }
  [ "$r" = reverted ] || outcome=failed
  say "$name: $r"
  j=$(printf '%s' "$json" | sed "s/@OUTCOME@/$r/")
  done_json="${done_json:+$done_json,}$j"
done < "$g/plan.rev"
restore_lbs
sed -e "s/@TIME@/$now/" -e "s/@OUTCOME@/$outcome/" "$g/record" | I="$done_json" awk '{ p = index($0, "@INSTANCES@"); if (p) $0 = substr($0, 1, p - 1) ENVIRON["I"] substr($0, p + 11); print }' >> "$d/deploys.jsonl"
ours "$id-guard" && rm -f "$d/lock.json"
say "done: $outcome"; mv "$g/guard.log" "$d/guard-$id.log" 2>/dev/null; rm -rf "$g""#;

/// The run's side of the `busy` mark, as the start of a script of the run's that changes a
/// guarded host (`host::swap`, `host::drain`). With `$d` the state dir and `$id` the run's
/// lease (empty: nothing to check), it takes the guard's `busy` mark, which the guard takes
/// before it takes the lock over, and checks that the lock still holds the lease: else it
/// prints `busy` (held for 5 s) or `lease-lost`, reads its input to the end and exits 0,
/// having changed nothing. `$g` is the mark's directory while it is held (else empty): a
/// script that sets an `EXIT` trap of its own lets it go there too.
macro_rules! lease_held {
    () => {
        r#"g=
if [ -n "$id" ]; then
  if [ -d "$d/guard/$id" ]; then
    g="$d/guard/$id"; n=0
    until mkdir "$g/busy" 2>/dev/null; do n=$((n+1)); [ "$n" -gt 100 ] && { cat >/dev/null; echo busy; exit 0; }; sleep 0.05; done
  fi
  trap '[ -z "$g" ] || rmdir "$g/busy" 2>/dev/null || true' EXIT
  grep -q "\"id\":\"$id\"" "$d/lock.json" 2>/dev/null || { cat >/dev/null; echo lease-lost; exit 0; }
fi
"#
    };
}
pub(crate) use lease_held;

/// What the guard runs on the host besides `sh`: the Docker CLI, `setsid`, `tar`.
macro_rules! guard_tools {
    () => {
        "docker setsid tar"
    };
}

/// Prints `missing:` and the guard's tools the host lacks.
const MISSING: &str = concat!(r#"m=""; for t in "#, guard_tools!(), r#"; do command -v "$t" >/dev/null 2>&1 || m="$m $t"; done; echo "missing:$m""#);

/// Extracts the guard's files from the tar on stdin and starts it, detached
/// from the SSH session (its own session, no terminal, output to its log).
/// Refuses (its stdin read to the end, nothing extracted) on a host without the guard's tools.
const ARM: &str = concat!(
    r#"set -eu
for t in "#,
    guard_tools!(),
    r#"; do command -v "$t" >/dev/null 2>&1 || { cat >/dev/null; echo "the guard needs $t on the host" >&2; exit 3; }; done
d=$1; g="$d/guard/$2"; mkdir -p "$g"; tar -xf - -C "$g"
setsid sh -c "$5" capstan-guard "$d" "$2" "$3" "$4" < /dev/null >> "$g/guard.log" 2>&1 &
echo armed"#
);

/// Stages the host's final record (a guard that fires from now on appends it and
/// releases the lock, and changes nothing else), then removes the kept containers.
/// `$1` state dir, `$2` lease id, `$3` Docker socket, then the kept containers: the
/// record staged (when the guard is there), then each kept container removed, in the
/// same command (`removed NAME`, or `failed NAME` and Docker's words).
const DONE: &str = r#"set -u; g="$1/guard/$2"; sock=$3; shift 3
if [ -d "$g" ]; then
  { cat > "$g/done.tmp" && mv -f "$g/done.tmp" "$g/done"; } || { echo "cannot stage the record in $g" >&2; exit 1; }
  echo staged
else cat >/dev/null; fi
export DOCKER_HOST="unix://$sock"
for c in "$@"; do
  if e=$(docker rm "$c" 2>&1); then echo "removed $c"; else echo "failed $c $(printf '%s' "$e" | tr '\n' ' ')"; fi
done"#;

/// One instance the guard may have to put back.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardInstance {
    pub name: String,
    /// Its load balancer, when it is drained from one.
    pub lb: Option<GuardLb>,
    pub drain_wait: Duration,
    /// How long it may take the kept container to run again and answer.
    pub settle: Duration,
    /// The HTTP probe's port and path, when the service has one.
    pub probe: Option<(u16, String)>,
    /// Its `recover` record entry, with `@OUTCOME@` where the outcome goes.
    pub record_json: String,
}

/// An instance's upstream file: as it was before the run, and with the instance
/// drained, as the run renders them; and the shell command that reloads nginx.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardLb {
    pub upstream_conf: String,
    pub original: String,
    pub drained: String,
    pub reload: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardPlan {
    pub dir: String,
    pub lease_id: String,
    pub bound: Duration,
    pub docker_socket: String,
    pub instances: Vec<GuardInstance>,
    /// The `recover` record, with `@TIME@`, `@OUTCOME@` and `@INSTANCES@` to fill in.
    pub record_json: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot start the guard on the host: {0}")]
    Host(String),
}

impl From<serde_json::Error> for GuardError {
    fn from(e: serde_json::Error) -> Self {
        GuardError::Host(format!("cannot write its record: {e}"))
    }
}

impl From<ShellError> for GuardError {
    fn from(e: ShellError) -> Self {
        GuardError::Host(e.0)
    }
}

/// The guard's files, as a tar archive.
pub fn archive(plan: &GuardPlan) -> Vec<u8> {
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    // One copy of each upstream file as it was, however many instances it serves.
    let mut originals: Vec<(String, String)> = Vec::new();
    let mut lines = String::new();
    for (i, inst) in plan.instances.iter().enumerate() {
        let (down, conf, orig, reload) = match &inst.lb {
            Some(lb) => {
                let down = format!("down.{i}");
                files.push((down.clone(), lb.drained.as_bytes().to_vec()));
                let orig = match originals.iter().find(|(conf, _)| *conf == lb.upstream_conf) {
                    Some((_, f)) => f.clone(),
                    None => {
                        let f = format!("original.{}", originals.len());
                        files.push((f.clone(), lb.original.as_bytes().to_vec()));
                        originals.push((lb.upstream_conf.clone(), f.clone()));
                        f
                    }
                };
                (down, lb.upstream_conf.clone(), orig, lb.reload.clone())
            }
            None => ("-".into(), "-".into(), "-".into(), String::new()),
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
            conf,
            orig,
            reload,
            inst.record_json.clone(),
        ];
        lines.push_str(&fields.iter().map(|f| f.replace(['\t', '\n'], " ")).collect::<Vec<_>>().join("\t"));
        lines.push('\n');
    }
    files.push(("plan".into(), lines.into_bytes()));
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
    let r = shell.run(&["sh", "-c", ARM, "capstan-arm", &plan.dir, &plan.lease_id, &bound, &plan.docker_socket, GUARD], Some(&archive(plan))).await?;
    if !r.ok() || r.stdout.trim() != "armed" {
        return Err(GuardError::Host(format!("exit {}: {}", r.status, r.stderr.trim())));
    }
    Ok(())
}

/// The guard's tools this host lacks (none: it can be armed). Checked by the preflight,
/// so that `check` and `deploy` refuse a host where the guard could not act.
pub async fn missing_tools(shell: &dyn Shell) -> Result<Vec<String>, GuardError> {
    let r = shell.run(&["sh", "-c", MISSING], None).await?;
    match r.stdout.trim().strip_prefix("missing:") {
        Some(missing) if r.ok() => Ok(missing.split_whitespace().map(String::from).collect()),
        _ => Err(GuardError::Host(format!("exit {}: {}{}", r.status, r.stdout.trim(), r.stderr.trim()))),
    }
}

/// A kept container that the done command could not remove: Docker's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotRemoved(pub String);

/// Stages the host's final record (with `@TIME@` for the time): from now on a guard
/// that fires records it, removes the kept containers and releases the lock, and puts
/// nothing back. Then, in the same command, removes the containers `kept` for it (the
/// guard no longer needs them): per container, whether it went (Docker's words when not).
pub async fn stage_done(
    shell: &dyn Shell,
    dir: &str,
    lease_id: &str,
    docker_socket: &str,
    record_json: &str,
    kept: &[String],
) -> Result<Vec<Result<(), NotRemoved>>, GuardError> {
    let mut argv = vec!["sh", "-c", DONE, "capstan-done", dir, lease_id, docker_socket];
    argv.extend(kept.iter().map(String::as_str));
    let r = shell.run(&argv, Some(format!("{record_json}\n").as_bytes())).await?;
    if !r.ok() {
        return Err(GuardError::Host(format!("exit {}: {}", r.status, r.stderr.trim())));
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    Ok(kept
        .iter()
        .map(|c| match lines.iter().any(|l| l.strip_prefix("removed ") == Some(c.as_str())) {
            true => Ok(()),
            false => Err(NotRemoved(lines.iter().find_map(|l| l.strip_prefix(&format!("failed {c} "))).unwrap_or("no answer").trim().to_string())),
        })
        .collect())
}

/// The run's side of the guard on one host: when the lease was last renewed,
/// and whether the guard took the host over. Once the lease has gone unrenewed
/// for nearly the guard's bound, the run touches the host no more: the guard
/// acts from the bound on, and the two must never both act on an instance.
#[derive(Debug)]
pub struct Fence {
    bound: Duration,
    state: std::sync::Mutex<FenceState>,
}

#[derive(Debug)]
struct FenceState {
    renewed: std::time::Instant,
    renewed_at: time::OffsetDateTime,
    armed: bool,
    taken_over: bool,
}

impl Fence {
    pub fn new(bound: Duration) -> Fence {
        Fence {
            bound,
            state: std::sync::Mutex::new(FenceState {
                renewed: std::time::Instant::now(),
                renewed_at: time::OffsetDateTime::now_utc(),
                armed: false,
                taken_over: false,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FenceState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The guard runs on the host from now on.
    pub fn armed(&self) {
        self.state().armed = true;
    }

    pub fn is_armed(&self) -> bool {
        self.state().armed
    }

    /// The lease was renewed (the host answered).
    pub fn renewed(&self) {
        let mut s = self.state();
        s.renewed = std::time::Instant::now();
        s.renewed_at = time::OffsetDateTime::now_utc();
    }

    /// The lease is no longer ours: the guard took the host over.
    pub fn taken_over(&self) {
        self.state().taken_over = true;
    }

    /// What the guard on the host will do, and from when.
    pub fn promise(&self) -> String {
        let s = self.state();
        let at = s.renewed_at + self.bound;
        let when = at.format(&time::macros::format_description!("[hour]:[minute]:[second] UTC")).unwrap_or_default();
        format!(
            "the guard on the host puts back the containers this run replaced, undrains them, records `recover` and releases the lock from {when} ({}s after the last renewal)",
            self.bound.as_secs()
        )
    }

    /// Some(why) once the run must not touch the host: the guard took over, or
    /// the lease has gone unrenewed for all but a margin of the bound.
    pub fn closed(&self) -> Option<String> {
        let s = self.state();
        if !s.armed {
            return None;
        }
        let margin = (self.bound / 3).min(Duration::from_secs(5));
        if s.taken_over {
            return Some(format!("the guard on the host took it over (its lease was not renewed within {}s)", self.bound.as_secs()));
        }
        if s.renewed.elapsed() + margin >= self.bound {
            let silent = s.renewed.elapsed().as_secs();
            drop(s);
            return Some(format!("the host has not answered for {silent}s; {}", self.promise()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tools check, as `sh` runs it: nothing missing here (scripts/setup installs
    /// them), all three on a host whose PATH has none of them.
    #[tokio::test]
    async fn the_tools_check_names_what_is_missing() {
        let fake = crate::host::fake::FakeHost::new();
        assert_eq!(missing_tools(fake.host().shell.as_ref()).await.unwrap(), Vec::<String>::new());
        let empty = fake.dir.path().join("empty-path");
        std::fs::create_dir_all(&empty).unwrap();
        let out = std::process::Command::new("/bin/sh").args(["-c", MISSING]).env("PATH", &empty).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "missing: docker setsid tar");
    }

    fn plan() -> GuardPlan {
        let lb = |drained: &str| GuardLb {
            upstream_conf: "/etc/nginx/up.conf".into(),
            original: "server a;\n".into(),
            drained: drained.into(),
            reload: "nginx -s reload".into(),
        };
        GuardPlan {
            dir: "/var/lib/capstan/shop".into(),
            lease_id: "abc".into(),
            bound: Duration::from_secs(30),
            docker_socket: "/var/run/docker.sock".into(),
            instances: vec![
                GuardInstance {
                    name: "web-1".into(),
                    lb: Some(lb("server a down;\n")),
                    drain_wait: Duration::from_millis(300),
                    settle: Duration::from_secs(20),
                    probe: Some((8080, "/health".into())),
                    record_json: r#"{"name":"web-1","outcome":"@OUTCOME@"}"#.into(),
                },
                GuardInstance {
                    name: "web\t2".into(),
                    lb: None,
                    drain_wait: Duration::ZERO,
                    settle: Duration::from_millis(10),
                    probe: None,
                    record_json: "{}".into(),
                },
                GuardInstance {
                    name: "web-3".into(),
                    lb: Some(lb("server b down;\n")),
                    drain_wait: Duration::from_millis(5),
                    settle: Duration::from_secs(2),
                    probe: None,
                    record_json: "{}".into(),
                },
            ],
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
        assert_eq!(
            lines[0],
            [
                "web-1",
                "web-1.capstan-old",
                "down.0",
                "300",
                "20",
                "8080",
                "/health",
                "/etc/nginx/up.conf",
                "original.0",
                "nginx -s reload",
                r#"{"name":"web-1","outcome":"@OUTCOME@"}"#
            ]
        );
        // A tab in a field cannot shift the fields after it; a sub-second settle is a second.
        assert_eq!(lines[1], ["web 2", "web 2.capstan-old", "-", "0", "1", "-", "/", "-", "-", "", "{}"]);
        // One copy of a file that two instances share.
        assert_eq!(lines[2][8], "original.0");
        assert_eq!(get("down.0"), "server a down;\n");
        assert_eq!(get("down.2"), "server b down;\n");
        assert_eq!(get("original.0"), "server a;\n");
        assert!(!files.iter().any(|(f, _)| f == "original.1"));
        assert_eq!(get("record"), "{\"time\":\"@TIME@\",\"instances\":[@INSTANCES@]}\n");
    }

    #[test]
    fn the_fence_closes_before_the_bound_and_when_the_guard_took_over() {
        let f = Fence::new(Duration::from_secs(30));
        assert_eq!(f.closed(), None, "not armed: nothing to fence");
        f.armed();
        assert_eq!(f.closed(), None, "just renewed");
        f.taken_over();
        assert!(f.closed().is_some_and(|w| w.contains("took it over")));
        let f = Fence::new(Duration::from_millis(30));
        f.armed();
        std::thread::sleep(Duration::from_millis(25));
        assert!(f.closed().is_some_and(|w| w.contains("guard on the host puts back")), "{:?}", f.closed());
        f.renewed();
        assert_eq!(f.closed(), None);
    }

    #[test]
    fn the_guard_script_is_valid_sh() {
        for script in [GUARD, ARM, DONE] {
            let out = std::process::Command::new("sh").args(["-n", "-c", script]).output().expect("sh");
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
