//! Where one invocation spends its time. [`started`] is the moment the library took over
//! from `main`; [`Phases`] splits an ADD or DEL into its steps and logs them at debug level
//! when the command ends. Each mark is one `Instant` read (a vDSO clock read, no system
//! call), so with the debug level off the cost is a handful of clock reads.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Remembers now as the start of this invocation (the first call wins).
pub fn mark_start() -> Instant {
    *STARTED.get_or_init(Instant::now)
}

/// When the invocation started ([`mark_start`]; now, if it was never called).
pub fn started() -> Instant {
    mark_start()
}

/// The steps of one ADD or DEL, in order, each with the time since the previous mark.
pub struct Phases {
    last: Instant,
    spent: [(&'static str, Duration); 8],
    len: usize,
}

impl Phases {
    /// Phases counted from the invocation's start: the first mark covers reading stdin and
    /// the environment and parsing the configuration.
    pub fn since_start() -> Phases {
        Phases {
            last: started(),
            spent: [("", Duration::ZERO); 8],
            len: 0,
        }
    }

    /// Ends the phase called `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        if let Some(slot) = self.spent.get_mut(self.len) {
            *slot = (name, now.saturating_duration_since(self.last));
            self.len += 1;
        }
        self.last = now;
    }

    /// The phases marked so far.
    pub fn spent(&self) -> &[(&'static str, Duration)] {
        &self.spent[..self.len]
    }

    /// Logs the phases at debug level: `phases="parse=112us selection=35us ..."` and the
    /// total since the invocation's start.
    pub fn log(&self, command: &'static str, mode: &'static str) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let phases: Vec<String> = self
            .spent()
            .iter()
            .map(|(name, d)| format!("{name}={}us", d.as_micros()))
            .collect();
        tracing::debug!(
            command,
            mode,
            phases = %phases.join(" "),
            total_us = started().elapsed().as_micros() as u64,
            "phases"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_recorded_in_order() {
        let mut p = Phases::since_start();
        p.mark("parse");
        std::thread::sleep(Duration::from_millis(2));
        p.mark("apply");
        let names: Vec<&str> = p.spent().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["parse", "apply"]);
        assert!(p.spent()[1].1 >= Duration::from_millis(2));
        // More marks than slots are dropped, not a panic.
        for _ in 0..10 {
            p.mark("x");
        }
        assert_eq!(p.spent().len(), 8);
    }
}
