//! The error type every command returns, its exit code, and its one renderer.
//!
//! Modules return their own typed errors; they are converted here. Rendering
//! (`error:` / `hint:` lines) happens only in `main`, through [`Error::render`].

use crate::core::config::ConfigError;

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
            Error::Config(_) | Error::Input { .. } => exit::BAD_INPUT,
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
            _ => None,
        }
    }

    /// The text shown to the user: `error: …` then any `hint: …` lines.
    pub fn render(&self) -> String {
        let mut out = format!("error: {self}");
        if let Some(h) = self.hint() {
            out.push_str(&format!("\nhint: {h}"));
        }
        out
    }
}
