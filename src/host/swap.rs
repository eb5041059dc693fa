//! On a guarded host, an instance's container swapped for its successor in one
//! short command on the host (one round trip where the Docker API takes four):
//! the instance renamed to `<name>.capstan-old` and stopped, kept; the new
//! container, created ahead as `<name>.capstan-new`, renamed to the name and
//! started. First, the command checks that the host's lock still holds the
//! run's lease: a request held up by a cut link and delivered after the guard
//! took the lock over changes nothing (through the API, such a late rename
//! would take the name from the container the guard had just put back). The
//! check and the swap hold the guard's `busy` directory, which the guard takes
//! before it takes the lock over, so the two never interleave. Last, the
//! started container's inspect comes back with the answer: the health gate's
//! first look, a round trip less. Needs the Docker CLI, which a guarded host
//! has (the guard preflight).

use crate::host::{CmdOutput, Shell, ShellError};

/// `$1` state dir, `$2` lease id, `$3` Docker socket, `$4` name, `$5` kept name,
/// `$6` the new container's name. Prints each of `renamed`, `stopped`, `placed`,
/// `started` once done, or why it stopped short (Docker's words on stderr); after
/// `started`, the container's `docker container inspect`.
const SWAP: &str = concat!(
    r#"d=$1 id=$2 name=$4 old=$5 new=$6; export DOCKER_HOST="unix://$3"
"#,
    crate::host::guard::lease_held!(),
    r#"docker rename "$name" "$old" >&2 || exit 0
echo renamed
docker stop "$old" >/dev/null || exit 0
echo stopped
docker rename "$new" "$name" >&2 || exit 0
echo placed
docker start "$name" >/dev/null || exit 0
echo started
docker container inspect "$name" 2>/dev/null"#
);

/// How far a swap got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swapped {
    /// The instance bears the kept name.
    pub renamed: bool,
    pub stopped: bool,
    /// The new container bears the instance's name.
    pub placed: bool,
    pub started: bool,
}

/// Why a swap stopped short (what it did is in [`Swapped`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SwapError {
    #[error("the host's lock no longer holds this run's lease (the guard took over): {name} left as it was")]
    LeaseLost { name: String },
    #[error("the guard on the host was busy for 5s: {name} left as it was")]
    Busy { name: String },
    #[error("{what}: {message}")]
    Failed { what: String, message: String },
    #[error("{0}")]
    Host(#[from] ShellError),
}

/// Swaps `name` (kept as `old`) for `new`, once the lock at `dir` is seen to hold lease `id`.
/// Once started: the container as `docker container inspect` printed it (empty if it
/// printed nothing).
pub async fn swap(shell: &dyn Shell, dir: &str, id: &str, docker_socket: &str, name: &str, old: &str, new: &str) -> (Swapped, Result<String, SwapError>) {
    match shell.run(&["sh", "-c", SWAP, "capstan-swap", dir, id, docker_socket, name, old, new], None).await {
        Ok(out) => outcome(&out, name, old, new),
        Err(e) => (Swapped::default(), Err(e.into())),
    }
}

/// What the script's lines say.
fn outcome(out: &CmdOutput, name: &str, old: &str, new: &str) -> (Swapped, Result<String, SwapError>) {
    // After `started`, the inspect's JSON.
    let (head, inspect) = match out.stdout.find("started\n") {
        Some(i) => out.stdout.split_at(i + "started\n".len()),
        None => (out.stdout.as_str(), ""),
    };
    let said: Vec<&str> = head.lines().map(str::trim).collect();
    let has = |w: &str| said.contains(&w);
    let done = Swapped { renamed: has("renamed"), stopped: has("stopped"), placed: has("placed"), started: has("started") };
    let failed = |what: String| {
        let message = match out.stderr.trim() {
            "" => format!("exit {}", out.status),
            e => e.to_string(),
        };
        Err(SwapError::Failed { what, message })
    };
    let result = if has("lease-lost") {
        Err(SwapError::LeaseLost { name: name.to_string() })
    } else if has("busy") {
        Err(SwapError::Busy { name: name.to_string() })
    } else if !done.renamed {
        failed(format!("rename {name} to {old}"))
    } else if !done.stopped {
        failed(format!("stop {old}"))
    } else if !done.placed {
        failed(format!("rename {new} to {name}"))
    } else if !done.started {
        failed(format!("start {name}"))
    } else {
        Ok(inspect.to_string())
    };
    (done, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script under a local `sh`, with a `docker` first on the PATH that records its
    /// arguments (and fails the subcommand it is told to): the lock decides what reaches
    /// Docker, and the guard's busy mark is let go.
    fn run_script(lease_in_lock: &str, failing: &str) -> ((Swapped, Result<String, SwapError>), String) {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let docker = bin.join("docker");
        let script = "#!/bin/sh\necho \"$DOCKER_HOST $*\" >> \"$CALLS\"\n[ \"$1\" = container ] && echo '[{\"Id\":\"c1\"}]'\n[ \"$1\" != \"$FAIL\" ]\n";
        std::fs::write(&docker, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = t.path().join("state");
        std::fs::create_dir_all(state.join("guard/ours")).unwrap();
        std::fs::write(state.join("lock.json"), format!("{{\"id\":\"{lease_in_lock}\",\"holder\":\"t\"}}")).unwrap();
        let calls = t.path().join("calls");
        let out = std::process::Command::new("sh")
            .args(["-c", SWAP, "capstan-swap", &state.display().to_string(), "ours", "/run/docker.sock", "web-1", "web-1.capstan-old", "web-1.capstan-new"])
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("CALLS", &calls)
            .env("FAIL", failing)
            .output()
            .unwrap();
        assert!(!state.join("guard/ours/busy").exists(), "the guard's busy mark is let go");
        let out = CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        };
        (outcome(&out, "web-1", "web-1.capstan-old", "web-1.capstan-new"), std::fs::read_to_string(calls).unwrap_or_default())
    }

    #[test]
    fn with_the_lease_it_keeps_the_old_and_starts_the_new_in_its_place() {
        let ((done, r), calls) = run_script("ours", "");
        let s = "unix:///run/docker.sock";
        assert_eq!(
            calls,
            format!("{s} rename web-1 web-1.capstan-old\n{s} stop web-1.capstan-old\n{s} rename web-1.capstan-new web-1\n{s} start web-1\n{s} container inspect web-1\n")
        );
        assert_eq!((done, r), (Swapped { renamed: true, stopped: true, placed: true, started: true }, Ok("[{\"Id\":\"c1\"}]\n".to_string())));
    }

    #[test]
    fn once_the_guard_took_the_lock_over_nothing_reaches_docker() {
        let ((done, r), calls) = run_script("ours-guard", "");
        assert_eq!(calls, "");
        assert_eq!((done, r), (Swapped::default(), Err(SwapError::LeaseLost { name: "web-1".into() })));
    }

    #[test]
    fn a_failure_says_how_far_it_got() {
        let ((done, r), _) = run_script("ours", "stop");
        assert_eq!(done, Swapped { renamed: true, ..Default::default() });
        assert!(matches!(r, Err(SwapError::Failed { ref what, .. }) if what == "stop web-1.capstan-old"), "{r:?}");
        let ((done, r), _) = run_script("ours", "start");
        assert_eq!(done, Swapped { renamed: true, stopped: true, placed: true, started: false });
        assert!(matches!(r, Err(SwapError::Failed { ref what, .. }) if what == "start web-1"), "{r:?}");
    }
}
