//! The link between the runner and the host: capstan's SSH connection goes
//! through a proxy on loopback (`support::wan`) that can close connections,
//! delay them or black-hole them, in front of the sandbox's real sshd.

use std::time::Duration;

use crate::support::{wan, App, AppOptions};
use crate::{sandbox, shared};

fn app(hint: &str) -> App {
    App::new(sandbox(), hint, AppOptions::default())
}

/// A host whose first connections are closed at once (sshd restarting, a
/// flapping link) is tried again before anything changes, and the deploy goes on.
#[test]
fn a_connection_closed_at_once_is_tried_again_before_any_change() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("retry");
    let proxy = wan::to_sandbox(sb, Duration::ZERO);
    app.write_config(&wan::through(&app, sb, &proxy).text());
    proxy.drop_next(2);
    let run = app.capstan(&["deploy", "--version", "v2"]);
    run.assert_success();
    assert!(run.stderr.contains("trying again"), "the retries are said:\n{}", run.stderr);
    assert_eq!(app.versions(), ["v2", "v2"]);
    assert_eq!(proxy.connections(), 1, "two closed connections, then one that stayed up for the whole run");
}

/// A host that keeps closing the connection: given up after three tries, exit 4,
/// the message says why and how many tries; nothing changed.
#[test]
fn a_host_that_keeps_closing_the_connection_is_given_up_after_three_tries() {
    let _turn = shared();
    let sb = sandbox();
    let app = app("giveup");
    let proxy = wan::to_sandbox(sb, Duration::ZERO);
    app.write_config(&wan::through(&app, sb, &proxy).text());
    proxy.drop_next(100);
    let before = app.containers();
    let run = app.capstan(&["deploy", "--version", "v2"]);
    assert_eq!(run.status, 4, "{}", run.stderr);
    assert!(run.stderr.contains("tried 3 times"), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("127.0.0.1:{}", proxy.port())), "the host is named:\n{}", run.stderr);
    assert_eq!(app.containers(), before, "nothing changed");
    assert_eq!(app.versions(), ["v1", "v1"]);
}
