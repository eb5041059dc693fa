//! What a name may look like: apps, services, containers, image references,
//! versions, hosts. Pure. Anything that reaches a host command or a Docker API
//! path passes through here first, so a name can never carry shell syntax.

use std::fmt;

/// Why a name is refused. The text completes "invalid app name \"x\": …", so it
/// does not repeat the name; the variants carry the offending part instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("{found:?} is not allowed (use letters, digits and {allowed})")]
    Char { found: char, allowed: &'static str },
    #[error("it must start with a letter or digit, not {0:?}")]
    Start(char),
    #[error("it must start with a letter, digit or _, not {0:?}")]
    TagStart(char),
    #[error("it must end with a letter or digit")]
    End,
    #[error("it is longer than {0} characters")]
    TooLong(usize),
    #[error("give the repository without a digest; the release decides what runs")]
    RepositoryDigest,
    #[error("give the repository without a tag (like ghcr.io/acme/web); the tag comes from the release")]
    RepositoryTag,
    #[error("it has an empty path component")]
    EmptyComponent,
    #[error("repository paths must be lowercase")]
    Uppercase(String),
}

/// Why a host (`[user@]host[:port]`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("user: {0}")]
    User(NameError),
    #[error("missing ] after an IPv6 address")]
    UnclosedBracket,
    #[error("unexpected {0:?} after the address")]
    AfterAddress(String),
    #[error("{0:?} is not an IPv6 address")]
    NotIpv6(String),
    #[error("address: {0}")]
    Address(NameError),
    #[error("host: {0}")]
    Host(NameError),
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
}

fn chars_ok(s: &str, allowed: &'static str) -> Result<(), NameError> {
    if let Some(found) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || allowed.contains(*c))) {
        return Err(NameError::Char { found, allowed });
    }
    Ok(())
}

fn first_alnum(s: &str) -> Result<(), NameError> {
    match s.chars().next() {
        None => Err(NameError::Empty),
        Some(c) if c.is_ascii_alphanumeric() => Ok(()),
        Some(c) => Err(NameError::Start(c)),
    }
}

fn at_most(s: &str, max: usize) -> Result<(), NameError> {
    if s.len() > max {
        return Err(NameError::TooLong(max));
    }
    Ok(())
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_container(s: &str) -> Result<(), NameError> {
    first_alnum(s)?;
    chars_ok(s, "_.-")?;
    at_most(s, 128)
}

pub fn check_app(s: &str) -> Result<(), NameError> {
    check_container(s)
}

pub fn check_service(s: &str) -> Result<(), NameError> {
    first_alnum(s)?;
    chars_ok(s, "_-")
}

/// A Swarm service name, as swarmkit accepts it: letters and digits, `-` and `_` between
/// them (`docker stack deploy` names services `<stack>_<service>`), 63 characters at most.
pub fn check_swarm_service(s: &str) -> Result<(), NameError> {
    first_alnum(s)?;
    chars_ok(s, "_-")?;
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(NameError::End);
    }
    at_most(s, 63)
}

/// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Versions become tags.
pub fn check_tag(s: &str) -> Result<(), NameError> {
    match s.chars().next() {
        None => return Err(NameError::Empty),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        Some(c) => return Err(NameError::TagStart(c)),
    }
    chars_ok(s, "_.-")?;
    at_most(s, 128)
}

/// An image repository without tag or digest: `ghcr.io/acme/web`, `127.0.0.1:5000/demo`.
pub fn check_repository(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.contains('@') {
        return Err(NameError::RepositoryDigest);
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if last.contains(':') {
        return Err(NameError::RepositoryTag);
    }
    for (i, part) in s.split('/').enumerate() {
        if part.is_empty() {
            return Err(NameError::EmptyComponent);
        }
        let allowed = if i == 0 { "_.-:" } else { "_.-" };
        chars_ok(part, allowed)?;
        if i > 0 && part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(NameError::Uppercase(part.to_string()));
        }
    }
    Ok(())
}

pub fn is_env_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A host as the config names it: `[user@]host[:port]`, parsed by [`parse_host`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostAddr {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// `[user@]host[:port]`, with `[v6]:port` for IPv6. A host may also be an alias
/// from the user's ssh config. Nothing that ssh would read as an option.
pub fn parse_host(s: &str) -> Result<HostAddr, HostError> {
    let s = s.trim();
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => {
            first_alnum(u).and_then(|()| chars_ok(u, "_.-")).map_err(HostError::User)?;
            (Some(u.to_string()), r)
        }
        None => (None, s),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or(HostError::UnclosedBracket)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(HostError::AfterAddress(after.to_string())),
        };
        if h.is_empty() || !h.contains(':') {
            return Err(HostError::NotIpv6(h.to_string()));
        }
        chars_ok(h, ":.%").map_err(HostError::Address)?;
        return finish(user, h.to_string(), port);
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    first_alnum(&host).and_then(|()| chars_ok(&host, ".-_")).map_err(HostError::Host)?;
    finish(user, host, port)
}

fn finish(user: Option<String>, host: String, port: Option<&str>) -> Result<HostAddr, HostError> {
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| HostError::Port(p.to_string()))?),
    };
    Ok(HostAddr { user, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let ok = |s: &str, user: Option<&str>, host: &str, port: Option<u16>| {
            let h = parse_host(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!((h.user.as_deref(), h.host.as_str(), h.port), (user, host, port), "{s}");
        };
        ok("deployer@203.0.113.10:22", Some("deployer"), "203.0.113.10", Some(22));
        ok("203.0.113.10", None, "203.0.113.10", None);
        ok("web-prod", None, "web-prod", None);
        ok("root@[::1]:2222", Some("root"), "::1", Some(2222));
        ok("[fe80::1%eth0]", None, "fe80::1%eth0", None);
        for bad in ["", "-oProxyCommand=x", "a b", "host:0", "host:99999", "u;id@h", "h$(id)", "`id`", "[::1", "x@"] {
            assert!(parse_host(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// The words each refusal reads with, after "invalid <what> \"<name>\": ".
    #[test]
    fn refusals_read_as_they_did() {
        let name = |r: Result<(), NameError>| r.unwrap_err().to_string();
        let host = |s: &str| parse_host(s).unwrap_err().to_string();
        let cases = [
            (name(check_container("")), "it is empty"),
            (name(check_container("-web")), "it must start with a letter or digit, not '-'"),
            (name(check_container("web 1")), "' ' is not allowed (use letters, digits and _.-)"),
            (name(check_container(&"x".repeat(129))), "it is longer than 128 characters"),
            (name(check_service("web.1")), "'.' is not allowed (use letters, digits and _-)"),
            (name(check_swarm_service("shop_")), "it must end with a letter or digit"),
            (name(check_swarm_service(&"x".repeat(64))), "it is longer than 63 characters"),
            (name(check_tag(".v1")), "it must start with a letter, digit or _, not '.'"),
            (name(check_repository("web@sha256:abc")), "give the repository without a digest; the release decides what runs"),
            (name(check_repository("ghcr.io/acme/web:v1")), "give the repository without a tag (like ghcr.io/acme/web); the tag comes from the release"),
            (name(check_repository("ghcr.io//web")), "it has an empty path component"),
            (name(check_repository("ghcr.io/Acme/web")), "repository paths must be lowercase"),
            (host("u;id@h"), "user: ';' is not allowed (use letters, digits and _.-)"),
            (host("x@"), "host: it is empty"),
            (host("[::1"), "missing ] after an IPv6 address"),
            (host("[::1]x"), "unexpected \"x\" after the address"),
            (host("[abc]"), "\"abc\" is not an IPv6 address"),
            (host("[::1;]"), "address: ';' is not allowed (use letters, digits and :.%)"),
            (host("h$(id)"), "host: '$' is not allowed (use letters, digits and .-_)"),
            (host("host:0"), "port \"0\" is not a number from 1 to 65535"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn container_names() {
        for good in ["web-1", "shop_web.2", "A1"] {
            assert!(check_container(good).is_ok(), "{good}");
        }
        for bad in ["", "-web", ".web", "web 1", "web;rm", "web$(x)", "web\n", "we'b", "web`x`", "w/eb"] {
            assert!(check_container(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        for good in ["v1.4.2", "1.4.2", "v2.0.0-rc.1", "latest", "_x"] {
            assert!(check_tag(good).is_ok(), "{good}");
        }
        for bad in ["", "-v1", ".v1", "v1 ", "v1;id", "v1/2", "v1$(x)", &"x".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repositories() {
        for good in ["ghcr.io/acme/web", "127.0.0.1:5000/capstan-demo", "web", "localhost:5000/a/b_c"] {
            assert!(check_repository(good).is_ok(), "{good}");
        }
        for bad in ["", "ghcr.io/acme/web:v1", "web@sha256:abc", "ghcr.io//web", "ghcr.io/Acme/web", "a b"] {
            assert!(check_repository(bad).is_err(), "{bad:?}");
        }
    }
}
