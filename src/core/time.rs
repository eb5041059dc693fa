//! Times as capstan writes them: RFC 3339, in the log, the lock, the
//! reports and the build's `created` label.

use time::OffsetDateTime;

pub fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}
