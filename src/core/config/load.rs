//! Reading `capstan.yml`: the file, then serde's shape (with the key path of a
//! type error carried through serde-saphyr's error), then the validator; every
//! problem found gets its line.

use std::fmt;
use std::path::Path;

use super::issue::{ConfigError, Issue};
use super::raw::RawConfig;
use super::validate::validate;
use super::Config;

pub const DEFAULT_FILE: &str = "capstan.yml";

/// Reads and validates a config file.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
        file: file.to_path_buf(),
        issues: vec![Issue { path: String::new(), line: None, message: format!("cannot read the file: {e}") }],
    })?;
    parse(file, &text)
}

/// Parses and validates config text; `file` is only used in messages.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let err = |issues| ConfigError { file: file.to_path_buf(), issues };
    let raw: RawConfig = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            <serde_saphyr::Error as serde::de::Error>::custom(PathMarked(path, inner).to_string())
        })
    })
    .map_err(|e| err(vec![serde_issue(&e)]))?;
    match validate(file, raw) {
        Ok(config) => Ok(config),
        Err(issues) => {
            let issues = issues.into_iter().map(|i| Issue { line: i.line.or_else(|| line_of(text, &i.path)), ..i }).collect();
            Err(err(issues))
        }
    }
}

/// The line of a key path (`services.web.health.timeout`) in block or flow
/// YAML: each segment is looked for after the line of the one before. For
/// messages and annotations; `None` when not found.
pub(super) fn line_of(text: &str, path: &str) -> Option<u64> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for seg in path.split('.') {
        let key = seg.split('[').next().unwrap_or(seg);
        if key.is_empty() {
            continue;
        }
        let at = (from..lines.len()).find(|&i| {
            let l = lines[i];
            l.match_indices(key).any(|(pos, _)| {
                let before_ok = pos == 0 || !l[..pos].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '-');
                let after = l[pos + key.len()..].trim_start_matches(['"', '\'']);
                before_ok && after.starts_with(':')
            })
        })?;
        found = Some(at as u64 + 1);
        from = at;
    }
    found
}

/// Carries the key path through serde-saphyr's error type.
struct PathMarked(String, serde_saphyr::Error);

const PATH_MARK: &str = "@@path=";
const PATH_END: &str = "@@ ";

impl fmt::Display for PathMarked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PATH_MARK}{}{PATH_END}{}", self.0, first_line(&self.1.to_string()))
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

fn serde_issue(e: &serde_saphyr::Error) -> Issue {
    let mut line = e.location().map(|l| l.line()).filter(|l| *l > 0);
    let mut text = first_line(&e.to_string());
    // "… at line 18, column 21": keep the line, drop the suffix.
    if let Some(i) = text.rfind(" at line ") {
        let n: String = text[i + 9..].chars().take_while(|c| c.is_ascii_digit()).collect();
        line = line.or_else(|| n.parse().ok());
        text.truncate(i);
    }
    let (path, message) = match text.split_once(PATH_MARK) {
        Some((_, rest)) => match rest.split_once(PATH_END) {
            Some((p, m)) => (if p == "." { String::new() } else { p.to_string() }, m.to_string()),
            None => (String::new(), rest.to_string()),
        },
        None => (String::new(), text),
    };
    Issue { path, line, message: tidy_serde_message(&message) }
}

/// serde-saphyr prefixes messages with a location we already show.
fn tidy_serde_message(m: &str) -> String {
    let m = m.trim();
    let m = m.strip_prefix("error: ").unwrap_or(m);
    // "line 3 column 5: unknown field ..." -> "unknown field ..."
    let m = match m.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") || head.starts_with("at line") => rest,
        _ => m,
    };
    match m {
        m if m.starts_with("invalid u16") => "expected a whole number from 1 to 65535".into(),
        m if m.starts_with("invalid u32") || m.starts_with("invalid u64") => "expected a whole number".into(),
        m => m.to_string(),
    }
}
