//! The demo of README.md (`bash demo/run`): a sandbox host on loopback, the demo
//! app v1 behind nginx, and a capstan deploy of v2 while 200 requests/s go
//! through nginx. Prints capstan's progress, its JSON report and the count of
//! failed requests.

// A program run by hand (bench/, the demo) whose printed figures are its product,
// over the tests' support code, which panics on purpose when the setup fails.
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "../tests/it/support/mod.rs"]
#[allow(dead_code, unused_imports)] // each example uses a part of the tests' support
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{capstan_bin, App, AppOptions, Sandbox};

fn main() {
    eprintln!("demo: starting the sandbox (sshd, registry with a password, demo images v1..v3)...");
    let sb = Sandbox::get();
    let app = App::new(sb, "demo", AppOptions::default());
    let config = app.write_config(&app.default_config());
    eprintln!("demo: {} instances of v1 behind nginx at {}", app.instances().len(), app.lb_url());
    eprintln!("demo: config {}\n", config.display());
    eprintln!("{}", app.default_config());

    let load = app.load(200);
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("demo: 200 requests/s through nginx; capstan deploy --version v2\n");
    let out = Command::new(capstan_bin())
        .args(["deploy", "--version", "v2", "--json"])
        .current_dir(app.dir())
        .env("REGISTRY_PASSWORD", sb.registry_password())
        .stderr(Stdio::inherit())
        .output()
        .expect("run capstan");
    std::thread::sleep(Duration::from_secs(1));
    let stats = load.stop();

    println!("{}", String::from_utf8_lossy(&out.stdout).trim_end());
    eprintln!();
    eprintln!("demo: capstan exited with {}", out.status.code().unwrap_or(-1));
    eprintln!("demo: instances now run {:?}", app.versions());
    eprintln!(
        "demo: requests through nginx during the deploy: {} sent, {} ok, {} failed (by version: {:?})",
        stats.sent, stats.ok, stats.failed, stats.by_version
    );
    for s in &stats.samples {
        eprintln!("demo:   failure: {s}");
    }
    if !out.status.success() || stats.failed > 0 {
        std::process::exit(1);
    }
}
