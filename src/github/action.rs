//! `capstan action`: the entrypoint of the GitHub container action. It masks
//! every secret before printing anything, decides from the event what to run
//! (see [`crate::github::trigger`]; an event that asks for nothing is a notice
//! and exit 0), puts the SSH key in a private 0600 file, and after the run
//! writes the step outputs and the job summary. Annotations stay within
//! GitHub's limits per step (10 errors, 10 warnings): the excess is counted
//! in the last one, and the job summary has all of it.
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
use crate::github::trigger::{self, Decision, Trigger};
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

/// Prepares an action run; `None` when the event asks for nothing (a release
/// edited, a tag deleted…): the notice is printed and the run ends with 0.
pub fn setup(stdout: &mut impl Write) -> Result<Option<Setup>, Error> {
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
    let event_name =
        env::var(env::GITHUB_EVENT_NAME).ok_or_else(|| Error::input("GITHUB_EVENT_NAME is not set: `capstan action` runs inside GitHub Actions"))?;
    let payload = match env::var(env::GITHUB_EVENT_PATH) {
        Some(p) => {
            let text = std::fs::read_to_string(&p).map_err(|e| Error::input(format!("GITHUB_EVENT_PATH {p}: {e}")))?;
            serde_json::from_str(&text).map_err(|e| Error::input(format!("GITHUB_EVENT_PATH {p}: not JSON: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    let config_path = PathBuf::from(input("config").unwrap_or_else(|| crate::core::config::DEFAULT_FILE.into()));
    let inputs = trigger::Inputs { command: input("command"), version: input("version"), rollback_to: input("rollback-to") };
    // Read only for a published prerelease. A config that does not load says yes:
    // the run goes on and reports its errors on their lines.
    let prereleases = || crate::core::config::load(&config_path).map(|c| c.prereleases).unwrap_or(true);
    let trigger = match trigger::decide(&event_name, &payload, &inputs, &prereleases).map_err(|e| Error::input(e.to_string()))? {
        Decision::Run(t) => t,
        Decision::Nothing { notice } => {
            let _ = writeln!(stdout, "{}", notice_annotation(&notice));
            let _ = stdout.flush();
            if let Some(path) = env::var(env::GITHUB_STEP_SUMMARY) {
                let _ = workflow::append(std::path::Path::new(&path), &format!("## capstan: nothing to do\n\n{notice}\n"));
            }
            return Ok(None);
        }
    };
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
    // The image's `created` label from the pushed commit's time: reproducible builds
    // without git in the action's image (or a workspace git refuses as not owned).
    if env::var(env::SOURCE_DATE_EPOCH).is_none() {
        let committed = payload.pointer("/head_commit/timestamp").and_then(serde_json::Value::as_str);
        if let Some(t) = committed.and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()) {
            std::env::set_var(env::SOURCE_DATE_EPOCH, t.unix_timestamp().to_string());
        }
    }
    let (github, github_missing) = match (input("github-token"), env::var(env::GITHUB_REPOSITORY)) {
        (Some(token), Some(repo)) => {
            let api = env::var(env::GITHUB_API_URL).unwrap_or_else(|| "https://api.github.com".into());
            let client =
                crate::github::api::Client::new(&api, &token, &repo, crate::github::api::RetryPolicy::default()).map_err(|e| Error::input(e.to_string()))?;
            (Some(Arc::new(client)), None)
        }
        (None, _) => (None, Some("no github-token input: nothing is reported to GitHub".to_string())),
        (_, None) => (None, Some("GITHUB_REPOSITORY is not set: nothing is reported to GitHub".to_string())),
    };
    Ok(Some(Setup {
        config_path,
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
    }))
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
            workflow::append(std::path::Path::new(&path), &summary::render(report, self.rollback_link().as_ref()))?;
        }
        Ok(())
    }

    /// A config that does not load: every problem in the job summary, and the
    /// annotations (on the config's lines) to print, within GitHub's limits.
    pub fn config_error(&self, e: &crate::core::config::ConfigError) -> Vec<String> {
        if let Some(path) = env::var(env::GITHUB_STEP_SUMMARY) {
            let file = e.file.strip_prefix(&self.workspace).unwrap_or(&e.file).display().to_string();
            let _ = workflow::append(std::path::Path::new(&path), &summary::config_error(e, &file));
        }
        annotate(e)
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

/// GitHub shows at most this many annotations of each level per step and drops the rest.
pub const MAX_ANNOTATIONS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
}

/// One annotation: a level, where (a file and line, or the run), what.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub level: Level,
    pub file: Option<String>,
    pub line: Option<u64>,
    pub message: String,
}

/// Workflow commands for `notes`, at most [`MAX_ANNOTATIONS`] per level: when
/// there are more, the last of a level counts the rest ("N more errors: see the
/// job summary"), so none is lost without a word.
pub fn annotations(notes: &[Note]) -> Vec<String> {
    let mut out = Vec::new();
    for level in [Level::Error, Level::Warning] {
        let of: Vec<&Note> = notes.iter().filter(|n| n.level == level).collect();
        let shown = if of.len() > MAX_ANNOTATIONS { MAX_ANNOTATIONS - 1 } else { of.len() };
        out.extend(of[..shown].iter().map(|n| command(n)));
        if shown < of.len() {
            let word = if level == Level::Error { "errors" } else { "warnings" };
            let message = format!("{} more {word}: see the job summary", of.len() - shown);
            out.push(command(&Note { level, file: None, line: None, message }));
        }
    }
    out
}

fn command(n: &Note) -> String {
    if let (Level::Error, Some(file)) = (n.level, &n.file) {
        return workflow::error_annotation(file, n.line, &n.message);
    }
    let kind = match n.level {
        Level::Error => "error",
        Level::Warning => "warning",
    };
    let mut props = Vec::new();
    if let Some(f) = &n.file {
        props.push(format!("file={}", workflow::escape_property(f)));
    }
    if let (Some(l), Some(_)) = (n.line, &n.file) {
        props.push(format!("line={l}"));
    }
    let props = if props.is_empty() { String::new() } else { format!(" {}", props.join(",")) };
    format!("::{kind}{props}::{}", workflow::escape_data(&n.message))
}

/// `::notice title=capstan::…`: shown on the run's page, not only in its log.
fn notice_annotation(message: &str) -> String {
    format!("::notice title=capstan::{}", workflow::escape_data(message))
}

/// Config errors as annotations on the file's lines, within GitHub's limits.
pub fn annotate(e: &crate::core::config::ConfigError) -> Vec<String> {
    let file = e.file.display().to_string();
    let notes: Vec<Note> = e.issues.iter().map(|i| Note { level: Level::Error, file: Some(file.clone()), line: i.line, message: i.describe() }).collect();
    annotations(&notes)
}

/// An error in the action's terms: a missing image's hint names the
/// `version:` input and the workflow step that pushes the image, not the CLI's
/// flags. (A pull request's check without a version plans the head commit's
/// `sha-<7>` tag, which only a step of the workflow can have pushed.)
pub fn in_action_terms(e: Error) -> Error {
    match e {
        Error::Input { message, hint: Some(_) } if message.contains(" does not exist") => {
            let hint = if message.contains(":sha-") {
                "the check plans the image of the pull request's head commit, tagged `sha-<7 hex>`: push it in a step before capstan's \
                 (docker/build-push-action with that tag in `tags:`, or docker/metadata-action's `type=sha` with \
                 `DOCKER_METADATA_PR_HEAD_SHA: true`, as capstan plans the head commit, not the merge commit), \
                 or give the action a `version:` input that names a release the registry has"
            } else {
                "push that tag in a step before capstan's (docker/build-push-action with it in `tags:`), give the service a \
                 `build:` block so that capstan builds and pushes it, or set the action's `version:` input to a release the registry has"
            };
            Error::input_hint(message, hint)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(level: Level, i: u64) -> Note {
        Note { level, file: Some("capstan.yml".into()), line: Some(i), message: format!("problem {i}") }
    }

    #[test]
    fn annotations_stay_within_ten_errors_and_ten_warnings_and_count_the_rest() {
        let mut notes: Vec<Note> = (1..=200).map(|i| note(Level::Error, i)).collect();
        notes.extend((1..=50).map(|i| note(Level::Warning, i)));
        let lines = annotations(&notes);
        let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("::error")).collect();
        let warnings: Vec<&String> = lines.iter().filter(|l| l.starts_with("::warning")).collect();
        assert_eq!((errors.len(), warnings.len(), lines.len()), (10, 10, 20));
        assert_eq!(errors[0], "::error file=capstan.yml,line=1::problem 1");
        assert_eq!(errors[8], "::error file=capstan.yml,line=9::problem 9");
        assert_eq!(errors[9], "::error::191 more errors: see the job summary");
        assert_eq!(warnings[9], "::warning::41 more warnings: see the job summary");
        // Ten fit as they are.
        let ten: Vec<Note> = (1..=10).map(|i| note(Level::Warning, i)).collect();
        let lines = annotations(&ten);
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[9], "::warning file=capstan.yml,line=10::problem 10");
    }

    #[test]
    fn two_hundred_config_problems_make_ten_annotations() {
        use crate::core::config::{issue::Issue, ConfigError};
        let e = ConfigError {
            file: "/work/capstan.yml".into(),
            issues: (0..200).map(|i| Issue { path: format!("services.s{i}.image"), line: Some(i + 3), message: "expected a repository".into() }).collect(),
        };
        let lines = annotate(&e);
        assert_eq!(lines.len(), 10);
        assert_eq!(lines[0], "::error file=/work/capstan.yml,line=3::services.s0.image: expected a repository");
        assert_eq!(lines[9], "::error::191 more errors: see the job summary");
    }

    #[test]
    fn a_missing_image_is_explained_in_the_actions_terms() {
        let missing = |tag: &str| {
            Error::input_hint(
                format!("services.web: image registry.example/web:{tag} does not exist: manifest unknown"),
                "build and push it first (capstan build --push), or check --version",
            )
        };
        let e = in_action_terms(missing("sha-2665741"));
        let text = e.render();
        assert!(text.starts_with("error: services.web: image registry.example/web:sha-2665741 does not exist"), "{text}");
        assert!(text.contains("`version:` input") && text.contains("docker/build-push-action") && text.contains("DOCKER_METADATA_PR_HEAD_SHA"), "{text}");
        assert!(!text.contains("--push") && !text.contains("--version"), "{text}");
        let text = in_action_terms(missing("v2")).render();
        assert!(text.contains("`version:` input") && text.contains("docker/build-push-action") && !text.contains("--version"), "{text}");
        // Other errors pass as they are.
        assert_eq!(in_action_terms(Error::input("x")).render(), "error: x");
    }
}
