//! `meshcap render -f`'s manifest reader (YAML/JSON documents, `kind: List`, workload
//! templates). The `meshcap` crate is a binary only, so its module is compiled in here.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/meshcap/src/manifests.rs"]
mod manifests;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(objects) = manifests::parse(text) else {
        return;
    };
    for o in objects {
        let _ = o.title();
        if let manifests::Content::Pod { pod, .. } = o.content {
            let defaults = meshcap_model::mesh::istio::NodeDefaults::default();
            if let Ok(r) = meshcap_model::mesh::istio::resolve(&pod, &defaults) {
                let model = r.model;
                meshcap_fuzz::check_model(&model);
            }
        }
    }
});
