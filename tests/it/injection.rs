//! No shell injection (#6): every string from the config or the command line
//! that reaches a host goes there as an argument, never as shell text. Names
//! that end up in container names, tags and the host's environment are refused
//! at validation; paths are passed through as they are. Canary files prove
//! that nothing ran that should not have.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support;
use crate::support::edit;
use crate::support::{App, AppOptions};
use crate::{sandbox, shared};

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

#[test]
fn names_with_shell_text_are_refused_at_validation() {
    let _turn = shared();
    let sb = sandbox();
    let app = App::new(sb, "inject", AppOptions::default());
    let token = format!("capstan-canary-{}", support::random_hex(8));
    let bad = nasty(&token);
    let base = app.default_config();
    let cases = [
        ("an instance name", "services.web.instances.0", "services.web.instances[0]"),
        ("the app name", "app", "app"),
        ("an image repository", "services.web.image", "services.web.image"),
        ("a host", "hosts.0", "hosts[0]"),
    ];
    for (what, path, key) in cases {
        app.write_config(&edit(&base).set(path, &bad).text());
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
    let _turn = shared();
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
    let config = edit(&app.default_config())
        .set("state_dir", &state)
        .set("services.web.drain.nginx.upstream_conf", &upstream)
        .set("preflight", json!({ "backup": { "path": format!("{}/bk {one_line}-*.sql.gz", dir.display()), "max_age": "1h" } }))
        .set("hooks", json!({ "post_deploy": format!("printf '%s|%s' \"$CAPSTAN_VERSION\" \"$CAPSTAN_APP\" > {}", hook_out.display()) }));
    app.write_config(&config.text());
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
