//! Where the source of a build came from, for its OCI labels: the commit and
//! repository URL (from GitHub's environment, else read-only `git`), and the
//! `created` time tied to the source rather than the clock.

use std::path::Path;

use crate::env::Context;

/// Where the source came from, for the OCI labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The commit (`GITHUB_SHA`, else `git rev-parse HEAD`).
    pub revision: Option<String>,
    /// The repository URL (`$GITHUB_SERVER_URL/$GITHUB_REPOSITORY`, else the `origin` remote).
    pub url: Option<String>,
    /// The commit's time (Unix seconds), when git knows it.
    pub commit_time: Option<i64>,
}

/// The commit and repository URL for the labels: from GitHub's environment
/// (as `main` read it), else from git in `dir`.
pub fn source(dir: &Path, env: &Context) -> Source {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
    };
    let revision = env.github_sha.clone().or_else(|| git(&["rev-parse", "HEAD"]));
    let url = env.repository_url.clone().or_else(|| git(&["config", "--get", "remote.origin.url"]).map(|u| web_url(&u)));
    let commit_time = revision
        .as_deref()
        .filter(|r| r.chars().all(|c| c.is_ascii_hexdigit()))
        .and_then(|r| git(&["log", "-1", "--format=%ct", r]))
        .and_then(|t| t.parse().ok());
    Source { revision, url, commit_time }
}

/// `git@github.com:acme/web.git` -> `https://github.com/acme/web`; credentials in an https remote are dropped.
pub(super) fn web_url(remote: &str) -> String {
    let u = remote.trim().trim_end_matches(".git");
    if let Some(rest) = u.strip_prefix("git@") {
        if let Some((host, path)) = rest.split_once(':') {
            return format!("https://{host}/{path}");
        }
    }
    if let Some(rest) = u.strip_prefix("https://") {
        let rest = rest.split_once('@').map(|(_, r)| r).unwrap_or(rest);
        return format!("https://{rest}");
    }
    u.to_string()
}

/// The `created` label: `SOURCE_DATE_EPOCH` when set, else the commit's time,
/// else now. Tied to the source rather than the clock, the same commit builds
/// the same image (every step a cache hit, the same digest), so re-running a
/// release job pushes nothing new.
pub fn created(source: &Source, env: &Context) -> String {
    let t = env
        .source_date_epoch
        .as_deref()
        .and_then(|s| s.parse::<i64>().ok())
        .or(source.commit_time)
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    crate::core::time::fmt_time(t.replace_nanosecond(0).unwrap_or(t))
}
