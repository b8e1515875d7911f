//! Cache files and conflists as libcni and a node have them, for the unit tests of adoption.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::install::PLUGIN_TYPE;

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(super) fn conflist(with_meshcap: bool) -> Value {
    let mut plugins =
        vec![json!({"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}})];
    if with_meshcap {
        plugins.push(json!({"type": PLUGIN_TYPE, "selection": "all"}));
    }
    json!({"cniVersion": "1.0.0", "name": "podnet", "plugins": plugins})
}

/// A cache file as Go libcni's `cacheAdd` writes it (`netns` only from libcni 1.2).
pub(super) fn cache_file(config: &Value, netns: Option<&str>) -> Vec<u8> {
    let mut v = json!({
        "kind": "cniCacheV1",
        "containerId": "0123abcd",
        "config": B64.encode(serde_json::to_vec(config).unwrap()),
        "ifName": "eth0",
        "networkName": "podnet",
        "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_NAMESPACE", "shop"], ["K8S_POD_NAME", "cart-0"]],
        "capabilityArgs": {
            "io.kubernetes.cri.pod-annotations": {"sidecar.istio.io/status": "{}"},
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
        },
        "result": {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/var/run/netns/cni-result"}
            ],
            "ips": [{"address": "10.88.0.5/16", "gateway": "10.88.0.1", "interface": 2}]
        }
    });
    if let Some(n) = netns {
        v["netns"] = json!(n);
    }
    serde_json::to_vec(&v).unwrap()
}
