//! The little capstan needs to know about a Dockerfile's text. Pure.
//!
//! The classic builder turns each label given to `/build` into a step of its
//! own, and each step is a container created and committed (about 0.1 s here).
//! [`fold_labels`] appends them to the Dockerfile as one `LABEL` instead: the
//! same image metadata, one step.

use std::collections::BTreeMap;

/// The escape character: `\`, or what a `# escape=` parser directive says.
pub fn escape_char(text: &str) -> char {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('#') else { break };
        let Some((name, value)) = rest.split_once('=') else { break };
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || name.contains(char::is_whitespace) {
            break;
        }
        if name == "escape" {
            return match value.trim() {
                "`" => '`',
                _ => '\\',
            };
        }
    }
    '\\'
}

/// The Dockerfile with `labels` appended as one `LABEL` instruction of the
/// last stage, or `None` when that cannot be done safely (the text ends in a
/// line continuation, or a value has a line break): then the labels go to the
/// engine as build parameters, as usual.
pub fn fold_labels(text: &str, labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        return None;
    }
    let esc = escape_char(text);
    let last = text.lines().map(str::trim_end).rfind(|l| !l.trim().is_empty()).unwrap_or("");
    if last.ends_with(esc) {
        return None;
    }
    let quote = |s: &str| -> Option<String> {
        if s.contains(['\n', '\r']) {
            return None;
        }
        let mut out = String::from("\"");
        for c in s.chars() {
            if c == '"' || c == '$' || c == esc {
                out.push(esc);
            }
            out.push(c);
        }
        out.push('"');
        Some(out)
    };
    let mut line = String::from("LABEL");
    for (k, v) in labels {
        line.push_str(&format!(" {}={}", quote(k)?, quote(v)?));
    }
    let mut out = text.trim_end().to_string();
    out.push('\n');
    out.push_str(&line);
    out.push('\n');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn escape_directive() {
        assert_eq!(escape_char("FROM scratch\n"), '\\');
        assert_eq!(escape_char("# escape=`\nFROM scratch\n"), '`');
        assert_eq!(escape_char("# syntax=docker/dockerfile:1\n#escape = `\nFROM x\n"), '`');
        // Only at the top: after an instruction it is a comment.
        assert_eq!(escape_char("FROM x\n# escape=`\n"), '\\');
    }

    #[test]
    fn folds_into_one_quoted_label() {
        let got = fold_labels("FROM scratch\nCOPY a /a\n\n", &labels(&[("b.k", "v 1"), ("a", "$HOME \"q\" \\x")])).unwrap();
        assert_eq!(got, "FROM scratch\nCOPY a /a\nLABEL \"a\"=\"\\$HOME \\\"q\\\" \\\\x\" \"b.k\"=\"v 1\"\n");
        let got = fold_labels("# escape=`\nFROM scratch\n", &labels(&[("a", "$x`\\")])).unwrap();
        assert!(got.ends_with("LABEL \"a\"=\"`$x``\\\"\n"), "{got}");
    }

    #[test]
    fn leaves_what_it_cannot_fold_safely() {
        assert_eq!(fold_labels("FROM scratch\nRUN a \\\n", &labels(&[("a", "b")])), None);
        assert_eq!(fold_labels("FROM scratch\n", &labels(&[("a", "two\nlines")])), None);
        assert_eq!(fold_labels("FROM scratch\n", &labels(&[])), None);
    }
}
