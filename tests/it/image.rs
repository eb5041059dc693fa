//! The action's image: the repository's `Dockerfile` built here, then run the
//! way the GitHub runner runs a container action (its `ContainerActionHandler`):
//! every input of `action.yml` as `INPUT_<NAME>` (defaults included), the
//! workspace at `/github/workspace` (also the working directory), the event at
//! `/github/workflow/event.json`, the file commands in `/github/file_commands`,
//! `HOME=/github/home`, the Docker socket mounted, the environment passed by
//! name (`-e NAME`, values not on the command line), `runs.args` as the
//! arguments. A tag push then deploys the demo app from inside the container.
//!
//! No base image can be pulled here: `support::base_image` makes one with
//! debootstrap and the build names it through the Dockerfile's
//! `RUST_IMAGE`/`RUNTIME_IMAGE` arguments.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::edit;
use crate::support::github::FakeGitHub;
use crate::support::{base_image, proc, random_hex, repo_root, short_tempdir, write_file, App, AppOptions, Sandbox};
use crate::{alone, sandbox};
use serde_json::Value;

const TOKEN: &str = "ghs_imagetoken0123456789abcdefghijklmnop";
const IMAGE_REPO: &str = "capstan-test/action";

/// `action.yml`, parsed.
fn action_yml() -> Value {
    let text = fs::read_to_string(repo_root().join("action.yml")).expect("read action.yml");
    serde_saphyr::from_str(&text).expect("action.yml parses")
}

/// Removes the image at the end of the test, and images earlier, killed runs
/// of this test left (their tag names a process that is gone).
struct ImageGuard(String);

impl ImageGuard {
    fn new(sb: &Sandbox) -> ImageGuard {
        let out = sb.docker_ok(&["images", IMAGE_REPO, "--format", "{{.Tag}}"]);
        for tag in out.lines() {
            let pid = tag.strip_prefix('p').and_then(|t| t.split('-').next()).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !proc::pid_alive(p)) {
                let _ = proc::run(&mut sb.docker(&["rmi", "-f", &format!("{IMAGE_REPO}:{tag}")]), None, Duration::from_secs(60));
            }
        }
        ImageGuard(format!("{IMAGE_REPO}:p{}-{}", std::process::id(), random_hex(6)))
    }
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = proc::run(&mut support::proc::cmd("docker", ["rmi", "-f", &self.0]), None, Duration::from_secs(60));
    }
}

fn image_size(sb: &Sandbox, image: &str) -> u64 {
    sb.docker_ok(&["image", "inspect", "--format", "{{.Size}}", image]).trim().parse().expect("image size")
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The directories the runner keeps for a job, with the host paths it mounts.
struct RunnerDirs {
    _tmp: tempfile::TempDir,
    workspace: PathBuf,
    temp: PathBuf,
    home: PathBuf,
    workflow: PathBuf,
    file_commands: PathBuf,
}

impl RunnerDirs {
    /// `<runner>/work/shop/shop` (the workspace) and `<runner>/work/_temp/{_github_home,_github_workflow,_runner_file_commands}`.
    fn new() -> RunnerDirs {
        let tmp = short_tempdir("cst-r-");
        let work = tmp.path().join("work");
        let temp = work.join("_temp");
        let d = RunnerDirs {
            workspace: work.join("shop/shop"),
            home: temp.join("_github_home"),
            workflow: temp.join("_github_workflow"),
            file_commands: temp.join("_runner_file_commands"),
            temp,
            _tmp: tmp,
        };
        for p in [&d.workspace, &d.home, &d.workflow, &d.file_commands] {
            fs::create_dir_all(p).unwrap();
        }
        d
    }
}

struct ContainerRun {
    run: support::Run,
    outputs: String,
    summary: String,
    took: Duration,
}

/// `docker run` of the action's image as the runner does it, on the host's
/// network (see below). `env` goes by name: `-e NAME`, the value in the docker
/// CLI's own environment, as the runner passes it.
fn run_action(sb: &Sandbox, image: &str, dirs: &RunnerDirs, env: &BTreeMap<String, String>, args: &[String], step: &str) -> ContainerRun {
    let output = dirs.file_commands.join(format!("set_output_{step}"));
    let summary = dirs.file_commands.join(format!("step_summary_{step}"));
    // The runner creates the step's file command files before the step runs.
    write_file(&output, "");
    write_file(&summary, "");
    let name = format!("cst-img-{}", random_hex(8));
    let owner = format!("capstan.test.owner={}", std::process::id());
    let mounts = [
        ("/var/run/docker.sock".to_string(), "/var/run/docker.sock"),
        (dirs.home.display().to_string(), "/github/home"),
        (dirs.workflow.display().to_string(), "/github/workflow"),
        (dirs.file_commands.display().to_string(), "/github/file_commands"),
        (dirs.workspace.display().to_string(), "/github/workspace"),
    ];
    let mut a: Vec<String> = ["run", "--name", &name, "--label", &owner, "--rm", "--workdir", "/github/workspace"].map(String::from).to_vec();
    // The runner puts the container on the job's own network, where the hosts
    // it deploys to are reached through the runner's network. Here the sandbox
    // host (sshd), the registry, nginx and the fake GitHub listen on loopback,
    // so the container shares the host's network.
    a.extend(["--network".into(), "host".into()]);
    let mut c = sb.docker(&[]);
    for (k, v) in env {
        a.extend(["-e".into(), k.clone()]);
        c.env(k, v);
    }
    for (host, container) in &mounts {
        a.extend(["-v".into(), format!("{host}:{container}")]);
    }
    a.push(image.into());
    a.extend(args.iter().cloned());
    c.args(&a);
    let t0 = Instant::now();
    let out = proc::run(&mut c, None, Duration::from_secs(600)).expect("run docker");
    let took = t0.elapsed();
    if out.timed_out {
        let _ = proc::run(&mut sb.docker(&["rm", "-f", &name]), None, Duration::from_secs(60));
    }
    ContainerRun {
        run: support::Run { status: out.status, stdout: out.stdout, stderr: out.stderr },
        outputs: fs::read_to_string(&output).unwrap_or_default(),
        summary: fs::read_to_string(&summary).unwrap_or_default(),
        took,
    }
}

#[test]
fn the_action_image_deploys_a_tag_push_as_the_runner_runs_it() {
    let _turn = alone();
    let t0 = Instant::now();
    // The base image (debootstrap, the slow part, when not cached) while the sandbox starts.
    let base = std::thread::spawn(base_image::bookworm);
    let sb = sandbox();
    let base = base.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    match base.made_in {
        Some(d) => eprintln!("[image] base image {} made in {d:?}", base.tag),
        None => eprintln!("[image] base image {} was on the engine", base.tag),
    }
    let ready = t0.elapsed();

    // action.yml: a Docker action on the Dockerfile; its args are what the runner passes.
    let meta = action_yml();
    assert_eq!(meta["runs"]["using"], "docker");
    assert_eq!(meta["runs"]["image"], "Dockerfile");
    let args: Vec<String> = meta["runs"]["args"].as_array().expect("runs.args").iter().map(|a| a.as_str().unwrap().to_string()).collect();
    assert_eq!(args, ["action"]);
    let declared_outputs: Vec<&str> = meta["outputs"].as_object().expect("outputs").keys().map(|k| k.as_str()).collect();

    // Build the Dockerfile as the runner does (`docker build -t … -f Dockerfile <action dir>`), on the local base.
    let image = ImageGuard::new(sb);
    let ctx = short_tempdir("cst-ctx-");
    support::action_repo::checkout(ctx.path());
    let ctx_path = ctx.path().display().to_string();
    let base_arg = |name: &str| format!("{name}={}", base.tag);
    let t_build = Instant::now();
    let out = proc::run(
        &mut sb.docker(&[
            "build",
            "-t",
            &image.0,
            "-f",
            &format!("{ctx_path}/Dockerfile"),
            "--build-arg",
            &base_arg("RUST_IMAGE"),
            "--build-arg",
            &base_arg("RUNTIME_IMAGE"),
            &ctx_path,
        ]),
        None,
        Duration::from_secs(600),
    )
    .expect("run docker build");
    let build_took = t_build.elapsed();
    assert!(out.success(), "docker build failed (exit {}):\n{}\n{}", out.status, out.stdout, out.stderr);
    let sent = out.stdout.lines().find(|l| l.contains("Sending build context")).unwrap_or("").trim().to_string();
    drop(ctx);

    // The image: capstan, the OpenSSH client, a shell for ssh and CA certificates, runnable; no toolchain, no package manager, no build leftovers.
    let ssh = proc::run(&mut sb.docker(&["run", "--rm", "--entrypoint", "ssh", &image.0, "-V"]), None, Duration::from_secs(60)).unwrap();
    assert!(ssh.success() && ssh.stderr.contains("OpenSSH"), "ssh -V in the image: {}{}", ssh.stdout, ssh.stderr);
    let version = sb.docker_ok(&["run", "--rm", &image.0, "--version"]);
    assert!(version.starts_with("capstan "), "{version}");
    let probe = "for c in cargo rustc gcc cc; do command -v $c && exit 1; done; \
                 test -s /etc/ssl/certs/ca-certificates.crt || exit 2; \
                 test ! -e /var/lib/apt && test ! -e /usr/bin/apt-get || exit 3; \
                 test ! -e /src && test ! -e /capstan || exit 4; echo clean";
    let clean = proc::run(&mut sb.docker(&["run", "--rm", "--entrypoint", "sh", &image.0, "-c", probe]), None, Duration::from_secs(60)).unwrap();
    assert!(
        clean.success() && clean.stdout.trim() == "clean",
        "the image carries what it should not (exit {}): {}{}",
        clean.status,
        clean.stdout,
        clean.stderr
    );
    let entry = sb.docker_ok(&["image", "inspect", "--format", "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", &image.0]);
    assert_eq!(entry.trim(), r#"["/usr/local/bin/capstan"] ["action"]"#);
    let size = image_size(sb, &image.0);
    let binary = fs::metadata(env!("CARGO_BIN_EXE_capstan")).unwrap().len();
    let added = size - binary;
    eprintln!("[image] built in {build_took:?} ({sent}): {} = capstan (this test's debug build) {} + the rest {}", mb(size), mb(binary), mb(added));
    // ssh, dash and the libraries they and capstan link are about 12 MB; a Debian base alone would be 75.
    assert!(added < 30_000_000, "the image carries {} besides the binary", mb(added));

    // A tag push, in the runner's layout: the config in the workspace, the event where the runner puts it.
    let app = App::new(sb, "image", AppOptions::default());
    let gh = FakeGitHub::start("acme/shop", TOKEN, &["v2"]);
    let dirs = RunnerDirs::new();
    // The config has no key, known hosts or password of its own: those come from the inputs.
    let config = edit(&app.default_config())
        .remove("ssh.identity_file")
        .remove("ssh.known_hosts")
        .set("ssh.connect_timeout", "15s")
        .set("registry.password_env", "DEPLOY_REGISTRY_TOKEN");
    write_file(&dirs.workspace.join("capstan.yml"), config.text());
    let fixtures = repo_root().join("tests/fixtures/events");
    fs::copy(fixtures.join("push_tag_v2.json"), dirs.workflow.join("event.json")).unwrap();
    let mut env: BTreeMap<String, String> = fs::read_to_string(fixtures.join("push_tag_v2.env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Paths as the runner translates them into the container; RUNNER_TEMP is
    // not under a mount, so it keeps the host path (which the container lacks).
    env.extend(
        [
            ("CI", "true"),
            ("GITHUB_ACTIONS", "true"),
            ("HOME", "/github/home"),
            ("GITHUB_WORKSPACE", "/github/workspace"),
            ("GITHUB_EVENT_PATH", "/github/workflow/event.json"),
            ("GITHUB_OUTPUT", "/github/file_commands/set_output_deploy"),
            ("GITHUB_STEP_SUMMARY", "/github/file_commands/step_summary_deploy"),
            ("GITHUB_API_URL", gh.url.as_str()),
            ("RUNNER_TEMP", dirs.temp.to_str().unwrap()),
            ("RUNNER_OS", "Linux"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let key = fs::read_to_string(sb.identity_file()).unwrap();
    let given: HashMap<&str, String> = HashMap::from([
        ("ssh-private-key", key.clone()),
        ("ssh-known-hosts", fs::read_to_string(sb.known_hosts()).unwrap()),
        ("registry-password", sb.registry_password().to_string()),
        ("github-token", TOKEN.to_string()),
        ("environment-url", "https://shop.example.com".to_string()),
    ]);
    // Every input of action.yml reaches the container, with its default when not given.
    for (name, spec) in meta["inputs"].as_object().expect("inputs") {
        let value = match given.get(name.as_str()) {
            Some(v) => v.clone(),
            None => {
                let default = spec["default"].as_str().unwrap_or("").to_string();
                assert!(!default.contains("${{"), "input {name}: the test must give what the runner evaluates ({default})");
                default
            }
        };
        env.insert(format!("INPUT_{}", name.replace(' ', "_").to_uppercase()), value);
    }
    for name in given.keys() {
        assert!(meta["inputs"].get(name).is_some(), "action.yml declares the input {name}");
    }

    let a = run_action(sb, &image.0, &dirs, &env, &args, "deploy");
    a.run.assert_success();
    eprintln!("[image] the container deployed v2 in {:?}", a.took);

    // The hosts run the tag; GitHub has the deployment with its statuses.
    assert_eq!(app.versions(), vec!["v2", "v2"]);
    let out = support::runner::outputs(&a.outputs);
    assert_eq!(out["outcome"], "succeeded", "{}", a.outputs);
    assert_eq!(out["version"], "v2");
    assert_eq!(out["environment-url"], "https://shop.example.com");
    for k in out.keys() {
        assert!(declared_outputs.contains(&k.as_str()), "the output {k} is not declared in action.yml");
    }
    let deps = gh.deployments();
    assert_eq!(deps.len(), 1, "{:?}", deps.iter().map(|d| &d.git_ref).collect::<Vec<_>>());
    assert_eq!(deps[0].states(), ["in_progress", "success"]);
    assert_eq!(out["deployment-id"], deps[0].id.to_string());
    assert_eq!(deps[0].statuses[1].2.as_deref(), Some("https://github.com/acme/shop/actions/runs/2188815933"));
    assert!(a.summary.starts_with("## ✅ capstan deploy v2: succeeded"), "{}", a.summary);
    assert!(a.summary.contains("```mermaid\ngantt"), "{}", a.summary);
    // The report: RUNNER_TEMP is not mounted into the container, but its
    // _github_home is (at /github/home), so the `report` output names a file
    // there that the job's later steps, on the runner, can read.
    assert_eq!(Path::new(&out["report"]), dirs.home.join("capstan-report.json"));
    let report: Value = serde_json::from_str(&fs::read_to_string(&out["report"]).expect("the report, from the runner's side")).unwrap();
    assert_eq!((report["outcome"].as_str(), report["version"].as_str()), (Some("succeeded"), Some("v2")));

    // Secrets: only in the ::add-mask:: lines, which come first; nowhere else.
    let key_line = key.lines().nth(1).unwrap().to_string();
    let secrets = [sb.registry_password().to_string(), TOKEN.to_string(), key_line];
    let elsewhere = [("stderr", a.run.stderr.as_str()), ("outputs", a.outputs.as_str()), ("summary", a.summary.as_str())];
    support::runner::assert_masked_first(&a.run.stdout, &elsewhere, &secrets, |_| true);
    eprintln!("[image] whole test in {:?} (sandbox and base image ready at {ready:?})", t0.elapsed());
}
