//! End-to-end: `capstan build` and the build step of `capstan deploy`, on the
//! real Docker engine, pushing to the sandbox's registry with its password
//! (whose base64 has `+` or `/`, the bollard header bug's trigger).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support;
use crate::support::edit;
use crate::support::http::{basic_auth, get_with};
use crate::support::{random_hex, write_file, App, AppOptions, Run};
use crate::{sandbox, shared};
use serde_json::{json, Value};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{run}"))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).env("DOCKER_BUILDKIT", "0").output().expect("docker CLI");
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes every local image of a test repository when the test ends.
struct Images(String);

impl Drop for Images {
    fn drop(&mut self) {
        let list = Command::new("docker").args(["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", &format!("reference={}", self.0)]).output();
        if let Ok(out) = list {
            for r in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("docker").args(["rmi", "-f", r]).output();
            }
        }
    }
}

/// A fresh repository in the sandbox registry: `127.0.0.1:PORT/<hint>-<hex>`.
fn repo(hint: &str) -> (String, Images) {
    let r = format!("{}/{hint}-{}", sandbox().registry(), random_hex(6));
    (r.clone(), Images(format!("{r}:*")))
}

fn registry_get(path: &str, accept: Option<&str>) -> support::http::HttpResponse {
    let sb = sandbox();
    let auth = basic_auth(sb.registry_user(), sb.registry_password());
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(a) = accept {
        headers.push(("Accept", a));
    }
    get_with(&format!("http://{}{path}", sb.registry()), &headers, Duration::from_secs(10)).expect("registry answers")
}

/// The registry's own list of tags for a repository.
fn registry_tags(repo: &str) -> BTreeSet<String> {
    let name = repo.split_once('/').unwrap().1;
    let r = registry_get(&format!("/v2/{name}/tags/list"), None);
    if r.status == 404 {
        return BTreeSet::new();
    }
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    v["tags"].as_array().map(|a| a.iter().map(|t| t.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

/// The digest the registry holds for `repo:tag`.
fn registry_digest(repo: &str, tag: &str) -> String {
    let name = repo.split_once('/').unwrap().1;
    let accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json";
    let r = registry_get(&format!("/v2/{name}/manifests/{tag}"), Some(accept));
    assert_eq!(r.status, 200, "{repo}:{tag}: {}", r.body);
    r.header("Docker-Content-Digest").expect("Docker-Content-Digest").to_string()
}

fn put(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_file(path, body);
}

/// A build context with a `.dockerignore` that uses every kind of rule.
fn context(dir: &Path) {
    std::fs::copy(sandbox().demo_binary(), dir.join("capstan-demo")).unwrap();
    write_file(
        &dir.join("Dockerfile"),
        "FROM scratch\nARG GREETING=none\nENV GREETING=$GREETING\nCOPY capstan-demo /capstan-demo\nCOPY . /ctx/\nENTRYPOINT [\"/capstan-demo\"]\n",
    );
    write_file(&dir.join(".dockerignore"), "# rules of every kind\n*.log\nsecrets\n!secrets/public.pem\n**/*.tmp\n");
    write_file(&dir.join("app.txt"), "app");
    write_file(&dir.join("debug.log"), "ignored: *.log at the root");
    put(&dir.join("sub/debug.log"), "kept: *.log is anchored at the root");
    put(&dir.join("sub/deep/x.tmp"), "ignored: **/*.tmp");
    put(&dir.join("secrets/key.pem"), "ignored");
    put(&dir.join("secrets/public.pem"), "kept by the exception");
}

/// The files under /ctx of an image, from `docker export`.
fn ctx_files(image: &str) -> BTreeSet<String> {
    let id = docker(&["create", image]);
    let out = Command::new("sh").arg("-c").arg(format!("docker export {id} | tar -t")).output().unwrap();
    docker(&["rm", &id]);
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("ctx/") && !l.ends_with('/')).map(String::from).collect()
}

fn config(repo: &str, build: &str) -> String {
    let sb = sandbox();
    format!(
        "app: build-test\nhosts: [{host}]\nssh:\n  identity_file: {id}\n  known_hosts: {kh}\n\
         registry:\n  server: {reg}\n  username: {user}\n  password_env: REGISTRY_PASSWORD\n\
         services:\n  web:\n    image: {repo}\n    build: {build}\n    instances: [a, b]\n",
        host = sb.ssh_host(),
        id = sb.identity_file().display(),
        kh = sb.known_hosts().display(),
        reg = sb.registry(),
        user = sb.registry_user(),
    )
}

fn capstan(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_capstan"));
    c.args(args)
        .current_dir(dir)
        .env("REGISTRY_PASSWORD", sandbox().registry_password())
        .env("GITHUB_SHA", SHA)
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("GITHUB_REPOSITORY", "acme/shop")
        // Reproducible: the created label does not follow the clock.
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("GITHUB_REF")
        .env_remove("CAPSTAN_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = support::proc::run(&mut c, None, Duration::from_secs(600)).unwrap();
    Run { status: out.status, stdout: out.stdout, stderr: out.stderr }
}

#[test]
fn build_push_tags_labels_and_the_dockerignore() {
    let _turn = shared();
    let (repo, _cleanup) = repo("build");
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    write_file(
        &dir.path().join("capstan.yml"),
        config(&repo, "{ args: { GREETING: hello }, labels: { team: storefront, note: '$HOME \"quoted\" back\\slash' } }"),
    );

    let run = capstan(dir.path(), &["build", "--version", "v1.4.2", "--push", "--json"], &[]);
    run.assert_success();
    let report = json(&run);
    let b = &report["build"][0];
    let tags: Vec<&str> = b["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tags, vec!["v1.4.2", "1.4", "1", "latest", "sha-0123456"]);
    // Every tag is in the registry, and the digest in the report is the registry's.
    let want: BTreeSet<String> = tags.iter().map(|t| t.to_string()).collect();
    assert_eq!(registry_tags(&repo), want);
    let digest = b["digest"].as_str().unwrap().to_string();
    for t in &tags {
        assert_eq!(registry_digest(&repo, t), digest, "{repo}:{t}");
    }
    assert!(b["build_ms"].as_u64().is_some() && b["push_ms"].as_u64().is_some(), "{b}");
    assert!(!run.stderr.contains("pushing each tag instead"), "tags are set through the registry's API: {run}");
    // The build output streamed, under the service's name.
    assert!(run.stderr.contains("web | Step 1/"), "{run}");

    // Labels: OCI ones from the release and GitHub's environment, and the service's own.
    let labels: Value = serde_json::from_str(&docker(&["inspect", "-f", "{{json .Config.Labels}}", &format!("{repo}:v1.4.2")])).unwrap();
    assert_eq!(labels["org.opencontainers.image.version"], "v1.4.2");
    assert_eq!(labels["org.opencontainers.image.revision"], SHA);
    assert_eq!(labels["org.opencontainers.image.source"], "https://github.com/acme/shop");
    assert_eq!(labels["org.opencontainers.image.created"], "2023-11-14T22:13:20Z", "from SOURCE_DATE_EPOCH");
    assert_eq!(labels["team"], "storefront");
    assert_eq!(labels["note"], "$HOME \"quoted\" back\\slash", "values reach the image verbatim");
    let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &format!("{repo}:v1.4.2")]);
    assert!(env.contains("GREETING=hello"), "build args reach the build: {env}");

    // .dockerignore: exactly what the Docker CLI itself sends, and the files we expect.
    let ours = ctx_files(&format!("{repo}:v1.4.2"));
    let expected: BTreeSet<String> =
        ["ctx/.dockerignore", "ctx/Dockerfile", "ctx/app.txt", "ctx/capstan-demo", "ctx/capstan.yml", "ctx/secrets/public.pem", "ctx/sub/debug.log"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(ours, expected);
    let cli_image = format!("{repo}:docker-cli");
    docker(&["build", "-q", "-t", &cli_image, &dir.path().display().to_string()]);
    assert_eq!(ctx_files(&cli_image), ours, "capstan's context differs from the Docker CLI's");

    // The same source again: the same image, already in the registry, not pushed again.
    let run = capstan(dir.path(), &["build", "--version", "v1.4.2", "--push", "--json"], &[]);
    run.assert_success();
    assert_eq!(json(&run)["build"][0]["digest"], b["digest"]);
    assert!(run.stderr.contains(&format!("{repo}:v1.4.2 is already in the registry as this image")), "{run}");

    // A hotfix below the highest release moves its minor tag, never `1` or `latest`.
    let run = capstan(dir.path(), &["build", "--version", "v1.3.9", "--push", "--json"], &[]);
    run.assert_success();
    let hotfix = json(&run)["build"][0].clone();
    let tags: Vec<&str> = hotfix["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tags, vec!["v1.3.9", "1.3", "sha-0123456"]);
    assert_ne!(hotfix["digest"], b["digest"]);
    assert_eq!(registry_digest(&repo, "latest"), digest, "latest stays on v1.4.2");
    assert_eq!(registry_digest(&repo, "1"), digest, "1 stays on v1.4.2");
    assert_eq!(registry_digest(&repo, "1.3"), hotfix["digest"].as_str().unwrap());
    assert!(run.stderr.contains("not tagged latest: stays on 1.4.2, which is higher"), "{run}");

    // A prerelease gets its own tag and the commit's, nothing floating.
    let run = capstan(dir.path(), &["build", "--version", "v2.0.0-rc.1", "--push", "--json"], &[]);
    run.assert_success();
    let tags = json(&run)["build"][0]["tags"].clone();
    assert_eq!(tags, serde_json::json!(["v2.0.0-rc.1", "sha-0123456"]));
    assert_eq!(registry_digest(&repo, "latest"), digest);

    // Not semver, and the config does not allow raw tags: refused before anything runs.
    let run = capstan(dir.path(), &["build", "--version", "nightly", "--push"], &[]);
    run.assert_status(2);
    assert!(run.stderr.contains("version \"nightly\" is not semver"), "{run}");
}

/// A sandbox app whose service is built from `<app dir>/ctx` (filled by `fill`)
/// into a fresh repository, with `build` as its build block (context `ctx`).
fn app_with_build(hint: &str, fill: impl FnOnce(&Path), build: Value) -> (App, String, Images) {
    let sb = sandbox();
    let app = App::new(sb, hint, AppOptions::default());
    let (repo, cleanup) = repo(hint);
    let ctx = app.dir().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    fill(&ctx);
    app.write_config(&edit(&app.default_config()).set("services.web.image", &repo).set("services.web.build", build).text());
    (app, repo, cleanup)
}

#[test]
fn a_wrong_registry_password_builds_and_pushes_nothing_and_touches_no_host() {
    let _turn = shared();
    let sb = sandbox();
    let (app, repo, _cleanup) = app_with_build("badpw", context, json!({ "context": "ctx" }));
    let before = app.versions();
    let run = app.capstan_env(&["deploy", "--version", "v1.0.0"], &[("REGISTRY_PASSWORD", "not-the-password")]);
    run.assert_status(2);
    assert!(run.stderr.contains(&format!("registry {}: the registry refused the credentials (user {})", sb.registry(), sb.registry_user())), "{run}");
    assert!(run.stderr.contains("nothing was built or pushed"), "{run}");
    assert!(!run.stderr.contains("not-the-password"), "the password never reaches the output");
    assert!(registry_tags(&repo).is_empty(), "nothing was pushed");
    assert_eq!(docker(&["images", "-q", &repo]), "", "nothing was built");
    assert_eq!(app.versions(), before, "no host was touched");
    assert!(!app.state_dir().join("deploys.jsonl").exists(), "no deploy was recorded");
}

#[test]
fn a_broken_dockerfile_shows_the_failing_instruction_and_pushes_nothing() {
    let _turn = shared();
    let (repo, _cleanup) = repo("broken");
    let dir = tempfile::tempdir().unwrap();
    context(dir.path());
    write_file(&dir.path().join("Dockerfile"), "FROM scratch\nCOPY app.txt /app.txt\nCOPY missing-file /missing\n");
    write_file(&dir.path().join("capstan.yml"), config(&repo, "{ context: . }"));
    let run = capstan(dir.path(), &["build", "--version", "v1.0.0", "--push"], &[]);
    run.assert_status(2);
    // (The classic builder counts the labels it adds as steps: hence not "3/3".)
    assert!(run.stderr.contains("services.web: the build failed at Step 3/"), "{run}");
    assert!(run.stderr.contains(" : COPY missing-file /missing"), "{run}");
    assert!(run.stderr.contains("missing-file"), "{run}");
    assert!(registry_tags(&repo).is_empty(), "nothing was pushed");

    // A Dockerfile the engine cannot parse names the bad instruction.
    write_file(&dir.path().join("Dockerfile"), "FROM scratch\nCOPPY app.txt /app.txt\n");
    let run = capstan(dir.path(), &["build", "--version", "v1.0.0"], &[]);
    run.assert_status(2);
    assert!(run.stderr.to_lowercase().contains("unknown instruction: coppy"), "{run}");
}

#[test]
fn deploy_builds_pushes_and_runs_the_pushed_digest() {
    let _turn = shared();
    let demo_app = |ctx: &Path| {
        std::fs::copy(sandbox().demo_binary(), ctx.join("capstan-demo")).unwrap();
        std::fs::copy(support::repo_root().join("demo/app/Dockerfile"), ctx.join("Dockerfile")).unwrap();
    };
    let (app, repo, _cleanup) = app_with_build("deploy", demo_app, json!({ "context": "ctx", "args": { "DEMO_VERSION": "v2.0.0" } }));
    // A dry run builds nothing and plans the tag the build would push.
    let dry = app.capstan(&["deploy", "--version", "v2.0.0", "--dry-run", "--json"]);
    dry.assert_success();
    assert!(dry.stderr.contains(&format!("{repo}:v2.0.0 (to be built)")), "{dry}");
    assert!(registry_tags(&repo).is_empty(), "a dry run pushes nothing");
    let load = app.load(100);
    let run = app.capstan_env(&["deploy", "--version", "v2.0.0", "--json"], &[("GITHUB_SHA", SHA)]);
    let stats = load.stop();
    run.assert_success();
    let report = json(&run);
    let digest = report["build"][0]["digest"].as_str().expect("the report has the pushed digest").to_string();
    assert_eq!(registry_digest(&repo, "v2.0.0"), digest);
    let pinned = format!("{repo}@{digest}");
    for i in app.instances() {
        // Created from the digest, not the tag: a tag moved later cannot change what runs.
        assert_eq!(docker(&["inspect", "-f", "{{.Config.Image}}", &i]), pinned, "{i}");
    }
    assert_eq!(app.versions(), vec!["v2.0.0".to_string(); 2]);
    assert_eq!(stats.failed, 0, "requests failed during the deploy: {stats:?}");
    for inst in report["hosts"][0]["instances"].as_array().unwrap() {
        assert_eq!(inst["to_image"], pinned.as_str());
    }
}
