//! The command line (DESIGN.md, "Command line"). Parsing only; `commands` runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "capstan", version, about = "Zero-downtime rolling deploys of Docker services over SSH")]
pub struct Cli {
    /// The config file [default: capstan.yml, or $CAPSTAN_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print one JSON report on stdout; human output stays on stderr
    #[arg(long, global = true)]
    pub json: bool,
    /// More diagnostics (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only warnings and errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Roll a release out to the hosts, one instance at a time
    Deploy(DeployArgs),
    /// Build the services' images for a release; with --push, push every tag
    Build(BuildArgs),
    /// Roll back to the release before, or to a given one, by the digests the hosts recorded
    Rollback(RollbackArgs),
    /// Validate, resolve the release, connect, run the preflight checks, print the plan; change nothing
    Check(CheckArgs),
    /// What runs on each host now: instance, image, version, health
    Status(Targets),
    /// The deployment log kept on the hosts
    History(HistoryArgs),
    /// The GitHub Action's entrypoint: reads the event and the INPUT_* variables and runs
    /// deploy, rollback or check
    Action,
    /// Show or release the deploy lock
    Lock {
        #[command(subcommand)]
        action: LockAction,
    },
}

#[derive(Args, Debug, Default, Clone)]
pub struct Targets {
    /// Only this service (repeatable)
    #[arg(long = "service", value_name = "S")]
    pub services: Vec<String>,
    /// Only this host, as written in the config (repeatable)
    #[arg(long = "host", value_name = "H")]
    pub hosts: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct DeployArgs {
    /// The release to deploy [default: the tag of GITHUB_REF]
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    #[command(flatten)]
    pub targets: Targets,
    /// Do not build images (images are expected in the registry)
    #[arg(long)]
    pub skip_build: bool,
    /// How many services build at once [default: the number of cores, at most 4]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Deploy even over instances that are not healthy now (the report records it)
    #[arg(long)]
    pub force: bool,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    /// The release to build [default: the tag of GITHUB_REF]
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Push the images and every tag to the registry
    #[arg(long)]
    pub push: bool,
    /// Only this service (repeatable)
    #[arg(long = "service", value_name = "S")]
    pub services: Vec<String>,
    /// How many services build at once [default: the number of cores, at most 4]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct RollbackArgs {
    /// `previous`, or a version deployed before
    #[arg(long, value_name = "VERSION|previous", default_value = "previous")]
    pub to: String,
    #[command(flatten)]
    pub targets: Targets,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    /// The release to plan for [default: the tag of GITHUB_REF]
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    #[command(flatten)]
    pub targets: Targets,
}

#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// How many records to show per host
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[command(flatten)]
    pub targets: Targets,
}

#[derive(Subcommand, Debug, Clone)]
pub enum LockAction {
    /// Who holds the lock on each host
    Status(Targets),
    /// Remove an expired lock; with --force, whoever holds it
    Release {
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        targets: Targets,
    },
}
