//! `meshcap-bench-control --cpu-us N`: the control of meshcap-bench's parallel section
//! (docs/BENCHMARKS.md, "Parallel pod starts"). It stands in for the plugin in a burst: reads
//! its configuration from stdin to the end, burns CPU until the process has used N µs in all
//! (its exec included), prints a CNI result and exits. It makes none of the plugin's system
//! calls, so nothing in it waits on the kernel or on another process: a burst of it shows the
//! wall / CPU-floor ratio that the harness and the machine alone give a plugin of that CPU.
//!
//! A separate crate with no dependency but nix, built static like the plugin
//! (scripts/build-static.sh), so that starting it costs far less than the CPU it burns.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::time::TimeValLike;

/// User and system CPU of this process since it started, as the parent's `RUSAGE_CHILDREN`
/// will count it.
fn own_cpu() -> Duration {
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let us = u.user_time().num_microseconds() + u.system_time().num_microseconds();
        Duration::from_micros(us.max(0) as u64)
    })
}

fn cpu_arg() -> Option<Duration> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (Some("--cpu-us"), Some(us), None) => us.parse().ok().map(Duration::from_micros),
        _ => None,
    }
}

fn main() -> ExitCode {
    let Some(cpu) = cpu_arg() else {
        eprintln!("usage: meshcap-bench-control --cpu-us N (CNI configuration on stdin)");
        return ExitCode::from(2);
    };
    let mut conf = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut conf) {
        eprintln!("meshcap-bench-control: reading stdin: {e}");
        return ExitCode::FAILURE;
    }
    // A start that alone cost more (a page-fault storm, say) burns nothing: the benchmark
    // takes the CPU every control process really used as the floor, not the target.
    let mut spins = 0u64;
    while own_cpu() < cpu {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
    if std::io::stdout()
        .write_all(b"{\"cniVersion\":\"1.0.0\"}\n")
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
