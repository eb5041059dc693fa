//! `bash bench/build`: builds and pushes the demo app with `capstan build
//! --push` and with `docker build && docker push` (the CLI, the same context,
//! the same engine, the same classic builder, the same tags and labels), in
//! the same run. Two cases: cold (a repository the engine and the registry
//! have never seen) and no change (the same build again: cache hits, layers
//! already in the registry). Prints each run, the medians and the ratio
//! capstan / CLI (below 1 means capstan is faster).

// A program run by hand (bench/, the demo) whose printed figures are its product,
// over the tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use support::{capstan_bin, median, random_hex, write_file, Sandbox};

const VERSION: &str = "v1.4.2";

fn check(out: std::process::Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Removes every local image of `repo`, so that the next build starts cold.
fn forget(sb: &Sandbox, repo: &str) {
    let out = sb.docker(&["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", &format!("reference={repo}:*")]).output().unwrap();
    for r in String::from_utf8_lossy(&out.stdout).lines() {
        let _ = sb.docker(&["rmi", "-f", r]).output();
    }
}

/// Lets the engine finish what the previous build left (removing intermediate
/// containers, writing layers) so that it does not land in the next timing.
fn settle() {
    let _ = Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_millis(1500));
}

fn capstan(sb: &Sandbox, dir: &Path) -> u64 {
    settle();
    let t = Instant::now();
    let out = Command::new(capstan_bin())
        .args(["build", "--version", VERSION, "--push", "-q", "--json"])
        .current_dir(dir)
        .env("REGISTRY_PASSWORD", sb.registry_password())
        .env("DOCKER_CONFIG", sb.docker_config_dir())
        .env_remove("GITHUB_SHA")
        .env_remove("GITHUB_REPOSITORY")
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("GITHUB_REF")
        .output()
        .unwrap();
    let ms = t.elapsed().as_millis() as u64;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    check(out, "capstan build --push");
    let b = &report["build"][0];
    eprintln!("    capstan: {ms} ms in all, build {} ms, push {} ms", b["build_ms"], b["push_ms"]);
    ms
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The same tags and labels capstan gives the image, computed up front (for free) for the CLI.
fn cli(sb: &Sandbox, dir: &Path, repo: &str) -> u64 {
    let ctx = dir.display().to_string();
    let sha = git(dir, &["rev-parse", "HEAD"]);
    let created = git(dir, &["log", "-1", "--format=%cd", "--date=format-local:%Y-%m-%dT%H:%M:%SZ"]);
    let labels = [
        format!("org.opencontainers.image.version={VERSION}"),
        format!("org.opencontainers.image.revision={sha}"),
        format!("org.opencontainers.image.created={created}"),
    ];
    let tags = [VERSION.to_string(), "1.4".into(), "1".into(), "latest".into(), format!("sha-{}", &sha[..7])];
    settle();
    let mut args: Vec<String> = vec!["build".into(), "-q".into()];
    for t in &tags {
        args.push("-t".into());
        args.push(format!("{repo}:{t}"));
    }
    for l in &labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    args.push(ctx);
    let t = Instant::now();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    check(sb.docker(&a).output().unwrap(), "docker build");
    check(sb.docker(&["push", "-q", "--all-tags", repo]).output().unwrap(), "docker push");
    t.elapsed().as_millis() as u64
}

fn config(sb: &Sandbox, repo: &str) -> String {
    format!(
        "app: bench-build\nhosts: [{host}]\nregistry:\n  server: {reg}\n  username: {user}\n  password_env: REGISTRY_PASSWORD\n\
         services:\n  web:\n    image: {repo}\n    build: {{ context: . }}\n    instances: [a, b]\n",
        host = sb.ssh_host(),
        reg = sb.registry(),
        user = sb.registry_user(),
    )
}

/// A git checkout of the demo app, its binary made unique (random trailing
/// bytes) so that neither the engine's cache nor the registry has any of it yet.
fn fresh_context(sb: &Sandbox) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = std::fs::read(sb.demo_binary()).unwrap();
    bin.extend_from_slice(random_hex(32).as_bytes());
    std::fs::write(dir.path().join("capstan-demo"), bin).unwrap();
    std::fs::copy(support::repo_root().join("demo/app/Dockerfile"), dir.path().join("Dockerfile")).unwrap();
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "Dockerfile", "capstan-demo"]);
    git(dir.path(), &["-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q", "-m", "release"]);
    dir
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let sb = Sandbox::get();
    let size = std::fs::metadata(sb.demo_binary()).unwrap().len();
    println!("context: a git checkout of the demo app ({} KiB static binary, FROM scratch); 5 tags, 3 labels; {runs} run(s) per case\n", size / 1024);
    println!("{:<10} {:>4} {:>12} {:>12} {:>7}", "case", "run", "capstan ms", "CLI ms", "ratio");
    let (mut cold_c, mut cold_d, mut warm_c, mut warm_d) = (vec![], vec![], vec![], vec![]);
    for run in 1..=runs {
        // Each tool gets its own fresh repository and content: nothing local, nothing in the registry.
        let repo_c = format!("{}/bench-capstan-{}", sb.registry(), random_hex(6));
        let repo_d = format!("{}/bench-cli-{}", sb.registry(), random_hex(6));
        let (ctx_c, ctx_d) = (fresh_context(sb), fresh_context(sb));
        write_file(&ctx_c.path().join("capstan.yml"), config(sb, &repo_c));
        // Alternate which goes first, so that neither always meets a warmer engine.
        let (c, d) = if run % 2 == 1 {
            let c = capstan(sb, ctx_c.path());
            (c, cli(sb, ctx_d.path(), &repo_d))
        } else {
            let d = cli(sb, ctx_d.path(), &repo_d);
            (capstan(sb, ctx_c.path()), d)
        };
        println!("{:<10} {:>4} {:>12} {:>12} {:>7.2}", "cold", run, c, d, c as f64 / d as f64);
        cold_c.push(c);
        cold_d.push(d);
        // No change: the same build again.
        let c = capstan(sb, ctx_c.path());
        let d = cli(sb, ctx_d.path(), &repo_d);
        println!("{:<10} {:>4} {:>12} {:>12} {:>7.2}", "no change", run, c, d, c as f64 / d as f64);
        warm_c.push(c);
        warm_d.push(d);
        forget(sb, &repo_c);
        forget(sb, &repo_d);
    }
    println!();
    println!("{:<10} {:>17} {:>12} {:>7}", "median", "capstan ms", "CLI ms", "ratio");
    for (name, c, d) in [("cold", cold_c, cold_d), ("no change", warm_c, warm_d)] {
        let (c, d) = (median(c), median(d));
        println!("{:<10} {:>17} {:>12} {:>7.2}", name, c, d, c as f64 / d as f64);
    }
}
