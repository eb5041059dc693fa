//! `capstan history`: each host's deployment log, newest first, lines that do
//! not parse counted. Changes nothing.

use serde::Serialize;

use crate::cli::Targets;
use crate::commands::Ctx;
use crate::core::record::{Record, RunCommand};
use crate::core::time::fmt_time;
use crate::error::Error;
use crate::host::state;

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub app: String,
    pub command: RunCommand,
    pub hosts: Vec<HostHistory>,
}

#[derive(Debug, Serialize)]
pub struct HostHistory {
    pub host: String,
    pub records: Vec<Record>,
    pub unreadable_lines: usize,
}

pub async fn history(ctx: &Ctx<'_>, targets: &Targets, limit: usize) -> Result<HistoryReport, Error> {
    let hosts = ctx.connect_all(&ctx.hosts(&targets.hosts)?).await?;
    let mut out = Vec::new();
    for h in &hosts {
        let (mut records, bad) = state::read_log(h.shell.as_ref(), &ctx.config.state_dir).await.map_err(|e| Error::Unreachable {
            host: h.name.clone(),
            message: e.to_string(),
            hint: None,
        })?;
        if !targets.services.is_empty() {
            records.retain(|r| r.instances.iter().any(|i| targets.services.contains(&i.service)));
        }
        let skip = records.len().saturating_sub(limit);
        out.push(HostHistory { host: h.name.clone(), records: records.split_off(skip), unreadable_lines: bad });
    }
    Ok(HistoryReport { app: ctx.config.app.clone(), command: RunCommand::History, hosts: out })
}

pub fn render_history(r: &HistoryReport) -> String {
    let mut out = String::new();
    for h in &r.hosts {
        out.push_str(&format!("{}\n", h.host));
        if h.records.is_empty() {
            out.push_str("  no deployments recorded\n");
        }
        for rec in h.records.iter().rev() {
            out.push_str(&format!(
                "  {}  {:<8} {:<10} {:<11} {:>7}  {}\n",
                fmt_time(rec.time),
                rec.command,
                rec.version.as_deref().unwrap_or("-"),
                rec.outcome,
                format!("{:.1}s", rec.duration_ms as f64 / 1000.0),
                rec.actor.as_deref().unwrap_or("")
            ));
        }
        if h.unreadable_lines > 0 {
            out.push_str(&format!("  ({} unreadable line(s) skipped)\n", h.unreadable_lines));
        }
    }
    out
}
