//! The integration tests: one binary, a module per feature, the support code
//! (`support/`) compiled once. Each runs the capstan binary against real parts
//! on loopback (`support` starts them); `cargo test --test it -- e2e::` runs
//! one feature.

mod support;

mod action;
mod build;
mod compose;
mod e2e;
mod faults;
mod fleet;
mod gates;
mod harness;
mod image;
mod injection;
mod secrets;
mod swarm;
