//! Every environment variable capstan reads, declared once.

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

/// The URL of the GitHub Actions run, when running in one.
pub fn run_url() -> Option<String> {
    Some(format!("{}/{}/actions/runs/{}", var(GITHUB_SERVER_URL)?, var(GITHUB_REPOSITORY)?, var(GITHUB_RUN_ID)?))
}

/// Who is deploying: the GitHub actor, else the local user and machine.
pub fn actor() -> String {
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
    fn input_names_follow_the_runner() {
        assert_eq!(input_var("rollback-to"), "INPUT_ROLLBACK-TO");
        assert_eq!(input_var("ssh private key"), "INPUT_SSH_PRIVATE_KEY");
    }
}
