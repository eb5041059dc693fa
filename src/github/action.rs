//! `capstan action`: the entrypoint of the GitHub container action. It masks
//! every secret before printing anything, puts the SSH key in a private 0600
//! file, decides from the event what to run (see [`crate::github::trigger`]), and after
//! the run writes the step outputs and the job summary.
//!
//! It also makes the GitHub client ([`crate::github::api`]) from the
//! `github-token` input, `GITHUB_API_URL` and `GITHUB_REPOSITORY`; what is
//! sent is decided in [`crate::github::publish`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::core::config::Config;
use crate::env::{self, input};
use crate::error::Error;
use crate::github::summary::{self, RollbackLink};
use crate::github::trigger::{self, Trigger};
use crate::output::report::Report;
use crate::output::workflow;

/// What the action prepared before the config is read.
pub struct Setup {
    pub config_path: PathBuf,
    pub trigger: Trigger,
    pub dry_run: bool,
    pub services: Vec<String>,
    pub environment_url: Option<String>,
    /// The `environment` input: GitHub's deployment environment.
    pub environment: String,
    /// The GitHub API, when a token and the repository are known.
    pub github: Option<Arc<crate::github::api::Client>>,
    /// Why there is no GitHub API, when there is none.
    pub github_missing: Option<String>,
    /// `GITHUB_WORKSPACE`: config paths in annotations are relative to it.
    pub workspace: PathBuf,
    identity: Option<PathBuf>,
    known_hosts: Option<PathBuf>,
    /// Holds the key files; removed when the run ends.
    _dir: tempfile::TempDir,
}

/// The inputs that are secrets, in the order they are masked.
const SECRETS: [&str; 3] = ["ssh-private-key", "registry-password", "github-token"];

pub fn setup(stdout: &mut impl Write) -> Result<Setup, Error> {
    // Masks first: nothing may be printed before the runner knows what to hide.
    for name in SECRETS {
        if let Some(v) = input(name) {
            let _ = writeln!(stdout, "{}", workflow::mask(&v));
            // A multi-line key is also masked line by line, as the runner prints lines.
            for line in v.lines().map(str::trim).filter(|l| l.len() >= 8 && v.contains('\n')) {
                let _ = writeln!(stdout, "{}", workflow::mask(line));
            }
        }
    }
    let _ = stdout.flush();
    let dir = tempfile::Builder::new().prefix("capstan-action-").tempdir().map_err(|e| Error::input(format!("cannot make a private temp dir: {e}")))?;
    let write_private = |name: &str, text: &str| -> Result<PathBuf, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.path().join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::input(format!("cannot write {}: {e}", path.display())))?;
        let body = if text.ends_with('\n') { text.to_string() } else { format!("{text}\n") };
        f.write_all(body.as_bytes()).map_err(|e| Error::input(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    };
    let identity = input("ssh-private-key").map(|k| write_private("id_deploy", &k)).transpose()?;
    let known_hosts = input("ssh-known-hosts").map(|k| write_private("known_hosts", &k)).transpose()?;
    if let Some(pw) = input("registry-password") {
        // The config names the variable the password is read from; the input fills it.
        std::env::set_var("CAPSTAN_REGISTRY_PASSWORD", pw);
    }
    let event_name =
        env::var(env::GITHUB_EVENT_NAME).ok_or_else(|| Error::input("GITHUB_EVENT_NAME is not set: `capstan action` runs inside GitHub Actions"))?;
    let payload = match env::var(env::GITHUB_EVENT_PATH) {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::input(format!("GITHUB_EVENT_PATH {p}: {e}")))?;
            serde_json::from_str(&text).map_err(|e| Error::input(format!("GITHUB_EVENT_PATH {p}: not JSON: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    // The image's `created` label from the pushed commit's time: reproducible builds
    // without git in the action's image (or a workspace git refuses as not owned).
    if env::var(env::SOURCE_DATE_EPOCH).is_none() {
        let committed = payload.pointer("/head_commit/timestamp").and_then(serde_json::Value::as_str);
        if let Some(t) = committed.and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()) {
            std::env::set_var(env::SOURCE_DATE_EPOCH, t.unix_timestamp().to_string());
        }
    }
    let inputs = trigger::Inputs { command: input("command"), version: input("version"), rollback_to: input("rollback-to") };
    let trigger = trigger::decide(&event_name, &payload, &inputs).map_err(Error::input)?;
    let (github, github_missing) = match (input("github-token"), env::var(env::GITHUB_REPOSITORY)) {
        (Some(token), Some(repo)) => {
            let api = env::var(env::GITHUB_API_URL).unwrap_or_else(|| "https://api.github.com".into());
            let client = crate::github::api::Client::new(&api, &token, &repo, crate::github::api::RetryPolicy::default()).map_err(Error::input)?;
            (Some(Arc::new(client)), None)
        }
        (None, _) => (None, Some("no github-token input: nothing is reported to GitHub".to_string())),
        (_, None) => (None, Some("GITHUB_REPOSITORY is not set: nothing is reported to GitHub".to_string())),
    };
    Ok(Setup {
        config_path: PathBuf::from(input("config").unwrap_or_else(|| crate::core::config::DEFAULT_FILE.into())),
        trigger,
        dry_run: input("dry-run").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        services: input("services").map(|s| s.split([',', ' ', '\n']).filter(|x| !x.is_empty()).map(String::from).collect()).unwrap_or_default(),
        environment_url: input("environment-url"),
        environment: input("environment").unwrap_or_else(|| "production".into()),
        github,
        github_missing,
        workspace: env::var(env::GITHUB_WORKSPACE).map(PathBuf::from).or_else(|| std::env::current_dir().ok()).unwrap_or_default(),
        identity,
        known_hosts,
        _dir: dir,
    })
}

impl Setup {
    /// Whether hosts can be reached: an SSH key was given (a fork's pull request gets none).
    pub fn has_ssh_key(&self) -> bool {
        self.identity.is_some()
    }

    pub fn rollback_link(&self) -> Option<RollbackLink> {
        match (env::var(env::GITHUB_SERVER_URL), env::var(env::GITHUB_REPOSITORY), env::var(env::GITHUB_WORKFLOW_REF)) {
            (Some(s), Some(r), Some(w)) => RollbackLink::new(&s, &r, &w),
            _ => None,
        }
    }

    /// Where GitHub records this run's deployment.
    pub fn target(&self) -> crate::github::publish::Target {
        crate::github::publish::Target {
            environment: self.environment.clone(),
            environment_url: self.environment_url.clone(),
            log_url: env::run_url(),
            rollback: self.rollback_link(),
        }
    }

    /// The key files from the inputs replace the config's; known hosts are required.
    pub fn apply(&self, config: &mut Config) -> Result<(), Error> {
        if let Some(p) = &self.identity {
            config.ssh.identity_file = Some(p.clone());
        }
        if let Some(p) = &self.known_hosts {
            config.ssh.known_hosts = Some(p.clone());
        }
        if config.ssh.known_hosts.is_none() {
            return Err(Error::input_hint(
                "no known hosts: capstan verifies every host key and accepts none it has not been given",
                "set the ssh-known-hosts input (the output of `ssh-keyscan -p PORT HOST`, checked), or ssh.known_hosts in the config",
            ));
        }
        if let Some(r) = config.registry.as_mut() {
            if std::env::var_os("CAPSTAN_REGISTRY_PASSWORD").is_some() {
                r.password_env = "CAPSTAN_REGISTRY_PASSWORD".into();
            }
        }
        Ok(())
    }

    /// Step outputs and the job summary, when the runner asked for them.
    pub fn finish(&self, report: &Report, deployment: Option<u64>) -> std::io::Result<()> {
        let (report_path, report_output) = report_location();
        std::fs::write(&report_path, serde_json::to_vec_pretty(report).unwrap_or_default())?;
        if let Some(out) = env::var(env::GITHUB_OUTPUT) {
            let mut text = String::new();
            text.push_str(&workflow::output_entry("version", report.version.as_deref().unwrap_or("")));
            text.push_str(&workflow::output_entry("outcome", report.outcome.as_str()));
            text.push_str(&workflow::output_entry("deployment-id", &deployment.map(|d| d.to_string()).unwrap_or_default()));
            text.push_str(&workflow::output_entry("environment-url", self.environment_url.as_deref().unwrap_or("")));
            text.push_str(&workflow::output_entry("report", &report_output));
            workflow::append(std::path::Path::new(&out), &text)?;
        }
        if let Some(path) = env::var(env::GITHUB_STEP_SUMMARY) {
            let to = report.previous.as_deref().unwrap_or("previous");
            workflow::append(std::path::Path::new(&path), &summary::render(report, self.rollback_link().as_ref(), to))?;
        }
        Ok(())
    }
}

/// Where the JSON report is written, and its path as later steps see it.
/// A container action does not see `RUNNER_TEMP`, but the runner mounts
/// `$RUNNER_TEMP/_github_home` at `/github/home`: the report goes there.
fn report_location() -> (PathBuf, String) {
    let name = "capstan-report.json";
    let temp = env::var(env::RUNNER_TEMP).map(PathBuf::from);
    match temp {
        Some(t) if t.is_dir() => (t.join(name), t.join(name).display().to_string()),
        Some(t) if std::path::Path::new("/github/home").is_dir() => {
            (PathBuf::from("/github/home").join(name), t.join("_github_home").join(name).display().to_string())
        }
        _ => {
            let p = std::env::temp_dir().join(format!("capstan-report-{}.json", std::process::id()));
            (p.clone(), p.display().to_string())
        }
    }
}

/// Config errors as annotations on the file's lines.
pub fn annotate(e: &crate::core::config::ConfigError) -> Vec<String> {
    let file = e.file.display().to_string();
    e.issues.iter().map(|i| workflow::error_annotation(&file, i.line, &i.describe())).collect()
}
