//! Which release to run: the version asked for, and for a rollback the exact
//! digests recorded for an earlier release (image references themselves are
//! `core::image`'s). Pure.

use std::collections::HashMap;

use crate::core::names::{self, NameError};
use crate::core::record::Record;

/// Why a release cannot be run or rolled back to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    /// Nothing names a version: no `--version`, and GitHub's ref (if any) is not a tag.
    #[error("no version to deploy ({}): pass --version v1.4.2, or run on a tag push (GITHUB_REF=refs/tags/v1.4.2)", no_version_why(.github_ref.as_deref()))]
    NoVersion { github_ref: Option<String> },
    #[error("{from}: version {text:?} cannot be an image tag: {reason}")]
    NotATag { from: &'static str, text: String, reason: NameError },
    #[error(
        "{from}: version {text:?} is not semver (like v1.4.2, 1.4.2 or v2.0.0-rc.1); \
         set `release: {{ raw_tags: true }}` in the config to deploy tags that are not"
    )]
    NotSemver { from: &'static str, text: String },
    #[error("--to {text:?} is neither `previous` nor a version: {reason}")]
    RollbackTo { text: String, reason: NameError },
    #[error("the deployment log has no successful deploy to go back from")]
    NothingToGoBackFrom,
}

fn no_version_why(github_ref: Option<&str>) -> String {
    match github_ref {
        Some(r) => format!("GITHUB_REF is {r}, not a tag"),
        None => "no --version and no GITHUB_REF".into(),
    }
}

/// Where the version of a run can come from, in order: `--version`, the tag of
/// `GITHUB_REF` (`refs/tags/v1.4.2`), `GITHUB_REF_NAME` when `GITHUB_REF_TYPE` is `tag`.
#[derive(Debug, Default, Clone, Copy)]
pub struct VersionSource<'a> {
    pub cli: Option<&'a str>,
    pub github_ref: Option<&'a str>,
    pub github_ref_name: Option<&'a str>,
    pub github_ref_type: Option<&'a str>,
}

/// A release: the tag text as given (it is the image tag too), and its semver
/// reading when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    pub semver: Option<semver::Version>,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// `v1.4.2`, `1.4.2`, `v2.0.0-rc.1` -> semver; anything else -> `None`.
pub fn parse_semver(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

/// The version of this run. Non-semver tags are refused unless `raw_tags` (the
/// config's `release.raw_tags`) allows them.
pub fn version(src: VersionSource<'_>, raw_tags: bool) -> Result<Version, ReleaseError> {
    let (text, from) = if let Some(v) = src.cli {
        (v.to_string(), "--version")
    } else if let Some(tag) = src.github_ref.and_then(|r| r.strip_prefix("refs/tags/")) {
        (tag.to_string(), "GITHUB_REF")
    } else if let (Some(name), Some("tag")) = (src.github_ref_name, src.github_ref_type) {
        (name.to_string(), "GITHUB_REF_NAME")
    } else {
        return Err(ReleaseError::NoVersion { github_ref: src.github_ref.map(str::to_string) });
    };
    if let Err(reason) = names::check_tag(&text) {
        return Err(ReleaseError::NotATag { from, text, reason });
    }
    let semver = parse_semver(&text);
    if semver.is_none() && !raw_tags {
        return Err(ReleaseError::NotSemver { from, text });
    }
    Ok(Version { text, semver })
}

#[derive(Debug, Clone, PartialEq)]
pub enum RollbackTo {
    Previous,
    Version(String),
}

impl RollbackTo {
    pub fn parse(s: &str) -> Result<Self, ReleaseError> {
        if s == "previous" {
            return Ok(RollbackTo::Previous);
        }
        names::check_tag(s).map_err(|reason| ReleaseError::RollbackTo { text: s.to_string(), reason })?;
        Ok(RollbackTo::Version(s.to_string()))
    }
}

/// What a rollback runs on one host: per (service, instance), an exact image.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackTarget {
    /// The version name, when the log knows it.
    pub version: Option<String>,
    pub images: HashMap<(String, String), String>,
}

/// The version a host's log says runs now: that of its newest release (a successful
/// deploy or rollback; a `recover` only put back what ran before). It is what a run
/// replaces, so its "previous version" (the report's, the hooks'); `None` when the log
/// has no release, or the newest one ran images whose version it did not know.
pub fn previous_version(records: &[Record]) -> Option<String> {
    records.iter().rev().find(|r| r.is_release()).and_then(|r| r.version.clone())
}

/// Finds in a host's log what to roll back to. `None` for a version means the
/// log does not know it (the caller may then resolve the tag in the registry).
pub fn rollback_target(records: &[Record], to: &RollbackTo) -> Result<Option<RollbackTarget>, ReleaseError> {
    let ok: Vec<&Record> = records.iter().filter(|r| r.is_release()).collect();
    match to {
        RollbackTo::Previous => {
            let Some(current) = ok.last() else {
                return Err(ReleaseError::NothingToGoBackFrom);
            };
            let images: HashMap<_, _> = current.instances.iter().map(|i| ((i.service.clone(), i.name.clone()), i.from_image.clone())).collect();
            // Name it after the newest earlier release that ran exactly these images.
            let version = ok[..ok.len() - 1]
                .iter()
                .rev()
                .find(|r| r.instances.iter().all(|i| images.get(&(i.service.clone(), i.name.clone())) == Some(&i.to_image)))
                .and_then(|r| r.version.clone());
            Ok(Some(RollbackTarget { version, images }))
        }
        RollbackTo::Version(v) => {
            let Some(r) = ok.iter().rev().find(|r| r.version.as_deref() == Some(v)) else {
                return Ok(None);
            };
            let images = r.instances.iter().map(|i| ((i.service.clone(), i.name.clone()), i.to_image.clone())).collect();
            Ok(Some(RollbackTarget { version: Some(v.clone()), images }))
        }
    }
}

/// The version a digest ran as, according to the log.
pub fn version_of_image(records: &[Record], image: &str) -> Option<String> {
    records.iter().rev().filter(|r| r.is_release()).find(|r| r.instances.iter().any(|i| i.to_image == image)).and_then(|r| r.version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{InstanceOutcome, RecordInstance, RunCommand, RunOutcome};

    #[test]
    fn versions() {
        let src = |cli: Option<&'static str>, gref: Option<&'static str>| VersionSource { cli, github_ref: gref, ..Default::default() };
        let cases: &[(VersionSource, bool, Result<&str, &str>)] = &[
            (src(Some("v1.4.2"), None), false, Ok("v1.4.2")),
            (src(Some("1.4.2"), None), false, Ok("1.4.2")),
            (src(Some("v2.0.0-rc.1"), None), false, Ok("v2.0.0-rc.1")),
            (src(Some("v2.0.0"), Some("refs/tags/v1.0.0")), false, Ok("v2.0.0")),
            (src(None, Some("refs/tags/v1.4.2")), false, Ok("v1.4.2")),
            (VersionSource { github_ref_name: Some("v1.5.0"), github_ref_type: Some("tag"), ..Default::default() }, false, Ok("v1.5.0")),
            (
                VersionSource { github_ref: Some("refs/heads/main"), github_ref_name: Some("main"), github_ref_type: Some("branch"), ..Default::default() },
                false,
                Err("GITHUB_REF is refs/heads/main, not a tag"),
            ),
            (src(None, None), false, Err("no version to deploy")),
            (src(Some("v2"), None), false, Err("is not semver")),
            (src(Some("release-7"), None), false, Err("raw_tags: true")),
            (src(Some("release-7"), None), true, Ok("release-7")),
            (src(Some("v1.4"), None), false, Err("is not semver")),
            (src(Some("v1;rm -rf /"), None), true, Err("cannot be an image tag")),
            (src(Some("-v1"), None), true, Err("cannot be an image tag")),
            (src(Some("v1.0.0+build.5"), None), false, Err("cannot be an image tag")),
        ];
        for (s, raw, want) in cases {
            let got = version(*s, *raw);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(*w, g.text),
                (Err(w), Err(g)) => assert!(g.to_string().contains(w), "{g}"),
                _ => panic!("{s:?}: got {got:?}"),
            }
        }
        assert!(version(src(Some("v2.0.0-rc.1"), None), false).unwrap().semver.is_some_and(|v| !v.pre.is_empty()));
        assert_eq!(version(src(Some("edge"), None), true).unwrap().semver, None);
    }

    /// A record of `command` on web-1 and web-2, from `from` to `to`.
    fn run(command: RunCommand, version: Option<&str>, outcome: RunOutcome, from: &str, to: &str) -> Record {
        Record {
            time: time::macros::datetime!(2026-11-22 10:00 UTC),
            app: "shop".into(),
            host: "h".into(),
            command,
            version: version.map(String::from),
            outcome,
            actor: None,
            run_url: None,
            duration_ms: 1,
            instances: ["web-1", "web-2"]
                .iter()
                .map(|n| RecordInstance {
                    service: "web".into(),
                    name: n.to_string(),
                    from_image: from.into(),
                    to_image: to.into(),
                    outcome: InstanceOutcome::Replaced,
                })
                .collect(),
            error: None,
        }
    }

    fn rec(version: &str, outcome: RunOutcome, from: &str, to: &str) -> Record {
        run(RunCommand::Deploy, Some(version), outcome, from, to)
    }

    /// A `recover` as a later run logs it: the kept container (`to`) back in place of the new one (`from`).
    fn recover(from: &str, to: &str) -> Record {
        let mut r = run(RunCommand::Recover, None, RunOutcome::Succeeded, from, to);
        r.instances.iter_mut().for_each(|i| i.outcome = InstanceOutcome::Reverted);
        r
    }

    #[test]
    fn the_previous_version_is_the_newest_release() {
        use RunOutcome::*;
        let deploy = |v: &str, o| rec(v, o, "d0", "d1");
        let rollback = |v: Option<&str>| run(RunCommand::Rollback, v, Succeeded, "d2", "d1");
        let cases: Vec<(Vec<Record>, Option<&str>, &str)> = vec![
            (vec![], None, "an empty log knows nothing"),
            (vec![deploy("v1", Succeeded)], Some("v1"), "one deploy"),
            (vec![deploy("v1", Succeeded), deploy("v2", Succeeded)], Some("v2"), "the newest"),
            (vec![deploy("v1", Succeeded), deploy("v2", RolledBack)], Some("v1"), "a reverted deploy never went live"),
            (vec![deploy("v1", Succeeded), deploy("v2", Failed)], Some("v1"), "nor did a failed one"),
            (vec![deploy("v1", Succeeded), deploy("v2", Refused), deploy("v2", Skipped)], Some("v1"), "nor a refused or skipped one"),
            (vec![deploy("v1", Succeeded), recover("d2", "d1")], Some("v1"), "a recover puts back what ran: no release"),
            (vec![deploy("v1", Succeeded), recover("d2", "d1"), recover("d2", "d1")], Some("v1"), "however many"),
            (vec![recover("d2", "d1")], None, "a recover alone names no version"),
            (vec![deploy("v1", Succeeded), deploy("v2", Succeeded), rollback(Some("v1"))], Some("v1"), "a rollback is a release"),
            (vec![deploy("v2", Succeeded), rollback(None)], None, "back to images whose version the log never knew"),
            (vec![deploy("v1", Succeeded), recover("d2", "d1"), deploy("v2", Succeeded)], Some("v2"), "a release after a recover"),
        ];
        for (log, want, why) in cases {
            assert_eq!(previous_version(&log).as_deref(), want, "{why}");
        }
    }

    #[test]
    fn a_recover_is_no_release_to_roll_back_from() {
        let log = vec![rec("v1", RunOutcome::Succeeded, "d0", "d1"), rec("v2", RunOutcome::Succeeded, "d1", "d2"), recover("id:d3", "id:d2")];
        let prev = rollback_target(&log, &RollbackTo::Previous).unwrap().unwrap();
        assert_eq!((prev.version.as_deref(), prev.images[&("web".to_string(), "web-1".to_string())].as_str()), (Some("v1"), "d1"));
        assert_eq!(version_of_image(&log, "id:d2"), None, "a recover ran no version");
        assert!(rollback_target(&log[2..], &RollbackTo::Previous).is_err(), "a recover alone is nothing to go back from");
    }

    #[test]
    fn rollback_targets() {
        let log =
            vec![rec("v2", RunOutcome::Succeeded, "d1", "d2"), rec("v3", RunOutcome::Succeeded, "d2", "d3"), rec("v4", RunOutcome::RolledBack, "d3", "d4")];
        let prev = rollback_target(&log, &RollbackTo::Previous).unwrap().unwrap();
        assert_eq!(prev.version.as_deref(), Some("v2"), "previous of v3 is v2, the failed v4 does not count");
        assert_eq!(prev.images[&("web".to_string(), "web-1".to_string())], "d2");
        let v2 = rollback_target(&log, &RollbackTo::Version("v2".into())).unwrap().unwrap();
        assert_eq!(v2.images[&("web".to_string(), "web-2".to_string())], "d2");
        assert_eq!(rollback_target(&log, &RollbackTo::Version("v1".into())).unwrap(), None, "v1 is only known as a from-image");
        // The first deploy's previous is the image it replaced, whose version the log does not know.
        let first = rollback_target(&log[..1], &RollbackTo::Previous).unwrap().unwrap();
        assert_eq!((first.version, first.images[&("web".to_string(), "web-1".to_string())].as_str()), (None, "d1"));
        assert!(rollback_target(&[], &RollbackTo::Previous).is_err());
        assert_eq!(version_of_image(&log, "d3").as_deref(), Some("v3"));
        assert_eq!(version_of_image(&log, "d4"), None, "a reverted release never ran as that version");
        assert!(RollbackTo::parse("v1;id").is_err());
    }

    #[test]
    fn refusals_read_as_they_did() {
        let src = |cli: Option<&'static str>, gref: Option<&'static str>| VersionSource { cli, github_ref: gref, ..Default::default() };
        let cases = [
            (
                version(src(None, None), false).unwrap_err(),
                "no version to deploy (no --version and no GITHUB_REF): pass --version v1.4.2, or run on a tag push (GITHUB_REF=refs/tags/v1.4.2)",
            ),
            (
                version(src(None, Some("refs/heads/main")), false).unwrap_err(),
                "no version to deploy (GITHUB_REF is refs/heads/main, not a tag): pass --version v1.4.2, or run on a tag push (GITHUB_REF=refs/tags/v1.4.2)",
            ),
            (
                version(src(Some("v1;id"), None), false).unwrap_err(),
                "--version: version \"v1;id\" cannot be an image tag: ';' is not allowed (use letters, digits and _.-)",
            ),
            (
                version(src(None, Some("refs/tags/nightly")), false).unwrap_err(),
                "GITHUB_REF: version \"nightly\" is not semver (like v1.4.2, 1.4.2 or v2.0.0-rc.1); \
                 set `release: { raw_tags: true }` in the config to deploy tags that are not",
            ),
            (RollbackTo::parse("-v1").unwrap_err(), "--to \"-v1\" is neither `previous` nor a version: it must start with a letter, digit or _, not '-'"),
            (rollback_target(&[], &RollbackTo::Previous).unwrap_err(), "the deployment log has no successful deploy to go back from"),
        ];
        for (got, want) in cases {
            assert_eq!(got.to_string(), want);
        }
    }
}
