//! A container's CPU and memory as the engine reports them, and the resource
//! gate's verdict (pure: stats answers in, figures and a verdict out).
//!
//! The figures are the ones `docker stats` shows, computed the way the Docker
//! CLI computes them: CPU as the container's share of the host's CPU time
//! between two samples times the number of CPUs (100 % is one core busy), and
//! memory as the usage less the inactive page cache (`inactive_file`, or
//! `total_inactive_file` on cgroup v1).

use serde::Deserialize;

use crate::core::config::ResourceGate;
use crate::core::verdict::{Check, GateKind, Limit, Metric, Outcome, Value, Verdict};

/// One reading of a container's CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    /// Nanoseconds of CPU time the container used, ever.
    pub total_usage: u64,
    /// Nanoseconds of CPU time the host spent, ever (`None` on engines that do not say).
    pub system_usage: Option<u64>,
    /// The CPUs the container may run on.
    pub online_cpus: u32,
}

/// One answer of the engine's `GET /containers/{id}/stats?stream=false`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StatsSample {
    pub cpu: CpuSample,
    /// The engine's previous reading (about a second before), when it sent one.
    pub precpu: Option<CpuSample>,
    /// Bytes in use, less the inactive page cache.
    pub memory: Option<u64>,
    pub memory_limit: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawStats {
    #[serde(default)]
    cpu_stats: Option<RawCpu>,
    #[serde(default)]
    precpu_stats: Option<RawCpu>,
    #[serde(default)]
    memory_stats: Option<RawMemory>,
}

#[derive(Deserialize, Default)]
struct RawCpu {
    #[serde(default)]
    cpu_usage: Option<RawCpuUsage>,
    #[serde(default)]
    system_cpu_usage: Option<u64>,
    #[serde(default)]
    online_cpus: Option<u32>,
}

#[derive(Deserialize, Default)]
struct RawCpuUsage {
    #[serde(default)]
    total_usage: u64,
    #[serde(default)]
    percpu_usage: Option<Vec<u64>>,
}

#[derive(Deserialize, Default)]
struct RawMemory {
    usage: Option<u64>,
    limit: Option<u64>,
    #[serde(default)]
    stats: Option<std::collections::HashMap<String, u64>>,
}

impl RawCpu {
    fn sample(&self) -> Option<CpuSample> {
        let usage = self.cpu_usage.as_ref()?;
        let online = match self.online_cpus {
            Some(n) if n > 0 => n,
            // As the CLI does: older engines say it by the per-CPU list's length.
            _ => usage.percpu_usage.as_ref().map(|p| p.len() as u32).unwrap_or(0),
        };
        Some(CpuSample { total_usage: usage.total_usage, system_usage: self.system_cpu_usage, online_cpus: online })
    }
}

/// Why a stats answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("unexpected stats answer from the engine: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the engine's stats answer has no cpu_stats (is the container running?)")]
    NoCpu,
}

/// Reads a stats answer (the engine's JSON, or bollard's answer serialized again).
pub fn parse_stats(json: &str) -> Result<StatsSample, StatsError> {
    let raw: RawStats = serde_json::from_str(json)?;
    let cpu = raw.cpu_stats.as_ref().and_then(RawCpu::sample).ok_or(StatsError::NoCpu)?;
    let precpu = raw.precpu_stats.as_ref().and_then(RawCpu::sample).filter(|p| p.system_usage.is_some() && p.total_usage > 0);
    let memory = raw.memory_stats.as_ref().and_then(|m| {
        let usage = m.usage?;
        let stats = m.stats.as_ref();
        let cache = stats
            .and_then(|s| s.get("total_inactive_file").filter(|v| **v < usage))
            .or_else(|| stats.and_then(|s| s.get("inactive_file").filter(|v| **v < usage)));
        Some(usage - cache.copied().unwrap_or(0))
    });
    let memory_limit = raw.memory_stats.as_ref().and_then(|m| m.limit);
    Ok(StatsSample { cpu, precpu, memory, memory_limit })
}

/// CPU use between two readings, in percent of one CPU: the container's CPU time over
/// the host's, times the CPUs. `None` when the host's counter did not move (or is missing).
pub fn cpu_percent(before: &CpuSample, after: &CpuSample) -> Option<f64> {
    let system = after.system_usage?.checked_sub(before.system_usage?)?;
    if system == 0 {
        return None;
    }
    let used = after.total_usage.saturating_sub(before.total_usage);
    let cpus = if after.online_cpus > 0 { after.online_cpus } else { before.online_cpus.max(1) };
    Some(used as f64 / system as f64 * f64::from(cpus) * 100.0)
}

/// A container's use over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Percent of one CPU; `None` when it could not be told.
    pub cpu: Option<f64>,
    /// Bytes, at the later reading.
    pub memory: Option<u64>,
}

impl Usage {
    /// From two answers taken over the window (CPU averaged between them).
    pub fn between(first: &StatsSample, second: &StatsSample) -> Usage {
        Usage { cpu: cpu_percent(&first.cpu, &second.cpu), memory: second.memory }
    }

    /// From one answer: CPU over the second before it, as `docker stats --no-stream` shows.
    pub fn of(sample: &StatsSample) -> Usage {
        Usage { cpu: sample.precpu.and_then(|p| cpu_percent(&p, &sample.cpu)), memory: sample.memory }
    }

    /// The old instances' use per container: the mean of those that said.
    pub fn mean(all: &[Usage]) -> Option<Usage> {
        fn avg(v: Vec<f64>) -> Option<f64> {
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        }
        if all.is_empty() {
            return None;
        }
        let cpu = avg(all.iter().filter_map(|u| u.cpu).collect());
        let memory = avg(all.iter().filter_map(|u| u.memory.map(|m| m as f64)).collect()).map(|m| m.round() as u64);
        Some(Usage { cpu, memory })
    }
}

/// The resource gate's verdict on `instance` from its use and the old instances'
/// (per container, over the same window; `None`: none left).
pub fn judge(gate: &ResourceGate, instance: &str, new: &Usage, old: Option<&Usage>) -> Verdict {
    let mut v = Verdict {
        gate: GateKind::Resources,
        name: "resources".into(),
        instance: instance.to_string(),
        outcome: Outcome::Pass,
        checks: Vec::new(),
        requests: None,
        old_requests: None,
        notes: Vec::new(),
    };
    let old_cpu = old.and_then(|o| o.cpu).map(Value::CpuPercent);
    let old_memory = old.and_then(|o| o.memory);
    match (gate.max_cpu, new.cpu) {
        (Some(max), Some(cpu)) => v.checks.push(Check {
            metric: Metric::Cpu,
            measured: Value::CpuPercent(cpu),
            limit: Limit::Max { max: Value::CpuPercent(max) },
            old: old_cpu,
            series: None,
            ok: cpu <= max,
        }),
        (Some(_), None) => v.notes.push(format!("the engine did not tell {instance}'s CPU use")),
        _ => {}
    }
    if let Some(memory) = new.memory {
        if let Some(max) = gate.max_memory {
            v.checks.push(Check {
                metric: Metric::Memory,
                measured: Value::Bytes(memory),
                limit: Limit::Max { max: Value::Bytes(max) },
                old: old_memory.map(Value::Bytes),
                series: None,
                ok: memory <= max,
            });
        }
        match (gate.max_memory_ratio, old_memory) {
            (Some(ratio), Some(o)) => v.checks.push(Check {
                metric: Metric::Memory,
                measured: Value::Bytes(memory),
                limit: Limit::MaxRatio { ratio },
                old: Some(Value::Bytes(o)),
                series: None,
                ok: memory as f64 <= ratio * o as f64,
            }),
            (Some(_), None) => v.notes.push("no instance left on the old release to compare memory with".into()),
            _ => {}
        }
    } else if gate.max_memory.is_some() || gate.max_memory_ratio.is_some() {
        v.notes.push(format!("the engine did not tell {instance}'s memory use"));
    }
    if v.checks.iter().any(|c| !c.ok) {
        v.outcome = Outcome::Breach;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a cgroup v2 engine's answer (trimmed).
    const V2: &str = r#"{
        "read": "2024-05-01T12:00:04.000000000Z", "preread": "2024-05-01T12:00:03.000000000Z",
        "cpu_stats": {"cpu_usage": {"total_usage": 2400000000, "usage_in_kernelmode": 1, "usage_in_usermode": 2},
                      "system_cpu_usage": 1002000000000, "online_cpus": 2, "throttling_data": {}},
        "precpu_stats": {"cpu_usage": {"total_usage": 2000000000}, "system_cpu_usage": 1000000000000, "online_cpus": 2},
        "memory_stats": {"usage": 104857600, "limit": 2147483648, "stats": {"inactive_file": 4194304, "anon": 1}}
    }"#;

    /// cgroup v1, an older engine: no online_cpus, the per-CPU list instead.
    const V1: &str = r#"{
        "cpu_stats": {"cpu_usage": {"total_usage": 500000000, "percpu_usage": [250000000, 250000000, 0, 0]}, "system_cpu_usage": 4000000000},
        "precpu_stats": {"cpu_usage": {"total_usage": 0}, "system_cpu_usage": 0},
        "memory_stats": {"usage": 50000000, "limit": 1000000000, "stats": {"total_inactive_file": 10000000, "inactive_file": 20000000}}
    }"#;

    #[test]
    fn stats_answers() {
        let s = parse_stats(V2).unwrap();
        assert_eq!(s.cpu, CpuSample { total_usage: 2_400_000_000, system_usage: Some(1_002_000_000_000), online_cpus: 2 });
        assert_eq!(s.memory, Some(100 * 1024 * 1024 - 4 * 1024 * 1024));
        // 0.4 s of CPU over 2 s of the host's time (2 CPUs for 1 s), times 2 CPUs: 40 %.
        assert_eq!(Usage::of(&s).cpu, Some(40.0));
        let s = parse_stats(V1).unwrap();
        assert_eq!(s.cpu.online_cpus, 4);
        assert_eq!(s.precpu, None, "a first reading has no previous one");
        assert_eq!(s.memory, Some(40_000_000), "cgroup v1's total_inactive_file first");
        assert_eq!(Usage::of(&s).cpu, None);
        // Without the cache figures, the usage; a cache larger than the usage is ignored.
        let s = parse_stats(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":1},"system_cpu_usage":1,"online_cpus":1},"memory_stats":{"usage":100,"stats":{"inactive_file":200}}}"#,
        )
        .unwrap();
        assert_eq!(s.memory, Some(100));
        // A stopped container: no cpu_stats.
        assert!(parse_stats(r#"{"read":"0001-01-01T00:00:00Z","memory_stats":{}}"#).unwrap_err().to_string().contains("no cpu_stats"));
        assert!(parse_stats("not json").is_err());
    }

    #[test]
    fn cpu_between_two_readings() {
        let at = |total: u64, system: u64| CpuSample { total_usage: total, system_usage: Some(system), online_cpus: 2 };
        let cases: &[(CpuSample, CpuSample, Option<f64>)] = &[
            // One core busy on a 2-core host: half the host's time, times 2.
            (at(0, 0), at(1_000_000_000, 2_000_000_000), Some(100.0)),
            (at(0, 0), at(500_000_000, 2_000_000_000), Some(50.0)),
            (at(0, 0), at(0, 2_000_000_000), Some(0.0)),
            // The host's counter did not move, or went back: no figure.
            (at(0, 5), at(10, 5), None),
            (at(0, 5), at(10, 4), None),
            (at(0, 0), CpuSample { total_usage: 1, system_usage: None, online_cpus: 2 }, None),
        ];
        for (a, b, want) in cases {
            assert_eq!(cpu_percent(a, b), *want, "{a:?} → {b:?}");
        }
        let first = StatsSample { cpu: at(0, 0), memory: Some(10), ..Default::default() };
        let second = StatsSample { cpu: at(3_000_000_000, 4_000_000_000), memory: Some(20), ..Default::default() };
        assert_eq!(Usage::between(&first, &second), Usage { cpu: Some(150.0), memory: Some(20) });
        let mean = Usage::mean(&[Usage { cpu: Some(10.0), memory: Some(100) }, Usage { cpu: None, memory: Some(300) }]).unwrap();
        assert_eq!(mean, Usage { cpu: Some(10.0), memory: Some(200) });
        assert_eq!(Usage::mean(&[]), None);
    }

    #[test]
    fn verdicts() {
        const MIB: u64 = 1024 * 1024;
        let gate = ResourceGate { max_cpu: Some(80.0), max_memory: Some(512 * MIB), max_memory_ratio: Some(1.5) };
        let u = |cpu: f64, mib: u64| Usage { cpu: Some(cpu), memory: Some(mib * MIB) };
        let cases: Vec<(Usage, Option<Usage>, Outcome, &str)> = vec![
            (
                u(12.0, 100),
                Some(u(10.0, 90)),
                Outcome::Pass,
                "CPU 12 % ≤ 80 %, memory 100 MiB ≤ 512 MiB, memory 100 MiB ≤ 1.5 × old on web-1 (old instances: CPU 10 %, memory 90 MiB)",
            ),
            (u(93.5, 100), Some(u(10.0, 90)), Outcome::Breach, "CPU 93.5 % > 80 % on web-1 (old instances: 10 %)"),
            (u(12.0, 300), Some(u(10.0, 90)), Outcome::Breach, "memory 300 MiB > 1.5 × old on web-1 (old instances: 90 MiB)"),
            (u(12.0, 600), None, Outcome::Breach, "memory 600 MiB > 512 MiB on web-1; no instance left on the old release to compare memory with"),
            (
                Usage { cpu: None, memory: Some(MIB) },
                None,
                Outcome::Pass,
                "memory 1 MiB ≤ 512 MiB on web-1; the engine did not tell web-1's CPU use; no instance left on the old release to compare memory with",
            ),
        ];
        for (new, old, outcome, text) in cases {
            let v = judge(&gate, "web-1", &new, old.as_ref());
            assert_eq!((v.outcome, v.to_string().as_str()), (outcome, text));
        }
    }
}
