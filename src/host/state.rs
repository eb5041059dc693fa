//! What capstan keeps on each host, under `state_dir` (`/var/lib/capstan/<app>`):
//!
//! - `lock.json`: the deploy lock, a lease (holder, run URL, start, expiry).
//!   Taken atomically with `ln` (a hard link fails if the file exists), so a
//!   second deploy is refused; an expired lease can be taken over.
//! - `deploys.jsonl`: the append-only deployment log, one JSON record a line,
//!   appended only while holding the lock.
//!
//! The host scripts are constants; every value reaches them as a quoted argument.

use time::OffsetDateTime;

use crate::core::record::{Lease, Record};
use crate::host::Shell;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StateError {
    #[error("held")]
    Held(Lease),
    #[error("{0}")]
    Host(String),
}

const ACQUIRE: &str = r#"set -eu
d=$1; mkdir -p "$d"; t="$d/.lock.$2"
cat > "$t"
if ln "$t" "$d/lock.json" 2>/dev/null; then rm -f "$t"; echo acquired; exit 0; fi
rm -f "$t"; echo held; cat "$d/lock.json" 2>/dev/null || true"#;

/// Replaces the lease only if it is still the one with id `$3` (takeover of an expired lease, or renewal).
const REPLACE_IF: &str = r#"set -eu
d=$1; t="$d/.lock.$2"
cat > "$t"
if grep -q "\"id\":\"$3\"" "$d/lock.json" 2>/dev/null; then mv -f "$t" "$d/lock.json"; echo acquired; else rm -f "$t"; echo lost; fi"#;

/// Releases the lock if it is still lease `$2`, and disarms that run's guard on the host.
const RELEASE_IF: &str = r#"set -eu
d=$1
if grep -q "\"id\":\"$2\"" "$d/lock.json" 2>/dev/null; then rm -f "$d/lock.json"; rm -rf "$d/guard/$2"; echo released; else echo not-held; fi"#;

const FORCE_RELEASE: &str = r#"set -eu
d=$1; cat "$d/lock.json" 2>/dev/null || true; rm -f "$d/lock.json""#;

const READ_LOCK: &str = r#"cat "$1/lock.json" 2>/dev/null || true"#;

/// Appends the record, then releases the lock if it is still lease `$2` and disarms that
/// run's guard: the end of a run in one round trip.
const APPEND_AND_RELEASE: &str = r#"set -eu
d=$1; mkdir -p "$d"; cat >> "$d/deploys.jsonl"
if grep -q "\"id\":\"$2\"" "$d/lock.json" 2>/dev/null; then rm -f "$d/lock.json"; rm -rf "$d/guard/$2"; echo released; else echo not-held; fi"#;

const READ_LOG: &str = r#"cat "$1/deploys.jsonl" 2>/dev/null || true"#;

pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

async fn sh(shell: &dyn Shell, script: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, StateError> {
    sh_on(shell, false, script, args, stdin).await
}

/// `apart`: on a channel of its own, as the renewal runs: never behind another command,
/// where a late renewal would let the lease run out.
async fn sh_on(shell: &dyn Shell, apart: bool, script: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, StateError> {
    let mut argv = vec!["sh", "-c", script, if apart { "capstan-renew" } else { "capstan-state" }];
    argv.extend_from_slice(args);
    let out = match apart {
        true => shell.run_apart(&argv, stdin).await,
        false => shell.run(&argv, stdin).await,
    };
    let out = out.map_err(|e| StateError::Host(e.0))?;
    if !out.ok() {
        return Err(StateError::Host(format!("state script failed with exit {}: {}", out.status, out.stderr.trim())));
    }
    Ok(out.stdout)
}

fn parse_lease(text: &str) -> Option<Lease> {
    serde_json::from_str(text.trim()).ok()
}

/// Takes the lock, or takes over an expired lease. `Held` carries who has it.
pub async fn acquire(shell: &dyn Shell, dir: &str, lease: &Lease, now: OffsetDateTime) -> Result<(), StateError> {
    let body = serde_json::to_string(lease).expect("lease serializes");
    let suffix = new_id();
    let out = sh(shell, ACQUIRE, &[dir, &suffix], Some(body.as_bytes())).await?;
    let mut lines = out.splitn(2, '\n');
    match lines.next().unwrap_or("").trim() {
        "acquired" => Ok(()),
        "held" => {
            let rest = lines.next().unwrap_or("");
            let Some(current) = parse_lease(rest) else {
                return Err(StateError::Host(format!(
                    "{dir}/lock.json exists but cannot be read as a lease; remove it with `capstan lock release --force` if no deploy runs"
                )));
            };
            if !current.expired(now) {
                return Err(StateError::Held(current));
            }
            let out = sh(shell, REPLACE_IF, &[dir, &suffix, &current.id], Some(body.as_bytes())).await?;
            if out.trim() == "acquired" {
                Ok(())
            } else {
                // Someone else took it over first.
                match read_lock(shell, dir).await? {
                    Some(l) => Err(StateError::Held(l)),
                    None => Err(StateError::Host("the lock changed hands while taking over an expired lease; try again".into())),
                }
            }
        }
        other => Err(StateError::Host(format!("unexpected answer from the lock script: {other:?}"))),
    }
}

/// Extends our lease; fails if it is no longer ours.
pub async fn renew(shell: &dyn Shell, dir: &str, lease: &Lease) -> Result<(), StateError> {
    let body = serde_json::to_string(lease).expect("lease serializes");
    let out = sh_on(shell, true, REPLACE_IF, &[dir, &new_id(), &lease.id], Some(body.as_bytes())).await?;
    if out.trim() == "acquired" {
        Ok(())
    } else {
        Err(StateError::Host("the deploy lock is no longer ours (released by force?)".into()))
    }
}

pub async fn release(shell: &dyn Shell, dir: &str, id: &str) -> Result<bool, StateError> {
    Ok(sh(shell, RELEASE_IF, &[dir, id], None).await?.trim() == "released")
}

/// Removes the lock whoever holds it; returns the lease that was removed.
pub async fn force_release(shell: &dyn Shell, dir: &str) -> Result<Option<Lease>, StateError> {
    Ok(parse_lease(&sh(shell, FORCE_RELEASE, &[dir], None).await?))
}

pub async fn read_lock(shell: &dyn Shell, dir: &str) -> Result<Option<Lease>, StateError> {
    Ok(parse_lease(&sh(shell, READ_LOCK, &[dir], None).await?))
}

/// Appends `record` and releases lease `id`; returns whether the lease was still ours.
pub async fn append_and_release(shell: &dyn Shell, dir: &str, record: &Record, id: &str) -> Result<bool, StateError> {
    let mut line = serde_json::to_string(record).expect("record serializes");
    line.push('\n');
    Ok(sh(shell, APPEND_AND_RELEASE, &[dir, id], Some(line.as_bytes())).await?.trim() == "released")
}

/// Reads the log; lines that do not parse (a torn write, a hand edit) are skipped and counted.
pub async fn read_log(shell: &dyn Shell, dir: &str) -> Result<(Vec<Record>, usize), StateError> {
    Ok(parse_log(&sh(shell, READ_LOG, &[dir], None).await?))
}

pub fn parse_log(text: &str) -> (Vec<Record>, usize) {
    let mut bad = 0;
    let records = text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).map_err(|_| bad += 1).ok()).collect();
    (records, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::record::{InstanceOutcome, RecordInstance, RunCommand, RunOutcome};

    #[test]
    fn log_lines_round_trip_and_bad_lines_are_counted() {
        let r = Record {
            instances: vec![RecordInstance {
                service: "web".into(),
                name: "web-1".into(),
                from_image: "r@sha256:a".into(),
                to_image: "r@sha256:b".into(),
                outcome: InstanceOutcome::Replaced,
            }],
            ..record()
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        let (records, bad) = parse_log(&format!("{line}\n{{broken\n\n{line}\n"));
        assert_eq!(records, vec![r.clone(), r]);
        assert_eq!(bad, 1);
    }

    fn record() -> Record {
        Record {
            time: time::macros::datetime!(2026-11-22 10:00 UTC),
            app: "shop".into(),
            host: "h".into(),
            command: RunCommand::Deploy,
            version: Some("v2".into()),
            outcome: RunOutcome::Succeeded,
            actor: None,
            run_url: None,
            duration_ms: 5,
            instances: vec![],
            error: None,
        }
    }

    fn lease(id: &str, holder: &str, expires: OffsetDateTime) -> Lease {
        Lease {
            id: id.into(),
            holder: holder.into(),
            command: RunCommand::Deploy,
            version: Some("v2".into()),
            run_url: None,
            acquired_at: time::macros::datetime!(2026-11-22 10:00 UTC),
            expires_at: expires,
        }
    }

    /// The real host scripts, run by a local shell in a temp dir.
    #[tokio::test]
    async fn the_lock_is_exclusive_expires_and_is_released_only_by_its_holder() {
        let host = crate::host::fake::FakeHost::new();
        let dir = host.dir.path().join("state").display().to_string();
        let shell: &dyn Shell = host.as_ref();
        let now = time::macros::datetime!(2026-11-22 10:05 UTC);
        let later = time::macros::datetime!(2026-11-22 10:15 UTC);
        let a = lease("00000000000000aa", "alice", later);
        let b = lease("00000000000000bb", "bob", later);

        acquire(shell, &dir, &a, now).await.unwrap();
        assert_eq!(read_lock(shell, &dir).await.unwrap(), Some(a.clone()));
        // A second holder is refused and told who holds it.
        assert_eq!(acquire(shell, &dir, &b, now).await, Err(StateError::Held(a.clone())));
        // Only the holder releases it.
        assert!(!release(shell, &dir, &b.id).await.unwrap());
        assert!(renew(shell, &dir, &b).await.is_err());
        renew(shell, &dir, &a).await.unwrap();
        // Once expired, it is taken over.
        let after_expiry = time::macros::datetime!(2026-11-22 10:20 UTC);
        acquire(shell, &dir, &b, after_expiry).await.unwrap();
        assert_eq!(read_lock(shell, &dir).await.unwrap().unwrap().holder, "bob");
        assert!(!release(shell, &dir, &a.id).await.unwrap(), "the old holder cannot release the new lease");
        // The end of a run: the record appended and the lease released in one go.
        let (records, _) = read_log(shell, &dir).await.unwrap();
        assert!(records.is_empty());
        let r = record();
        assert!(append_and_release(shell, &dir, &r, &b.id).await.unwrap());
        assert_eq!(read_lock(shell, &dir).await.unwrap(), None);
        assert_eq!(read_log(shell, &dir).await.unwrap().0, vec![r.clone()]);
        // Appending without the lease records but reports it no longer held.
        assert!(!append_and_release(shell, &dir, &r, &b.id).await.unwrap());
        assert_eq!(read_log(shell, &dir).await.unwrap().0.len(), 2);
        // --force removes whoever holds it.
        acquire(shell, &dir, &a, now).await.unwrap();
        assert_eq!(force_release(shell, &dir).await.unwrap(), Some(a));
        assert_eq!(read_lock(shell, &dir).await.unwrap(), None);
    }
}
