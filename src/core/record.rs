//! What each host keeps about capstan's runs, as data: the deploy lock's [`Lease`]
//! and the deployment log's [`Record`]s. Pure: `host::state` reads and writes them
//! on the host, `core::release` finds rollback targets in them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The deploy lock's lease: who holds it, for what, until when. A run renews it while it
/// lives; once it has expired, the next run may take the lock over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    pub id: String,
    pub holder: String,
    pub command: String,
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
    pub command: String,
    pub version: Option<String>,
    pub outcome: String,
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
    pub outcome: String,
}
