//! End-to-end: `capstan action`, the GitHub container action's entrypoint, run
//! the way the runner runs it (INPUT_* variables, the event payload in a file,
//! GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files) against the real sandbox host.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::support;
use crate::support::github::{FakeGitHub, Fault};
use crate::support::runner::outputs;
use crate::support::{edit, ConfigEdit};
use crate::support::{App, AppOptions, Run, Sandbox};
use crate::{sandbox, shared};

/// The app's config with no key, no known hosts and no password of its own:
/// everything secret comes from the action's inputs.
fn config(app: &App) -> ConfigEdit {
    edit(&app.default_config())
        .remove("ssh.identity_file")
        .remove("ssh.known_hosts")
        .set("ssh.connect_timeout", "15s")
        .set("registry.password_env", "DEPLOY_REGISTRY_TOKEN")
}

struct ActionRun {
    fork: bool,
    run: Run,
    outputs: String,
    summary: String,
}

const TOKEN: &str = "ghs_faketoken0123456789abcdefghijklmnop";

/// A fake GitHub for the repository of the fixtures, knowing the refs they name.
fn github() -> FakeGitHub {
    FakeGitHub::start("acme/shop", TOKEN, &["v1", "v2", "f3a1c0de5b7e4d2a9c8b6a5f4e3d2c1b0a998877"])
}

/// Runs `capstan action` as the runner runs a container action: the recorded
/// environment of `tests/fixtures/events/<fixture>.env`, its payload in the
/// event file, the secrets and `inputs` as INPUT_* variables, and the runner's
/// files (outputs, summary) in the app's directory. `inputs` named `GITHUB_*`
/// override the recorded environment instead.
fn action(app: &App, gh: &FakeGitHub, fixture: &str, inputs: &[(&str, &str)]) -> ActionRun {
    let sb = sandbox();
    let dir = app.dir();
    let fixtures = support::repo_root().join("tests/fixtures/events");
    let event_path = dir.join("event.json");
    std::fs::copy(fixtures.join(format!("{fixture}.json")), &event_path).unwrap();
    let (outputs, summary) = (dir.join("github_output"), dir.join("step_summary"));
    let _ = std::fs::remove_file(&outputs);
    let _ = std::fs::remove_file(&summary);
    let mut env: HashMap<String, String> = std::fs::read_to_string(fixtures.join(format!("{fixture}.env")))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = std::fs::read_to_string(sb.identity_file()).unwrap();
    let known = std::fs::read_to_string(sb.known_hosts()).unwrap();
    env.extend([
        ("GITHUB_EVENT_PATH".to_string(), event_path.display().to_string()),
        ("GITHUB_OUTPUT".into(), outputs.display().to_string()),
        ("GITHUB_STEP_SUMMARY".into(), summary.display().to_string()),
        ("GITHUB_WORKSPACE".into(), dir.display().to_string()),
        ("GITHUB_API_URL".into(), gh.url.clone()),
        ("INPUT_CONFIG".into(), dir.join("capstan.yml").display().to_string()),
        ("INPUT_SSH-KNOWN-HOSTS".into(), known),
        ("INPUT_GITHUB-TOKEN".into(), TOKEN.into()),
    ]);
    // A pull request from a fork gets no secrets.
    if !fixture.ends_with("_fork") {
        env.insert("INPUT_SSH-PRIVATE-KEY".into(), key);
        env.insert("INPUT_REGISTRY-PASSWORD".into(), sb.registry_password().into());
    }
    // Inputs, and overrides of the recorded environment (`GITHUB_*`).
    for (k, v) in inputs {
        let name = if k.starts_with("GITHUB_") { k.to_string() } else { format!("INPUT_{}", k.to_uppercase()) };
        env.insert(name, v.to_string());
    }
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"));
    c.arg("action").current_dir(dir).env_remove("REGISTRY_PASSWORD").envs(&env);
    let out = support::proc::run(&mut c, None, Duration::from_secs(600)).unwrap();
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    ActionRun {
        fork: fixture.ends_with("_fork"),
        run: Run { status: out.status, stdout: out.stdout, stderr: out.stderr },
        outputs: read(&outputs),
        summary: read(&summary),
    }
}

/// Secrets appear only in the `::add-mask::` lines, which come before any other output.
#[track_caller]
fn secrets_masked_first(a: &ActionRun, sb: &Sandbox, gh: &FakeGitHub) {
    let key_line = std::fs::read_to_string(sb.identity_file()).unwrap().lines().nth(1).unwrap().to_string();
    let secrets = [sb.registry_password().to_string(), TOKEN.to_string(), key_line];
    for r in gh.requests() {
        assert_eq!(r.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()), "{} {}", r.method, r.path);
        for s in &secrets {
            assert!(
                !r.body.contains(s.as_str()) && !r.path.contains(s.as_str()) && !r.other_headers.contains(s.as_str()),
                "a secret sent to GitHub: {} {}",
                r.method,
                r.path
            );
        }
    }
    let elsewhere = [("stderr", a.run.stderr.as_str()), ("outputs", a.outputs.as_str()), ("summary", a.summary.as_str())];
    // A fork's run is given only the token.
    support::runner::assert_masked_first(&a.run.stdout, &elsewhere, &secrets, |s| s == TOKEN || !a.fork);
}

fn fault(on: &str, status: u16, retry_after: Option<u64>, after_effect: bool) -> Fault {
    Fault { on: on.into(), status, retry_after, after_effect }
}

#[test]
fn a_tag_push_deploys_and_a_dispatch_rolls_back() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "action", AppOptions::default());
    app.write_config(&config(&app).text());
    let gh = github();
    // GitHub has a bad minute: the deployment is made but the answer is a 502,
    // then a secondary rate limit on the first status. Neither may cost a deploy
    // or make a second deployment.
    gh.fail_next(&[fault("POST /repos/acme/shop/deployments", 502, None, true), fault("/statuses", 429, Some(1), false)]);
    let a = action(&app, &gh, "push_tag_v2", &[("environment-url", "https://shop.example.com")]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    secrets_masked_first(&a, sb, &gh);
    let out = outputs(&a.outputs);
    assert_eq!(out["version"], "v2");
    assert_eq!(out["outcome"], "succeeded");
    assert_eq!(out["environment-url"], "https://shop.example.com");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out["report"]).unwrap()).unwrap();
    assert_eq!(report["outcome"], "succeeded");
    assert!(a.summary.starts_with("## ✅ capstan deploy v2: succeeded"), "{}", a.summary);
    assert!(a.summary.contains(&format!("| {} | web/{} |", sb.ssh_host(), app.instances()[0])), "{}", a.summary);
    // The first release in the hosts' log: nothing to name as the one to go back to
    // (`previous` would name this very release once another follows it).
    assert!(a.summary.contains("**Roll back:** nothing to roll back to: the hosts' log has no release before this one."), "{}", a.summary);
    assert!(!a.summary.contains("rollback-to"), "{}", a.summary);
    assert!(a.summary.contains("```mermaid\ngantt"), "{}", a.summary);
    // The log folds per host and service; every group is closed.
    assert!(a.run.stderr.contains(&format!("::group::{} web\n", sb.ssh_host())), "{}", a.run);
    assert_eq!(a.run.stderr.matches("::group::").count(), a.run.stderr.matches("::endgroup::").count(), "{}", a.run);

    // GitHub: one deployment of the tag, in_progress then success, with this run's log and the environment's URL.
    let deps = gh.deployments();
    assert_eq!(deps.len(), 1, "the 502 after the deployment was made must not make a second one");
    let first = &deps[0];
    assert_eq!((first.git_ref.as_str(), first.environment.as_str(), first.production, first.task.as_str()), ("v2", "production", true, "deploy"));
    assert_eq!(first.payload["version"], "v2");
    assert_eq!(first.states(), ["in_progress", "success"]);
    assert_eq!(out["deployment-id"], first.id.to_string());
    let (_, desc, log_url, env_url) = &first.statuses[1];
    assert_eq!(log_url.as_deref(), Some("https://github.com/acme/shop/actions/runs/2188815933"));
    assert_eq!(env_url.as_deref(), Some("https://shop.example.com"));
    assert_eq!(desc, "v2 is live on 2 instance(s), 1 host(s).", "no undo command without an earlier release");
    let statuses_posted = gh.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/statuses")).count();
    assert_eq!(statuses_posted, 3, "the rate-limited status is sent again");
    support::record_fault(
        "GitHub answers 502 after making the deployment, then 429 with Retry-After",
        "finds the deployment it made instead of making a second; waits Retry-After and sends the status again; the deploy is unaffected",
        None,
        None,
    );

    // workflow_dispatch with rollback-to (inputs arrive as strings), in a run of its own.
    let a = action(&app, &gh, "workflow_dispatch_rollback", &[("GITHUB_RUN_ID", "2188815934")]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(outputs(&a.outputs)["outcome"], "succeeded");
    assert!(a.summary.starts_with("## ✅ capstan rollback"), "{}", a.summary);
    // The rollback names the release it replaced, from the hosts' log.
    assert!(a.summary.contains("gh workflow run deploy.yml -f rollback-to=v2"), "{}", a.summary);
    secrets_masked_first(&a, sb, &gh);
    let deps = gh.deployments();
    assert_eq!(deps.len(), 2);
    let rollback = &deps[0];
    assert_eq!((rollback.git_ref.as_str(), rollback.task.as_str()), ("f3a1c0de5b7e4d2a9c8b6a5f4e3d2c1b0a998877", "deploy:rollback"));
    assert_eq!(rollback.states(), ["in_progress", "success"]);
    assert!(rollback.statuses[1].1.starts_with("Rolled back to v1"), "{:?}", rollback.statuses[1]);
    // GitHub retires only non-production deployments by itself: capstan retired the first,
    // which keeps the log of the run that made it, not the rollback's.
    assert_eq!(deps[1].states(), ["in_progress", "success", "inactive"]);
    assert_eq!(rollback.statuses[1].2.as_deref(), Some("https://github.com/acme/shop/actions/runs/2188815934"));
    assert_eq!(deps[1].statuses[2].2.as_deref(), Some("https://github.com/acme/shop/actions/runs/2188815933"));

    // A published release deploys its tag, and retires the rollback's deployment.
    let a = action(&app, &gh, "release_published", &[("GITHUB_RUN_ID", "2188815935")]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let deps = gh.deployments();
    assert_eq!(deps.len(), 3);
    assert_eq!((deps[0].git_ref.as_str(), deps[0].states()), ("v2", vec!["in_progress".to_string(), "success".into()]));
    assert_eq!(deps[1].states(), ["in_progress", "success", "inactive"]);
    assert_eq!(deps[1].statuses[2].2.as_deref(), Some("https://github.com/acme/shop/actions/runs/2188815934"));
    secrets_masked_first(&a, sb, &gh);
}

/// GitHub's answers with every field its description lets be `null` set to
/// `null` (the creator's `gravatar_id`, `description`, `environment_url`,
/// `log_url`…): the deploy succeeds and its deployment gets every status.
#[test]
fn answers_with_every_nullable_field_null_still_deploy_with_statuses() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "actionnull", AppOptions::default());
    // A published prerelease deploys: this config opts in.
    app.write_config(&config(&app).set("release.prereleases", true).text());
    let gh = github();
    gh.answer_with_nulls();
    let a = action(&app, &gh, "release_published_prerelease", &[]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert!(!a.run.stderr.contains("GitHub answered"), "no warning about GitHub's answers: {}", a.run);
    let deps = gh.deployments();
    assert_eq!(deps.len(), 1);
    assert_eq!(deps[0].states(), ["in_progress", "success"]);
    assert_eq!(outputs(&a.outputs)["deployment-id"], deps[0].id.to_string());
    secrets_masked_first(&a, sb, &gh);

    // The next run reads the earlier deployment's statuses (all `null`) and retires it.
    let a = action(&app, &gh, "workflow_dispatch_rollback", &[("GITHUB_RUN_ID", "2188815934")]);
    a.run.assert_success();
    let deps = gh.deployments();
    assert_eq!(deps[0].states(), ["in_progress", "success"]);
    assert_eq!(deps[1].states(), ["in_progress", "success", "inactive"]);
    // GitHub answered the old status's log_url as null: the inactive one names none, not this run's.
    assert_eq!(deps[1].statuses[2].2, None);
}

/// Every release activity but `published` (and a prerelease the config does not
/// opt into), and a push that deletes the tag: a notice, exit 0, nothing done,
/// nothing asked of GitHub.
#[test]
fn events_that_ask_for_nothing_are_a_notice_and_exit_0() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "actionnoop", AppOptions::default());
    app.write_config(&config(&app).text());
    let gh = github();
    let cases = [
        ("release_created", "release v2 created: nothing to deploy; capstan deploys on `published`"),
        ("release_released", "release v2 released: nothing to deploy; capstan deploys on `published`"),
        ("release_prereleased", "release v2 prereleased: nothing to deploy; capstan deploys on `published`"),
        ("release_edited", "release v2 edited: nothing to deploy; capstan deploys on `published`"),
        ("release_deleted", "release v2 deleted: nothing to deploy; capstan deploys on `published`"),
        ("release_unpublished", "release v2 unpublished: nothing to deploy; capstan deploys on `published`"),
        (
            "release_published_prerelease",
            "release v2 is a prerelease: nothing to deploy; set `release: { prereleases: true }` in the config to deploy prereleases",
        ),
        ("push_tag_deleted", "tag v2 deleted: nothing to deploy"),
    ];
    for (fixture, notice) in cases {
        let a = action(&app, &gh, fixture, &[]);
        a.run.assert_success();
        assert!(a.run.stdout.lines().any(|l| l == format!("::notice title=capstan::{notice}")), "{fixture}: {}", a.run);
        assert!(a.summary.contains(notice), "{fixture}: {}", a.summary);
        assert_eq!(a.outputs, "", "{fixture}: no outputs");
        secrets_masked_first(&a, sb, &gh);
    }
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(gh.requests().is_empty(), "nothing was asked of GitHub: {:?}", gh.requests());
}

#[test]
fn a_missing_permission_stops_before_any_host_is_touched() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "actiondeny", AppOptions::default());
    app.write_config(&config(&app).text());
    let gh = github();
    gh.deny("deployments");
    let a = action(&app, &gh, "push_tag_v2", &[]);
    a.run.assert_status(2);
    assert!(a.run.stderr.contains("Resource not accessible by integration"), "{}", a.run);
    assert!(a.run.stderr.contains("permissions: { deployments: write }"), "{}", a.run);
    assert!(a.run.stderr.contains("nothing was changed on any host"), "{}", a.run);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(outputs(&a.outputs)["outcome"], "failed");
    secrets_masked_first(&a, sb, &gh);

    // GitHub down for good: the deploy goes on, and the failure to report is a warning.
    let gh = FakeGitHub::start("acme/shop", TOKEN, &["v2"]);
    gh.fail_next(&(0..5).map(|_| fault("POST /repos/acme/shop/deployments", 502, None, false)).collect::<Vec<_>>());
    let a = action(&app, &gh, "push_tag_v2", &[]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert!(a.run.stderr.contains("GitHub did not create a deployment") && a.run.stderr.contains("goes on without a GitHub deployment"), "{}", a.run);
    assert!(gh.deployments().is_empty());
    support::record_fault("GitHub answers 502 to every attempt (5)", "retries with backoff, then a warning; the deploy completes", None, None);

    // A bad release: reverted, and the deployment's failure says what was reverted.
    let gh = FakeGitHub::start("acme/shop", TOKEN, &["broken"]);
    let a = action(&app, &gh, "push_tag_v2", &[("version", "broken")]);
    a.run.assert_status(1);
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let deps = gh.deployments();
    assert_eq!(deps[0].states(), ["in_progress", "failure"]);
    let desc = &deps[0].statuses[1].1;
    assert!(desc.starts_with(&format!("broken failed, reverted {} to what they ran", app.instances()[0])), "{desc}");
    assert!(desc.chars().count() <= 140);
    assert_eq!(outputs(&a.outputs)["outcome"], "rolled_back");
}

#[test]
fn pull_requests_get_a_check_run_with_the_plan() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "actionpr", AppOptions::default());
    app.write_config(&config(&app).text());
    let gh = github();
    let head = "266574110acf203503badf966df2ea24b5d732d7";
    // From a branch of the repository: the hosts are read and the plan says what each instance goes from and to.
    let a = action(&app, &gh, "pull_request", &[("version", "v2")]);
    a.run.assert_success();
    secrets_masked_first(&a, sb, &gh);
    assert_eq!(app.versions(), vec!["v1", "v1"], "a check changes nothing");
    assert!(gh.deployments().is_empty(), "a check makes no deployment");
    let runs = gh.check_runs();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["head_sha"], head, "on the PR's head, not the merge commit in GITHUB_SHA");
    assert_eq!((run["name"].as_str(), run["conclusion"].as_str()), (Some("capstan plan"), Some("success")));
    let summary = run["output"]["summary"].as_str().unwrap();
    for i in app.instances() {
        // What runs now and what would, as the exact digests the hosts report and the registry resolves.
        assert!(summary.contains(&format!("| web/{i} | `{}@sha256:", sb.image_repo())), "{summary}");
    }
    assert!(summary.contains("| replace |"), "{summary}");
    assert_eq!(run["details_url"], "https://github.com/acme/shop/actions/runs/2188815933");

    // No version: the plan is of the head commit's `sha-<7>` image, which no step pushed. The
    // failed check says what to do in the workflow's terms, not the CLI's.
    let a = action(&app, &gh, "pull_request", &[]);
    a.run.assert_status(2);
    let runs = gh.check_runs();
    let run = &runs[1];
    assert_eq!(run["conclusion"], "failure");
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("{}:sha-2665741 does not exist", sb.image_repo())), "{summary}");
    for words in ["`version:` input", "docker/build-push-action", "DOCKER_METADATA_PR_HEAD_SHA"] {
        assert!(summary.contains(words) && a.run.stderr.contains(words), "{words}: {summary}");
    }
    assert!(!summary.contains("--push") && !summary.contains("--version"), "{summary}");

    // From a fork: no secrets, so no host is contacted; the check still validates and plans, and says what it skipped.
    let a = action(&app, &gh, "pull_request_fork", &[("version", "v2")]);
    a.run.assert_success();
    secrets_masked_first(&a, sb, &gh);
    let runs = gh.check_runs();
    let run = &runs[2];
    assert_eq!(run["conclusion"], "success");
    assert!(run["output"]["title"].as_str().unwrap().contains("skipped"), "{run}");
    let summary = run["output"]["summary"].as_str().unwrap();
    assert!(summary.starts_with("> Skipped: the hosts: a pull request from a fork gets no secrets"), "{summary}");
    assert!(summary.contains(&format!("| `? (host not contacted)` | `{}` | replace |", sb.image("v2"))), "{summary}");

    // A config error: a failed check with an annotation on the line of the key.
    app.write_config(&config(&app).set("services.web.health.timeout", "soon").text());
    let a = action(&app, &gh, "pull_request", &[("version", "v2")]);
    a.run.assert_status(2);
    let runs = gh.check_runs();
    let run = &runs[3];
    assert_eq!(run["conclusion"], "failure");
    let ann = &run["output"]["annotations"][0];
    assert_eq!(ann["path"], "capstan.yml", "relative to the workspace");
    assert_eq!(ann["annotation_level"], "failure");
    assert!(ann["message"].as_str().unwrap().contains("services.web.health.timeout"), "{ann}");
    let text = config(&app).set("services.web.health.timeout", "soon").text();
    let line = text.lines().position(|l| l.contains(r#""timeout": "soon""#)).unwrap() as u64 + 1;
    assert_eq!(ann["start_line"], line);
}

#[test]
fn unknown_events_and_config_errors_are_clear() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "actionbad", AppOptions::default());
    app.write_config(&config(&app).text());
    let gh = github();
    // An event capstan does not answer.
    let a = action(&app, &gh, "push_tag_v2", &[("GITHUB_EVENT_NAME", "schedule")]);
    a.run.assert_status(2);
    assert!(a.run.stderr.contains("it deploys on a tag push or a published release"), "{}", a.run);
    secrets_masked_first(&a, sb, &gh);

    // A config error becomes an annotation on its line.
    app.write_config(&config(&app).set("services.web.health.timeout", "soon").text());
    let a = action(&app, &gh, "push_tag_v2", &[]);
    a.run.assert_status(2);
    let file = app.dir().join("capstan.yml");
    assert!(
        a.run.stdout.lines().any(|l| l.starts_with(&format!("::error file={},line=", file.display())) && l.contains("services.web.health.timeout")),
        "{}",
        a.run
    );
    // The job summary lists it too (the annotations stop at GitHub's ten per step).
    assert!(a.summary.starts_with("## ⛔ capstan: `capstan.yml` has 1 problem\n"), "{}", a.summary);
    assert!(a.summary.contains("services.web.health.timeout"), "{}", a.summary);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(gh.deployments().is_empty());
}
