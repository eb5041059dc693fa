//! The output: the event stream every producer emits (its whole vocabulary,
//! `events.rs`), and what renders it: the printer on stderr, the `--json`
//! report, the runner's log formats. Producers import this layer; it imports
//! only the core.

pub mod events;
pub mod printer;
pub mod report;
pub mod workflow;
