//! A file in libcni's result cache -> `CacheEntry::parse`, which the agent's adoption reads
//! for every pod set up before meshcap was installed (a corrupt or truncated entry is one of
//! the node's faults it must survive). An accepted entry names its pod.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_cni_runtime::cache::CacheEntry;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(entry)) = CacheEntry::parse(data) {
        assert!(!entry.container_id.is_empty() && !entry.if_name.is_empty());
        assert!(!entry.network.is_empty());
        let _ = entry.netns_path();
    }
});
