//! The GitHub side: what a run is asked to do by its event, the action's
//! setup and outputs, the job summary, and what GitHub is told (deployments,
//! statuses, the pull request's check run) through its API (`api.rs`, with an
//! in-memory fake for tests). Beside the commands: it never imports them; the
//! crate root wires an action run to the commands.

pub mod action;
pub mod api;
#[cfg(test)]
pub mod fake;
pub mod publish;
pub mod summary;
pub mod trigger;
