//! A Linkerd or Kuma pod -> its front end through `mesh::resolve`: Linkerd's annotations and
//! Kuma's transparent-proxy config (a YAML document the pod's author writes) with any values,
//! and the node's resolv.conf. Any accepted model must render cleanly and come out the same
//! from the settings its record keeps (see meshcap_fuzz::check_mesh_pod).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_fuzz::MeshPodInput;

fuzz_target!(|input: MeshPodInput| {
    meshcap_fuzz::check_mesh_pod(&input);
});
