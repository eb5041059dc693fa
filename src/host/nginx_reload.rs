//! nginx in a container, tested and reloaded through the Docker CLI on the host in
//! one command on the kept shell, sent right behind the write of its upstream file
//! (`host::drain`): one round trip where the engine's execs take three each. Used
//! where the guard is armed, whose preflight proved the Docker CLI is there. Before
//! any change, the drain check's `nginx -T` goes the same way where the host has the
//! CLI.

use crate::core::config::Nginx;
use crate::host::{Host, ShellError};

/// In an nginx container, through the Docker CLI on the host at socket `$1`: once file
/// `$3` holds what the run wrote (SHA-256 `$4`), `$5 -T` in container `$2` (the test
/// that also shows the files as the container reads them), then the reload (`$6`…).
/// Prints `not-written` (the file holds something else: nothing ran), `test-failed`
/// with the output, or `shown` with `nginx -T`'s output after a line `reloaded` or
/// `reload-failed CODE`: two execs in one round trip, sent beside the write.
const RELOAD_IN_CONTAINER: &str = r#"export DOCKER_HOST="unix://$1"; c=$2 f=$3 want=$4 ngx=$5; shift 5
[ "$(sha256sum < "$f" | cut -d' ' -f1)" = "$want" ] || { echo not-written; exit 0; }
e=$(mktemp); o=$(mktemp); trap 'rm -f "$e" "$o"' EXIT
docker exec "$c" "$ngx" -T > "$e" 2>&1 || { echo test-failed; cat "$e"; exit 0; }
r=0; docker exec "$c" "$@" > "$o" 2>&1 || r=$?
[ "$r" = 0 ] && echo reloaded || { echo "reload-failed $r"; cat "$o"; exit 0; }
cat "$e""#;

/// What [`RELOAD_IN_CONTAINER`] said.
#[derive(Debug, PartialEq)]
pub(super) enum Reloaded {
    NotWritten,
    TestFailed(String),
    ReloadFailed {
        code: i64,
        output: String,
    },
    /// Tested, reloaded, and `nginx -T`'s output.
    Shown(String),
}

impl Reloaded {
    pub(super) fn read(stdout: &str) -> Option<Reloaded> {
        let (first, rest) = stdout.split_once('\n').unwrap_or((stdout, ""));
        match first.trim() {
            "not-written" => Some(Reloaded::NotWritten),
            "test-failed" => Some(Reloaded::TestFailed(rest.to_string())),
            "reloaded" => Some(Reloaded::Shown(rest.to_string())),
            other => {
                let code = other.strip_prefix("reload-failed ")?.trim().parse().ok()?;
                Some(Reloaded::ReloadFailed { code, output: rest.to_string() })
            }
        }
    }
}

/// [`RELOAD_IN_CONTAINER`] on the kept shell (None: it said nothing it knows).
pub(super) async fn reload_in_container(host: &Host, socket: &str, container: &str, n: &Nginx, file: &str, sha: &str) -> Result<Option<Reloaded>, ShellError> {
    let argv = n.reload_argv();
    let nginx = argv.first().map(String::as_str).unwrap_or("nginx");
    let mut cmd = vec!["sh", "-c", RELOAD_IN_CONTAINER, "capstan-nginx", socket, container, file, sha, nginx];
    cmd.extend(argv.iter().map(String::as_str));
    let r = host.shell.run(&cmd, None).await?;
    Ok(Reloaded::read(&r.stdout))
}

/// `$3 -T` in container `$2`, through the Docker CLI on the host at socket `$1`, where
/// the host has it: `dumped CODE` and the output, else `no-cli`.
const DUMP_IN_CONTAINER: &str = r#"command -v docker >/dev/null 2>&1 || { echo no-cli; exit 0; }
export DOCKER_HOST="unix://$1"; r=0; o=$(mktemp); trap 'rm -f "$o"' EXIT
docker exec "$2" "$3" -T > "$o" 2>&1 || r=$?
echo "dumped $r"; cat "$o""#;

/// `nginx -T` in `container` in one round trip, before any change (the drain check):
/// its exit code and output, or None where the host has no Docker CLI (the engine's
/// execs are then asked).
pub async fn dump_in_container(host: &Host, socket: &str, container: &str, nginx: &str) -> Result<Option<(i64, String)>, ShellError> {
    let r = host.shell.run(&["sh", "-c", DUMP_IN_CONTAINER, "capstan-nginx-dump", socket, container, nginx], None).await?;
    let (first, rest) = r.stdout.split_once('\n').unwrap_or((r.stdout.as_str(), ""));
    Ok(first.trim().strip_prefix("dumped ").and_then(|c| c.parse().ok()).map(|code| (code, rest.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-container reload under a local `sh`, with a `docker` first on the PATH that
    /// records its calls and fails the exec whose nginx flag is `failing`: what it said,
    /// and the calls that reached Docker.
    fn reload_script(written: &str, on_disk: &str, failing: &str) -> (Option<Reloaded>, String) {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let docker = bin.join("docker");
        std::fs::write(&docker, "#!/bin/sh\necho \"$DOCKER_HOST $*\" >> \"$CALLS\"\n[ \"$4\" = -T ] && echo 'server a:80 down;'\n[ \"$4\" != \"$FAIL\" ]\n")
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = t.path().join("upstream.conf");
        std::fs::write(&file, on_disk).unwrap();
        let calls = t.path().join("calls");
        let sha = crate::host::drain::sha256_hex(written);
        let out = std::process::Command::new("sh")
            .args(["-c", RELOAD_IN_CONTAINER, "capstan-nginx", "/run/docker.sock", "lb", &file.display().to_string(), &sha, "nginx", "nginx", "-s", "reload"])
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
            .env("CALLS", &calls)
            .env("FAIL", failing)
            .output()
            .unwrap();
        (Reloaded::read(&String::from_utf8_lossy(&out.stdout)), std::fs::read_to_string(calls).unwrap_or_default())
    }

    #[test]
    fn in_a_container_the_test_with_its_dump_and_the_reload_go_in_one_command() {
        let s = "unix:///run/docker.sock";
        let (said, calls) = reload_script("new", "new", "");
        assert_eq!(calls, format!("{s} exec lb nginx -T\n{s} exec lb nginx -s reload\n"));
        assert_eq!(said, Some(Reloaded::Shown("server a:80 down;\n".into())));
    }

    #[test]
    fn in_a_container_nothing_runs_unless_the_file_holds_what_was_written() {
        let (said, calls) = reload_script("new", "changed since", "");
        assert_eq!((said, calls.as_str()), (Some(Reloaded::NotWritten), ""));
    }

    #[test]
    fn in_a_container_a_failed_test_or_reload_stops_there() {
        let (said, calls) = reload_script("new", "new", "-T");
        assert_eq!(calls.lines().count(), 1, "{calls}");
        assert!(matches!(said, Some(Reloaded::TestFailed(_))), "{said:?}");
        let (said, calls) = reload_script("new", "new", "-s");
        assert_eq!(calls.lines().count(), 2, "{calls}");
        assert!(matches!(said, Some(Reloaded::ReloadFailed { code: 1, .. })), "{said:?}");
    }
}
