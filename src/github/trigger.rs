//! What a GitHub Actions run asks capstan to do, from `GITHUB_EVENT_NAME`, the
//! event payload at `GITHUB_EVENT_PATH` and the action's inputs. Pure.
//!
//! - `push` of a tag, or a `release` that is published: deploy that version;
//! - `workflow_dispatch`: `rollback-to` (a version or `previous`) rolls back,
//!   `version` redeploys that version;
//! - `pull_request` (and `pull_request_target`): a check of the plan, on the
//!   PR's head commit (not the merge commit in `GITHUB_SHA`);
//! - anything else: an error that says which triggers capstan answers.
//!
//! The action's `command` input overrides the choice. Payload values arrive as
//! GitHub sends them: `workflow_dispatch` inputs are strings, even booleans.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    Deploy { version: String },
    Rollback { to: String },
    Check { version: Option<String>, head_sha: Option<String>, fork: bool },
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

pub fn decide(event: &str, payload: &Value, inputs: &Inputs) -> Result<Trigger, String> {
    // workflow_dispatch inputs, when the workflow did not pass them to the action itself.
    let dispatch = |name: &str| str_at(payload, &["inputs", name]).map(String::from);
    let version = inputs.version.clone().or_else(|| (event == "workflow_dispatch").then(|| dispatch("version")).flatten());
    let rollback_to = inputs.rollback_to.clone().or_else(|| (event == "workflow_dispatch").then(|| dispatch("rollback-to")).flatten());
    let from_event = || -> Result<String, String> {
        match event {
            "push" => match str_at(payload, &["ref"]) {
                Some(r) if r.starts_with("refs/tags/") => Ok(r["refs/tags/".len()..].to_string()),
                Some(r) => Err(format!("a push to {r} is not a release: deploy on tag pushes (on: push: tags: ['v*'])")),
                None => Err("the push event has no ref".into()),
            },
            "release" => {
                let action = str_at(payload, &["action"]).unwrap_or("");
                if payload.pointer("/release/draft").and_then(Value::as_bool) == Some(true) {
                    return Err("the release is a draft: deploy when it is published (on: release: types: [published])".into());
                }
                if !matches!(action, "published" | "released" | "created" | "prereleased") {
                    return Err(format!("release {action:?} is not a release being published: use on: release: types: [published]"));
                }
                str_at(payload, &["release", "tag_name"]).map(String::from).ok_or_else(|| "the release event has no tag_name".into())
            }
            _ => Err(format!("no version in a {event} event: give the version input")),
        }
    };
    let command = match inputs.command.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => match event {
            "push" | "release" => "deploy".into(),
            "workflow_dispatch" if rollback_to.is_some() => "rollback".into(),
            "workflow_dispatch" if version.is_some() => "deploy".into(),
            "workflow_dispatch" => {
                return Err("a workflow_dispatch run needs a rollback-to input (a version, or previous) or a version input to redeploy".into())
            }
            "pull_request" | "pull_request_target" => "check".into(),
            other => {
                return Err(format!(
                    "capstan does not know what to do on {other:?}: it deploys on a tag push or a published release, \
                     rolls back on workflow_dispatch, and checks pull requests (or set the command input)"
                ))
            }
        },
    };
    match command.as_str() {
        "deploy" => Ok(Trigger::Deploy {
            version: match version {
                Some(v) => v,
                None => from_event()?,
            },
        }),
        "rollback" => Ok(Trigger::Rollback { to: rollback_to.unwrap_or_else(|| "previous".into()) }),
        "check" => {
            let head_sha = str_at(payload, &["pull_request", "head", "sha"]).map(String::from);
            let head_repo = str_at(payload, &["pull_request", "head", "repo", "full_name"]);
            let base_repo = str_at(payload, &["pull_request", "base", "repo", "full_name"]);
            // A deleted fork has no head repo; treat it as a fork.
            let fork = payload.get("pull_request").is_some() && head_repo != base_repo;
            Ok(Trigger::Check { version: version.or_else(|| from_event().ok()), head_sha, fork })
        }
        other => Err(format!("the command input is {other:?}: expected deploy, rollback or check")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Payloads in the shape GitHub sends (fields as in docker/metadata-action's recorded fixtures).
    fn push_tag() -> Value {
        json!({"ref": "refs/tags/v1.1.1", "before": "0000000000000000000000000000000000000000", "after": "860c1904a1ce19322e91ac35af1ab07466440c37", "base_ref": "refs/heads/master", "created": true, "deleted": false, "forced": false, "repository": {"full_name": "docker/test-docker-action", "fork": false}, "head_commit": {"id": "860c1904a1ce19322e91ac35af1ab07466440c37"}})
    }
    fn pull_request(head: &str) -> Value {
        json!({"action": "opened", "number": 15, "pull_request": {"head": {"ref": "test-pr", "sha": "266574110acf203503badf966df2ea24b5d732d7", "repo": {"full_name": head, "fork": head != "docker/test-docker-action"}}, "base": {"ref": "master", "repo": {"full_name": "docker/test-docker-action", "fork": false}}}})
    }

    /// The project's fixtures, in the shape GitHub sends (as docker/metadata-action recorded them from real runs).
    #[test]
    fn recorded_payloads() {
        let load = |name: &str| -> Value {
            let path = format!("{}/tests/fixtures/events/{name}.json", env!("CARGO_MANIFEST_DIR"));
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
        };
        let none = Inputs::default();
        assert_eq!(decide("push", &load("push_tag_v2"), &none), Ok(Trigger::Deploy { version: "v2".into() }));
        assert_eq!(decide("release", &load("release_published"), &none), Ok(Trigger::Deploy { version: "v2".into() }));
        assert_eq!(decide("workflow_dispatch", &load("workflow_dispatch_rollback"), &none), Ok(Trigger::Rollback { to: "previous".into() }));
        let head = Some("266574110acf203503badf966df2ea24b5d732d7".to_string());
        assert_eq!(decide("pull_request", &load("pull_request"), &none), Ok(Trigger::Check { version: None, head_sha: head.clone(), fork: false }));
        assert_eq!(decide("pull_request", &load("pull_request_fork"), &none), Ok(Trigger::Check { version: None, head_sha: head, fork: true }));
    }

    #[test]
    fn triggers() {
        let none = Inputs::default();
        assert_eq!(decide("push", &push_tag(), &none), Ok(Trigger::Deploy { version: "v1.1.1".into() }));
        let branch = json!({"ref": "refs/heads/dev"});
        assert!(decide("push", &branch, &none).unwrap_err().contains("a push to refs/heads/dev is not a release"));
        let release = json!({"action": "published", "release": {"tag_name": "v1.2.0", "draft": false, "prerelease": false, "target_commitish": "master"}});
        assert_eq!(decide("release", &release, &none), Ok(Trigger::Deploy { version: "v1.2.0".into() }));
        let draft = json!({"action": "created", "release": {"tag_name": "v1.2.0", "draft": true}});
        assert!(decide("release", &draft, &none).unwrap_err().contains("draft"));
        // workflow_dispatch: inputs are strings, as GitHub sends them.
        let rollback =
            json!({"inputs": {"rollback-to": "previous", "dry-run": "false"}, "ref": "refs/heads/master", "workflow": ".github/workflows/deploy.yml"});
        assert_eq!(decide("workflow_dispatch", &rollback, &none), Ok(Trigger::Rollback { to: "previous".into() }));
        let redeploy = json!({"inputs": {"version": "v1.0.3"}, "ref": "refs/heads/master"});
        assert_eq!(decide("workflow_dispatch", &redeploy, &none), Ok(Trigger::Deploy { version: "v1.0.3".into() }));
        let empty = json!({"inputs": {"rollback-to": ""}, "ref": "refs/heads/master"});
        assert!(decide("workflow_dispatch", &empty, &none).unwrap_err().contains("needs a rollback-to input"));
        // The action's inputs win over the payload's.
        let inputs = Inputs { rollback_to: Some("v1.0.1".into()), ..Default::default() };
        assert_eq!(decide("workflow_dispatch", &rollback, &inputs), Ok(Trigger::Rollback { to: "v1.0.1".into() }));
        // Pull requests: the head commit, and whether it comes from a fork.
        let same = decide("pull_request", &pull_request("docker/test-docker-action"), &none).unwrap();
        assert_eq!(same, Trigger::Check { version: None, head_sha: Some("266574110acf203503badf966df2ea24b5d732d7".into()), fork: false });
        assert!(matches!(decide("pull_request", &pull_request("crazy-max/test-docker-action"), &none), Ok(Trigger::Check { fork: true, .. })));
        // Anything else is an error that says what capstan answers.
        assert!(decide("schedule", &json!({"schedule": "0 0 * * *"}), &none).unwrap_err().contains("deploys on a tag push"));
        let bad = Inputs { command: Some("destroy".into()), ..Default::default() };
        assert!(decide("push", &push_tag(), &bad).unwrap_err().contains("expected deploy, rollback or check"));
        let forced = Inputs { command: Some("check".into()), ..Default::default() };
        assert_eq!(decide("push", &push_tag(), &forced), Ok(Trigger::Check { version: Some("v1.1.1".into()), head_sha: None, fork: false }));
    }
}
