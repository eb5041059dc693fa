//! `.dockerignore` rules, applied the way the Docker CLI applies them when it
//! sends a build context (moby's `ignorefile` reader and `patternmatcher`).
//!
//! The globs themselves are matched by `globset` (`*` and `?` stop at `/`,
//! `**` spans directories, `[…]` classes, `\` escapes). What Docker adds on
//! top, and this module keeps: patterns are cleaned and anchored at the
//! context root (`/foo`, `./foo` and `foo/` all mean `foo`), a pattern that
//! matches a directory excludes everything under it, `!` makes an exception,
//! and the last matching line decides. No maintained crate implements these
//! Docker rules (the `ignore` crate is gitignore's, where `*.log` matches at any
//! depth and an excluded directory cannot be re-included), so the differential
//! test in `tests/build.rs` checks this against the Docker CLI itself.
//! Pure.

use globset::{GlobBuilder, GlobMatcher};

#[derive(Debug)]
struct Rule {
    matcher: GlobMatcher,
    exception: bool,
}

/// The rules of one `.dockerignore` file.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// A line Docker would refuse, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub line: usize,
    pub message: String,
}

impl Rules {
    pub fn parse(text: &str) -> Result<Rules, BadLine> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            // A comment is a line that starts with `#`, before any trimming.
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(BadLine { line: i + 1, message: "illegal exclusion pattern: \"!\"".into() });
                }
            }
            let cleaned = clean(pattern);
            let matcher = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| BadLine { line: i + 1, message: format!("bad pattern {pattern:?}: {}", e.kind()) })?
                .compile_matcher();
            rules.push(Rule { matcher, exception });
        }
        Ok(Rules { rules })
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left out
    /// of the context.
    pub fn excludes(&self, path: &str) -> bool {
        let dirs: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for r in &self.rules {
            // Only a rule that could change the answer is evaluated.
            if r.exception != excluded {
                continue;
            }
            let matched = r.matcher.is_match(path) || (1..dirs.len()).any(|n| r.matcher.is_match(dirs[..n].join("/")));
            if matched {
                excluded = !r.exception;
            }
        }
        excluded
    }

    /// Whether some rule re-includes paths: then an excluded directory must
    /// still be walked, because something under it may come back.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }
}

/// Go's `filepath.Clean` for a `/`-separated pattern, then no leading `/`.
fn clean(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else {
                    // Above the root: the context root is as high as it goes.
                }
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        ".".into()
    } else {
        out.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse(text).unwrap()
    }

    #[test]
    fn docker_semantics() {
        // (rules, path, excluded)
        let cases: &[(&str, &str, bool)] = &[
            // Anchored at the root, unlike .gitignore.
            ("*.log", "app.log", true),
            ("*.log", "logs/app.log", false),
            ("**/*.log", "logs/deep/app.log", true),
            ("**/*.log", "app.log", true),
            // A directory pattern excludes what is under it, however written.
            ("target", "target/debug/app", true),
            ("target/", "target/debug/app", true),
            ("/target", "target/debug/app", true),
            ("./target", "target", true),
            ("target", "src/target", false),
            // `*` and `?` stop at `/`.
            ("src/*", "src/a/b.rs", true),
            ("*/b", "a/c/b", false),
            ("a?c", "a/c", false),
            ("a?c", "abc", true),
            // Exceptions: the last matching line decides.
            ("secret\n!secret/keep.txt", "secret/keep.txt", false),
            ("secret\n!secret/keep.txt", "secret/other.txt", true),
            ("!keep\n*", "keep", true),
            ("*\n!keep", "keep", false),
            ("*.md\n!README.md", "README.md", false),
            ("*.md\n!README.md\nREADME.md", "README.md", true),
            // Comments only at the start of a line; blank lines and spaces ignored.
            ("# *.rs\n\n  *.tmp  ", "a.tmp", true),
            ("# *.rs", "main.rs", false),
            // Character classes, `^` negates; `\` escapes.
            ("[^a]x", "bx", true),
            ("[^a]x", "ax", false),
            ("\\*x", "*x", true),
            ("\\*x", "ax", false),
            // Cleaned like Go's filepath.Clean.
            ("a/../b", "b", true),
            ("a//b/", "a/b/c", true),
        ];
        for (text, path, want) in cases {
            assert_eq!(rules(text).excludes(path), *want, "rules {text:?} on {path:?}");
        }
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let e = Rules::parse("ok\n!\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("illegal exclusion"), "{e:?}");
        let e = Rules::parse("a\n[oops\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn exceptions_are_known() {
        assert!(!rules("a\nb").has_exceptions());
        assert!(rules("a\n!a/b").has_exceptions());
    }
}
