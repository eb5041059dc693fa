//! No shell injection (#6): every string from the config or the command line
//! that reaches a host goes there as an argument, never as shell text. Names
//! that end up in container names, tags and the host's environment are refused
//! at validation; paths are passed through as they are. Canary files prove
//! that nothing ran that should not have.

use std::path::{Path, PathBuf};

use crate::sandbox;
use crate::support;
use crate::support::{App, AppOptions};

/// Shell metacharacters of every kind, each one creating a canary file named
/// `<token>-N` if a shell ever read it as code. No `/`, so that it can be part of
/// a file name: a canary lands in the working directory of whatever shell ran it.
fn nasty(token: &str) -> String {
    format!("x $(touch {token}-1) `touch {token}-2`; touch {token}-3 && touch {token}-4 | 'q' \"dq\" \\ >{token}-5\ntouch {token}-6 # &")
}

/// Canaries in the places a shell could have run: the remote user's home (where
/// ssh runs commands), the directory capstan ran in, and `/tmp`.
fn canaries(token: &str, dirs: &[&Path]) -> Vec<PathBuf> {
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let mut found = Vec::new();
    for d in dirs.iter().copied().chain([home.as_path(), Path::new("/tmp"), Path::new("/")]) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(token) {
                found.push(e.path());
            }
        }
    }
    found
}

/// A YAML double-quoted scalar for any string.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

#[test]
fn names_with_shell_text_are_refused_at_validation() {
    let sb = sandbox();
    let app = App::new(sb, "inject", AppOptions::default());
    let token = format!("capstan-canary-{}", support::random_hex(8));
    let bad = yaml_str(&nasty(&token));
    let base = app.default_config();
    let first = app.instances()[0].clone();
    let cases = [
        ("an instance name", base.replace(&format!("instances: [{first}, "), &format!("instances: [{bad}, ")), "services.web.instances[0]"),
        ("the app name", base.replacen(&format!("app: {}", app.name()), &format!("app: {bad}"), 1), "app"),
        ("an image repository", base.replace(&format!("image: {}/capstan-demo", sb.registry()), &format!("image: {bad}")), "services.web.image"),
        ("a host", base.replacen(&format!("  - {}", sb.ssh_host()), &format!("  - {bad}"), 1), "hosts[0]"),
    ];
    for (what, config, key) in cases {
        app.write_config(&config);
        let r = app.capstan(&["deploy", "--version", "v2", "--skip-build"]);
        r.assert_status(2);
        assert!(r.stderr.contains(key), "{what}: the error names {key}:\n{r}");
    }
    // A version is a tag: refused before anything is contacted.
    app.write_config(&base);
    for v in ["v2;touch x", "v2 $(id)", "`id`", "v2\nid", "v2'", "../v2"] {
        let r = app.capstan(&["deploy", "--version", v, "--skip-build"]);
        r.assert_status(2);
        assert!(r.stderr.contains("version"), "{v:?}:\n{r}");
    }
    let r = app.capstan(&["rollback", "--to", "v1;touch x"]);
    r.assert_status(2);
    assert_eq!(app.versions(), vec!["v1", "v1"]);
    assert!(canaries(&token, &[app.dir()]).is_empty(), "something ran: {:?}", canaries(&token, &[app.dir()]));
}

#[test]
fn paths_with_shell_text_reach_the_host_as_they_are() {
    let sb = sandbox();
    let app = App::new(sb, "injectp", AppOptions::default());
    let token = format!("capstan-canary-{}", support::random_hex(8));
    let n = nasty(&token);
    let dir = app.dir();
    // The state directory, the nginx upstream file (a link to the real one) and
    // the backup glob all carry the metacharacters.
    let state = dir.join(format!("state {n}"));
    let upstream = dir.join(format!("up {n}.conf"));
    std::os::unix::fs::symlink(app.upstream_conf(), &upstream).unwrap();
    // (A backup glob may not hold a newline: the check reports the file's name on one
    // line; and it is a glob, where a backslash escapes the next character.)
    let one_line = n.replace('\n', " ").replace('\\', "");
    let backup = dir.join(format!("bk {one_line}-1.sql.gz"));
    std::fs::write(&backup, "backup").unwrap();
    let hook_out = dir.join("hook-out");
    let config = app
        .default_config()
        .replace(&format!("state_dir: {}", app.state_dir().display()), &format!("state_dir: {}", yaml_str(&state.display().to_string())))
        .replace(&format!("upstream_conf: {}", app.upstream_conf().display()), &format!("upstream_conf: {}", yaml_str(&upstream.display().to_string())))
        + &format!(
            "preflight:\n  backup: {{ path: {}, max_age: 1h }}\nhooks:\n  post_deploy: {}\n",
            yaml_str(&format!("{}/bk {one_line}-*.sql.gz", dir.display())),
            yaml_str(&format!("printf '%s|%s' \"$CAPSTAN_VERSION\" \"$CAPSTAN_APP\" > {}", hook_out.display())),
        );
    app.write_config(&config);
    let r = app.capstan(&["--json", "deploy", "--version", "v2", "--skip-build"]);
    r.assert_success();
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    assert!(canaries(&token, &[dir, &state]).is_empty(), "something ran: {:?}", canaries(&token, &[dir, &state]));
    // The paths were used as they are: the log is in the directory of that name, the lock is gone,
    // the backup was found by its glob.
    let log = std::fs::read_to_string(state.join("deploys.jsonl")).unwrap_or_else(|e| panic!("{}: {e}", state.display()));
    assert!(log.contains("\"version\":\"v2\""), "{log}");
    assert!(!state.join("lock.json").exists());
    let report: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let gate = report["gates"].as_array().unwrap().iter().find(|g| g["gate"].as_str().unwrap_or("").contains("backup")).expect("a backup gate");
    assert_eq!(gate["ok"], true, "{gate}");
    assert!(gate["measured"].as_str().unwrap().contains("bk x $(touch"), "the file found by the glob, named as it is: {gate}");
    // A hook is shell by design; what capstan hands it is in its environment, not in its text.
    assert_eq!(std::fs::read_to_string(&hook_out).unwrap(), format!("v2|{}", app.name()));
    // And status and history read the same directory.
    app.capstan(&["history"]).assert_success();
    assert!(canaries(&token, &[dir, &state]).is_empty(), "something ran: {:?}", canaries(&token, &[dir, &state]));
}
