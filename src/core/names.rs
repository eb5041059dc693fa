//! What a name may look like: apps, services, containers, image references,
//! versions, hosts. Pure. Anything that reaches a host command or a Docker API
//! path passes through here first, so a name can never carry shell syntax.

use std::fmt;

fn chars_ok(s: &str, extra: &str) -> Result<(), String> {
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || extra.contains(*c))) {
        return Err(format!("{c:?} is not allowed (use letters, digits and {extra})"));
    }
    Ok(())
}

fn first_alnum(s: &str) -> Result<(), String> {
    match s.chars().next() {
        None => Err("it is empty".into()),
        Some(c) if c.is_ascii_alphanumeric() => Ok(()),
        Some(c) => Err(format!("it must start with a letter or digit, not {c:?}")),
    }
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_container(s: &str) -> Result<(), String> {
    first_alnum(s)?;
    chars_ok(s, "_.-")?;
    if s.len() > 128 {
        return Err("it is longer than 128 characters".into());
    }
    Ok(())
}

pub fn check_app(s: &str) -> Result<(), String> {
    check_container(s)
}

pub fn check_service(s: &str) -> Result<(), String> {
    first_alnum(s)?;
    chars_ok(s, "_-")
}

/// A Swarm service name, as swarmkit accepts it: letters and digits, `-` and `_` between
/// them (`docker stack deploy` names services `<stack>_<service>`), 63 characters at most.
pub fn check_swarm_service(s: &str) -> Result<(), String> {
    first_alnum(s)?;
    chars_ok(s, "_-")?;
    if !s.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err("it must end with a letter or digit".into());
    }
    if s.len() > 63 {
        return Err("it is longer than 63 characters".into());
    }
    Ok(())
}

/// A Docker tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. Versions become tags.
pub fn check_tag(s: &str) -> Result<(), String> {
    match s.chars().next() {
        None => return Err("it is empty".into()),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        Some(c) => return Err(format!("it must start with a letter, digit or _, not {c:?}")),
    }
    chars_ok(s, "_.-")?;
    if s.len() > 128 {
        return Err("it is longer than 128 characters".into());
    }
    Ok(())
}

/// An image repository without tag or digest: `ghcr.io/acme/web`, `127.0.0.1:5000/demo`.
pub fn check_repository(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.contains('@') {
        return Err("give the repository without a digest; the release decides what runs".into());
    }
    let last = s.rsplit('/').next().unwrap_or(s);
    if last.contains(':') {
        return Err("give the repository without a tag (like ghcr.io/acme/web); the tag comes from the release".into());
    }
    for (i, part) in s.split('/').enumerate() {
        if part.is_empty() {
            return Err("it has an empty path component".into());
        }
        let extra = if i == 0 { "_.-:" } else { "_.-" };
        chars_ok(part, extra)?;
        if i > 0 && part.chars().any(|c| c.is_ascii_uppercase()) {
            return Err("repository paths must be lowercase".into());
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
pub fn parse_host(s: &str) -> Result<HostAddr, String> {
    let s = s.trim();
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => {
            first_alnum(u).map_err(|e| format!("user: {e}"))?;
            chars_ok(u, "_.-").map_err(|e| format!("user: {e}"))?;
            (Some(u.to_string()), r)
        }
        None => (None, s),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("missing ] after an IPv6 address")?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after the address")),
        };
        if h.is_empty() || !h.contains(':') {
            return Err(format!("{h:?} is not an IPv6 address"));
        }
        chars_ok(h, ":.%").map_err(|e| format!("address: {e}"))?;
        return finish(user, h.to_string(), port);
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    first_alnum(&host).map_err(|e| format!("host: {e}"))?;
    chars_ok(&host, ".-_").map_err(|e| format!("host: {e}"))?;
    finish(user, host, port)
}

fn finish(user: Option<String>, host: String, port: Option<&str>) -> Result<HostAddr, String> {
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?),
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
