//! The output: the event stream every producer emits, and what renders it
//! (the printer on stderr, the `--json` report, the runner's log formats).

pub mod events;
pub mod printer;
pub mod report;
pub mod workflow;
