//! `CNI_ARGS` (`CniArgs::parse`): `K=V;K=V` from the runtime.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_cni::args::CniArgs;

fuzz_target!(|raw: &str| {
    let Ok(args) = CniArgs::parse(raw) else {
        return;
    };
    let _ = args.pod_display();
    // No parsed value can carry a separator: keys and values are what the string said.
    for v in [
        &args.k8s_pod_name,
        &args.k8s_pod_namespace,
        &args.k8s_pod_infra_container_id,
        &args.k8s_pod_uid,
    ]
    .into_iter()
    .flatten()
    .chain(args.other.values())
    {
        assert!(!v.contains([';', '=']), "{v:?}");
    }
    // Re-serialised, the pairs parse to the same thing.
    let mut pairs = Vec::new();
    for (k, v) in [
        ("K8S_POD_NAME", &args.k8s_pod_name),
        ("K8S_POD_NAMESPACE", &args.k8s_pod_namespace),
        (
            "K8S_POD_INFRA_CONTAINER_ID",
            &args.k8s_pod_infra_container_id,
        ),
        ("K8S_POD_UID", &args.k8s_pod_uid),
    ] {
        if let Some(v) = v {
            pairs.push(format!("{k}={v}"));
        }
    }
    if raw
        .split(';')
        .any(|p| p.split_once('=').is_some_and(|(k, _)| k == "IgnoreUnknown"))
    {
        pairs.push(format!("IgnoreUnknown={}", args.ignore_unknown));
    }
    for (k, v) in &args.other {
        pairs.push(format!("{k}={v}"));
    }
    let again = pairs.join(";");
    if again.len() <= raw.len() {
        assert_eq!(CniArgs::parse(&again).as_ref(), Ok(&args), "{again:?}");
    }
});
