//! End-to-end: `capstan action`, the GitHub container action's entrypoint, run
//! the way the runner runs it (INPUT_* variables, the event payload in a file,
//! GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files) against the real sandbox host.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use support::{App, AppOptions, Run, Sandbox};

fn sandbox() -> &'static Sandbox {
    std::env::set_var("CAPSTAN_BIN", env!("CARGO_BIN_EXE_capstan"));
    Sandbox::get()
}

/// The app's config with no key, no known hosts and no password of its own:
/// everything secret comes from the action's inputs.
fn config(app: &App, sb: &Sandbox) -> String {
    app.default_config()
        .replace(&format!("  identity_file: {}\n", sb.identity_file().display()), "")
        .replace(&format!("  known_hosts: {}\n", sb.known_hosts().display()), "  connect_timeout: 15s\n")
        .replace("password_env: REGISTRY_PASSWORD", "password_env: DEPLOY_REGISTRY_TOKEN")
}

struct ActionRun {
    run: Run,
    outputs: String,
    summary: String,
}

fn action(app: &App, event: &str, payload: &str, inputs: &[(&str, &str)]) -> ActionRun {
    let sb = sandbox();
    let dir = app.dir();
    let event_path = dir.join("event.json");
    std::fs::write(&event_path, payload).unwrap();
    let (outputs, summary) = (dir.join("github_output"), dir.join("step_summary"));
    let _ = std::fs::remove_file(&outputs);
    let _ = std::fs::remove_file(&summary);
    let key = std::fs::read_to_string(sb.identity_file()).unwrap();
    let known = std::fs::read_to_string(sb.known_hosts()).unwrap();
    let mut env: HashMap<String, String> = HashMap::from([
        ("GITHUB_ACTIONS".into(), "true".into()),
        ("GITHUB_EVENT_NAME".into(), event.into()),
        ("GITHUB_EVENT_PATH".into(), event_path.display().to_string()),
        ("GITHUB_OUTPUT".into(), outputs.display().to_string()),
        ("GITHUB_STEP_SUMMARY".into(), summary.display().to_string()),
        ("GITHUB_SERVER_URL".into(), "https://github.com".into()),
        ("GITHUB_REPOSITORY".into(), "acme/shop".into()),
        ("GITHUB_WORKFLOW_REF".into(), "acme/shop/.github/workflows/deploy.yml@refs/tags/v2".into()),
        ("INPUT_CONFIG".into(), dir.join("capstan.yml").display().to_string()),
        ("INPUT_SSH-PRIVATE-KEY".into(), key),
        ("INPUT_SSH-KNOWN-HOSTS".into(), known),
        ("INPUT_REGISTRY-PASSWORD".into(), sb.registry_password().into()),
        ("INPUT_GITHUB-TOKEN".into(), "ghs_faketoken0123456789abcdefghijklmnop".into()),
    ]);
    for (k, v) in inputs {
        env.insert(format!("INPUT_{}", k.to_uppercase()), v.to_string());
    }
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_capstan"));
    c.arg("action").current_dir(dir).env_remove("REGISTRY_PASSWORD").env_remove("GITHUB_REF").envs(&env);
    let out = support::proc::run(&mut c, None, Duration::from_secs(600)).unwrap();
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    ActionRun { run: Run { status: out.status, stdout: out.stdout, stderr: out.stderr }, outputs: read(&outputs), summary: read(&summary) }
}

/// `name<<DELIM\nvalue\nDELIM` entries of a GITHUB_OUTPUT file.
fn outputs(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let (name, delim) = head.split_once("<<").expect("name<<DELIMITER");
        let mut value = Vec::new();
        for l in lines.by_ref() {
            if l == delim {
                break;
            }
            value.push(l);
        }
        out.insert(name.to_string(), value.join("\n"));
    }
    out
}

/// Secrets appear only in the `::add-mask::` lines, which come before any other output.
#[track_caller]
fn secrets_masked_first(a: &ActionRun, sb: &Sandbox) {
    let key_line = std::fs::read_to_string(sb.identity_file()).unwrap().lines().nth(1).unwrap().to_string();
    let secrets = [sb.registry_password().to_string(), "ghs_faketoken0123456789abcdefghijklmnop".to_string(), key_line];
    let mut seen_other = false;
    for line in a.run.stdout.lines() {
        if line.starts_with("::add-mask::") {
            assert!(!seen_other, "a mask came after other output:\n{}", a.run.stdout);
        } else {
            seen_other = true;
            for s in &secrets {
                assert!(!line.contains(s.as_str()), "a secret on stdout: {line}");
            }
        }
    }
    for s in &secrets {
        assert!(a.run.stdout.contains(&format!("::add-mask::{s}")), "{s} is masked");
        for (what, text) in [("stderr", &a.run.stderr), ("outputs", &a.outputs), ("summary", &a.summary)] {
            assert!(!text.contains(s.as_str()), "a secret in the {what}");
        }
    }
}

#[test]
fn a_tag_push_deploys_and_a_dispatch_rolls_back() {
    let sb = sandbox();
    let app = App::new(sb, "action", AppOptions::default());
    app.write_config(&config(&app, sb));
    let push = r#"{"ref": "refs/tags/v2", "before": "0000000000000000000000000000000000000000", "after": "860c1904a1ce19322e91ac35af1ab07466440c37", "created": true, "deleted": false, "forced": false, "base_ref": null, "repository": {"full_name": "acme/shop", "fork": false}}"#;
    let a = action(&app, "push", push, &[("environment-url", "https://shop.example.com")]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    secrets_masked_first(&a, sb);
    let out = outputs(&a.outputs);
    assert_eq!(out["version"], "v2");
    assert_eq!(out["outcome"], "succeeded");
    assert_eq!(out["environment-url"], "https://shop.example.com");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out["report"]).unwrap()).unwrap();
    assert_eq!(report["outcome"], "succeeded");
    assert!(a.summary.starts_with("## ✅ capstan deploy v2: succeeded"), "{}", a.summary);
    assert!(a.summary.contains(&format!("| {} | web/{} |", sb.ssh_host(), app.instances()[0])), "{}", a.summary);
    assert!(a.summary.contains("gh workflow run deploy.yml -f rollback-to=previous"), "{}", a.summary);
    assert!(a.summary.contains("```mermaid\ngantt"), "{}", a.summary);

    // workflow_dispatch with rollback-to (inputs arrive as strings).
    let dispatch = r#"{"inputs": {"rollback-to": "previous", "dry-run": "false"}, "ref": "refs/heads/main", "repository": {"full_name": "acme/shop"}, "workflow": ".github/workflows/deploy.yml"}"#;
    let a = action(&app, "workflow_dispatch", dispatch, &[]);
    a.run.assert_success();
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert_eq!(outputs(&a.outputs)["outcome"], "succeeded");
    assert!(a.summary.starts_with("## ✅ capstan rollback"), "{}", a.summary);
    secrets_masked_first(&a, sb);
}

#[test]
fn unknown_events_and_config_errors_are_clear() {
    let sb = sandbox();
    let app = App::new(sb, "actionbad", AppOptions::default());
    app.write_config(&config(&app, sb));
    let a = action(&app, "schedule", r#"{"schedule": "0 0 * * *"}"#, &[]);
    a.run.assert_status(2);
    assert!(a.run.stderr.contains("it deploys on a tag push or a published release"), "{}", a.run);
    secrets_masked_first(&a, sb);

    // A config error becomes an annotation on its line.
    app.write_config(&config(&app, sb).replace("timeout: 20s", "timeout: soon"));
    let push = r#"{"ref": "refs/tags/v2"}"#;
    let a = action(&app, "push", push, &[]);
    a.run.assert_status(2);
    let file = app.dir().join("capstan.yml");
    assert!(
        a.run.stdout.lines().any(|l| l.starts_with(&format!("::error file={},line=", file.display())) && l.contains("services.web.health.timeout")),
        "{}",
        a.run
    );
    assert_eq!(app.versions(), vec!["v1", "v1"]);
}
