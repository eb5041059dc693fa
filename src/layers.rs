//! The layers of `src/`, checked by a test: no import cycle between modules, and each
//! top-level module imports only from layers below its own (ARCHITECTURE.md draws them).
//!
//! Read from the code's own paths as a reader follows them: `crate::…` (with `use
//! crate::{…}` trees expanded) and `super::…`. A module may use its own children
//! (a folder's `mod.rs` assembles them); test blocks (`#[cfg(test)] mod … { … }`) may
//! reach anywhere and are skipped. Comments and string literals are skipped too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A module may import from its own top-level module and from any top-level
/// module of a lower rank; never from one of the same rank or above. A new top-level module
/// must be placed here.
const LAYERS: &[(&str, u32)] = &[
    // Pure: names, versions, image references, the config, the plan, the log's records.
    ("core", 0),
    // Leaves: the environment variables capstan reads, the TLS provider.
    ("env", 0),
    ("tls", 0),
    // The command line and the one error type every command returns.
    ("cli", 1),
    ("error", 1),
    // Events and what renders them: the printer, the report, the runner's log formats.
    ("output", 2),
    // The effects of one host behind narrow traits: engine, Swarm, shell, probe.
    ("host", 3),
    // The executor: one host's rollout, its checks and gates, cancellation.
    ("rollout", 4),
    // Beside each other, never importing each other: the commands, the local build, GitHub.
    ("commands", 5),
    ("build", 5),
    ("github", 5),
    // Tests over several layers.
    ("fuzz", 6),
    ("layers", 6),
];

/// Below them but out of reach: the build and the GitHub side sit beside the commands and
/// need no executor; they use the core, the output and the host layer only.
const NOT_FROM: &[(&str, &str)] = &[("build", "rollout"), ("github", "rollout")];

type Module = Vec<String>;

fn name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`, `src/main.rs` -> the crate root.
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "main" | "lib") {
        parts.push(stem.to_string());
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Whether `c[i]` begins a word, or follows the `b` of a byte string (`br"…"`).
fn starts_word(c: &[char], i: usize) -> bool {
    let ident = |k: usize| c[k].is_alphanumeric() || c[k] == '_';
    i == 0 || !ident(i - 1) || (c[i - 1] == 'b' && (i == 1 || !ident(i - 2)))
}

/// The code without comments, string and character literals (each replaced by a space).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            // r"…", r#"…"#, br"…"
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#')) && starts_word(&c, i) => {
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (0..hashes).all(|k| c.get(j + 1 + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push(' ');
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            // A character literal ('x', '\n', '\''), not a lifetime ('a).
            '\'' if c.get(i + 1) == Some(&'\\') || c.get(i + 2) == Some(&'\'') => {
                i += 1;
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(' ');
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// The code without its `#[cfg(test)] mod name { … }` blocks.
fn without_test_blocks(code: &str) -> String {
    let re = regex::Regex::new(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{").expect("regex");
    let mut out = String::new();
    let mut from = 0;
    while let Some(m) = re.find_at(code, from) {
        out.push_str(&code[from..m.start()]);
        let mut depth = 1;
        let bytes = code.as_bytes();
        let mut j = m.end();
        while j < bytes.len() && depth > 0 {
            match bytes[j] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            j += 1;
        }
        from = j;
    }
    out.push_str(&code[from..]);
    out
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e` (each as segments).
fn expand_tree(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    // Split at the first top-level `::{`.
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let close = tree.rfind('}').unwrap_or(tree.len());
        let mut p = prefix.to_vec();
        p.extend(head.split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from));
        let inner = &tree[open + 1..close];
        let mut depth = 0;
        let mut start = 0;
        for (k, ch) in inner.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_tree(&p, &inner[start..k], out);
                    start = k + 1;
                }
                _ => {}
            }
        }
        expand_tree(&p, &inner[start..], out);
    } else {
        let path = tree.split_whitespace().next().unwrap_or("");
        let mut p = prefix.to_vec();
        p.extend(path.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self" && *s != "*").map(String::from));
        out.push(p);
    }
}

/// Every path the module names, made absolute (segments from the crate root).
fn paths(me: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // `use crate::…;` and `use super::…;` trees.
    let uses = regex::Regex::new(r"\buse\s+((?:crate|super)(?:::super)*)::([^;]*);").expect("regex");
    // Every other `crate::a::b` and `super::a::b` path.
    let inline = regex::Regex::new(r"\b((?:crate|super)(?:::super)*)((?:::\w+)+)").expect("regex");
    let base = |root: &str| -> Vec<String> {
        if root == "crate" {
            return Vec::new();
        }
        // `super` from `a/b.rs` is `a`; from `a/mod.rs` (the module `a`) it is the crate root.
        let mut m: Vec<String> = me.to_vec();
        for _ in root.split("::") {
            m.pop();
        }
        m
    };
    for c in uses.captures_iter(code) {
        expand_tree(&base(&c[1]), &c[2], &mut out);
    }
    let rest = uses.replace_all(code, " ");
    for c in inline.captures_iter(&rest) {
        let mut p = base(&c[1]);
        p.extend(c[2].split("::").filter(|s| !s.is_empty()).map(String::from));
        out.push(p);
    }
    out
}

struct Graph {
    /// Module -> the modules it imports from, each with the first path that does.
    edges: BTreeMap<Module, BTreeMap<Module, String>>,
    files: BTreeMap<Module, PathBuf>,
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Module, PathBuf> = files.iter().map(|f| (module_of(src, f), f.clone())).collect();
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for (me, file) in &modules {
        let text = std::fs::read_to_string(file).expect("readable");
        let code = without_test_blocks(&code_only(&text));
        for p in paths(me, &code) {
            // The longest prefix that is a module.
            let Some(target) = (0..=p.len()).rev().map(|k| p[..k].to_vec()).find(|m| modules.contains_key(m)) else { continue };
            // Itself, or a child of its own: a parent assembles its children.
            if target.starts_with(me) {
                continue;
            }
            edges.entry(me.clone()).or_default().entry(target).or_insert_with(|| p.join("::"));
        }
    }
    Graph { edges, files: modules }
}

/// The cycles of the graph: its strongly connected components of more than one module.
fn cycles(g: &Graph) -> Vec<Vec<Module>> {
    // Kosaraju: finish order on the graph, then components on the reversed graph.
    let nodes: Vec<&Module> = g.files.keys().collect();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    fn visit<'a>(n: &'a Module, g: &'a Graph, seen: &mut BTreeSet<&'a Module>, order: &mut Vec<&'a Module>) {
        if !seen.insert(n) {
            return;
        }
        for t in g.edges.get(n).into_iter().flat_map(|e| e.keys()) {
            visit(t, g, seen, order);
        }
        order.push(n);
    }
    for n in &nodes {
        visit(n, g, &mut seen, &mut order);
    }
    let mut reversed: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (from, to) in &g.edges {
        for t in to.keys() {
            reversed.entry(t).or_default().push(from);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for n in order.into_iter().rev() {
        if assigned.contains(n) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![n];
        assigned.insert(n);
        while let Some(x) = stack.pop() {
            comp.push(x.clone());
            for y in reversed.get(x).into_iter().flatten() {
                if assigned.insert(*y) {
                    stack.push(y);
                }
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let g = graph(&src());
    let found = cycles(&g);
    let described: Vec<String> = found
        .iter()
        .map(|c| {
            let links: Vec<String> = c
                .iter()
                .flat_map(|m| {
                    let inside = |t: &Module| c.contains(t);
                    g.edges.get(m).into_iter().flatten().filter(move |(t, _)| inside(t)).map(move |(t, via)| format!("{} -> {} ({via})", name(m), name(t)))
                })
                .collect();
            format!("cycle of {}: {}\n    {}", c.len(), c.iter().map(|m| name(m)).collect::<Vec<_>>().join(", "), links.join("\n    "))
        })
        .collect();
    assert!(found.is_empty(), "{} import cycle(s):\n  {}", found.len(), described.join("\n  "));
}

#[test]
fn each_layer_imports_only_from_the_layers_below() {
    let src = src();
    let g = graph(&src);
    let rank = |top: &str| LAYERS.iter().find(|(n, _)| *n == top).map(|(_, r)| *r);
    let mut problems = Vec::new();
    for (m, file) in &g.files {
        let Some(top) = m.first() else { continue };
        if rank(top).is_none() {
            let file = file.strip_prefix(&src).unwrap_or(file);
            problems.push(format!("src/{}: the top-level module {top} has no layer in LAYERS (src/layers.rs)", file.display()));
        }
    }
    for (from, to) in &g.edges {
        // The crate root declares and wires everything.
        let Some(top) = from.first() else { continue };
        for (target, via) in to {
            let Some(their) = target.first() else {
                problems.push(format!("{} imports from the crate root ({via})", name(from)));
                continue;
            };
            if their == top {
                continue;
            }
            if let (Some(a), Some(b)) = (rank(top), rank(their)) {
                if b >= a {
                    problems.push(format!("{} (layer {a}) imports {} (layer {b}): {via}", name(from), name(target)));
                }
            }
            if NOT_FROM.contains(&(top.as_str(), their.as_str())) {
                problems.push(format!("{} imports {}, which {top} may not use: {via}", name(from), name(target)));
            }
        }
    }
    assert!(problems.is_empty(), "{} layer violation(s):\n  {}", problems.len(), problems.join("\n  "));
}

#[test]
fn the_reader_of_paths_reads_what_a_person_reads() {
    let me: Module = vec!["rollout".into(), "swarm".into()];
    let code = code_only(
        "use crate::{core::{config::Service, names}, host::Host};\nuse super::steps::Steps;\n// crate::commented::Out\nlet s = \"crate::in_a_string\";\nlet c = '\"'; crate::events::emit(x);\n#[cfg(test)]\nmod tests { use crate::commands::roll; }\n",
    );
    let got: Vec<String> = paths(&me, &without_test_blocks(&code)).iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["core::config::Service", "core::names", "host::Host", "rollout::steps::Steps", "events::emit"]);
    assert_eq!(module_of(Path::new("src"), Path::new("src/rollout/mod.rs")), vec!["rollout".to_string()]);
    assert_eq!(module_of(Path::new("src"), Path::new("src/main.rs")), Vec::<String>::new());
}
