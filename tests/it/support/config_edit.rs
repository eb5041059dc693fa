//! Configs changed by key, not by text: [`edit`] parses a `capstan.yml` (as
//! capstan does, with serde-saphyr), [`ConfigEdit::set`] and
//! [`ConfigEdit::remove`] change it at a dotted key path
//! (`services.web.health.timeout`, `hosts.0`), and [`ConfigEdit::text`] writes
//! it back as JSON, which YAML reads as it is (keys in their order, each on its
//! own line, so the loader's line numbers still point at a key).
//!
//! A path whose parent is not in the config panics, naming the path and the
//! keys that are there: an edit never silently does nothing when the config it
//! edits has changed, as `text.replace("timeout: 20s", …)` did.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A parsed config to change by key path; see the module's doc.
#[derive(Clone, Debug)]
pub struct ConfigEdit {
    root: Node,
}

/// Parse a config's YAML text for editing; panics if it is not YAML.
pub fn edit(yaml: &str) -> ConfigEdit {
    let root: Node = serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("config edit: the config does not parse ({e}):\n{yaml}"));
    ConfigEdit { root }
}

impl ConfigEdit {
    /// Set the value at `path` (a new key is added at the end of its parent
    /// map; an existing one keeps its place). `value` is any serializable
    /// value: a string, a number, or a structured `serde_json::json!` value.
    /// Panics, naming `path`, when its parent does not exist.
    #[track_caller]
    pub fn set(mut self, path: &str, value: impl Serialize) -> ConfigEdit {
        let value = serde_json::to_value(value).unwrap_or_else(|e| panic!("config edit: {path}: the value does not serialize: {e}"));
        let (parent, last) = self.parent(path);
        match parent {
            Node::Map(m) => {
                m.insert(last.to_string(), Node::from(value));
            }
            Node::Seq(items) => {
                let n = items.len();
                let slot = index(&last, n).and_then(|i| items.get_mut(i)).unwrap_or_else(|| panic!("config edit: {path}: no item {last} in a list of {n}"));
                *slot = Node::from(value);
            }
            other => panic!("config edit: {path}: the parent is {}, not a map or a list", other.kind()),
        }
        self
    }

    /// Remove the key at `path`; panics, naming `path`, when it is not there.
    #[track_caller]
    pub fn remove(mut self, path: &str) -> ConfigEdit {
        let (parent, last) = self.parent(path);
        match parent {
            Node::Map(m) => {
                if m.shift_remove(&last).is_none() {
                    panic!("config edit: {path}: no key {last:?} to remove (keys: {})", keys(m));
                }
            }
            Node::Seq(items) => {
                let i = index(&last, items.len()).filter(|i| *i < items.len());
                let i = i.unwrap_or_else(|| panic!("config edit: {path}: no item {last} in a list of {}", items.len()));
                items.remove(i);
            }
            other => panic!("config edit: {path}: the parent is {}, not a map or a list", other.kind()),
        }
        self
    }

    /// The value at `path`, if there is one.
    pub fn get(&self, path: &str) -> Option<serde_json::Value> {
        let mut node = &self.root;
        for seg in path.split('.') {
            node = match node {
                Node::Map(m) => m.get(seg)?,
                Node::Seq(items) => items.get(index(seg, items.len())?)?,
                _ => return None,
            };
        }
        Some(serde_json::to_value(node).expect("a config node serializes"))
    }

    /// The config as text for `capstan.yml`: JSON, one key per line.
    pub fn text(&self) -> String {
        let mut s = serde_json::to_string_pretty(&self.root).expect("a config serializes");
        s.push('\n');
        s
    }

    /// The node holding the last segment of `path`, and that segment.
    #[track_caller]
    fn parent(&mut self, path: &str) -> (&mut Node, String) {
        let segs: Vec<&str> = path.split('.').collect();
        assert!(segs.iter().all(|s| !s.is_empty()), "config edit: {path:?} is not a key path (keys joined by dots)");
        let (last, walk) = segs.split_last().expect("split yields one segment at least");
        let mut node = &mut self.root;
        for (depth, seg) in walk.iter().enumerate() {
            let here = segs[..=depth].join(".");
            node = match node {
                Node::Map(m) => {
                    let known = keys(m);
                    m.get_mut(*seg).unwrap_or_else(|| panic!("config edit: {path}: the config has no {here} (keys there: {known})"))
                }
                Node::Seq(items) => {
                    let n = items.len();
                    index(seg, n).and_then(|i| items.get_mut(i)).unwrap_or_else(|| panic!("config edit: {path}: the config has no {here} (a list of {n})"))
                }
                other => panic!("config edit: {path}: {here} is {}, not a map or a list", other.kind()),
            };
        }
        (node, last.to_string())
    }
}

impl fmt::Display for ConfigEdit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

fn index(seg: &str, len: usize) -> Option<usize> {
    seg.parse::<usize>().ok().filter(|i| *i <= len)
}

fn keys(m: &IndexMap<String, Node>) -> String {
    m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// A YAML document as serde sees it, maps in their order (serde_json's own
/// `Value` sorts keys, which would reorder a config's services).
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(IndexMap<String, Node>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Int(_) | Node::UInt(_) | Node::Float(_) => "a number",
            Node::Str(_) => "a string",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a map",
        }
    }
}

impl From<serde_json::Value> for Node {
    fn from(v: serde_json::Value) -> Node {
        use serde_json::Value;
        match v {
            Value::Null => Node::Null,
            Value::Bool(b) => Node::Bool(b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Node::Int(i),
                (None, Some(u)) => Node::UInt(u),
                _ => Node::Float(n.as_f64().expect("a JSON number is an i64, a u64 or an f64")),
            },
            Value::String(s) => Node::Str(s),
            Value::Array(a) => Node::Seq(a.into_iter().map(Node::from).collect()),
            Value::Object(o) => Node::Map(o.into_iter().map(|(k, v)| (k, Node::from(v))).collect()),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) => s.serialize_i64(*i),
            Node::UInt(u) => s.serialize_u64(*u),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Node, E> {
        Ok(Node::Int(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Node, E> {
        Ok(i64::try_from(u).map(Node::Int).unwrap_or(Node::UInt(u)))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Node, E> {
        Ok(Node::Float(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Node, E> {
        Ok(Node::Str(s.to_string()))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Node, E> {
        Ok(Node::Str(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut m = IndexMap::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            m.insert(k, v);
        }
        Ok(Node::Map(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const YAML: &str = "app: shop\nhosts:\n  - a\n  - b\nservices:\n  web:\n    image: r/x\n    health:\n      http: { port: 8080, path: /health }\n      timeout: 20s\n  api:\n    image: r/y\n";

    #[test]
    fn sets_and_removes_by_key_path_and_keeps_the_order() {
        let e = edit(YAML).set("services.web.health.timeout", "3s").set("hosts.1", "c").set("services.web.build", json!({"context": "ctx"})).remove("app");
        assert_eq!(e.get("services.web.health.timeout"), Some(json!("3s")));
        assert_eq!(e.get("services.web.health.http.port"), Some(json!(8080)));
        assert_eq!(e.get("hosts"), Some(json!(["a", "c"])));
        assert_eq!(e.get("app"), None);
        let back = edit(&e.text());
        assert_eq!(back.get("services.web.build.context"), Some(json!("ctx")));
        let services: Vec<String> = match &back.root {
            Node::Map(m) => match &m["services"] {
                Node::Map(s) => s.keys().cloned().collect(),
                _ => unreachable!(),
            },
            _ => unreachable!(),
        };
        assert_eq!(services, ["web", "api"], "services in the config's order");
    }

    #[test]
    #[should_panic(expected = "services.web.helth.timeout: the config has no services.web.helth (keys there: image, health)")]
    fn a_missing_parent_panics_with_the_path() {
        let _ = edit(YAML).set("services.web.helth.timeout", "3s");
    }

    #[test]
    #[should_panic(expected = "ssh.known_hosts: the config has no ssh")]
    fn removing_under_a_missing_parent_panics() {
        let _ = edit(YAML).remove("ssh.known_hosts");
    }

    #[test]
    #[should_panic(expected = "no key \"pause\" to remove")]
    fn removing_a_missing_key_panics() {
        let _ = edit(YAML).remove("services.web.pause");
    }
}
