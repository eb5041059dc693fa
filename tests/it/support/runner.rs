//! What the GitHub runner reads back from a run of `capstan action`: the
//! `GITHUB_OUTPUT` file, and stdout, where masks must come first.

use std::collections::HashMap;

/// `name<<DELIM\nvalue\nDELIM` entries of a GITHUB_OUTPUT file.
pub fn outputs(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let (name, delim) = head.split_once("<<").unwrap_or_else(|| panic!("name<<DELIMITER, not {head:?}"));
        let mut value = Vec::new();
        for l in lines.by_ref() {
            if l == delim {
                break;
            }
            value.push(l);
        }
        out.insert(name.to_string(), value.join("\n"));
    }
    out
}

/// Each secret appears on stdout only in an `::add-mask::` line, all of which
/// come before any other output, and nowhere in `elsewhere` (`(what, text)`).
/// `given(secret)` says whether the run was given it (and so must mask it).
#[track_caller]
pub fn assert_masked_first(stdout: &str, elsewhere: &[(&str, &str)], secrets: &[String], given: impl Fn(&str) -> bool) {
    let mut seen_other = false;
    for line in stdout.lines() {
        if line.starts_with("::add-mask::") {
            assert!(!seen_other, "a mask came after other output:\n{stdout}");
        } else {
            seen_other = true;
            for s in secrets {
                assert!(!line.contains(s.as_str()), "a secret on stdout: {line}");
            }
        }
    }
    for s in secrets {
        if given(s) {
            assert!(stdout.contains(&format!("::add-mask::{s}")), "{s} is masked");
        }
        for (what, text) in elsewhere {
            assert!(!text.contains(s.as_str()), "a secret in the {what}");
        }
    }
}
