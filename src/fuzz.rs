//! Property tests that feed the parsers of untrusted input, the config file
//! and the GitHub event payload, with the committed fixtures
//! (`tests/fixtures/configs`, `tests/fixtures/events`) mutated byte by byte,
//! spliced, and replaced by arbitrary JSON. The property: no panic, and every
//! refusal is an error that names the file and what is wrong.
//!
//! `cargo test fuzz::` runs 256 cases per target; `scripts/fuzz` runs many
//! more, for a bounded time, as a CI job does.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;

fn fixtures(dir: &str, ext: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == ext))
        .map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    /// Copy a span of the seed over another place (structure-preserving).
    Splice(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Bytes YAML and JSON care about, more often than chance would pick them.
    let special = prop::sample::select(b":-{}[],\"'\n #&*!|>%@`\\\t0".to_vec());
    prop_oneof![
        (any::<usize>(), prop_oneof![special.clone(), any::<u8>()]).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(prop_oneof![special, any::<u8>()], 1..8)).prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), any::<usize>(), 1usize..80).prop_map(|(a, b, n)| Edit::Splice(a, b, n)),
    ]
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let len = v.len().max(1);
        match e {
            Edit::Flip(i, b) if !v.is_empty() => v[i % len] = *b,
            Edit::Insert(i, bytes) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) if !v.is_empty() => {
                let at = i % len;
                let end = (at + n).min(v.len());
                v.drain(at..end);
            }
            Edit::Splice(a, b, n) if !v.is_empty() => {
                let from = a % len;
                let span: Vec<u8> = v[from..(from + n).min(v.len())].to_vec();
                let to = b % (v.len() + 1);
                v.splice(to..to, span);
            }
            _ => {}
        }
    }
    v
}

/// Arbitrary JSON, up to a few levels deep.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["refs/tags/v1.2.3", "refs/heads/main", "published", "v1", "previous", "true", ""]).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "ref",
                    "action",
                    "release",
                    "tag_name",
                    "draft",
                    "inputs",
                    "rollback-to",
                    "version",
                    "pull_request",
                    "head",
                    "base",
                    "repo",
                    "full_name",
                    "sha",
                    "x"
                ])
                .prop_map(String::from),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const EVENTS: [&str; 7] = ["push", "release", "workflow_dispatch", "pull_request", "pull_request_target", "schedule", ""];

fn check_config(text: &str) {
    let path = Path::new("/repo/capstan.yml");
    if let Err(e) = crate::core::config::parse(path, text) {
        let msg = e.to_string();
        assert!(msg.contains("/repo/capstan.yml"), "the error names the file: {msg}");
        assert!(!e.issues.is_empty() && e.issues.iter().all(|i| !i.message.trim().is_empty()), "every issue says what is wrong: {msg}");
        let err = crate::error::Error::from(e);
        assert_eq!(err.exit_code(), crate::error::exit::BAD_INPUT);
    }
}

fn check_event(event: &str, payload: &Value) {
    match crate::github::trigger::decide(event, payload, &crate::github::trigger::Inputs::default(), &|| false) {
        Ok(crate::github::trigger::Decision::Nothing { notice }) => assert!(!notice.trim().is_empty()),
        Ok(_) => {}
        Err(e) => assert!(!e.to_string().trim().is_empty()),
    }
}

proptest! {
    #[test]
    fn config_parser_never_panics(seed in prop::sample::select(fixtures("configs", "yml")), edits in prop::collection::vec(edit(), 1..6)) {
        check_config(&String::from_utf8_lossy(&apply(&seed, &edits)));
    }

    #[test]
    fn config_parser_never_panics_on_any_text(text in "\\PC{0,200}") {
        check_config(&text);
    }

    #[test]
    fn event_parser_never_panics(seed in prop::sample::select(fixtures("events", "json")), edits in prop::collection::vec(edit(), 1..6), name in prop::sample::select(EVENTS.to_vec())) {
        // What `capstan action` does with the payload file: JSON first, then the decision.
        if let Ok(v) = serde_json::from_slice::<Value>(&apply(&seed, &edits)) {
            check_event(name, &v);
        }
    }

    #[test]
    fn event_parser_never_panics_on_any_json(payload in json(), name in prop::sample::select(EVENTS.to_vec())) {
        check_event(name, &payload);
    }
}

/// The seeds themselves are valid: mutations start from inputs that get deep into the parsers.
#[test]
fn seeds_are_valid() {
    for seed in fixtures("configs", "yml") {
        let text = String::from_utf8(seed).unwrap();
        crate::core::config::parse(Path::new("/repo/capstan.yml"), &text).unwrap_or_else(|e| panic!("{e}"));
    }
    for seed in fixtures("events", "json") {
        let v: Value = serde_json::from_slice(&seed).unwrap();
        assert!(v.is_object());
    }
}
