//! capstan: zero-downtime rolling deploys of Docker services over SSH.
//! See ARCHITECTURE.md for the map.

mod action;
mod build;
mod cancel;
mod cli;
mod commands;
mod config;
mod context;
mod docker;
mod dockerfile;
mod dockerignore;
mod drain;
mod env;
mod error;
mod event;
mod events;
#[cfg(test)]
mod fake;
mod gates;
mod host;
mod names;
mod plan;
mod printer;
mod registry;
mod release;
mod report;
mod rollout;
mod ssh;
mod state;
mod summary;
mod tags;
mod tls;
mod workflow;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use crate::cli::{Cli, Command, LockAction};
use crate::commands::{Connector, Ctx, SshConnector, Want};
use crate::error::{exit, Error};
use crate::events::{Fanout, Sink};
use crate::printer::{Printer, Verbosity};
use crate::report::{Collector, Report};

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    tls::install_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    std::process::exit(code);
}

fn init_tracing(verbose: u8) {
    // Never bollard's debug output by default: it logs request bodies, and a
    // container's create request carries the app's environment (its secrets).
    let default = match verbose {
        0 => "warn",
        1 => "warn,capstan=debug",
        _ => "warn,capstan=trace,openssh=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::CAPSTAN_LOG).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| env::var(env::CAPSTAN_CONFIG).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_FILE))
}

/// Writes the JSON document on stdout (the only thing capstan writes there).
fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

async fn run(cli: Cli) -> i32 {
    let printer = Arc::new(Printer::new(if cli.quiet { Verbosity::Quiet } else { Verbosity::Normal }));
    let command_name = match &cli.command {
        Command::Deploy(_) => "deploy",
        Command::Build(_) => "build",
        Command::Rollback(_) => "rollback",
        Command::Check(_) => "check",
        Command::Status(_) => "status",
        Command::History(_) => "history",
        Command::Lock { .. } => "lock",
        Command::Action => "action",
    };
    // In a GitHub Action, secrets are masked and key files written before anything else.
    let setup = match &cli.command {
        Command::Action => match action::setup(&mut std::io::stdout()) {
            Ok(s) => Some(s),
            Err(e) => {
                printer.always(&e.render());
                return e.exit_code();
            }
        },
        _ => None,
    };
    let failed_report = |app: &str, e: &Error| Report {
        app: app.to_string(),
        command: command_name.into(),
        version: None,
        outcome: "failed".into(),
        duration_ms: 0,
        hosts: vec![],
        build: vec![],
        gates: vec![],
        plan: None,
        error: Some(e.to_string()),
    };
    let path = setup.as_ref().map(|s| s.config_path.clone()).unwrap_or_else(|| config_path(&cli));
    let loaded = config::load(&path).map_err(|e| {
        if setup.is_some() {
            for line in action::annotate(&e) {
                println!("{line}");
            }
        }
        Error::from(e)
    });
    let loaded = match (loaded, &setup) {
        (Ok(mut c), Some(s)) => s.apply(&mut c).map(|()| c),
        (r, _) => r,
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            if cli.json {
                print_json(&failed_report("", &e));
            }
            printer.always(&e.render());
            return e.exit_code();
        }
    };
    let collector = Arc::new(Collector::default());
    let sink = Fanout(vec![printer.clone() as Arc<dyn Sink>, collector.clone() as Arc<dyn Sink>]);
    let connector = SshConnector::new();
    let cancel = cancel::Cancel::new();
    cancel::on_signals(cancel.clone(), printer.clone());
    let ctx = Ctx { config: &config, events: &sink, connector: &connector, cancel: &cancel };
    let result = dispatch(&ctx, &cli, &printer, &collector, setup.as_ref()).await;
    connector.close().await;
    match result {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                print_json(&failed_report(&config.app, &e));
            }
            printer.always(&e.render());
            e.exit_code()
        }
    }
}

async fn dispatch(ctx: &Ctx<'_>, cli: &Cli, printer: &Printer, collector: &Collector, setup: Option<&action::Setup>) -> Result<i32, Error> {
    let finish = |out: commands::RunOutput| -> i32 {
        if cli.json {
            print_json(&out.report);
        }
        match out.error {
            None => exit::OK,
            Some(e) => {
                printer.always(&e.render());
                e.exit_code()
            }
        }
    };
    match &cli.command {
        Command::Build(a) => {
            let t0 = std::time::Instant::now();
            let version = version_of(ctx, a.version.as_deref())?;
            let services = ctx.services(&a.services)?;
            if !services.iter().any(|s| s.build.is_some()) {
                return Err(Error::input(format!("{}: no selected service has a build: block; nothing to build", ctx.config.file.display())));
            }
            let creds = ctx.credentials()?;
            let jobs = a.jobs.unwrap_or_else(build::default_jobs);
            build::build_local(ctx.config, ctx.events, &services, &version, creds.as_ref(), a.push, jobs).await?;
            let report = Report {
                app: ctx.config.app.clone(),
                command: "build".into(),
                version: Some(version.text.clone()),
                outcome: "succeeded".into(),
                duration_ms: t0.elapsed().as_millis() as u64,
                hosts: vec![],
                build: collector.builds(),
                gates: vec![],
                plan: None,
                error: None,
            };
            Ok(finish(commands::RunOutput { report, error: None }))
        }
        Command::Deploy(_) | Command::Rollback(_) | Command::Check(_) => Ok(finish(roll_command(ctx, &cli.command, collector).await?)),
        Command::Action => {
            let setup = setup.expect("the action's setup runs before the config is read");
            let out = match action_command(setup) {
                Ok(cmd) => roll_command(ctx, &cmd, collector).await,
                Err(e) => Err(e),
            };
            let (report, error) = match out {
                Ok(o) => (o.report, o.error),
                Err(e) => (
                    Report {
                        app: ctx.config.app.clone(),
                        command: "action".into(),
                        version: None,
                        outcome: "failed".into(),
                        duration_ms: 0,
                        hosts: collector.hosts(),
                        build: collector.builds(),
                        gates: collector.gates(),
                        plan: None,
                        error: Some(e.to_string()),
                    },
                    Some(e),
                ),
            };
            if let Err(e) = setup.finish(&report) {
                printer.always(&format!("warning: could not write the step outputs or the job summary: {e}"));
            }
            Ok(finish(commands::RunOutput { report, error }))
        }
        Command::Status(t) => {
            let s = commands::status(ctx, t).await?;
            if cli.json {
                print_json(&s);
            }
            printer.always(commands::render_status(&s).trim_end());
            Ok(exit::OK)
        }
        Command::History(a) => {
            let h = commands::history(ctx, &a.targets, a.limit).await?;
            if cli.json {
                print_json(&h);
            }
            printer.always(commands::render_history(&h).trim_end());
            Ok(exit::OK)
        }
        Command::Lock { action } => {
            let (targets, release) = match action {
                LockAction::Status(t) => (t, None),
                LockAction::Release { force, targets } => (targets, Some(*force)),
            };
            let r = commands::lock(ctx, targets, release).await?;
            if cli.json {
                print_json(&r);
            }
            printer.always(commands::render_lock(&r).trim_end());
            Ok(exit::OK)
        }
    }
}

/// The release of this run: `--version`, else the tag GitHub ran for.
fn version_of(ctx: &Ctx<'_>, cli: Option<&str>) -> Result<release::Version, Error> {
    let (gref, name, kind) = (env::var(env::GITHUB_REF), env::var(env::GITHUB_REF_NAME), env::var(env::GITHUB_REF_TYPE));
    let src = release::VersionSource {
        cli,
        github_ref: gref.as_deref(),
        github_ref_name: name.as_deref(),
        github_ref_type: kind.as_deref(),
    };
    release::version(src, ctx.config.raw_tags).map_err(Error::input)
}

/// `deploy`, `rollback` and `check`: their report, or the error that stopped them before one.
async fn roll_command(ctx: &Ctx<'_>, command: &Command, collector: &Collector) -> Result<commands::RunOutput, Error> {
    match command {
        Command::Deploy(a) => {
            let version = version_of(ctx, a.version.as_deref())?;
            let services = ctx.services(&a.targets.services)?;
            let mut pinned = std::collections::HashMap::new();
            if a.dry_run && !a.skip_build {
                // A dry run builds nothing: the plan names the tag the build would push.
                for s in services.iter().filter(|s| s.build.is_some()) {
                    pinned.insert(s.name.clone(), format!("{} (to be built)", release::tag_ref(&s.image, &version.text)));
                }
            } else if !a.skip_build {
                let creds = ctx.credentials()?;
                let jobs = a.jobs.unwrap_or_else(build::default_jobs);
                for b in build::build_local(ctx.config, ctx.events, &services, &version, creds.as_ref(), true, jobs).await? {
                    if let Some(r) = b.reference() {
                        pinned.insert(b.service.clone(), r);
                    }
                }
            }
            let want = Want::Deploy { version: version.text, pinned };
            commands::roll(ctx, want, &a.targets, commands::RollOpts { dry_run: a.dry_run, force: a.force }, collector).await
        }
        Command::Rollback(a) => {
            let to = release::RollbackTo::parse(&a.to).map_err(Error::input)?;
            commands::roll(ctx, Want::Rollback { to }, &a.targets, commands::RollOpts { dry_run: a.dry_run, force: false }, collector).await
        }
        Command::Check(a) => {
            let version = version_of(ctx, a.version.as_deref())?;
            let want = Want::Deploy { version: version.text, pinned: Default::default() };
            let mut out = commands::roll(ctx, want, &a.targets, commands::RollOpts { dry_run: true, force: false }, collector).await?;
            out.report.command = "check".into();
            Ok(out)
        }
        _ => unreachable!("only deploy, rollback and check roll"),
    }
}

/// The command line an action run stands for.
fn action_command(setup: &action::Setup) -> Result<Command, Error> {
    let targets = cli::Targets { services: setup.services.clone(), hosts: vec![] };
    Ok(match &setup.trigger {
        event::Trigger::Deploy { version } => Command::Deploy(cli::DeployArgs {
            version: Some(version.clone()),
            targets,
            skip_build: false,
            jobs: None,
            force: false,
            dry_run: setup.dry_run,
        }),
        event::Trigger::Rollback { to } => Command::Rollback(cli::RollbackArgs { to: to.clone(), targets, dry_run: setup.dry_run }),
        event::Trigger::Check { version: Some(v), .. } => Command::Check(cli::CheckArgs { version: Some(v.clone()), targets }),
        event::Trigger::Check { version: None, fork, .. } => {
            return Err(Error::input(format!(
                "the pull-request check needs a version to plan (the version input){}; the config itself is valid",
                if *fork { " (a fork: no secrets, nothing was contacted)" } else { "" }
            )))
        }
    })
}
