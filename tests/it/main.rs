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

/// The sandbox of this process (sshd, registry, images), started by the first
/// test that asks. The tests find capstan through `support::capstan_bin`, which
/// is fixed at compile time here: nothing is set in the environment.
fn sandbox() -> &'static support::Sandbox {
    support::Sandbox::get()
}
