//! CNI network configuration on stdin (`Config::parse`): admin-written, but the runtime adds
//! `runtimeConfig["io.kubernetes.cri.pod-annotations"]` from the pod, and `prevResult` from
//! the previous plugin. Parsed annotations go on to the model, as in ADD.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_cni::config::{peek_version, Config};
use meshcap_model::RedirectModel;

fuzz_target!(|data: &[u8]| {
    let _ = peek_version(data);
    let Ok(config) = Config::parse(data) else {
        return;
    };
    let _ = config.excludes_namespace("default");
    let _ = config.skip_pod_pattern("kube-system", "meshcap-node-x");
    let _ = config.mode.backend();
    if let Some(annotations) = &config.pod_annotations {
        let _ = config.selection.wants_capture(annotations);
        if let Ok(model) = RedirectModel::from_annotations(annotations) {
            meshcap_fuzz::check_model(&model);
        }
    }
});
