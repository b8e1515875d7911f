//! The meshcap demo: builds a node out of network namespaces, starts pods through the real
//! CNI chain (`bridge` -> `meshcap-cni`) with a stand-in sidecar, sends a representative set
//! of flows (or the whole matrix with `--full`), and prints per mode where each flow landed,
//! then the comparison against iptables mode. Everything is cleaned up, also on Ctrl-C.
//!
//! Modes: env `MESHCAP_E2E_MODES` (default `iptables,nftables,iptables+ebpf`; the `+ebpf`
//! modes start the node agent, `meshcap agent`, and are left out with a note when the fast
//! path cannot run here). Exit status 1 when a flow missed its expectation, a mode differs from
//! iptables mode, or the fast path did not do its part.
#![forbid(unsafe_code)]

use anyhow::{bail, Result};
use meshcap_tests::{compare, flows, netns};

fn cleanup() {
    // Children die with the terminal's SIGINT; kill any left (runs as a signal handler would
    // not, on a normal thread, so plain process and file calls are fine).
    let me = std::process::id().to_string();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let stat = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            if ppid == Some(me.as_str()) {
                if let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
    netns::delete_all_of_this_process();
    // The agent (a child) is gone: unpin the fast path too, if this demo installed it.
    meshcap_tests::fastpath::uninstall_if_installed_here();
    let tag = format!("-{}-", std::process::id());
    if let Ok(dirs) = std::fs::read_dir("/tmp/meshcap-e2e") {
        for d in dirs.flatten() {
            if d.file_name().to_string_lossy().contains(&tag) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

fn main() -> Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up namespaces and processes");
        netns::stop_creating();
        // Workers may be between a check and a spawn: sweep until nothing is left.
        for _ in 0..3 {
            cleanup();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        std::process::exit(130);
    })?;
    if let Some(why) = meshcap_tests::missing_prerequisite() {
        bail!("demo cannot run: {why}");
    }
    let full = std::env::args().any(|a| a == "--full");
    let (pods, flows) = if full {
        (flows::pods(), flows::flows())
    } else {
        flows::representative()
    };
    let modes = compare::runnable(compare::matrix_modes(), |m, why| {
        println!("leaving out mode {}: {why}", m.name)
    });
    println!(
        "meshcap demo: {} pods, {} flows, modes {}",
        pods.len(),
        flows.len(),
        modes
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("pods (mesh, proxy uid and ports; annotations besides sidecar.istio.io/status):");
    for p in &pods {
        let ann: Vec<String> = p
            .annotations
            .iter()
            .filter(|(k, _)| *k != flows::STATUS)
            .map(|(k, v)| {
                if v.contains('\n') {
                    format!("{k}={v:?}")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let meshed = p.annotations.iter().any(|(k, _)| *k == flows::STATUS);
        let mesh = if meshed || p.proxy.mesh != "istio" {
            format!(
                "[{} uid {} out {} in {}] ",
                p.proxy.mesh, p.proxy.uid, p.proxy.outbound, p.proxy.inbound
            )
        } else {
            "(no sidecar status) ".to_string()
        };
        println!("  {:<9} {mesh}{}", p.name, ann.join(" "));
    }
    println!("addresses: P4/P6 the pod, R4/R6 a remote host on the pod subnet, IN4/IN6 EX4/EX6 remote addresses beyond it, LO4/LO6 loopback");
    let started = std::time::Instant::now();
    let result = compare::run_modes("demo", &modes, &pods, &flows);
    if netns::is_stopping() {
        // Ctrl-C: the handler is cleaning up and exits the process with 130.
        std::thread::sleep(std::time::Duration::from_secs(10));
    }
    cleanup();
    let cmp = result?;
    print!("{}", cmp.render_outcomes());
    println!("\n== all modes side by side (ok = as expected) ==");
    print!("{}", cmp.render_side_by_side());
    let fastpath = cmp.render_fastpath();
    if !fastpath.is_empty() {
        println!("\n== eBPF fast path ==");
        print!("{fastpath}");
    }
    let failures = cmp.render_failures();
    println!("\nran in {:.1}s", started.elapsed().as_secs_f64());
    if cmp.ok() {
        println!(
            "every flow as expected; every mode identical to {}",
            compare::REFERENCE_MODE
        );
        Ok(())
    } else {
        print!("{failures}");
        std::process::exit(1);
    }
}
