//! The error type every command returns, its exit code, and its one renderer.
//!
//! Modules return their own typed errors. Those of the layers below are variants
//! here; those of the layers above (the build) implement [`Diagnostic`], which
//! tells their exit code and hint, and arrive as [`Error::Module`]. A module
//! wraps the error it stopped at with `#[source]` rather than flattening its text:
//! [`Error::render`] shows the chain (`error:`, one `caused by:` per source, then
//! `hint:`), and [`Error::one_line`] joins it for the report and GitHub.
//! Rendering happens only in `main`, through these two.

use std::fmt;

use crate::core::config::ConfigError;
use crate::core::release::ReleaseError;

/// Exit codes, documented in the README. Keep them stable: CI scripts branch on them.
pub mod exit {
    /// The command did what was asked.
    pub const OK: i32 = 0;
    /// A deploy or rollback failed and every replaced instance was put back.
    pub const ROLLED_BACK: i32 = 1;
    /// Bad input (config, arguments, unknown image): nothing was changed on any host.
    pub const BAD_INPUT: i32 = 2;
    /// Another deploy holds the lock: nothing was changed.
    pub const LOCKED: i32 = 3;
    /// A host, its engine or the registry could not be reached before any change.
    pub const UNREACHABLE: i32 = 4;
    /// A failure that capstan could not fully repair: a host needs attention.
    pub const NEEDS_ATTENTION: i32 = 5;
    /// A preflight check or the pre-deploy hook refused the deploy: nothing was changed.
    pub const REFUSED: i32 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A version or rollback target that cannot be run.
    #[error(transparent)]
    Release(#[from] ReleaseError),

    /// A typed error of a layer above this one (the build), with its own exit code and hint.
    #[error(transparent)]
    Module(Module),

    /// Bad input that is not in the config file (arguments, versions, images).
    #[error("{message}")]
    Input { message: String, hint: Option<String> },

    #[error("{host}: deploy lock is held by {holder} since {since}{run}", run = run_url.as_deref().map(|u| format!(" ({u})")).unwrap_or_default())]
    Locked { host: String, holder: String, since: String, run_url: Option<String>, expires: String },

    #[error("{host}: {message}")]
    Unreachable { host: String, message: String, hint: Option<String> },

    /// The rollout failed and was reverted: the report says what happened.
    #[error("{0}")]
    RolledBack(String),

    #[error("{0}")]
    NeedsAttention(String),

    /// A preflight check or the pre-deploy hook said no; nothing was changed.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    pub fn input(message: impl Into<String>) -> Self {
        Error::Input { message: message.into(), hint: None }
    }

    pub fn input_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Input { message: message.into(), hint: Some(hint.into()) }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Release(_) | Error::Input { .. } => exit::BAD_INPUT,
            Error::Module(m) => m.0.exit_code(),
            Error::Locked { .. } => exit::LOCKED,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::RolledBack(_) => exit::ROLLED_BACK,
            Error::NeedsAttention(_) => exit::NEEDS_ATTENTION,
            Error::Refused(_) => exit::REFUSED,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Input { hint, .. } | Error::Unreachable { hint, .. } => hint.clone(),
            Error::Locked { expires, .. } => Some(format!("the lease expires at {expires}; if that deploy is dead, run `capstan lock release --force`")),
            Error::Module(m) => m.0.hint(),
            _ => None,
        }
    }

    /// What this error wraps, outermost first.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        std::iter::successors(std::error::Error::source(self), |e| e.source())
    }

    /// The text shown to the user: `error: …`, a `caused by: …` line for each
    /// error it wraps, then any `hint: …` line.
    pub fn render(&self) -> String {
        let mut out = format!("error: {self}");
        for cause in self.causes() {
            out.push_str(&format!("\ncaused by: {cause}"));
        }
        if let Some(h) = self.hint() {
            out.push_str(&format!("\nhint: {h}"));
        }
        out
    }

    /// The error and its causes on one line, `: ` between them: the report's `error`.
    pub fn one_line(&self) -> String {
        let mut out = self.to_string();
        for cause in self.causes() {
            out.push_str(&format!(": {cause}"));
        }
        out
    }
}

/// What the top needs from a module's error: its exit code, and a hint when one helps.
pub trait Diagnostic: std::error::Error + Send + Sync + 'static {
    fn exit_code(&self) -> i32;

    fn hint(&self) -> Option<String> {
        None
    }
}

/// A module's error as [`Error`] carries it: read as the module's own error (its
/// text, then its sources).
pub struct Module(Box<dyn Diagnostic>);

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Module {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl<E: Diagnostic> From<E> for Error {
    fn from(e: E) -> Self {
        Error::Module(Module(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("services.web: nothing was built or pushed")]
    struct Outer {
        #[source]
        inner: Middle,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("registry r.example: unreachable")]
    struct Middle(#[source] std::io::Error);

    impl Diagnostic for Outer {
        fn exit_code(&self) -> i32 {
            exit::UNREACHABLE
        }

        fn hint(&self) -> Option<String> {
            Some("start the registry".into())
        }
    }

    #[test]
    fn the_renderer_shows_each_cause_then_the_hint() {
        let e = Error::from(Outer { inner: Middle(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused")) });
        assert_eq!(e.exit_code(), exit::UNREACHABLE);
        assert_eq!(
            e.render(),
            "error: services.web: nothing was built or pushed\n\
             caused by: registry r.example: unreachable\n\
             caused by: connection refused\n\
             hint: start the registry"
        );
        assert_eq!(e.one_line(), "services.web: nothing was built or pushed: registry r.example: unreachable: connection refused");
        // An error without a source reads as one line, as always.
        let plain = Error::input_hint("--service api: no such service", "pick one");
        assert_eq!(plain.render(), "error: --service api: no such service\nhint: pick one");
        assert_eq!(plain.one_line(), "--service api: no such service");
    }
}
