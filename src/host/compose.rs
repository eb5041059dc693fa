//! Keeping Docker Compose's view true while capstan replaces a Compose project's
//! containers.
//!
//! `docker compose up -d` recreates a container when the config hash Compose
//! computes for its service differs from the container's
//! `com.docker.compose.config-hash` label (Compose 1.29's hash also covers the
//! image ID its tag names). So, for a service whose compose file takes its tag
//! from a variable (`image: repo:${SERVICE_A_TAG}`, `compose.variable`):
//! - before the first instance, the release is tagged on the host as
//!   `repo:<version>` (only where that tag is absent or already this image: a
//!   version tag is never moved), and Compose itself computes the hash of each
//!   of its services with the variable set to the release ([`HASH`]);
//! - each new container is created with that hash (and, for Compose v2, the image
//!   label), so Compose finds it up to date;
//! - once the host's rollout has succeeded, the variable is set in `.env` in
//!   place ([`SET_ENV`]), and put back as it was when the host is reverted.
//!
//! A revert puts back the old containers with their own labels, which match
//! the `.env` that was never changed (or was put back). The scripts are
//! constants; every value reaches them as a positional argument.

use std::collections::HashMap;

use crate::core::config::Compose;
use crate::core::observed::ContainerSpec;
use crate::host::{Shell, ShellError};

/// Why Compose, or the `.env` script, did not do what was asked on the host.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComposeError {
    #[error(transparent)]
    Shell(#[from] ShellError),
    #[error("`{} config --hash` in {dir} failed with exit {status}: {stderr}", .command.join(" "))]
    Hash { command: Vec<String>, dir: String, status: i32, stderr: String },
    #[error("cannot set {} in {file}: exit {status}: {stderr}", .assigns.join(" "))]
    SetEnv { file: String, assigns: Vec<String>, status: i32, stderr: String },
}

pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
pub const IMAGE: &str = "com.docker.compose.image";
const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
const VERSION: &str = "com.docker.compose.version";

/// Runs the Compose command in the project's directory: `$1` the directory, the rest the argv.
const HASH: &str = r#"cd "$1" && shift && exec "$@""#;

/// Sets (`VAR=value`) or removes (`VAR`) variables of the env file `$1`, in place
/// (same inode), other lines untouched. First prints each variable as it was:
/// `was VAR=raw value` or `absent VAR`.
const SET_ENV: &str = r#"set -e; f=$1; shift
[ -f "$f" ] || : > "$f"
for a in "$@"; do k=${a%%=*}
  l=$(grep -E "^[[:space:]]*(export[[:space:]]+)?$k=" "$f" | tail -n 1) || true
  if [ -n "$l" ]; then printf 'was %s=%s\n' "$k" "${l#*=}"; else printf 'absent %s\n' "$k"; fi
done
t=$(mktemp); trap 'rm -f "$t"' EXIT
awk 'BEGIN { n = ARGC; for (i = 2; i < n; i++) { a = ARGV[i]; p = index(a, "="); k = p ? substr(a, 1, p - 1) : a; want[k] = a; set[k] = p > 0; order[i] = k }; ARGC = 2 }
  { l = $0; sub(/^[ \t]*(export[ \t]+)?/, "", l); p = index(l, "="); k = p ? substr(l, 1, p - 1) : ""
    if (k != "" && (k in want)) { if (set[k] && !(k in done)) print want[k]; done[k] = 1; next } print }
  END { for (i = 2; i < n; i++) { k = order[i]; if (set[k] && !(k in done)) { print want[k]; done[k] = 1 } } }' "$f" "$@" > "$t"
cat "$t" > "$f"; echo written"#;

/// Where a Compose project lives on the host, read off one of its containers' labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub name: String,
    pub working_dir: String,
    pub files: Vec<String>,
    /// The Compose command that made the containers: `[docker-compose]` for 1.x, else `[docker, compose]`,
    /// unless the config names one.
    pub command: Vec<String>,
    pub env_file: String,
}

impl Project {
    /// From a container of the project; `None` when it lacks Compose's labels.
    pub fn of(spec: &ContainerSpec, c: &Compose) -> Option<Project> {
        let labels = spec.0.labels.as_ref()?;
        let working_dir = labels.get(WORKING_DIR)?.clone();
        let files = labels.get(CONFIG_FILES).map(|f| f.split(',').map(str::to_string).filter(|f| !f.is_empty()).collect()).unwrap_or_default();
        let v1 = labels.get(VERSION).is_some_and(|v| v.starts_with("1."));
        let command = c.command.clone().unwrap_or_else(|| if v1 { vec!["docker-compose".into()] } else { vec!["docker".into(), "compose".into()] });
        let env_file = c.env_file.clone().unwrap_or_else(|| format!("{}/.env", working_dir.trim_end_matches('/')));
        Some(Project { name: c.project.clone(), working_dir, files, command, env_file })
    }

    /// The argv that prints every service's config hash with `variable` set to `value`.
    pub fn hash_argv(&self, variable: &str, value: &str) -> Vec<String> {
        let mut argv =
            vec!["sh".into(), "-c".into(), HASH.into(), "capstan-compose".into(), self.working_dir.clone(), "env".into(), format!("{variable}={value}")];
        argv.extend(self.command.iter().cloned());
        argv.extend(["-p".into(), self.name.clone()]);
        for f in &self.files {
            argv.extend(["-f".into(), f.clone()]);
        }
        argv.extend(["--env-file".into(), self.env_file.clone(), "config".into(), "--hash=*".into()]);
        argv
    }
}

/// Compose's `config --hash` output: `service hash` per line.
pub fn parse_hashes(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (s, h) = (w.next()?, w.next()?);
            (w.next().is_none() && h.len() >= 32 && h.chars().all(|c| c.is_ascii_hexdigit())).then(|| (s.to_string(), h.to_string()))
        })
        .collect()
}

/// The hashes Compose computes for the project's services with `variable` set to `value`.
/// A short command that reads files, on the kept shell (one round trip; a channel of its
/// own cost three): nothing else of the host's rollout runs while it does.
pub async fn hashes(shell: &dyn Shell, p: &Project, variable: &str, value: &str) -> Result<HashMap<String, String>, ComposeError> {
    let argv = p.hash_argv(variable, value);
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let r = shell.run(&args, None).await?;
    let found = parse_hashes(&r.stdout);
    if !r.ok() || found.is_empty() {
        return Err(ComposeError::Hash { command: p.command.clone(), dir: p.working_dir.clone(), status: r.status, stderr: r.stderr.trim().to_string() });
    }
    Ok(found)
}

/// `spec` with Compose's labels for a container of the new release.
pub fn relabel(spec: &ContainerSpec, hash: &str, image_id: &str) -> ContainerSpec {
    let mut s = spec.clone();
    let labels = s.0.labels.get_or_insert_with(Default::default);
    labels.insert(CONFIG_HASH.into(), hash.into());
    if labels.contains_key(IMAGE) {
        labels.insert(IMAGE.into(), image_id.into());
    }
    s
}

/// One variable of an env file, as it was before capstan set it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvChange {
    pub file: String,
    pub variable: String,
    /// The raw value it had, `None` when the file did not set it.
    pub before: Option<String>,
    pub after: String,
}

/// Sets `vars` (name, value) in `file`; returns what each was.
pub async fn set_env(shell: &dyn Shell, file: &str, vars: &[(String, String)]) -> Result<Vec<EnvChange>, ComposeError> {
    let assigns: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let out = run_set_env(shell, file, &assigns).await?;
    Ok(vars.iter().map(|(k, v)| EnvChange { file: file.into(), variable: k.clone(), before: was(&out, k), after: v.clone() }).collect())
}

/// Puts the variables back as they were.
pub async fn restore_env(shell: &dyn Shell, changes: &[EnvChange]) -> Result<(), ComposeError> {
    let mut by_file: Vec<(&str, Vec<String>)> = Vec::new();
    for c in changes {
        let a = match &c.before {
            Some(v) => format!("{}={v}", c.variable),
            None => c.variable.clone(),
        };
        match by_file.iter_mut().find(|(f, _)| *f == c.file) {
            Some((_, v)) => v.push(a),
            None => by_file.push((&c.file, vec![a])),
        }
    }
    for (file, assigns) in by_file {
        run_set_env(shell, file, &assigns).await?;
    }
    Ok(())
}

async fn run_set_env(shell: &dyn Shell, file: &str, assigns: &[String]) -> Result<String, ComposeError> {
    let mut argv = vec!["sh", "-c", SET_ENV, "capstan-env", file];
    argv.extend(assigns.iter().map(String::as_str));
    let r = shell.run(&argv, None).await?;
    if !r.ok() || !r.stdout.trim_end().ends_with("written") {
        return Err(ComposeError::SetEnv { file: file.to_string(), assigns: assigns.to_vec(), status: r.status, stderr: r.stderr.trim().to_string() });
    }
    Ok(r.stdout)
}

/// What the script said a variable was.
fn was(out: &str, k: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix("was ").and_then(|r| r.strip_prefix(k)).and_then(|r| r.strip_prefix('=')).map(str::to_string))
}

/// A tag that names a release (`v1.2.0`, `1.2`, `2026.11.30`), which capstan never moves,
/// as opposed to a moving one (`latest`, `production`, `main`).
pub fn is_version_tag(tag: &str) -> bool {
    let t = tag.strip_prefix('v').or_else(|| tag.strip_prefix('V')).unwrap_or(tag);
    t.chars().next().is_some_and(|c| c.is_ascii_digit()) || tag.starts_with("sha-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[(&str, &str)]) -> ContainerSpec {
        let mut s = ContainerSpec::default();
        s.0.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        s
    }

    fn compose(command: Option<&[&str]>) -> Compose {
        Compose {
            project: "payment".into(),
            variable: Some("SERVICE_A_TAG".into()),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            env_file: None,
        }
    }

    #[test]
    fn the_project_comes_from_the_labels_and_the_command_from_its_version() {
        let v2 = spec(&[(WORKING_DIR, "/opt/payment"), (CONFIG_FILES, "/opt/payment/compose.yml"), (VERSION, "2.40.3")]);
        let p = Project::of(&v2, &compose(None)).unwrap();
        assert_eq!(p.command, ["docker", "compose"]);
        assert_eq!(p.env_file, "/opt/payment/.env");
        assert_eq!(
            p.hash_argv("SERVICE_A_TAG", "v1.1.0")[4..],
            [
                "/opt/payment",
                "env",
                "SERVICE_A_TAG=v1.1.0",
                "docker",
                "compose",
                "-p",
                "payment",
                "-f",
                "/opt/payment/compose.yml",
                "--env-file",
                "/opt/payment/.env",
                "config",
                "--hash=*"
            ]
        );
        let v1 = spec(&[(WORKING_DIR, "/opt/payment/"), (CONFIG_FILES, "docker-compose.yml,override.yml"), (VERSION, "1.29.2")]);
        let p = Project::of(&v1, &compose(None)).unwrap();
        assert_eq!(p.command, ["docker-compose"]);
        assert_eq!(p.files, ["docker-compose.yml", "override.yml"]);
        assert_eq!(p.env_file, "/opt/payment/.env");
        assert_eq!(Project::of(&v1, &compose(Some(&["/usr/bin/docker-compose"]))).unwrap().command, ["/usr/bin/docker-compose"]);
        assert_eq!(Project::of(&spec(&[]), &compose(None)), None);
    }

    #[test]
    fn hashes_are_read_per_service() {
        let out = "service-a-1 47a7af302c05cfd5f058253f843640bdcb4b75bc4ff25b1eec54929a32e3b3dc\nWARN something\nservice-a-2 573ddd29c0ae1ba64f6980da3dff93a2bfc297737e9bd1c020b5585ca8fd4914\n";
        let h = parse_hashes(out);
        assert_eq!(h.len(), 2);
        assert_eq!(h["service-a-2"], "573ddd29c0ae1ba64f6980da3dff93a2bfc297737e9bd1c020b5585ca8fd4914");
    }

    #[test]
    fn relabelling_sets_the_hash_and_the_image_only_where_compose_keeps_one() {
        let v2 = relabel(&spec(&[(CONFIG_HASH, "old"), (IMAGE, "sha256:old"), ("app", "kept")]), "new", "sha256:new");
        let l = v2.0.labels.unwrap();
        assert_eq!((l[CONFIG_HASH].as_str(), l[IMAGE].as_str(), l["app"].as_str()), ("new", "sha256:new", "kept"));
        let v1 = relabel(&spec(&[(CONFIG_HASH, "old")]), "new", "sha256:new").0.labels.unwrap();
        assert!(!v1.contains_key(IMAGE));
    }

    #[test]
    fn version_tags_are_told_from_moving_ones() {
        for (tag, version) in
            [("v1.0.0", true), ("1.2", true), ("2026.11.30", true), ("sha-abc1234", true), ("latest", false), ("production", false), ("main", false)]
        {
            assert_eq!(is_version_tag(tag), version, "{tag}");
        }
    }

    /// The real script on a real file: values set in place, other lines kept, and put back.
    #[tokio::test]
    async fn env_variables_are_set_in_place_and_put_back() {
        use std::os::unix::fs::MetadataExt;
        let fake = crate::host::fake::FakeHost::new();
        let file = fake.dir.path().join(".env");
        let text = "# payment\nSERVICE_A_TAG=v1.0.0\nexport DB_URL=\"postgres://db/x=1\"\n\nOTHER=1";
        std::fs::write(&file, text).unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        let f = file.display().to_string();
        let vars = [("SERVICE_A_TAG".to_string(), "v1.1.0".to_string()), ("SERVICE_B_TAG".to_string(), "v1.1.0".to_string())];
        let changes = set_env(fake.as_ref(), &f, &vars).await.unwrap();
        assert_eq!(changes[0].before.as_deref(), Some("v1.0.0"));
        assert_eq!(changes[1].before, None);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# payment\nSERVICE_A_TAG=v1.1.0\nexport DB_URL=\"postgres://db/x=1\"\n\nOTHER=1\nSERVICE_B_TAG=v1.1.0\n"
        );
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
        restore_env(fake.as_ref(), &changes).await.unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# payment\nSERVICE_A_TAG=v1.0.0\nexport DB_URL=\"postgres://db/x=1\"\n\nOTHER=1\n");
    }
}
