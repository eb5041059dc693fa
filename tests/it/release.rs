//! Releasing the action: what the release workflow (.github/workflows/release.yml)
//! runs, and the linters CI holds every workflow and `action.yml` to.
//!
//! - `scripts/release-action` against the sandbox's registry (password auth):
//!   it builds the Dockerfile, pushes the image, and pins `action.yml` to the
//!   digest the registry serves; the pinned image, pulled by that reference as
//!   the runner pulls a `docker://` action, runs `capstan action`.
//! - actionlint on `.github/workflows/` (and on the README's workflow), and
//!   check-jsonschema's bundled GitHub schemas on the workflows and on
//!   `action.yml`: any finding fails. `bash scripts/setup` installs both; a
//!   missing one fails the test too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{self, base_image, proc, random_hex, registry_digest, repo_root, short_tempdir, write_file, Sandbox};
use crate::{alone, sandbox, shared};
use serde_json::Value;

const LINT_TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE_TAGS: [&str; 3] = ["v1.2.3", "v1.2", "v1"];

/// A linter `bash scripts/setup` installs: on PATH, else in its venv.
fn linter(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join(name));
    on_path
        .chain([Path::new("/opt/capstan/lint/bin").join(name)])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: `bash scripts/setup` installs it (from PyPI, into /opt/capstan/lint)"))
}

/// Runs a linter in the repository; panics with everything it said unless it passed.
#[track_caller]
fn lint(what: &str, c: &mut Command) {
    let out = proc::run(c.current_dir(repo_root()), None, LINT_TIMEOUT).unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(out.success(), "{what} found problems (exit {}):\n{}\n{}", out.status, out.stdout.trim_end(), out.stderr.trim_end());
}

/// The schema check of an action's metadata file (`action.yml`).
#[track_caller]
fn check_action_schema(action_yml: &Path) {
    lint(
        &format!("check-jsonschema vendor.github-actions on {}", action_yml.display()),
        Command::new(linter("check-jsonschema")).args(["--builtin-schema", "vendor.github-actions"]).arg(action_yml),
    );
}

/// The README's example workflow (the fenced block that starts with its path).
fn readme_workflow() -> String {
    let readme = fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let start = readme.find("```yaml\n# .github/workflows/deploy.yml\n").expect("README.md has the example deploy.yml") + "```yaml\n".len();
    let len = readme[start..].find("```").expect("the example's block ends");
    readme[start..start + len].to_string()
}

#[test]
fn workflows_and_action_yml_pass_actionlint_and_the_github_schemas() {
    let _turn = shared();
    let tmp = short_tempdir("cst-lint-");
    let example = tmp.path().join("deploy.yml");
    write_file(&example, readme_workflow());
    let workflows: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = fs::read_dir(repo_root().join(".github/workflows"))
            .expect("read .github/workflows")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        v.sort();
        v
    };
    assert!(workflows.len() >= 3, "{workflows:?}");

    // actionlint: with no argument it checks every workflow of the repository
    // (and the `uses:` of each against the runtimes GitHub still runs); then
    // the README's example, as a file of its own.
    lint("actionlint on .github/workflows", Command::new(linter("actionlint")).arg("-no-color"));
    lint("actionlint on the README's deploy.yml", Command::new(linter("actionlint")).arg("-no-color").arg(&example));
    let mut c = Command::new(linter("check-jsonschema"));
    c.args(["--builtin-schema", "vendor.github-workflows"]).args(&workflows).arg(&example);
    lint("check-jsonschema vendor.github-workflows", &mut c);
    check_action_schema(&repo_root().join("action.yml"));
}

/// Removes this test's local images at the end, and those an earlier, killed
/// run left (their repository names a process that is gone).
struct Images {
    sb: &'static Sandbox,
    repo: String,
}

impl Images {
    fn new(sb: &'static Sandbox) -> Images {
        let out = sb.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        for image in out.lines() {
            let pid = image.split_once("/capstan-test/release-p").and_then(|(_, rest)| rest.split('-').next()).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !proc::pid_alive(p)) {
                let _ = proc::run(&mut sb.docker(&["rmi", "-f", image]), None, Duration::from_secs(60));
            }
        }
        Images { sb, repo: format!("capstan-test/release-p{}-{}", std::process::id(), random_hex(6)) }
    }

    fn remove_all(&self) {
        let sb = self.sb;
        let out = sb.docker_ok(&["images", "--digests", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}"]);
        for line in out.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() == 3 && f[0].ends_with(&format!("/{}", self.repo)) {
                let r = if f[1] != "<none>" { format!("{}:{}", f[0], f[1]) } else { format!("{}@{}", f[0], f[2]) };
                let _ = proc::run(&mut sb.docker(&["rmi", "-f", &r]), None, Duration::from_secs(60));
            }
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn outputs(text: &str) -> Vec<(String, String)> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn release_script_pins_action_yml_to_the_digest_the_registry_serves() {
    let _turn = alone();
    let t0 = Instant::now();
    let base = thread::spawn(base_image::bookworm);
    let sb = sandbox();
    let base = base.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    let images = Images::new(sb);
    let image = format!("{}/{}", sb.registry(), images.repo);

    // The release job's checkout, with the binary the workflow's first job built.
    let ctx = short_tempdir("cst-rel-");
    support::action_repo::checkout(ctx.path());
    let main_yml = fs::read_to_string(ctx.path().join("action.yml")).unwrap();
    assert!(main_yml.contains("\n  image: Dockerfile\n"), "main's action.yml builds from source:\n{main_yml}");
    let github_output = ctx.path().join("github_output");
    write_file(&github_output, "");
    // A docker CLI config that is logged in nowhere: the script logs in with the password it is given.
    let docker_config = short_tempdir("cst-rel-cfg-");
    let release = |extra: &[&str]| {
        let mut c = proc::cmd("bash", [repo_root().join("scripts/release-action").to_str().unwrap()]);
        c.args(["--build-arg", &format!("RUST_IMAGE={}", base.tag), "--build-arg", &format!("RUNTIME_IMAGE={}", base.tag)])
            .arg(&image)
            .args(IMAGE_TAGS)
            .args(extra)
            .current_dir(ctx.path())
            .env("DOCKER_CONFIG", docker_config.path())
            .env("REGISTRY_USER", sb.registry_user())
            .env("REGISTRY_PASSWORD", sb.registry_password())
            .env("GITHUB_OUTPUT", &github_output);
        proc::run(&mut c, None, Duration::from_secs(600)).expect("run scripts/release-action")
    };
    let t_release = Instant::now();
    let out = release(&[]);
    let took = t_release.elapsed();
    assert!(out.success(), "scripts/release-action failed (exit {}):\n{}\n{}", out.status, out.stdout, out.stderr);
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains(sb.registry_password()), "the registry password is in the script's {name}");
    }
    assert!(!docker_config.path().join("config.json").exists(), "the script wrote its login into the caller's DOCKER_CONFIG");

    // It says what it pinned, on stdout and in GITHUB_OUTPUT.
    let pinned = out.stdout.lines().find_map(|l| l.strip_prefix("image=")).unwrap_or_else(|| panic!("no image= line:\n{}", out.stdout)).to_string();
    let digest = pinned.strip_prefix(&format!("{image}@")).unwrap_or_else(|| panic!("{pinned} is not {image}@…")).to_string();
    assert!(digest.len() == 71 && digest.starts_with("sha256:") && digest[7..].chars().all(|c| c.is_ascii_hexdigit()), "{digest}");
    let written = outputs(&fs::read_to_string(&github_output).unwrap());
    assert_eq!(written, [("image".to_string(), pinned.clone()), ("digest".to_string(), digest.clone())]);

    // The registry serves that digest for every tag pushed.
    for tag in IMAGE_TAGS {
        assert_eq!(registry_digest(sb, &images.repo, tag).unwrap_or_else(|e| panic!("{tag}: {e}")), digest, "the registry's {tag}");
    }

    // action.yml: that one line changed, pinned by digest; still a valid action.
    let release_yml = fs::read_to_string(ctx.path().join("action.yml")).unwrap();
    assert_eq!(release_yml, main_yml.replace("\n  image: Dockerfile\n", &format!("\n  image: docker://{pinned}\n")));
    let meta: Value = serde_saphyr::from_str(&release_yml).expect("the pinned action.yml parses");
    assert_eq!(meta["runs"]["using"], "docker");
    assert_eq!(meta["runs"]["image"].as_str(), Some(format!("docker://{pinned}").as_str()));
    check_action_schema(&ctx.path().join("action.yml"));
    eprintln!("[release] built, pushed {} tags and pinned in {took:?}: {pinned}", IMAGE_TAGS.len());

    // A release already pinned is refused, before anything is built.
    let again = release(&[]);
    assert!(!again.success() && again.stderr.contains("already pinned"), "a second run on the pinned action.yml:\n{}\n{}", again.stdout, again.stderr);

    // The pinned reference, pulled as the runner pulls a `docker://` action
    // (none of it is on the engine any more), runs `capstan action`:
    // `runs.args` is `action`, and with no event it says so.
    images.remove_all();
    let t_pull = Instant::now();
    sb.docker_ok(&["pull", "-q", &pinned]);
    let pulled = t_pull.elapsed();
    let args: Vec<&str> = meta["runs"]["args"].as_array().expect("runs.args").iter().map(|a| a.as_str().unwrap()).collect();
    let mut run_args = vec!["run", "--rm", pinned.as_str()];
    run_args.extend(&args);
    let run = proc::run(&mut sb.docker(&run_args), None, Duration::from_secs(60)).expect("docker run");
    let started = t_pull.elapsed();
    let first = run.stderr.lines().next().unwrap_or("");
    assert!(
        run.status == 2 && first.starts_with("error: GITHUB_EVENT_NAME is not set"),
        "capstan action with no event (exit {}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    let version = sb.docker_ok(&["run", "--rm", &pinned, "--version"]);
    assert!(version.starts_with("capstan "), "{version}");
    let ssh = proc::run(&mut sb.docker(&["run", "--rm", "--entrypoint", "ssh", &pinned, "-V"]), None, Duration::from_secs(60)).unwrap();
    assert!(ssh.success() && ssh.stderr.contains("OpenSSH"), "ssh -V in the pinned image: {}{}", ssh.stdout, ssh.stderr);
    let size: u64 = sb.docker_ok(&["image", "inspect", "--format", "{{.Size}}", &pinned]).trim().parse().expect("image size");
    let binary = fs::metadata(env!("CARGO_BIN_EXE_capstan")).unwrap().len();
    eprintln!(
        "[release] pulled in {pulled:?}, capstan's first line at {started:?}; {:.1} MB, {:.1} MB besides this test's capstan; whole test {:?}",
        size as f64 / 1e6,
        (size - binary) as f64 / 1e6,
        t0.elapsed()
    );
    assert!(size - binary < 30_000_000, "the image carries {size} bytes, {binary} of them capstan");
}
