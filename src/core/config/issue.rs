//! What is wrong with a config file: each problem with its key path, its line
//! and what was expected, and how they read together (`file:line: key: message`).

use std::fmt;
use std::path::PathBuf;

/// One problem in the file: where, and what was expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub path: String,
    pub line: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if let [one] = self.issues.as_slice() {
            return write!(f, "{}", render_issue(&file.to_string(), one));
        }
        write!(f, "{file}: {} problems", self.issues.len())?;
        for i in &self.issues {
            write!(f, "\n  {}", render_issue(&file.to_string(), i))?;
        }
        Ok(())
    }
}

fn render_issue(file: &str, i: &Issue) -> String {
    let at = match i.line {
        Some(l) => format!("{file}:{l}"),
        None => file.to_string(),
    };
    format!("{at}: {}", i.describe())
}

impl Issue {
    /// `key.path: message`, or the message alone for the file as a whole.
    pub fn describe(&self) -> String {
        if self.path.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}
