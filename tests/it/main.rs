//! The integration tests: one binary, a module per feature, the support code
//! (`support/`) compiled once. Each runs the capstan binary against real parts
//! on loopback (`support` starts them); `cargo test --test it -- e2e::` runs
//! one feature.

// Test code: the support helpers outside #[test] functions panic on purpose (a
// failed setup is the test's failure report) and print the figures they measure.
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

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
mod link;
mod prom;
mod release;
mod secrets;
mod swarm;
mod traffic_gates;

use std::cell::Cell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The machine, taken in turns by the tests of every module at once.
///
/// Most tests share it (two at a time with libtest's default two threads on two
/// cores, as when each feature had its own binary). Some must have it alone:
/// the faults cut every SSH session of the sandbox's sshd (another test's run
/// would be cut too), a fleet starts three engines, the Compose system and the
/// Swarm service each carry load whose figures are about capstan only when
/// nothing else runs, and the image test builds the action's image. Before,
/// each of those features ran in its own process after the others had finished
/// and serialized its tests with a lock of its own; in one process, this lock
/// does both.
static MACHINE: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this thread (a test) holds a turn: [`sandbox`] checks it.
    static HOLDS_TURN: Cell<bool> = const { Cell::new(false) };
}

/// A test's turn on the machine, held until dropped (at the test's end).
#[must_use = "a turn lasts while it is held: `let _turn = shared();`"]
pub struct Turn {
    _guard: Guard,
}

enum Guard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl Drop for Turn {
    fn drop(&mut self) {
        HOLDS_TURN.with(|h| h.set(false));
    }
}

fn take(guard: impl FnOnce() -> Guard) -> Turn {
    assert!(!HOLDS_TURN.with(Cell::get), "this test already holds a turn on the machine");
    let turn = Turn { _guard: guard() };
    HOLDS_TURN.with(|h| h.set(true));
    turn
}

/// A turn shared with the other tests that take one this way; waits while a
/// test has the machine [`alone`]. The first line of a test that uses it.
pub fn shared() -> Turn {
    take(|| Guard::Shared(MACHINE.read().unwrap_or_else(|e| e.into_inner())))
}

/// The machine to this test alone: waits for every other turn to end, and no
/// other test starts until this one is over.
pub fn alone() -> Turn {
    take(|| Guard::Alone(MACHINE.write().unwrap_or_else(|e| e.into_inner())))
}

/// Panics unless the calling test took its turn ([`shared`] or [`alone`]).
#[track_caller]
pub fn assert_turn() {
    assert!(HOLDS_TURN.with(Cell::get), "a test takes its turn on the machine first: `let _turn = shared();` (or `alone()`)");
}

/// The sandbox of this process (sshd, registry, images), started by the first
/// test that asks; only for a test that holds its turn. The tests find capstan
/// through `support::capstan_bin`, which is fixed at compile time here:
/// nothing is set in the environment.
#[track_caller]
fn sandbox() -> &'static support::Sandbox {
    assert_turn();
    support::Sandbox::get()
}
