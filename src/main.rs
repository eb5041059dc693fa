//! capstan: zero-downtime rolling deploys of Docker services over SSH.
//! See ARCHITECTURE.md for the map.

mod build;
mod cli;
mod commands;
mod core;
mod env;
mod error;
#[cfg(test)]
mod fuzz;
mod github;
mod host;
#[cfg(test)]
mod layers;
mod output;
mod rollout;
mod tls;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

use crate::cli::{Cli, Command, LockAction};
use crate::commands::deploy::{roll, RollOpts, RunOutput};
use crate::commands::prepare::Want;
use crate::commands::{history, lock, status, Ctx};
use crate::core::record::{RunCommand, RunOutcome};
use crate::core::{config, image, plan, release};
use crate::error::{exit, Error};
use crate::github::{action, publish, summary, trigger};
use crate::host::connect::{Connector, SshConnector};
use crate::output::events::{Fanout, Sink};
use crate::output::printer::{Printer, Verbosity};
use crate::output::report::{Collector, Report};
use crate::output::{events, printer};
use crate::rollout::cancel;

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

fn config_path(cli: &Cli, vars: &env::Context) -> PathBuf {
    cli.config.clone().or_else(|| vars.config_file.clone()).unwrap_or_else(|| PathBuf::from(config::DEFAULT_FILE))
}

/// Writes the JSON document on stdout (the only thing capstan writes there).
fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

/// Writes workflow commands (the config's error annotations) on stdout, where the runner reads them.
// stdout is the runner's channel here: no event exists for a config that did not load.
#[allow(clippy::print_stdout)]
fn print_workflow_commands(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

async fn run(cli: Cli) -> i32 {
    let command_name = match &cli.command {
        Command::Deploy(_) => RunCommand::Deploy,
        Command::Build(_) => RunCommand::Build,
        Command::Rollback(_) => RunCommand::Rollback,
        Command::Check(_) => RunCommand::Check,
        Command::Status(_) => RunCommand::Status,
        Command::History(_) => RunCommand::History,
        Command::Lock { .. } => RunCommand::Lock,
        Command::Action => RunCommand::Action,
    };
    // In a GitHub Action, secrets are masked and key files written before anything else.
    let setup = match &cli.command {
        Command::Action => match action::setup(&mut std::io::stdout()) {
            Ok(Some(s)) => Some(s),
            // The event asks for nothing (a release edited, a tag deleted): its notice is printed.
            Ok(None) => return exit::OK,
            Err(e) => {
                Printer::new(Verbosity::Normal).always(&e.render());
                return e.exit_code();
            }
        },
        _ => None,
    };
    // The environment, read once: after the action's setup, which fills some of it from its inputs.
    let mut vars = env::Context::read();
    let printer = Arc::new(Printer::new(if cli.quiet { Verbosity::Quiet } else { Verbosity::Normal }).with_groups(vars.in_actions && !cli.json));
    let failed_report = |app: &str, e: &Error| failed_report(app, command_name, e);
    let path = setup.as_ref().map(|s| s.config_path.clone()).unwrap_or_else(|| config_path(&cli, &vars));
    let loaded = config::load(&path);
    if let (Err(e), Some(s)) = (&loaded, &setup) {
        print_workflow_commands(&s.config_error(e));
        // A pull request's check shows the errors on the config's lines.
        if let (trigger::Trigger::Check { head_sha, .. }, Some(api)) = (&s.trigger, &s.github) {
            if let Some(sha) = head_sha.clone().or_else(|| vars.github_sha.clone()) {
                let p = publish::Publisher { api: api.as_ref(), target: s.target(), events: printer.as_ref() };
                let md = format!("capstan cannot read `{}`:\n\n```\n{e}\n```\n", e.file.display());
                p.check(&publish::check_run(&sha, &md, false, &[], publish::annotations(e, &s.workspace), vars.run_url.clone())).await;
            }
        }
    }
    let loaded = loaded.map_err(Error::from);
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
    if let Some(r) = &config.registry {
        vars.read_registry_password(&r.password_env);
    }
    let collector = Arc::new(Collector::default());
    let sink = Fanout(vec![printer.clone() as Arc<dyn Sink>, collector.clone() as Arc<dyn Sink>]);
    let connector = SshConnector::new();
    let cancel = cancel::Cancel::new();
    cancel::on_signals(cancel.clone(), printer.clone());
    let ctx = Ctx { config: &config, events: &sink, connector: &connector, cancel: &cancel, env: &vars };
    let result = dispatch(&ctx, &cli, &printer, &collector, setup.as_ref()).await;
    connector.close().await;
    printer.end_group();
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
    let finish = |out: RunOutput| -> i32 {
        if cli.json {
            print_json(&out.report);
        }
        printer.end_group();
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
            build::build_local(ctx.config, ctx.events, &services, &version, creds.as_ref(), build::BuildOpts { push: a.push, jobs }, ctx.env).await?;
            let report = Report {
                app: ctx.config.app.clone(),
                command: RunCommand::Build,
                version: Some(version.text.clone()),
                outcome: RunOutcome::Succeeded,
                duration_ms: t0.elapsed().as_millis() as u64,
                hosts: vec![],
                build: collector.builds(),
                gates: vec![],
                plan: None,
                error: None,
                previous: None,
            };
            Ok(finish(RunOutput { report, error: None }))
        }
        Command::Deploy(_) | Command::Rollback(_) | Command::Check(_) => Ok(finish(roll_command(ctx, &cli.command, collector).await?)),
        Command::Action => {
            let setup = setup.expect("the action's setup runs before the config is read");
            let (out, deployment) = run_action(ctx, setup, collector).await;
            let (report, error) = match out {
                Ok(o) => (o.report, o.error),
                Err(e) => (error_report(ctx, collector, &e), Some(e)),
            };
            if let Err(e) = setup.finish(&report, deployment) {
                printer.always(&format!("warning: could not write the step outputs or the job summary: {e}"));
            }
            Ok(finish(RunOutput { report, error }))
        }
        Command::Status(t) => {
            let s = status::status(ctx, t).await?;
            if cli.json {
                print_json(&s);
            }
            printer.always(status::render_status(&s).trim_end());
            Ok(exit::OK)
        }
        Command::History(a) => {
            let h = history::history(ctx, &a.targets, a.limit).await?;
            if cli.json {
                print_json(&h);
            }
            printer.always(history::render_history(&h).trim_end());
            Ok(exit::OK)
        }
        Command::Lock { action } => {
            let (targets, release) = match action {
                LockAction::Status(t) => (t, None),
                LockAction::Release { force, targets } => (targets, Some(*force)),
            };
            let r = lock::lock(ctx, targets, release).await?;
            if cli.json {
                print_json(&r);
            }
            printer.always(lock::render_lock(&r).trim_end());
            Ok(exit::OK)
        }
    }
}

/// The release of this run: `--version`, else the tag GitHub ran for.
fn version_of(ctx: &Ctx<'_>, cli: Option<&str>) -> Result<release::Version, Error> {
    Ok(release::version(version_source(ctx, cli), ctx.config.raw_tags)?)
}

/// Where the release of this run may come from: `--version`, else GitHub's ref.
fn version_source<'a>(ctx: &'a Ctx<'_>, cli: Option<&'a str>) -> release::VersionSource<'a> {
    let e = ctx.env;
    release::VersionSource {
        cli,
        github_ref: e.github_ref.as_deref(),
        github_ref_name: e.github_ref_name.as_deref(),
        github_ref_type: e.github_ref_type.as_deref(),
    }
}

/// `deploy`, `rollback` and `check`: their report, or the error that stopped them before one.
async fn roll_command(ctx: &Ctx<'_>, command: &Command, collector: &Collector) -> Result<RunOutput, Error> {
    match command {
        Command::Deploy(a) => {
            let version = version_of(ctx, a.version.as_deref())?;
            let services = ctx.services(&a.targets.services)?;
            let mut pinned = std::collections::HashMap::new();
            if a.dry_run && !a.skip_build {
                // A dry run builds nothing: the plan names the tag the build would push.
                for s in services.iter().filter(|s| s.build.is_some()) {
                    pinned.insert(s.name.clone(), format!("{} (to be built)", image::tag_ref(&s.image, &version.text)));
                }
            } else if !a.skip_build {
                let creds = ctx.credentials()?;
                let jobs = a.jobs.unwrap_or_else(build::default_jobs);
                let opts = build::BuildOpts { push: true, jobs };
                for b in build::build_local(ctx.config, ctx.events, &services, &version, creds.as_ref(), opts, ctx.env).await? {
                    if let Some(r) = b.reference() {
                        pinned.insert(b.service.clone(), r);
                    }
                }
            }
            let want = Want::Deploy { version: version.text, pinned };
            roll(ctx, want, &a.targets, RollOpts { dry_run: a.dry_run, force: a.force }, collector).await
        }
        Command::Rollback(a) => {
            let to = release::RollbackTo::parse(&a.to)?;
            roll(ctx, Want::Rollback { to }, &a.targets, RollOpts { dry_run: a.dry_run, force: false }, collector).await
        }
        Command::Check(a) => {
            let want = match release::version(version_source(ctx, a.version.as_deref()), ctx.config.raw_tags) {
                Ok(v) => Want::Deploy { version: v.text, pinned: Default::default() },
                // Nothing names a version: "is everything ready?", every check that needs none.
                Err(release::ReleaseError::NoVersion { .. }) => Want::Ready,
                Err(e) => return Err(e.into()),
            };
            let mut out = roll(ctx, want, &a.targets, RollOpts { dry_run: true, force: false }, collector).await?;
            out.report.command = RunCommand::Check;
            Ok(out)
        }
        _ => unreachable!("only deploy, rollback and check roll"),
    }
}

/// The report of a command an error stopped before it had one.
fn failed_report(app: &str, command: RunCommand, e: &Error) -> Report {
    Report {
        app: app.to_string(),
        command,
        version: None,
        outcome: RunOutcome::Failed,
        duration_ms: 0,
        hosts: vec![],
        build: vec![],
        gates: vec![],
        plan: None,
        error: Some(e.one_line()),
        previous: None,
    }
}

/// The report of an action run an error stopped: with what was done before it.
fn error_report(ctx: &Ctx<'_>, collector: &Collector, e: &Error) -> Report {
    Report { hosts: collector.hosts(), build: collector.builds(), gates: collector.gates(), ..failed_report(&ctx.config.app, RunCommand::Action, e) }
}

/// An action run: the command its event stands for, with the GitHub
/// deployment around a deploy or rollback, or the check run of a pull request.
async fn run_action(ctx: &Ctx<'_>, setup: &action::Setup, collector: &Collector) -> (Result<RunOutput, Error>, Option<u64>) {
    let publisher = setup.github.as_deref().map(|api| publish::Publisher { api, target: setup.target(), events: ctx.events });
    if let Some(why) = &setup.github_missing {
        ctx.events.emit(events::Event::Warn { host: None, message: why.clone() });
    }
    if let trigger::Trigger::Check { version, head_sha, fork } = &setup.trigger {
        let mut skipped = Vec::new();
        let out = check_action(ctx, setup, version.as_deref(), head_sha.as_deref(), *fork, &mut skipped, collector).await.map_err(action::in_action_terms);
        if let (Some(p), Some(sha)) = (&publisher, head_sha.clone().or_else(|| ctx.env.github_sha.clone())) {
            let (md, ok) = match &out {
                Ok(o) => (summary::render(&o.report, None), o.error.is_none()),
                Err(e) => (format!("capstan check failed:\n\n```\n{}\n```\n", e.render()), false),
            };
            p.check(&publish::check_run(&sha, &md, ok, &skipped, vec![], ctx.env.run_url.clone())).await;
        }
        return (out, None);
    }
    let cmd = match action_command(setup) {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    let mut deployment = None;
    if let (Some(p), false) = (&publisher, setup.dry_run) {
        let kind = match &setup.trigger {
            trigger::Trigger::Rollback { to } => publish::Kind::Rollback {
                to: to.clone(),
                sha: ctx.env.github_sha.clone().or_else(|| ctx.env.github_ref.clone()).unwrap_or_else(|| "HEAD".into()),
            },
            trigger::Trigger::Deploy { version } => publish::Kind::Deploy { version: version.clone() },
            trigger::Trigger::Check { .. } => unreachable!("checks returned above"),
        };
        match p.start(&kind, &ctx.config.app).await {
            Ok(id) => deployment = id,
            Err(e) => return (Err(Error::input(format!("{e}; nothing was changed on any host"))), None),
        }
    }
    let out = roll_command(ctx, &cmd, collector).await.map_err(action::in_action_terms);
    if let (Some(p), Some(id)) = (&publisher, deployment) {
        let report = match &out {
            Ok(o) => o.report.clone(),
            Err(e) => error_report(ctx, collector, e),
        };
        p.finish(id, &report).await;
    }
    (out, deployment)
}

/// A pull request's check: validate, resolve, build without pushing, and plan,
/// against the hosts when the run has their key (a fork's run has no secrets:
/// the plan then names what each instance would run, and says what was skipped).
async fn check_action(
    ctx: &Ctx<'_>,
    setup: &action::Setup,
    version: Option<&str>,
    head_sha: Option<&str>,
    fork: bool,
    skipped: &mut Vec<String>,
    collector: &Collector,
) -> Result<RunOutput, Error> {
    let t0 = std::time::Instant::now();
    let version = match (version, head_sha) {
        (Some(v), _) => version_of(ctx, Some(v))?,
        // No release yet: the image this commit would build, by its sha tag.
        (None, Some(sha)) => release::Version { text: format!("sha-{}", &sha[..sha.len().min(7)]), semver: None },
        (None, None) => return Err(Error::input("the check needs a version to plan: give the version input")),
    };
    let services = ctx.services(&setup.services)?;
    let mut pinned = std::collections::HashMap::new();
    if services.iter().any(|s| s.build.is_some()) {
        let creds = if fork { None } else { ctx.credentials().ok().flatten() };
        let opts = build::BuildOpts { push: false, jobs: build::default_jobs() };
        for b in build::build_local(ctx.config, ctx.events, &services, &version, creds.as_ref(), opts, ctx.env).await? {
            pinned.insert(b.service.clone(), format!("{} (built, not pushed)", image::tag_ref(&b.image, &version.text)));
        }
    }
    let targets = cli::Targets { services: setup.services.clone(), hosts: vec![] };
    if fork || !setup.has_ssh_key() {
        skipped.push(if fork {
            "the hosts: a pull request from a fork gets no secrets, so what runs now was not read".into()
        } else {
            "the hosts: no ssh-private-key input, so what runs now was not read".into()
        });
        let hosts: Vec<String> = ctx.hosts(&[])?.iter().map(|h| h.to_string()).collect();
        let plan = plan::offline(&hosts, &services, &|s| pinned.get(&s.name).cloned().unwrap_or_else(|| image::tag_ref(&s.image, &version.text)));
        ctx.events.emit(events::Event::Info { host: None, message: printer::render_plan(&plan) });
        for s in skipped.iter() {
            ctx.events.emit(events::Event::Warn { host: None, message: format!("skipped {s}") });
        }
        let report = Report {
            app: ctx.config.app.clone(),
            command: RunCommand::Check,
            version: Some(version.text),
            outcome: RunOutcome::Succeeded,
            duration_ms: t0.elapsed().as_millis() as u64,
            hosts: vec![],
            build: collector.builds(),
            gates: vec![],
            plan: Some(plan),
            error: None,
            previous: None,
        };
        return Ok(RunOutput { report, error: None });
    }
    let want = Want::Deploy { version: version.text, pinned };
    let mut out = roll(ctx, want, &targets, RollOpts { dry_run: true, force: false }, collector).await?;
    out.report.command = RunCommand::Check;
    Ok(out)
}

/// The command line an action run stands for.
fn action_command(setup: &action::Setup) -> Result<Command, Error> {
    let targets = cli::Targets { services: setup.services.clone(), hosts: vec![] };
    Ok(match &setup.trigger {
        trigger::Trigger::Deploy { version } => {
            Command::Deploy(cli::DeployArgs { version: Some(version.clone()), targets, skip_build: false, jobs: None, force: false, dry_run: setup.dry_run })
        }
        trigger::Trigger::Rollback { to } => Command::Rollback(cli::RollbackArgs { to: to.clone(), targets, dry_run: setup.dry_run }),
        trigger::Trigger::Check { .. } => unreachable!("a pull request's check runs through check_action"),
    })
}
