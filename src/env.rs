//! Every environment variable capstan reads, declared once, and [`Context`]: what a
//! run takes from the environment, read once in `main` and passed down, so that
//! nothing below `main` reads the process environment (and tests build their own).

use std::fmt;
use std::path::PathBuf;

/// The config file when `--config` is not given.
pub const CAPSTAN_CONFIG: &str = "CAPSTAN_CONFIG";
/// The ref of the triggering event (`refs/tags/v1.4.2`): the version to deploy when `--version` is not given.
pub const GITHUB_REF: &str = "GITHUB_REF";
/// The short ref name and its type (`tag` or `branch`): the version when `GITHUB_REF` is not a tag ref.
pub const GITHUB_REF_NAME: &str = "GITHUB_REF_NAME";
pub const GITHUB_REF_TYPE: &str = "GITHUB_REF_TYPE";
/// The commit being built: the `sha-…` tag and the `org.opencontainers.image.revision` label.
pub const GITHUB_SHA: &str = "GITHUB_SHA";
/// Who triggered the run, recorded in the host's deployment log.
pub const GITHUB_ACTOR: &str = "GITHUB_ACTOR";
/// With `GITHUB_REPOSITORY` and `GITHUB_RUN_ID`: the run's URL, recorded in the lock and the log.
pub const GITHUB_SERVER_URL: &str = "GITHUB_SERVER_URL";
pub const GITHUB_REPOSITORY: &str = "GITHUB_REPOSITORY";
pub const GITHUB_RUN_ID: &str = "GITHUB_RUN_ID";
/// The REST API's base URL (`https://api.github.com`, or a GitHub Enterprise server's).
pub const GITHUB_API_URL: &str = "GITHUB_API_URL";
/// The workflow file and ref (`acme/shop/.github/workflows/deploy.yml@refs/tags/v2`): the rollback link.
pub const GITHUB_WORKFLOW_REF: &str = "GITHUB_WORKFLOW_REF";
/// `true` inside GitHub Actions: the log is folded into `::group::` sections.
pub const GITHUB_ACTIONS: &str = "GITHUB_ACTIONS";
/// The event that started the run and its payload file: what `capstan action` does.
pub const GITHUB_EVENT_NAME: &str = "GITHUB_EVENT_NAME";
pub const GITHUB_EVENT_PATH: &str = "GITHUB_EVENT_PATH";
/// The checkout: annotation paths are relative to it.
pub const GITHUB_WORKSPACE: &str = "GITHUB_WORKSPACE";
/// The runner's files for step outputs and the job summary, and its temp dir (the report).
pub const GITHUB_OUTPUT: &str = "GITHUB_OUTPUT";
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";
pub const RUNNER_TEMP: &str = "RUNNER_TEMP";
/// The `created` label of a build, for reproducible images.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// Diagnostics filter for `tracing` (`-v` sets `debug`).
pub const CAPSTAN_LOG: &str = "CAPSTAN_LOG";

pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// What a run takes from the environment. Read by [`Context::read`] in `main`, after
/// the action's setup (which fills some of it from the action's inputs).
#[derive(Clone, Default)]
pub struct Context {
    /// `GITHUB_ACTIONS` is `true`: the log is folded into groups.
    pub in_actions: bool,
    /// `CAPSTAN_CONFIG`: the config file when `--config` is not given.
    pub config_file: Option<PathBuf>,
    /// `GITHUB_REF`, `GITHUB_REF_NAME`, `GITHUB_REF_TYPE`: the version when `--version` is not given.
    pub github_ref: Option<String>,
    pub github_ref_name: Option<String>,
    pub github_ref_type: Option<String>,
    /// `GITHUB_SHA`: the commit of the run.
    pub github_sha: Option<String>,
    /// `$GITHUB_SERVER_URL/$GITHUB_REPOSITORY`: the repository's web address.
    pub repository_url: Option<String>,
    /// `SOURCE_DATE_EPOCH`, as given: the `created` label of a build.
    pub source_date_epoch: Option<String>,
    /// Who is deploying: the GitHub actor, else the local user and machine.
    pub actor: String,
    /// The URL of the GitHub Actions run, when running in one.
    pub run_url: Option<String>,
    /// The registry password, from the variable the config names (see [`Context::read_registry_password`]).
    registry_password: Option<String>,
}

impl Context {
    /// The process environment, read once.
    pub fn read() -> Context {
        Context {
            in_actions: var(GITHUB_ACTIONS).as_deref() == Some("true"),
            config_file: var(CAPSTAN_CONFIG).map(PathBuf::from),
            github_ref: var(GITHUB_REF),
            github_ref_name: var(GITHUB_REF_NAME),
            github_ref_type: var(GITHUB_REF_TYPE),
            github_sha: var(GITHUB_SHA),
            repository_url: var(GITHUB_SERVER_URL).zip(var(GITHUB_REPOSITORY)).map(|(s, r)| format!("{s}/{r}")),
            source_date_epoch: var(SOURCE_DATE_EPOCH),
            actor: actor(),
            run_url: run_url(),
            registry_password: None,
        }
    }

    /// Reads the registry password from `name`, the variable the config names
    /// (`registry.password_env`): known only once the config is loaded.
    pub fn read_registry_password(&mut self, name: &str) {
        self.registry_password = var(name);
    }

    /// A context that says `password` is the registry's (tests).
    #[cfg(test)]
    pub fn with_registry_password(mut self, password: &str) -> Context {
        self.registry_password = Some(password.to_string());
        self
    }

    /// The registry password, when the variable the config names was set.
    pub fn registry_password(&self) -> Option<&str> {
        self.registry_password.as_deref()
    }
}

/// Never the password: a context may end up in a debug log.
impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("in_actions", &self.in_actions)
            .field("config_file", &self.config_file)
            .field("github_ref", &self.github_ref)
            .field("github_sha", &self.github_sha)
            .field("actor", &self.actor)
            .field("run_url", &self.run_url)
            .field("registry_password", &self.registry_password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// The URL of the GitHub Actions run, when running in one.
pub fn run_url() -> Option<String> {
    Some(format!("{}/{}/actions/runs/{}", var(GITHUB_SERVER_URL)?, var(GITHUB_REPOSITORY)?, var(GITHUB_RUN_ID)?))
}

/// Who is deploying: the GitHub actor, else the local user and machine.
fn actor() -> String {
    if let Some(a) = var(GITHUB_ACTOR) {
        return a;
    }
    let user = var("USER").or_else(|| var("LOGNAME")).unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// The environment variable the runner sets for an input of a container action:
/// uppercased, spaces to underscores, hyphens kept (`rollback-to` -> `INPUT_ROLLBACK-TO`).
pub fn input_var(name: &str) -> String {
    format!("INPUT_{}", name.replace(' ', "_").to_uppercase())
}

/// An input's value, trimmed; `None` when unset or empty.
pub fn input(name: &str) -> Option<String> {
    std::env::var(input_var(name)).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_stays_out_of_debug() {
        let c = Context::default().with_registry_password("hunter2-secret");
        assert_eq!(c.registry_password(), Some("hunter2-secret"));
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn input_names_follow_the_runner() {
        assert_eq!(input_var("rollback-to"), "INPUT_ROLLBACK-TO");
        assert_eq!(input_var("ssh private key"), "INPUT_SSH_PRIVATE_KEY");
    }
}
