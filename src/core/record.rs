//! What each host keeps about capstan's runs, as data: the deploy lock's [`Lease`]
//! and the deployment log's [`Record`]s, and the words they are written in
//! ([`RunCommand`], [`RunOutcome`], [`InstanceOutcome`]), which the report and the
//! events use too. Pure: `host::state` reads and writes them on the host,
//! `core::release` finds releases and rollback targets in them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The command a run is: what the log, the lock, the hooks (`CAPSTAN_COMMAND`) and the
/// report call it. A host's log and lock only ever hold `deploy`, `rollback` and
/// `recover` (the putting back of what a killed run left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunCommand {
    Deploy,
    Rollback,
    Recover,
    Check,
    Build,
    Status,
    History,
    Lock,
    Action,
}

impl RunCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            RunCommand::Deploy => "deploy",
            RunCommand::Rollback => "rollback",
            RunCommand::Recover => "recover",
            RunCommand::Check => "check",
            RunCommand::Build => "build",
            RunCommand::Status => "status",
            RunCommand::History => "history",
            RunCommand::Lock => "lock",
            RunCommand::Action => "action",
        }
    }
}

impl std::fmt::Display for RunCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How a run ended: on one host (its log's record, the report's host row) or as a
/// whole (the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    #[default]
    Succeeded,
    /// Something failed, and everything changed was put back.
    RolledBack,
    /// A gate said no before anything changed.
    Refused,
    /// Something could not be put back: the host needs attention.
    Failed,
    /// Never started (an earlier host failed, or the run was cancelled): nothing changed.
    Skipped,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::RolledBack => "rolled_back",
            RunOutcome::Refused => "refused",
            RunOutcome::Failed => "failed",
            RunOutcome::Skipped => "skipped",
        }
    }

    /// For a sentence: `rolled back`.
    pub fn in_words(self) -> &'static str {
        match self {
            RunOutcome::RolledBack => "rolled back",
            other => other.as_str(),
        }
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What became of one instance in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceOutcome {
    Replaced,
    Reverted,
    Unchanged,
    Failed,
}

impl InstanceOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceOutcome::Replaced => "replaced",
            InstanceOutcome::Reverted => "reverted",
            InstanceOutcome::Unchanged => "unchanged",
            InstanceOutcome::Failed => "failed",
        }
    }
}

impl std::fmt::Display for InstanceOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The deploy lock's lease: who holds it, for what, until when. A run renews it while it
/// lives; once it has expired, the next run may take the lock over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub id: String,
    pub holder: String,
    pub command: RunCommand,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub run_url: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub acquired_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Lease {
    pub fn expired(&self, now: OffsetDateTime) -> bool {
        now >= self.expires_at
    }
}

/// One run on one host, as its deployment log keeps it (one JSON object a line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    pub app: String,
    pub host: String,
    pub command: RunCommand,
    pub version: Option<String>,
    pub outcome: RunOutcome,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub run_url: Option<String>,
    pub duration_ms: u64,
    pub instances: Vec<RecordInstance>,
    #[serde(default)]
    pub error: Option<String>,
}

/// What a run did to one instance: from which image to which, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecordInstance {
    pub service: String,
    pub name: String,
    pub from_image: String,
    pub to_image: String,
    pub outcome: InstanceOutcome,
}

impl Record {
    /// Whether this run put a release in place: a successful deploy or rollback. A
    /// `recover` puts back what ran before a killed run, so it is no release.
    pub fn is_release(&self) -> bool {
        self.outcome == RunOutcome::Succeeded && self.command != RunCommand::Recover
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as earlier capstan versions wrote them still parse, and are written back byte for byte.
    #[test]
    fn log_lines_read_and_write_as_they_always_did() {
        let lines = [
            r#"{"time":"2026-11-20T10:00:00Z","app":"shop","host":"h","command":"deploy","version":"v2","outcome":"succeeded","actor":"ci","run_url":null,"duration_ms":1200,"instances":[{"service":"web","name":"web-1","from_image":"r/web@sha256:1","to_image":"r/web@sha256:2","outcome":"replaced"},{"service":"web","name":"web-2","from_image":"r/web@sha256:1","to_image":"r/web@sha256:1","outcome":"unchanged"}],"error":null}"#,
            r#"{"time":"2026-11-20T10:05:00Z","app":"shop","host":"h","command":"deploy","version":"v3","outcome":"rolled_back","actor":"ci","run_url":null,"duration_ms":900,"instances":[{"service":"web","name":"web-1","from_image":"a","to_image":"b","outcome":"reverted"}],"error":"web-1: not healthy"}"#,
            r#"{"time":"2026-11-20T10:06:00Z","app":"shop","host":"h","command":"recover","version":null,"outcome":"failed","actor":"ci","run_url":null,"duration_ms":10,"instances":[{"service":"web","name":"web-1","from_image":"a","to_image":"b","outcome":"failed"}],"error":"x"}"#,
            r#"{"time":"2026-11-20T10:07:00Z","app":"shop","host":"h","command":"rollback","version":"v1","outcome":"refused","actor":"ci","run_url":null,"duration_ms":10,"instances":[],"error":"preflight"}"#,
            r#"{"time":"2026-11-20T10:08:00Z","app":"shop","host":"h","command":"deploy","version":"v4","outcome":"skipped","actor":"ci","run_url":null,"duration_ms":0,"instances":[],"error":null}"#,
        ];
        for line in lines {
            let r: Record = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
        let lease = r#"{"id":"0123456789abcdef","holder":"ci","command":"rollback","version":"v1","run_url":null,"acquired_at":"2026-11-20T10:00:00Z","expires_at":"2026-11-20T10:02:00Z"}"#;
        let l: Lease = serde_json::from_str(lease).unwrap();
        assert_eq!((l.command, serde_json::to_string(&l).unwrap().as_str()), (RunCommand::Rollback, lease));
    }

    /// The text of each word is the one serde writes.
    #[test]
    fn words_read_as_they_are_written() {
        let text = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for c in [
            RunCommand::Deploy,
            RunCommand::Rollback,
            RunCommand::Recover,
            RunCommand::Check,
            RunCommand::Build,
            RunCommand::Status,
            RunCommand::History,
            RunCommand::Lock,
            RunCommand::Action,
        ] {
            assert_eq!(text(serde_json::to_value(c).unwrap()), c.to_string());
        }
        for o in [RunOutcome::Succeeded, RunOutcome::RolledBack, RunOutcome::Refused, RunOutcome::Failed, RunOutcome::Skipped] {
            assert_eq!(text(serde_json::to_value(o).unwrap()), o.to_string());
            assert_eq!(o.in_words(), o.as_str().replace('_', " "));
        }
        for o in [InstanceOutcome::Replaced, InstanceOutcome::Reverted, InstanceOutcome::Unchanged, InstanceOutcome::Failed] {
            assert_eq!(text(serde_json::to_value(o).unwrap()), o.to_string());
        }
        assert_eq!(format!("{:<13}|{:>8}|", RunOutcome::RolledBack, RunCommand::Deploy), "rolled_back  |  deploy|", "tables pad them");
        assert!(serde_json::from_str::<RunOutcome>("\"needs_attention\"").is_err(), "an unknown word is refused (its log line is counted as unreadable)");
    }
}
