//! Summaries of latency samples: median and tail percentiles by nearest rank, in milliseconds
//! (CNI invocations) or microseconds (datapath transactions).

use std::time::Duration;

use serde::Serialize;

/// Summary of one set of samples. Values are in the unit named by the caller (`ms` or `us`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of sorted values: the smallest sample with at least `p`% of the
/// samples at or below it. No interpolation, so every figure is a value that was measured.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize_scaled(samples: &[Duration], scale: f64) -> Summary {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * scale).collect();
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    Summary {
        n: v.len(),
        min: v.first().copied().unwrap_or(f64::NAN),
        median: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean,
    }
}

/// Summary in milliseconds.
pub fn summarize_ms(samples: &[Duration]) -> Summary {
    summarize_scaled(samples, 1e3)
}

/// Summary in microseconds.
pub fn summarize_us(samples: &[Duration]) -> Summary {
    summarize_scaled(samples, 1e6)
}

/// CPU time (user + system) of every child process reaped so far, including their own reaped
/// descendants (`RUSAGE_CHILDREN`). A difference around a sequential invocation is the CPU the
/// whole process tree of that invocation used.
pub fn children_cpu() -> Duration {
    cpu(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
}

/// CPU time (user + system) of this process so far, every thread.
pub fn own_cpu() -> Duration {
    cpu(nix::sys::resource::UsageWho::RUSAGE_SELF)
}

fn cpu(who: nix::sys::resource::UsageWho) -> Duration {
    use nix::sys::time::TimeValLike;
    nix::sys::resource::getrusage(who).map_or(Duration::ZERO, |u| {
        let us = u.user_time().num_microseconds() + u.system_time().num_microseconds();
        Duration::from_micros(us.max(0) as u64)
    })
}

/// Time every CPU of the machine has spent idle so far, summed over the CPUs, from the cpuidle
/// driver's per-state residency (µs, exact, unlike `/proc/stat`'s ticks); `None` where the
/// kernel has no cpuidle driver.
pub fn machine_idle() -> Option<Duration> {
    let cpus = std::fs::read_dir("/sys/devices/system/cpu").ok()?;
    let mut total_us = 0u64;
    let mut states = 0usize;
    for cpu in cpus.flatten() {
        let name = cpu.file_name();
        let is_cpu = name
            .to_str()
            .and_then(|n| n.strip_prefix("cpu"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_cpu {
            continue;
        }
        let Ok(idle_states) = std::fs::read_dir(cpu.path().join("cpuidle")) else {
            continue;
        };
        for state in idle_states.flatten() {
            if let Some(us) = std::fs::read_to_string(state.path().join("time"))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                total_us += us;
                states += 1;
            }
        }
    }
    (states > 0).then(|| Duration::from_micros(total_us))
}

/// `a / b`, `None` when either side is missing or `b` is not positive (serialized as `null`).
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summary_in_ms() {
        let s = summarize_ms(&[Duration::from_millis(3), Duration::from_millis(1)]);
        assert_eq!(
            (s.n, s.min, s.median, s.max, s.mean),
            (2, 1.0, 1.0, 3.0, 2.0)
        );
        assert_eq!(ratio(Some(3.0), Some(1.5)), Some(2.0));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
