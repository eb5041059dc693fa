//! What a GitHub Actions run asks capstan to do, from `GITHUB_EVENT_NAME`, the
//! event payload at `GITHUB_EVENT_PATH` and the action's inputs. Pure.
//!
//! - `push` of a tag: deploy that version; a push that deletes the tag (`deleted:
//!   true`) asks for nothing;
//! - `release`: only `published`, of a release that is no draft, deploys its tag,
//!   and a prerelease only when the config opts in (`release.prereleases`). One
//!   publish fires `created`, `published` and `released` (and `prereleased` for a
//!   prerelease): every activity but `published` asks for nothing, so one release
//!   deploys once;
//! - `workflow_dispatch`: `rollback-to` (a version or `previous`) rolls back,
//!   `version` redeploys that version;
//! - `pull_request` (and `pull_request_target`): a check of the plan, on the
//!   PR's head commit (not the merge commit in `GITHUB_SHA`);
//! - anything else: an error that says which triggers capstan answers.
//!
//! An event that asks for nothing is [`Decision::Nothing`]: a notice, exit 0.
//! The action's `command` input overrides the choice (the release and
//! tag-deletion rules still hold for a deploy). Payload values arrive as GitHub
//! sends them: `workflow_dispatch` inputs are strings, even booleans.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Deploy { version: String },
    Rollback { to: String },
    Check { version: Option<String>, head_sha: Option<String>, fork: bool },
}

/// What the event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Run(Trigger),
    /// Nothing to do (a release edited, a tag deleted…): the notice says why; exit 0.
    Nothing {
        notice: String,
    },
}

/// Why the event cannot be answered: bad input, exit 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("a push to {0} is not a release: deploy on tag pushes (on: push: tags: ['v*'])")]
    BranchPush(String),
    #[error("the {event} event has no {field}")]
    Missing { event: &'static str, field: &'static str },
    #[error("no version in a {0} event: give the version input")]
    NoVersion(String),
    #[error("a workflow_dispatch run needs a rollback-to input (a version, or previous) or a version input to redeploy")]
    DispatchWithoutInput,
    #[error(
        "capstan does not know what to do on {0:?}: it deploys on a tag push or a published release, \
         rolls back on workflow_dispatch, and checks pull requests (or set the command input)"
    )]
    UnknownEvent(String),
    #[error("the command input is {0:?}: expected deploy, rollback or check")]
    UnknownCommand(String),
}

/// The action's own inputs that bear on the choice (`INPUT_COMMAND`, …).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub command: Option<String>,
    pub version: Option<String>,
    pub rollback_to: Option<String>,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn bool_at(v: &Value, pointer: &str) -> bool {
    v.pointer(pointer).and_then(Value::as_bool) == Some(true)
}

/// Why a deploy on this event would deploy nothing, if it would not: a
/// release activity other than `published`, a draft, a prerelease the config
/// does not opt into (`prereleases` is asked only then: it reads the config),
/// a push that deletes its ref.
fn nothing_to_deploy(event: &str, payload: &Value, prereleases: &dyn Fn() -> bool) -> Option<String> {
    match event {
        "release" => {
            let action = str_at(payload, &["action"]).unwrap_or("(no action)");
            let tag = str_at(payload, &["release", "tag_name"]).unwrap_or("(no tag)");
            if action != "published" {
                return Some(format!("release {tag} {action}: nothing to deploy; capstan deploys on `published`"));
            }
            if bool_at(payload, "/release/draft") {
                return Some(format!("release {tag} is a draft: nothing to deploy; capstan deploys it when it is published"));
            }
            if bool_at(payload, "/release/prerelease") && !prereleases() {
                return Some(format!(
                    "release {tag} is a prerelease: nothing to deploy; set `release: {{ prereleases: true }}` in the config to deploy prereleases"
                ));
            }
            None
        }
        "push" => {
            // GitHub's tag deletion: `deleted: true`, and `after` all zeros.
            let after = str_at(payload, &["after"]);
            let deleted = bool_at(payload, "/deleted") || after.is_some_and(|a| a.bytes().all(|b| b == b'0'));
            deleted.then(|| {
                let r = str_at(payload, &["ref"]).unwrap_or("the ref");
                match r.strip_prefix("refs/tags/") {
                    Some(tag) => format!("tag {tag} deleted: nothing to deploy"),
                    None => format!("{r} deleted: nothing to deploy"),
                }
            })
        }
        _ => None,
    }
}

/// Decides from the event. `prereleases` says whether the config opts into
/// deploying prereleases; it is asked only for a published prerelease.
pub fn decide(event: &str, payload: &Value, inputs: &Inputs, prereleases: &dyn Fn() -> bool) -> Result<Decision, TriggerError> {
    // workflow_dispatch inputs, when the workflow did not pass them to the action itself.
    let dispatch = |name: &str| str_at(payload, &["inputs", name]).map(String::from);
    let version = inputs.version.clone().or_else(|| (event == "workflow_dispatch").then(|| dispatch("version")).flatten());
    let rollback_to = inputs.rollback_to.clone().or_else(|| (event == "workflow_dispatch").then(|| dispatch("rollback-to")).flatten());
    let from_event = || -> Result<String, TriggerError> {
        match event {
            "push" => match str_at(payload, &["ref"]) {
                Some(r) if r.starts_with("refs/tags/") => Ok(r["refs/tags/".len()..].to_string()),
                Some(r) => Err(TriggerError::BranchPush(r.to_string())),
                None => Err(TriggerError::Missing { event: "push", field: "ref" }),
            },
            "release" => str_at(payload, &["release", "tag_name"]).map(String::from).ok_or(TriggerError::Missing { event: "release", field: "tag_name" }),
            _ => Err(TriggerError::NoVersion(event.to_string())),
        }
    };
    let command = match inputs.command.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => match event {
            "push" | "release" => "deploy".into(),
            "workflow_dispatch" if rollback_to.is_some() => "rollback".into(),
            "workflow_dispatch" if version.is_some() => "deploy".into(),
            "workflow_dispatch" => return Err(TriggerError::DispatchWithoutInput),
            "pull_request" | "pull_request_target" => "check".into(),
            other => return Err(TriggerError::UnknownEvent(other.to_string())),
        },
    };
    let trigger = match command.as_str() {
        "deploy" => {
            if let Some(notice) = nothing_to_deploy(event, payload, prereleases) {
                return Ok(Decision::Nothing { notice });
            }
            Trigger::Deploy {
                version: match version {
                    Some(v) => v,
                    None => from_event()?,
                },
            }
        }
        "rollback" => Trigger::Rollback { to: rollback_to.unwrap_or_else(|| "previous".into()) },
        "check" => {
            let head_sha = str_at(payload, &["pull_request", "head", "sha"]).map(String::from);
            let head_repo = str_at(payload, &["pull_request", "head", "repo", "full_name"]);
            let base_repo = str_at(payload, &["pull_request", "base", "repo", "full_name"]);
            // A deleted fork has no head repo; treat it as a fork.
            let fork = payload.get("pull_request").is_some() && head_repo != base_repo;
            Trigger::Check { version: version.or_else(|| from_event().ok()), head_sha, fork }
        }
        other => return Err(TriggerError::UnknownCommand(other.to_string())),
    };
    Ok(Decision::Run(trigger))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO: &dyn Fn() -> bool = &|| false;
    const YES: &dyn Fn() -> bool = &|| true;

    fn run(t: Trigger) -> Result<Decision, TriggerError> {
        Ok(Decision::Run(t))
    }
    fn deploy(v: &str) -> Result<Decision, TriggerError> {
        run(Trigger::Deploy { version: v.into() })
    }
    fn nothing(notice: &str) -> Result<Decision, TriggerError> {
        Ok(Decision::Nothing { notice: notice.into() })
    }

    /// Payloads in the shape GitHub sends (fields as in docker/metadata-action's recorded fixtures).
    fn push_tag() -> Value {
        json!({"ref": "refs/tags/v1.1.1", "before": "0000000000000000000000000000000000000000", "after": "860c1904a1ce19322e91ac35af1ab07466440c37", "base_ref": "refs/heads/master", "created": true, "deleted": false, "forced": false, "repository": {"full_name": "docker/test-docker-action", "fork": false}, "head_commit": {"id": "860c1904a1ce19322e91ac35af1ab07466440c37"}})
    }
    fn pull_request(head: &str) -> Value {
        json!({"action": "opened", "number": 15, "pull_request": {"head": {"ref": "test-pr", "sha": "266574110acf203503badf966df2ea24b5d732d7", "repo": {"full_name": head, "fork": head != "docker/test-docker-action"}}, "base": {"ref": "master", "repo": {"full_name": "docker/test-docker-action", "fork": false}}}})
    }
    fn load(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    /// The event table, on the recorded payloads (octokit/webhooks' examples and
    /// docker/metadata-action's recorded runs, renamed to acme/shop and tag v2):
    /// (event, fixture, does the config opt into prereleases, what capstan does).
    #[test]
    fn the_event_table_on_recorded_payloads() {
        let table: &[(&str, &str, bool, Result<Decision, TriggerError>)] = &[
            ("push", "push_tag_v2", false, deploy("v2")),
            ("push", "push_tag_deleted", false, nothing("tag v2 deleted: nothing to deploy")),
            ("release", "release_published", false, deploy("v2")),
            ("release", "release_created", false, nothing("release v2 created: nothing to deploy; capstan deploys on `published`")),
            ("release", "release_released", false, nothing("release v2 released: nothing to deploy; capstan deploys on `published`")),
            ("release", "release_prereleased", false, nothing("release v2 prereleased: nothing to deploy; capstan deploys on `published`")),
            // GitHub sends `published` for a prerelease too: that one deploys it, once, if the config opts in.
            ("release", "release_prereleased", true, nothing("release v2 prereleased: nothing to deploy; capstan deploys on `published`")),
            (
                "release",
                "release_published_prerelease",
                false,
                nothing("release v2 is a prerelease: nothing to deploy; set `release: { prereleases: true }` in the config to deploy prereleases"),
            ),
            ("release", "release_published_prerelease", true, deploy("v2")),
            ("release", "release_edited", false, nothing("release v2 edited: nothing to deploy; capstan deploys on `published`")),
            ("release", "release_deleted", false, nothing("release v2 deleted: nothing to deploy; capstan deploys on `published`")),
            ("release", "release_unpublished", false, nothing("release v2 unpublished: nothing to deploy; capstan deploys on `published`")),
            ("workflow_dispatch", "workflow_dispatch_rollback", false, run(Trigger::Rollback { to: "previous".into() })),
            (
                "pull_request",
                "pull_request",
                false,
                run(Trigger::Check { version: None, head_sha: Some("266574110acf203503badf966df2ea24b5d732d7".into()), fork: false }),
            ),
            (
                "pull_request",
                "pull_request_fork",
                false,
                run(Trigger::Check { version: None, head_sha: Some("266574110acf203503badf966df2ea24b5d732d7".into()), fork: true }),
            ),
        ];
        for (event, fixture, opt_in, want) in table {
            let got = decide(event, &load(fixture), &Inputs::default(), if *opt_in { YES } else { NO });
            assert_eq!(&got, want, "{event} {fixture} (prereleases: {opt_in})");
        }
    }

    #[test]
    fn the_config_is_read_only_for_a_published_prerelease() {
        let asked = std::cell::Cell::new(0);
        let count = || {
            asked.set(asked.get() + 1);
            false
        };
        for f in ["release_published", "release_created", "release_prereleased"] {
            decide("release", &load(f), &Inputs::default(), &count).unwrap();
        }
        assert_eq!(asked.get(), 0);
        decide("release", &load("release_published_prerelease"), &Inputs::default(), &count).unwrap();
        assert_eq!(asked.get(), 1);
    }

    #[test]
    fn the_release_rules_hold_for_a_deploy_the_inputs_ask_for() {
        // A version input does not make a release edit deploy (a plain `on: release` would deploy up to three times).
        let version = Inputs { version: Some("v2".into()), ..Default::default() };
        assert!(matches!(decide("release", &load("release_created"), &version, NO), Ok(Decision::Nothing { .. })));
        let deploy_cmd = Inputs { command: Some("deploy".into()), ..Default::default() };
        assert!(matches!(decide("push", &load("push_tag_deleted"), &deploy_cmd, NO), Ok(Decision::Nothing { .. })));
        // Other commands run as asked: a rollback when a release is deleted is the user's choice.
        let rollback = Inputs { command: Some("rollback".into()), rollback_to: Some("v1".into()), ..Default::default() };
        assert_eq!(decide("release", &load("release_deleted"), &rollback, NO), run(Trigger::Rollback { to: "v1".into() }));
        // A draft is never deployed, whatever its activity says.
        let draft = json!({"action": "published", "release": {"tag_name": "v1.2.0", "draft": true}});
        assert_eq!(
            decide("release", &draft, &Inputs::default(), YES),
            nothing("release v1.2.0 is a draft: nothing to deploy; capstan deploys it when it is published")
        );
        // A branch deletion is no release either; `after` all zeros is a deletion even without `deleted`.
        let gone = json!({"ref": "refs/heads/dev", "after": "0000000000000000000000000000000000000000"});
        assert_eq!(decide("push", &gone, &Inputs::default(), NO), nothing("refs/heads/dev deleted: nothing to deploy"));
    }

    #[test]
    fn triggers() {
        let none = Inputs::default();
        assert_eq!(decide("push", &push_tag(), &none, NO), deploy("v1.1.1"));
        let branch = json!({"ref": "refs/heads/dev"});
        assert_eq!(decide("push", &branch, &none, NO), Err(TriggerError::BranchPush("refs/heads/dev".into())));
        assert!(decide("push", &branch, &none, NO).unwrap_err().to_string().contains("a push to refs/heads/dev is not a release"));
        let release = json!({"action": "published", "release": {"tag_name": "v1.2.0", "draft": false, "prerelease": false, "target_commitish": "master"}});
        assert_eq!(decide("release", &release, &none, NO), deploy("v1.2.0"));
        let no_tag = json!({"action": "published", "release": {"draft": false}});
        assert_eq!(decide("release", &no_tag, &none, NO), Err(TriggerError::Missing { event: "release", field: "tag_name" }));
        // workflow_dispatch: inputs are strings, as GitHub sends them.
        let rollback =
            json!({"inputs": {"rollback-to": "previous", "dry-run": "false"}, "ref": "refs/heads/master", "workflow": ".github/workflows/deploy.yml"});
        assert_eq!(decide("workflow_dispatch", &rollback, &none, NO), run(Trigger::Rollback { to: "previous".into() }));
        let redeploy = json!({"inputs": {"version": "v1.0.3"}, "ref": "refs/heads/master"});
        assert_eq!(decide("workflow_dispatch", &redeploy, &none, NO), deploy("v1.0.3"));
        let empty = json!({"inputs": {"rollback-to": ""}, "ref": "refs/heads/master"});
        assert_eq!(decide("workflow_dispatch", &empty, &none, NO), Err(TriggerError::DispatchWithoutInput));
        // The action's inputs win over the payload's.
        let inputs = Inputs { rollback_to: Some("v1.0.1".into()), ..Default::default() };
        assert_eq!(decide("workflow_dispatch", &rollback, &inputs, NO), run(Trigger::Rollback { to: "v1.0.1".into() }));
        // Pull requests: the head commit, and whether it comes from a fork.
        let same = decide("pull_request", &pull_request("docker/test-docker-action"), &none, NO);
        assert_eq!(same, run(Trigger::Check { version: None, head_sha: Some("266574110acf203503badf966df2ea24b5d732d7".into()), fork: false }));
        assert!(matches!(
            decide("pull_request", &pull_request("crazy-max/test-docker-action"), &none, NO),
            Ok(Decision::Run(Trigger::Check { fork: true, .. }))
        ));
        // Anything else is an error that says what capstan answers.
        let e = decide("schedule", &json!({"schedule": "0 0 * * *"}), &none, NO).unwrap_err();
        assert!(e.to_string().contains("deploys on a tag push"), "{e}");
        let bad = Inputs { command: Some("destroy".into()), ..Default::default() };
        assert_eq!(decide("push", &push_tag(), &bad, NO), Err(TriggerError::UnknownCommand("destroy".into())));
        let forced = Inputs { command: Some("check".into()), ..Default::default() };
        assert_eq!(decide("push", &push_tag(), &forced, NO), run(Trigger::Check { version: Some("v1.1.1".into()), head_sha: None, fork: false }));
    }
}
