//! Which `server` line of an nginx upstream is one instance, and its `down` flag
//! (pure: no I/O).
//!
//! nginx may name an instance in many ways: `127.0.0.1:8081` (its published
//! port), `service-a-1:3001` (its container name, Compose service name or a
//! network alias, on Compose's network), `172.18.0.3:3001` (its address). An
//! [`Identity`] holds every such name of one instance; [`locate`] finds the one
//! line that is it, and refuses when a line is no instance's, two lines are the
//! same one's, or one line reaches several (a Compose service name resolves to
//! all of its containers: marking it `down` would drain them all).
//! [`set_down`] edits several lines in one pass, so that one write and one
//! reload undrain one instance and drain the next; [`down_in_effective`] reads
//! `nginx -T` to prove that the nginx that runs sees the flag.
//!
//! The reader follows nginx's own tokenizer: `#` starts a comment only where a
//! word could start and not inside quotes, statements end at `;`, several may
//! share a line (`upstream a { server x:1; server y:1; }`). Only simple
//! `server ADDR [params];` statements inside an `upstream NAME { … }` block
//! count, or at the top level of a file, which is a fragment included in an
//! upstream block (`upstream a { include a.servers; }`): nowhere else may a
//! `server …;` statement stand. `server { … }` blocks and `server_name` never do.

use std::net::IpAddr;

/// The names by which nginx could reach one instance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// For messages: the container name, like `payment-service-a-1-1`.
    pub instance: String,
    /// Host names nginx may use: the container name, the Compose service
    /// name, network aliases (compared case-insensitively).
    pub hosts: Vec<String>,
    /// Its addresses on its networks (IPv4 or IPv6, compared as addresses).
    pub ips: Vec<String>,
    /// The container ports a line by name or address must use; empty: any port.
    pub ports: Vec<u16>,
    /// The host ports it publishes: a line whose host is `localhost`,
    /// `host.docker.internal` or an IP literal that is no other instance's
    /// address, with one of these ports, is it (`127.0.0.1:8081`, `[::1]:8081`).
    pub published: Vec<u16>,
    /// The address the config gives (`drain.nginx.server`, like
    /// `service-a-1:3001`): when set, only a line with exactly this address is
    /// it (host case-insensitive, port equal, 80 when absent).
    pub explicit: Option<String>,
}

impl Identity {
    /// Whether `addr`, as nginx logs an upstream it tried (`$upstream_addr`: `172.18.0.3:8080`,
    /// `[::1]:8081`), is this instance: one of its addresses with its port (any port when
    /// none is known), or a loopback address with a port it publishes on the host.
    pub fn serves(&self, addr: &str) -> bool {
        let Ok(sock) = addr.trim().parse::<std::net::SocketAddr>() else {
            return false;
        };
        let ip = sock.ip();
        let mine = self.ips.iter().any(|a| a.parse::<IpAddr>().is_ok_and(|a| a == ip));
        (mine && (self.ports.is_empty() || self.ports.contains(&sock.port()))) || (ip.is_loopback() && self.published.contains(&sock.port()))
    }
}

/// One `server ADDR [params];` statement of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    /// The line the statement starts on, from 0: what [`set_down`] takes.
    pub index: usize,
    /// The same from 1, for messages.
    pub line: usize,
    /// The enclosing `upstream NAME {` block's name; "" at the top level of a fragment file.
    pub upstream: String,
    pub address: String,
    pub params: Vec<String>,
    pub down: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MatchError {
    #[error("{file}: no `server` line of an upstream is {instance}: tried {tried}; set drain.nginx.server to the address nginx uses for it")]
    NoLine { file: String, instance: String, tried: String },
    #[error("{file}: lines {} all are {instance}; capstan cannot tell which one to mark down: set drain.nginx.server to its exact address", list(.lines))]
    Ambiguous { file: String, instance: String, lines: Vec<usize> },
    #[error(
        "{file}: line {line} reaches {}: marking it down would drain all of them; give each instance its own `server` line (by container name or address, not a Compose service name)",
        list(.instances)
    )]
    Shared { file: String, line: usize, instances: Vec<String> },
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Every `server ADDR [params];` statement of an upstream in `conf`, in order.
pub fn server_lines(conf: &str) -> Vec<ServerLine> {
    statements(conf)
        .into_iter()
        .map(|s| {
            let params: Vec<String> = s.words[2..].iter().map(|w| w.text.clone()).collect();
            ServerLine {
                index: s.index,
                line: s.index + 1,
                upstream: s.upstream,
                address: s.words[1].text.clone(),
                down: params.iter().any(|p| p == "down"),
                params,
            }
        })
        .collect()
}

/// For each identity, the one server line that is it. Pass every instance of
/// the service, not only the ones to edit: a line that reaches two of them
/// (`server service-a:3001;`) is refused only so, and an address literal is
/// taken for a published port only when it is no other instance's address.
pub fn locate(file: &str, conf: &str, ids: &[Identity]) -> Result<Vec<ServerLine>, MatchError> {
    let lines = server_lines(conf);
    let hits: Vec<Vec<usize>> = lines.iter().map(|l| (0..ids.len()).filter(|&i| is(ids, i, &l.address)).collect()).collect();
    if let Some((l, h)) = lines.iter().zip(&hits).find(|(_, h)| h.len() > 1) {
        return Err(MatchError::Shared { file: file.into(), line: l.line, instances: h.iter().map(|&i| ids[i].instance.clone()).collect() });
    }
    let mut found = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<&ServerLine> = lines.iter().zip(&hits).filter(|(_, h)| h.contains(&i)).map(|(l, _)| l).collect();
        match mine.as_slice() {
            [one] => found.push((*one).clone()),
            [] => return Err(MatchError::NoLine { file: file.into(), instance: id.instance.clone(), tried: tried(id) }),
            many => return Err(MatchError::Ambiguous { file: file.into(), instance: id.instance.clone(), lines: many.iter().map(|l| l.line).collect() }),
        }
    }
    Ok(found)
}

/// Sets (`true`) or clears the `down` parameter of the statements named by
/// (line index, address), keeping everything else byte for byte: indentation,
/// other parameters, comments, other statements on the line, line endings.
/// Idempotent: never two `down`s. An edit that names no statement changes
/// nothing; one that names two (alike on one line, which [`locate`] refuses) changes both.
pub fn set_down(conf: &str, edits: &[(usize, &str, bool)]) -> String {
    let mut splices: Vec<(usize, usize, &str)> = Vec::new();
    for s in statements(conf) {
        let Some(&(_, _, down)) = edits.iter().rev().find(|(index, address, _)| *index == s.index && *address == s.words[1].text) else {
            continue;
        };
        let downs: Vec<usize> = (2..s.words.len()).filter(|&i| s.words[i].text == "down").collect();
        if down && downs.is_empty() {
            splices.push((s.words[s.words.len() - 1].end, s.words[s.words.len() - 1].end, " down"));
        }
        for &i in downs.iter().skip(usize::from(down)) {
            let (prev, w) = (&s.words[i - 1], &s.words[i]);
            let gap = &conf[prev.end..w.start];
            let from = if gap.trim().is_empty() { prev.end } else { w.start - (gap.len() - gap.trim_end_matches([' ', '\t']).len()) };
            splices.push((from, w.end, ""));
        }
    }
    splices.sort_by_key(|&(from, _, _)| std::cmp::Reverse(from));
    let mut out = conf.to_string();
    for (from, to, with) in splices {
        out.replace_range(from..to, with);
    }
    out
}

/// In `nginx -T` output (every loaded file, each after a
/// `# configuration file PATH:` line), whether each identity's server lines
/// are down: `Some(true)` when every line for it is (nginx sends it no new
/// request), `Some(false)` when one is not, `None` when nginx has no line for
/// it. With `file`, only that file counts (the path as nginx names it).
pub fn down_in_effective(nginx_t: &str, file: Option<&str>, ids: &[Identity]) -> Vec<Option<bool>> {
    let mut lines = Vec::new();
    let mut section: Option<(&str, usize)> = None;
    let mut flush = |section: Option<(&str, usize)>, end: usize| {
        if let Some((path, start)) = section {
            if file.is_none_or(|f| f == path) {
                lines.extend(server_lines(&nginx_t[start..end]));
            }
        }
    };
    let mut at = 0;
    for l in nginx_t.split_inclusive('\n') {
        let header = l.trim_end().strip_prefix("# configuration file ").and_then(|p| p.strip_suffix(':'));
        if let Some(path) = header {
            flush(section, at);
            section = Some((path, at + l.len()));
        }
        at += l.len();
    }
    flush(section, nginx_t.len());
    (0..ids.len())
        .map(|i| {
            let mine: Vec<bool> = lines.iter().filter(|l| is(ids, i, &l.address)).map(|l| l.down).collect();
            (!mine.is_empty()).then(|| mine.iter().all(|d| *d))
        })
        .collect()
}

/// Whether the server address `address` is `ids[i]`.
fn is(ids: &[Identity], i: usize, address: &str) -> bool {
    let id = &ids[i];
    let Some((host, port)) = host_port(address) else {
        return false;
    };
    if let Some(e) = &id.explicit {
        return host_port(e).is_some_and(|(h, p)| same_host(h, host) && p == port);
    }
    let named = id.hosts.iter().chain(&id.ips).any(|h| same_host(h, host));
    if named && (id.ports.is_empty() || id.ports.contains(&port)) {
        return true;
    }
    let local = host.parse::<IpAddr>().is_ok() || ["localhost", "host.docker.internal"].iter().any(|n| n.eq_ignore_ascii_case(host));
    let mut others = ids.iter().enumerate().filter(|&(j, _)| j != i).flat_map(|(_, o)| &o.ips);
    id.published.contains(&port) && local && !others.any(|ip| same_host(ip, host))
}

/// What [`is`] looks for, for a message.
fn tried(id: &Identity) -> String {
    if let Some(e) = &id.explicit {
        return format!("exactly {e} (drain.nginx.server)");
    }
    let mut parts = Vec::new();
    let names: Vec<&String> = id.hosts.iter().chain(&id.ips).collect();
    if !names.is_empty() {
        let on = if id.ports.is_empty() { "on any port".to_string() } else { format!("on port {}", list(&id.ports)) };
        parts.push(format!("{} {on}", list(&names)));
    }
    if !id.published.is_empty() {
        parts.push(format!("localhost or an address on published port {}", list(&id.published)));
    }
    if parts.is_empty() {
        return "no name, address or port (nothing to look for)".into();
    }
    parts.join("; ")
}

/// `host[:port]` or `[v6][:port]`, the port 80 when absent; `None` for a
/// `unix:` socket or an address that is not one.
fn host_port(address: &str) -> Option<(&str, u16)> {
    if address.starts_with("unix:") {
        return None;
    }
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
        }
        None => match address.split_once(':') {
            Some((_, p)) if p.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (address, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 80,
    };
    (!host.is_empty()).then_some((host, port))
}

fn same_host(a: &str, b: &str) -> bool {
    let strip = |h: &str| h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h).to_string();
    let (a, b) = (strip(a), strip(b));
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a.eq_ignore_ascii_case(&b),
    }
}

/// A word of the config: its text without quotes, and its bytes in the text, quotes included.
struct Word {
    text: String,
    start: usize,
    end: usize,
}

/// A `server ADDR [params];` statement of an upstream (at least two words).
struct Statement {
    index: usize,
    upstream: String,
    words: Vec<Word>,
}

/// The server statements of `conf`, read as nginx reads a config file.
fn statements(conf: &str) -> Vec<Statement> {
    let b = conf.as_bytes();
    let mut out = Vec::new();
    // The open blocks: Some(name) for `upstream name {`, None for any other.
    let mut blocks: Vec<Option<String>> = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut first_line = 0;
    let (mut i, mut line) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b';' => {
                // Top level: a fragment included in an upstream block.
                let upstream = match blocks.last() {
                    None => Some(String::new()),
                    Some(u) => u.clone(),
                };
                if let Some(upstream) = upstream.filter(|_| words.len() >= 2 && words[0].text == "server") {
                    out.push(Statement { index: first_line, upstream, words: std::mem::take(&mut words) });
                }
                words.clear();
                i += 1;
            }
            b'{' => {
                blocks.push((words.first().is_some_and(|w| w.text == "upstream")).then(|| words.get(1).map(|w| w.text.clone()).unwrap_or_default()));
                words.clear();
                i += 1;
            }
            b'}' => {
                blocks.pop();
                words.clear();
                i += 1;
            }
            q @ (b'"' | b'\'') => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != q {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(b.len());
                if words.is_empty() {
                    first_line = line;
                }
                line += conf[start..end].matches('\n').count();
                words.push(Word { text: conf[start + 1..i.min(b.len())].to_string(), start, end });
                i = end;
            }
            _ => {
                let start = i;
                if words.is_empty() {
                    first_line = line;
                }
                while i < b.len() && !matches!(b[i], b' ' | b'\t' | b'\r' | b'\n' | b';') && !(b[i] == b'{' && b[i - 1] != b'$') {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(b.len());
                line += conf[start..end].matches('\n').count();
                words.push(Word { text: conf[start..end].to_string(), start, end });
                i = end;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    /// An instance of a Compose project: its container name, the Compose
    /// service name, its address, its container port.
    fn compose(instance: &str, service: &str, ip: &str, port: u16) -> Identity {
        Identity { instance: instance.into(), hosts: vec![instance.into(), service.into()], ips: vec![ip.into()], ports: vec![port], ..Default::default() }
    }

    /// An instance nginx reaches at its published port on the host.
    fn published(instance: &str, port: u16) -> Identity {
        Identity { instance: instance.into(), published: vec![port], ..Default::default() }
    }

    fn render(l: &ServerLine) -> String {
        let mut s = format!("{} {} {}", l.line, if l.upstream.is_empty() { "-" } else { &l.upstream }, l.address);
        for p in &l.params {
            s.push(' ');
            s.push_str(p);
        }
        s
    }

    #[test]
    fn server_lines_of_upstreams_only() {
        #[track_caller]
        fn check(conf: &str, expect: &str) {
            let got: Vec<String> = server_lines(conf).iter().map(render).collect();
            assert_eq!(got.join("\n"), expect.trim(), "in:\n{conf}");
            for l in server_lines(conf) {
                assert_eq!(l.down, l.params.iter().any(|p| p == "down"));
                assert_eq!(l.index + 1, l.line);
            }
        }
        let cases: &[(&str, &str)] = &[
            // Parameters, a trailing comment, a socket (listed, never matched).
            (
                "upstream shop {\n    server 127.0.0.1:8081;\n    server 127.0.0.1:8082 max_fails=3 down; # web-2\n    server unix:/run/app.sock;\n}\n",
                "2 shop 127.0.0.1:8081\n3 shop 127.0.0.1:8082 max_fails=3 down\n4 shop unix:/run/app.sock",
            ),
            // The one-line form.
            ("upstream service_a { server service-a-1:3001; server service-a-2:3001; }", "1 service_a service-a-1:3001\n1 service_a service-a-2:3001"),
            (
                "upstream a{server a-1:3001 weight=2;}upstream b {server b-1:3002 resolve backup;}",
                "1 a a-1:3001 weight=2\n1 b b-1:3002 resolve backup",
            ),
            // Comments, also mid-line; `#` inside quotes or inside a word is no comment.
            ("upstream a {\n  # server service-a-1:3001;\n  server service-a-2:3001; # server service-a-1:3001;\n}", "3 a service-a-2:3001"),
            ("upstream a { server 'x#1:80' weight=2; } # server y:80;", "1 a x#1:80 weight=2"),
            ("upstream a#b { server x:80; }", "1 a#b x:80"),
            // A server block, server_name and listen are not upstream servers.
            ("http {\n  upstream api { server api-1:3001; }\n  server {\n    listen 80;\n    server_name service-a-1;\n    location / { proxy_pass http://api; }\n  }\n}\n", "2 api api-1:3001"),
            // Nested in stream {}, several blocks, a statement over two lines.
            ("stream {\n  upstream db {\n    server 10.0.0.1:5432\n      max_fails=3;\n  }\n}\nhttp { upstream web { server web-1; } }\n", "3 db 10.0.0.1:5432 max_fails=3\n7 web web-1"),
            // A fragment included in an upstream block: its top-level lines count.
            ("# servers of upstream shop\nserver 127.0.0.1:8081;\nserver 127.0.0.1:8082 backup;\n", "2 - 127.0.0.1:8081\n3 - 127.0.0.1:8082 backup"),
            // A `server x;` anywhere else is not nginx's: not counted.
            ("http { server x:80; }", ""),
            // CRLF line endings.
            ("upstream a {\r\n  server a-1:3001;\r\n  server a-2:3001 down;\r\n}\r\n", "2 a a-1:3001\n3 a a-2:3001 down"),
            // IPv6, variables with braces.
            ("upstream a { server [fd00::3]:3001; server ${host}:80; }", "1 a [fd00::3]:3001\n1 a ${host}:80"),
        ];
        for (conf, expect) in cases {
            check(conf, expect);
        }
    }

    const SVC_A: &str =
        "upstream service_a {\n    server service-a-1:3001;\n    server service-a-2:3001 weight=2;\n}\nupstream service_b {\n    server service-b-1:3002;\n}\n";

    #[test]
    fn locate_finds_each_instance_by_its_names() {
        /// `expect`: one `instance line` per identity, or the error's message.
        #[track_caller]
        fn check(conf: &str, ids: &[Identity], expect: &str) {
            let got = match locate("up.conf", conf, ids) {
                Ok(lines) => ids.iter().zip(&lines).map(|(id, l)| format!("{} {}", id.instance, l.line)).collect::<Vec<_>>().join(", "),
                Err(e) => e.to_string(),
            };
            assert_eq!(got, expect, "in:\n{conf}");
        }
        let a1 = compose("shop-service-a-1", "service-a", "172.18.0.3", 3001);
        let a2 = compose("shop-service-a-2", "service-a", "172.18.0.4", 3001);
        let aliased = |id: &Identity, alias: &str| Identity { hosts: [id.hosts.clone(), vec![alias.into()]].concat(), ..id.clone() };
        let (x1, x2) = (aliased(&a1, "service-a-1"), aliased(&a2, "service-a-2"));
        let cases: Vec<(&str, Vec<Identity>, &str)> = vec![
            // Network aliases, in two lines.
            (SVC_A, vec![x1.clone(), x2.clone()], "shop-service-a-1 2, shop-service-a-2 3"),
            // Case-insensitive names; the container name itself.
            ("upstream a { server SERVICE-A-1:3001; server shop-service-a-2:3001; }", vec![x1.clone(), x2.clone()], "shop-service-a-1 1, shop-service-a-2 1"),
            // Addresses, IPv6 in any spelling.
            ("upstream a {\n server 172.18.0.3:3001;\n server 172.18.0.4:3001;\n}", vec![a1.clone(), a2.clone()], "shop-service-a-1 2, shop-service-a-2 3"),
            (
                "upstream a { server [fd00:0:0::3]:3001; }",
                vec![Identity { ips: vec!["fd00::3".into()], ..a1.clone() }],
                "shop-service-a-1 1",
            ),
            // No port is port 80; empty ports is any port.
            ("upstream a { server service-a-1; }", vec![Identity { ports: vec![80], ..x1.clone() }], "shop-service-a-1 1"),
            ("upstream a { server service-a-1:9000; }", vec![Identity { ports: vec![], ..x1.clone() }], "shop-service-a-1 1"),
            (
                "upstream a { server service-a-1; }",
                vec![x1.clone()],
                "up.conf: no `server` line of an upstream is shop-service-a-1: tried shop-service-a-1, service-a, service-a-1, 172.18.0.3 on port 3001; set drain.nginx.server to the address nginx uses for it",
            ),
            // Published ports: loopback, localhost, any address, IPv6; today's behaviour.
            ("upstream a {\n server 127.0.0.1:8081;\n server 127.0.0.1:8082;\n}", vec![published("web-1", 8081), published("web-2", 8082)], "web-1 2, web-2 3"),
            (
                "upstream a { server localhost:8082; server [::1]:8081; server 0.0.0.0:8083; server 10.0.0.5:8084; server host.docker.internal:8085; }",
                vec![published("w1", 8081), published("w2", 8082), published("w3", 8083), published("w4", 8084), published("w5", 8085)],
                "w1 1, w2 1, w3 1, w4 1, w5 1",
            ),
            // ...but not by a name, nor by another instance's address with that port.
            (
                "upstream a { server web-9:8081; server 172.18.0.4:8081; }",
                vec![Identity { published: vec![8081], ..a1.clone() }, a2.clone()],
                "up.conf: no `server` line of an upstream is shop-service-a-1: tried shop-service-a-1, service-a, 172.18.0.3 on port 3001; localhost or an address on published port 8081; set drain.nginx.server to the address nginx uses for it",
            ),
            // Another service's instance on the same port is not this one.
            (
                "upstream b { server service-b-1:3001; }",
                vec![x1.clone()],
                "up.conf: no `server` line of an upstream is shop-service-a-1: tried shop-service-a-1, service-a, service-a-1, 172.18.0.3 on port 3001; set drain.nginx.server to the address nginx uses for it",
            ),
            // Only the upstream's line counts, not a comment, server_name or a socket.
            (
                "# server service-a-1:3001;\nserver {\n listen 3001;\n server_name service-a-1;\n}\nupstream a { server unix:/run/service-a-1.sock; server service-a-1:3001; }",
                vec![x1.clone()],
                "shop-service-a-1 6",
            ),
            // drain.nginx.server: only that address, exactly (host case aside).
            (
                "upstream a { server 127.0.0.1:8081; server backend-one:3001; server BACKEND-TWO:3001; }",
                vec![
                    Identity { explicit: Some("backend-two:3001".into()), published: vec![8081], ..a1.clone() },
                    Identity { explicit: Some("backend-one:3001".into()), ..a2.clone() },
                ],
                "shop-service-a-1 1, shop-service-a-2 1",
            ),
            (
                "upstream a { server service-a-1:3002; server 127.0.0.1:8081; }",
                vec![Identity { explicit: Some("service-a-1:3001".into()), published: vec![8081], ..x1.clone() }],
                "up.conf: no `server` line of an upstream is shop-service-a-1: tried exactly service-a-1:3001 (drain.nginx.server); set drain.nginx.server to the address nginx uses for it",
            ),
            ("upstream a { server backend; }", vec![Identity { explicit: Some("backend:80".into()), ..a1.clone() }], "shop-service-a-1 1"),
            // Two lines for one instance.
            (
                "upstream a {\n server service-a-1:3001;\n}\nupstream a_ws {\n server 172.18.0.3:3001;\n}",
                vec![x1.clone()],
                "up.conf: lines 2, 5 all are shop-service-a-1; capstan cannot tell which one to mark down: set drain.nginx.server to its exact address",
            ),
            // One line for two instances: the Compose service name.
            (
                "upstream a {\n server service-a-1:3001;\n server service-a:3001;\n}",
                vec![x1.clone(), x2.clone()],
                "up.conf: line 3 reaches shop-service-a-1, shop-service-a-2: marking it down would drain all of them; give each instance its own `server` line (by container name or address, not a Compose service name)",
            ),
        ];
        for (conf, ids, expect) in &cases {
            check(conf, ids, expect);
        }
    }

    #[test]
    fn set_down_edits_only_the_flag() {
        /// `from` → `to` after the edits; then: the same edits again change
        /// nothing, and the opposite edits give `from` back byte for byte.
        #[track_caller]
        fn check(from: &str, edits: &[Edit], to: &str) {
            let got = set_down(from, edits);
            assert_eq!(got, to, "edits {edits:?}");
            assert_eq!(set_down(&got, edits), got, "idempotent: {edits:?}");
            let back: Vec<Edit> = edits.iter().map(|&(i, a, d)| (i, a, !d)).collect();
            assert_eq!(set_down(&got, &back), from, "round trip: {edits:?}");
        }
        type Edit<'a> = (usize, &'a str, bool);
        let cases: &[(&str, &[Edit], &str)] = &[
            ("upstream a {\n    server 127.0.0.1:8081;\n}\n", &[(1, "127.0.0.1:8081", true)], "upstream a {\n    server 127.0.0.1:8081 down;\n}\n"),
            // Parameters and comments stay, whitespace too.
            (
                "upstream a {\n\tserver  a-1:3001   weight=2 max_fails=3 ; # a-1\n\tserver a-2:3001 resolve backup;#a-2\n}\n",
                &[(1, "a-1:3001", true), (2, "a-2:3001", true)],
                "upstream a {\n\tserver  a-1:3001   weight=2 max_fails=3 down ; # a-1\n\tserver a-2:3001 resolve backup down;#a-2\n}\n",
            ),
            // One line, several statements: only the named one.
            (
                "upstream service_a { server service-a-1:3001; server service-a-2:3001; }",
                &[(0, "service-a-2:3001", true)],
                "upstream service_a { server service-a-1:3001; server service-a-2:3001 down; }",
            ),
            // Undrain one and drain the next in one edit.
            (
                "upstream a {\n  server a-1:3001 down;\n  server a-2:3001;\n}\n",
                &[(1, "a-1:3001", false), (2, "a-2:3001", true)],
                "upstream a {\n  server a-1:3001;\n  server a-2:3001 down;\n}\n",
            ),
            // CRLF stays CRLF.
            (
                "upstream a {\r\n  server a-1:3001; # one\r\n  server a-2:3001;\r\n}\r\n",
                &[(1, "a-1:3001", true)],
                "upstream a {\r\n  server a-1:3001 down; # one\r\n  server a-2:3001;\r\n}\r\n",
            ),
            // A wrong index or address, a comment, a server block: nothing changes.
            (
                "upstream a { server x:1; }\n# server x:1;\nserver { server_name x:1; }\n",
                &[(0, "y:1", true), (1, "x:1", true), (2, "x:1", true)],
                "upstream a { server x:1; }\n# server x:1;\nserver { server_name x:1; }\n",
            ),
        ];
        for (from, edits, to) in cases {
            check(from, edits, to);
        }
        // Never two flags: a second drain, or a line that had two already.
        assert_eq!(set_down("server x:1 down;", &[(0, "x:1", true)]), "server x:1 down;");
        assert_eq!(set_down("server x:1 down down;", &[(0, "x:1", true)]), "server x:1 down;");
        assert_eq!(set_down("server x:1 down down;", &[(0, "x:1", false)]), "server x:1;");
        // A `down` written elsewhere than capstan writes it: in the middle, on its own line, after a comment.
        assert_eq!(set_down("server x:1 down weight=2;", &[(0, "x:1", false)]), "server x:1 weight=2;");
        assert_eq!(set_down("server x:1\n    down;\n", &[(0, "x:1", false)]), "server x:1;\n");
        assert_eq!(set_down("server x:1 # why\n    down;\n", &[(0, "x:1", false)]), "server x:1 # why\n;\n");
    }

    /// From the file to the flag: find, edit, read again.
    #[test]
    fn locate_then_set_down_marks_that_instance() {
        let ids = [compose("a-1", "a", "172.18.0.3", 3001), compose("a-2", "a", "172.18.0.4", 3001)];
        let conf = "upstream service_a { server a-1:3001; server a-2:3001 max_fails=3; }\n";
        let lines = locate("f", conf, &ids).unwrap();
        let edited = set_down(conf, &[(lines[1].index, &lines[1].address, true)]);
        let again = locate("f", &edited, &ids).unwrap();
        assert_eq!((again[0].down, again[1].down), (false, true));
        assert_eq!(again[1].params, ["max_fails=3", "down"]);
    }

    /// What `nginx -T` prints: each loaded file after its header, nginx's own
    /// messages before.
    const DUMP: &str = "\
nginx: the configuration file /etc/nginx/nginx.conf syntax is ok
nginx: configuration file /etc/nginx/nginx.conf test is successful
# configuration file /etc/nginx/nginx.conf:
user  nginx;
worker_processes  auto;

events {
    worker_connections  1024;
}

http {
    include       /etc/nginx/mime.types;
    # server service-a-1:3001 down;
    upstream other_app { server 127.0.0.1:9090 down; }
    include /etc/nginx/conf.d/*.conf;
}

# configuration file /etc/nginx/conf.d/default.conf:
upstream service_a {
    server service-a-1:3001 down;
    server service-a-2:3001 max_fails=3;
}

server {
    listen 80;
    server_name service-a-1;
    location / {
        proxy_pass http://service_a;
    }
}

";

    #[test]
    fn down_in_effective_reads_nginx_t() {
        #[track_caller]
        fn check(dump: &str, file: Option<&str>, ids: &[Identity], expect: &[Option<bool>]) {
            assert_eq!(down_in_effective(dump, file, ids), expect, "file {file:?}");
        }
        let a1 = compose("a-1", "service-a", "172.18.0.3", 3001);
        let a2 = compose("a-2", "service-a", "172.18.0.4", 3001);
        let alias = |id: &Identity, n: &str| Identity { hosts: vec![n.into()], ..id.clone() };
        let (x1, x2) = (alias(&a1, "service-a-1"), alias(&a2, "service-a-2"));
        let conf_d = Some("/etc/nginx/conf.d/default.conf");
        type Case<'a> = (&'a str, Option<&'a str>, Vec<Identity>, Vec<Option<bool>>);
        let cases: Vec<Case> = vec![
            (DUMP, None, vec![x1.clone(), x2.clone()], vec![Some(true), Some(false)]),
            (DUMP, conf_d, vec![x1.clone(), x2.clone()], vec![Some(true), Some(false)]),
            // The file capstan edited is not the one nginx loaded: no line.
            (DUMP, Some("/srv/nginx/upstream.conf"), vec![x1.clone()], vec![None]),
            // In the other file.
            (DUMP, None, vec![published("other", 9090)], vec![Some(true)]),
            (DUMP, conf_d, vec![published("other", 9090)], vec![None]),
            // Not behind this nginx at all; a commented line does not count.
            (DUMP, None, vec![compose("b-1", "service-b", "172.18.0.9", 3001)], vec![None]),
            // Not `nginx -T` output: no header, no file, nothing read.
            (SVC_A, None, vec![x1.clone()], vec![None]),
            // One line down, another up: nginx still sends it requests.
            (
                "# configuration file /a.conf:\nupstream a { server service-a-1:3001 down; }\n# configuration file /b.conf:\nupstream b { server 172.18.0.3:3001; }\n",
                None,
                vec![x1.clone()],
                vec![Some(false)],
            ),
            // CRLF, and a fragment file included in an upstream block.
            (
                "# configuration file /etc/nginx/nginx.conf:\r\nhttp { upstream a { include /etc/nginx/a.servers; } }\r\n\r\n# configuration file /etc/nginx/a.servers:\r\nserver service-a-2:3001 down;\r\n\r\n",
                Some("/etc/nginx/a.servers"),
                vec![x1.clone(), x2.clone()],
                vec![None, Some(true)],
            ),
        ];
        for (dump, file, ids, expect) in &cases {
            check(dump, *file, ids, expect);
        }
    }

    /// Config-like text: whole statements, blocks, comments, quotes, escapes and stray bytes.
    fn pieces() -> impl proptest::strategy::Strategy<Value = String> {
        let piece = proptest::sample::select(vec![
            "server a:1;",
            "server x:2 weight=2;",
            "server [::1]:3 down;",
            "server b max_fails=3\n  down ;",
            "server 'q;r' backup;",
            "server a:1 down down;",
            "upstream u {",
            "upstream v{",
            "server {",
            "http {",
            "}",
            ";",
            "{",
            " ",
            "\t",
            "\n",
            "\r\n",
            " # c\n",
            "#",
            "'",
            "\"",
            "\\",
            "$",
            "é",
            "down",
            " weight=2",
            "server",
            " a:1",
        ]);
        proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
    }

    proptest::proptest! {
        /// On any text: no panic, and every server line drained then undrained
        /// is the text it was, byte for byte, with exactly its flag set between.
        #[test]
        fn down_then_up_gives_the_text_back(conf in pieces()) {
            let lines = server_lines(&conf);
            // An edit names a statement by line and address: two alike on one line are edited together.
            for l in lines.iter().filter(|l| lines.iter().filter(|m| m.index == l.index && m.address == l.address).count() == 1) {
                let drained = set_down(&conf, &[(l.index, &l.address, true)]);
                proptest::prop_assert_eq!(set_down(&drained, &[(l.index, &l.address, true)]), drained.clone());
                let after = server_lines(&drained);
                let this: Vec<&ServerLine> = after.iter().filter(|m| m.index == l.index && m.address == l.address).collect();
                proptest::prop_assert!(this.iter().all(|m| m.params.iter().filter(|p| *p == "down").count() == 1), "{:?}", this);
                if !l.down {
                    proptest::prop_assert_eq!(set_down(&drained, &[(l.index, &l.address, false)]), conf.clone());
                }
            }
        }
    }

    #[test]
    fn addresses() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("service-a-1:3001", Some(("service-a-1", 3001))),
            ("service-a-1", Some(("service-a-1", 80))),
            ("[::1]:8081", Some(("::1", 8081))),
            ("[::1]", Some(("::1", 80))),
            ("unix:/run/app.sock", None),
            ("::1", None),
            ("x:port", None),
            ("x:70000", None),
            ("[::1]x", None),
            (":80", None),
        ];
        for (address, expect) in cases {
            assert_eq!(host_port(address), *expect, "{address}");
        }
    }
}

#[cfg(test)]
mod serves_tests {
    use super::Identity;

    #[test]
    fn an_upstream_address_is_an_instance() {
        let id = Identity { ips: vec!["172.18.0.3".into(), "fd00::3".into()], ports: vec![8080], published: vec![8081], ..Default::default() };
        let cases = [
            ("172.18.0.3:8080", true),
            ("172.18.0.3:9090", false),
            ("172.18.0.4:8080", false),
            ("[fd00::3]:8080", true),
            ("127.0.0.1:8081", true),
            ("[::1]:8081", true),
            ("127.0.0.1:8080", false),
            ("10.0.0.1:8081", false),
            ("unix:/run/app.sock", false),
            ("backend", false),
            ("-", false),
        ];
        for (addr, want) in cases {
            assert_eq!(id.serves(addr), want, "{addr}");
        }
        let any_port = Identity { ips: vec!["10.0.0.2".into()], ..Default::default() };
        assert!(any_port.serves("10.0.0.2:3000"));
    }
}
