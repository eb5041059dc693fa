//! Secrets never leak (#6): every command, with known secret values (the
//! registry password, and a secret in the app's own container environment,
//! which capstan must carry to the successor), at the most verbose level. None
//! of the values may appear in stdout, stderr, the `--json` report, or the
//! host's deployment log and lock. The action's run (outputs, job summary,
//! requests to GitHub) is checked the same way in `action.rs`.

use crate::support;
use crate::support::{App, AppOptions, Run};
use crate::{sandbox, shared};

#[track_caller]
fn clean(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} carries a secret ({} characters, starting {:?}):\n{text}", s.len(), &s[..4]);
    }
}

#[track_caller]
fn run_clean(what: &str, r: &Run, secrets: &[&str]) {
    clean(&format!("{what}: stdout"), &r.stdout, secrets);
    clean(&format!("{what}: stderr"), &r.stderr, secrets);
}

#[test]
fn no_command_prints_or_records_a_secret() {
    let _turn = shared();
    let sb = sandbox();
    let db_secret = format!("S3cr3t-{}", support::random_hex(16));
    let opts = AppOptions { env: vec![format!("DATABASE_URL=postgres://shop:{db_secret}@db/shop"), format!("API_TOKEN={db_secret}x")], ..Default::default() };
    let app = App::new(sb, "secrets", opts);
    app.write_config(&app.default_config());
    let password = sb.registry_password().to_string();
    let api_token = format!("{db_secret}x");
    let secrets = [password.as_str(), db_secret.as_str(), api_token.as_str()];

    let steps: [(&str, Vec<&str>, i32); 8] = [
        ("check", vec!["-vv", "--json", "check", "--version", "v2"], 0),
        ("dry run", vec!["-vv", "--json", "deploy", "--version", "v2", "--skip-build", "--dry-run"], 0),
        ("deploy", vec!["-vv", "--json", "deploy", "--version", "v2", "--skip-build"], 0),
        ("failing deploy", vec!["-vv", "--json", "deploy", "--version", "broken", "--skip-build"], 1),
        ("rollback", vec!["-vv", "--json", "rollback"], 0),
        ("status", vec!["-vv", "--json", "status"], 0),
        ("history", vec!["-vv", "--json", "history"], 0),
        ("lock status", vec!["-vv", "--json", "lock", "status"], 0),
    ];
    for (what, args, code) in steps {
        let r = app.capstan(&args);
        r.assert_status(code);
        run_clean(what, &r, &secrets);
    }
    // The log and the lock on the host.
    for entry in std::fs::read_dir(app.state_dir()).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        clean(&entry.path().display().to_string(), &text, &secrets);
    }
    // And the secret was carried to the successor: the app still has its configuration.
    let env = app.docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &app.instances()[0]]);
    assert!(env.contains(&db_secret), "the successor keeps the app's environment");
    assert_eq!(app.versions(), vec!["v1", "v1"]);
}
