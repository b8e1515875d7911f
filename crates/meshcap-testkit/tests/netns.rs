//! The scratch namespace and the three ways into a namespace (`meshcap-netns`), against the
//! real kernel. Without root or `ip` the tests say so by name and pass, except under
//! `CI=true`, where they fail.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use meshcap_testkit::{gate, ScratchNetns};

/// The inode of the calling thread's network namespace.
fn thread_netns() -> u64 {
    std::fs::metadata(meshcap_netns::THREAD_NETNS)
        .unwrap()
        .ino()
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn scratch_netns_lives_as_long_as_its_guard() {
    if !gate::require_root_and_tools("scratch_netns_lives_as_long_as_its_guard", &["ip"]) {
        return;
    }
    let ns = ScratchNetns::new("kit-life").unwrap();
    let path = ns.path().to_owned();
    assert!(ns.name().starts_with("kit-life-"), "{}", ns.name());
    assert_ne!(ino(&path), thread_netns());
    // lo is up, and programs run inside.
    let links = ns.exec(&["ip", "-o", "link", "show", "lo"], None).unwrap();
    assert!(links.contains("UP"), "{links}");
    let listed = ns.listing(&["iptables-save"]).unwrap_or_default();
    assert!(
        !listed.contains('#') && !listed.contains(" [0:0]"),
        "{listed}"
    );
    drop(ns);
    assert!(!path.exists(), "deleted on drop");
}

#[test]
fn run_in_returns_the_thread_also_after_a_panic() {
    if !gate::require_root_and_tools("run_in_returns_the_thread_also_after_a_panic", &["ip"]) {
        return;
    }
    let ns = ScratchNetns::new("kit-runin").unwrap();
    let file = ns.open().unwrap();
    let home = thread_netns();
    let inside = meshcap_netns::run_in(file.as_fd(), thread_netns).unwrap();
    assert_eq!(inside, ino(ns.path()));
    assert_eq!(thread_netns(), home, "back home");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        meshcap_netns::run_in(file.as_fd(), || panic!("inside")).unwrap();
    }));
    assert!(panicked.is_err());
    assert_eq!(thread_netns(), home, "back home after the panic");
}

#[test]
fn run_on_thread_and_enter_for_good_leave_the_caller_alone() {
    if !gate::require_root_and_tools(
        "run_on_thread_and_enter_for_good_leave_the_caller_alone",
        &["ip"],
    ) {
        return;
    }
    let ns = ScratchNetns::new("kit-thread").unwrap();
    let home = thread_netns();
    assert_eq!(ns.run(thread_netns).unwrap(), ino(ns.path()));
    assert_eq!(thread_netns(), home);
    let file = ns.open().unwrap();
    let inside = std::thread::scope(|s| {
        s.spawn(|| {
            meshcap_netns::enter_for_good(file.as_fd()).unwrap();
            thread_netns()
        })
        .join()
        .unwrap()
    });
    assert_eq!(inside, ino(ns.path()));
    assert_eq!(thread_netns(), home);
}
