//! Secrets in memory. A [`Secret`] never prints: its `Debug` and `Display` show a
//! placeholder. [`Credentials`], the registry login, carries one; its password
//! reaches only the engine's `X-Registry-Auth` header and the registry API's
//! `Authorization` header.

use std::fmt;

/// A registry login: for the engine's pulls and pushes, and the registry's API.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub server: String,
    pub username: String,
    pub password: Secret,
}

/// Wraps a secret so that it never prints: `Debug` and `Display` show a placeholder.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
