//! GitHub Actions' side channels, in the formats the runner reads: workflow
//! commands in the log (`::group::`, `::add-mask::`, `::error file=…,line=…::`)
//! and step outputs in `GITHUB_OUTPUT` (multiline-safe `name<<DELIMITER`). The
//! formatting is pure; [`append`] writes a file the runner gave. (The action's
//! inputs, `INPUT_<NAME>`, are read in `env`.)

use std::io::Write;
use std::path::Path;

/// Escapes a workflow command's message (`%`, CR, LF).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command's property value (also `:` and `,`).
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// `::add-mask::value`: the runner hides the value in every later log line.
pub fn mask(secret: &str) -> String {
    format!("::add-mask::{}", escape_data(secret))
}

/// `::error file=capstan.yml,line=18::message` (an annotation on that line).
pub fn error_annotation(file: &str, line: Option<u64>, message: &str) -> String {
    let mut props = format!("file={}", escape_property(file));
    if let Some(l) = line {
        props.push_str(&format!(",line={l}"));
    }
    format!("::error {props}::{}", escape_data(message))
}

/// One `GITHUB_OUTPUT` entry, `name<<DELIM\nvalue\nDELIM\n`, with a delimiter
/// that does not occur in the value.
pub fn output_entry(name: &str, value: &str) -> String {
    let mut delim = format!("capstan_{:016x}", rand::random::<u64>());
    while value.contains(&delim) {
        delim = format!("capstan_{:016x}", rand::random::<u64>());
    }
    format!("{name}<<{delim}\n{value}\n{delim}\n")
}

/// Appends to a file the runner names (`GITHUB_OUTPUT`, `GITHUB_STEP_SUMMARY`).
pub fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_escaped_like_the_toolkit_does() {
        assert_eq!(mask("p%ss\nword"), "::add-mask::p%25ss%0Aword");
        assert_eq!(
            error_annotation("deploy/capstan.yml", Some(18), "services.web: expected a duration,\ngot x"),
            "::error file=deploy/capstan.yml,line=18::services.web: expected a duration,%0Agot x"
        );
        assert_eq!(error_annotation("a:b,c.yml", None, "m"), "::error file=a%3Ab%2Cc.yml::m");
    }

    #[test]
    fn outputs_are_multiline_safe() {
        let e = output_entry("report", "line 1\nline 2");
        let mut lines = e.lines();
        let head = lines.next().unwrap();
        let delim = head.strip_prefix("report<<").unwrap();
        assert_eq!(lines.collect::<Vec<_>>(), vec!["line 1", "line 2", delim]);
    }
}
