//! `meshcap render -f` on the `istioctl kube-inject` output of tests/fixtures: golden output
//! per format, and, as root, proof that the printed rules are the rules an ADD of that pod
//! installs: the printed iptables-restore text is loaded into one namespace, the pod's
//! annotations (what the runtime passes to the plugin) go through the plugin's installer
//! (`meshcap_dataplane::apply`) into another, and the stock tools must show the same rules.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use meshcap_dataplane::{Backend, PodNetns};
use meshcap_model::{Annotations, RedirectModel};
use meshcap_testkit::{ScratchDir, ScratchNetns};

const BIN: &str = env!("CARGO_BIN_EXE_meshcap");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn render(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).arg("render").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `contents` to a file `name` in a scratch directory of its own; the directory goes when
/// the guard drops, also when the test fails.
fn scratch_file(name: &str, contents: &str) -> (ScratchDir, PathBuf) {
    let dir = ScratchDir::new(&format!("render-{name}"));
    let file = dir.path().join(name);
    std::fs::write(&file, contents).unwrap();
    (dir, file)
}

/// Compares with a golden file; `MESHCAP_BLESS=1` rewrites it.
fn golden(name: &str, actual: &str) {
    let path = fixture(name);
    if std::env::var_os("MESHCAP_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with MESHCAP_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "{} differs", path.display());
}

const INJECTED: &str = "kube-inject-deployment.yaml";

#[test]
fn injected_deployment_golden_iptables_and_nftables() {
    let f = fixture(INJECTED);
    let f = f.to_str().unwrap();
    let (code, out, err) = render(&["-f", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("# Deployment inject (spec.template)\n# captured (selection \"injected\"): istio-proxy container; proxy uid 1337 gid 1337\n"), "{out}");
    assert!(
        out.contains("# Service inject: carries no pod; nothing to capture"),
        "{out}"
    );
    golden("kube-inject-deployment.iptables.golden", &out);

    let (code, out, err) = render(&["-f", f, "--format", "nftables"]);
    assert_eq!(code, 0, "{err}");
    golden("kube-inject-deployment.nftables.golden", &out);

    // stdin works the same.
    let mut child = Command::new(BIN)
        .args(["render", "-f", "-", "--family", "v4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        std::fs::read(fixture(INJECTED)).unwrap().as_slice(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# iptables-restore --noflush") && !text.contains("ip6tables"));
}

#[test]
fn selection_and_errors() {
    let (_scratch, file) = scratch_file(
        "m.yaml",
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: plain, namespace: shop}
spec: {template: {spec: {containers: [{name: app}]}}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: bad}
spec:
  template:
    metadata:
      annotations: {sidecar.istio.io/status: "{}", sidecar.istio.io/interceptionMode: BOGUS}
    spec: {containers: [{name: istio-proxy}]}
"#,
    );
    let (code, out, err) = render(&["-f", file.to_str().unwrap()]);
    assert!(out.contains("# ConfigMap cfg: carries no pod"), "{out}");
    assert!(out.contains("# Secret s: carries no pod"), "{out}");
    assert!(
        out.contains("# Deployment shop/plain (spec.template)\n# not captured (selection \"injected\"): no istio-proxy container"),
        "{out}"
    );
    assert!(
        out.contains("# error: invalid annotation sidecar.istio.io/interceptionMode"),
        "{out}"
    );
    // An invalid template fails the command (its pods' ADD would fail), after all was printed.
    assert_ne!(code, 0);
    assert!(err.contains("Job bad"), "{err}");

    // --selection all captures the sidecar-less Deployment.
    let (code, out, _) = render(&[
        "-f",
        fixture(INJECTED).to_str().unwrap(),
        "--selection",
        "all",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("# captured (selection \"all\")"), "{out}");
    // -f and annotations do not mix.
    let (code, _, err) = render(&["-f", "x.yaml", "-a", "a=b"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
}

// ---- privileged: the printed rules are what an ADD installs ----

struct Netns(ScratchNetns);

impl Netns {
    fn create(tag: &str) -> Netns {
        Netns(ScratchNetns::new(tag).expect("create a scratch network namespace"))
    }

    fn exec(&self, cmd: &[&str], stdin: Option<&str>) -> String {
        self.0
            .exec(cmd, stdin)
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
    }

    /// iptables-save and ip6tables-save without comments and counters.
    fn rules(&self) -> String {
        ["iptables-save", "ip6tables-save"]
            .map(|tool| {
                self.0
                    .listing(&[tool])
                    .unwrap_or_else(|e| panic!("{tool}: {e}"))
            })
            .concat()
    }
}

#[test]
fn privileged_render_f_prints_what_an_add_installs() {
    const TEST: &str = "privileged_render_f_prints_what_an_add_installs";
    if let Some(reason) = meshcap_tests::missing_root_or_tools(&[
        "ip",
        "iptables-restore",
        "iptables-save",
        "ip6tables-save",
    ]) {
        return meshcap_tests::skip_or_fail(TEST, &reason);
    }
    let (code, out, err) = render(&["-f", fixture(INJECTED).to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // Split the printed text into its iptables-restore and ip6tables-restore inputs.
    let mut inputs: Vec<(&str, String)> = Vec::new();
    for line in out.lines() {
        if let Some(tool) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" --noflush"))
        {
            inputs.push((
                if tool == "iptables-restore" {
                    "iptables-restore"
                } else {
                    "ip6tables-restore"
                },
                String::new(),
            ));
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else if let Some((_, text)) = inputs.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    assert_eq!(inputs.len(), 2, "{out}");

    let printed = Netns::create("mcap-render-f");
    for (tool, text) in &inputs {
        printed.exec(&[tool, "--noflush"], Some(text));
    }

    // The ADD path: the template's annotations as the runtime passes them, installed by the
    // plugin's installer.
    let yaml: serde_json::Value = serde_yaml::from_str(
        std::fs::read_to_string(fixture(INJECTED))
            .unwrap()
            .split("\n---\n")
            .next()
            .unwrap(),
    )
    .unwrap();
    let annotations: Annotations =
        serde_json::from_value(yaml["spec"]["template"]["metadata"]["annotations"].clone())
            .unwrap();
    let added = Netns::create("mcap-render-add");
    let ns = PodNetns::open(added.0.path()).unwrap();
    let model = RedirectModel::from_annotations(&annotations).unwrap();
    meshcap_dataplane::apply(&ns, Backend::Iptables, &model.rulesets()).unwrap();

    let a = printed.rules();
    let b = added.rules();
    assert!(a.contains("MESHCAP_OUTPUT"), "{a}");
    assert_eq!(a, b, "render -f output and the ADD's rules differ");
}

/// deploy/: every file parses, the kustomize base lists every manifest, RBAC only reads pods
/// and namespaces, and meshcap's own node pod is never captured (render -f says why).
#[test]
fn deploy_manifests() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let read = |name: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(deploy.join(name)).unwrap();
        text.split("\n---\n")
            .map(|doc| serde_yaml::from_str::<serde_json::Value>(doc).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    };
    let kustomization = &read("kustomization.yaml")[0];
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&deploy)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    let mut listed: Vec<String> = resources.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed, "kustomization.yaml must list every manifest");
    // The image has no shell: both containers run meshcap itself.
    for c in ["nftables", "fastpath", "k3s", "gke"] {
        assert!(
            deploy
                .join("components")
                .join(c)
                .join("kustomization.yaml")
                .is_file(),
            "{c}"
        );
    }

    let rbac = read("rbac.yaml");
    let role = rbac.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], serde_json::json!([""]));
        // Services: only `default/kubernetes`'s ports are read, get only.
        if rule["resources"] == serde_json::json!(["services"]) {
            assert_eq!(rule["resourceNames"], serde_json::json!(["kubernetes"]));
            assert_eq!(rule["verbs"], serde_json::json!(["get"]));
            continue;
        }
        for r in rule["resources"].as_array().unwrap() {
            assert!(["pods", "namespaces"].contains(&r.as_str().unwrap()), "{r}");
        }
        for v in rule["verbs"].as_array().unwrap() {
            assert!(
                ["get", "list", "watch"].contains(&v.as_str().unwrap()),
                "{v}"
            );
        }
    }
    let ds = &read("daemonset.yaml")[0];
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["serviceAccountName"], "meshcap");
    assert_eq!(spec["hostNetwork"], true);
    // The excluded namespaces include the DaemonSet's own; no container runs a shell.
    for c in spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["containers"].as_array().unwrap())
    {
        assert_eq!(c["command"][0], "/usr/local/bin/meshcap", "{}", c["name"]);
        let env = c["env"].as_array().unwrap();
        let excluded = env
            .iter()
            .find(|e| e["name"] == "MESHCAP_EXCLUDE_NAMESPACES")
            .unwrap()["value"]
            .as_str()
            .unwrap();
        assert!(
            excluded
                .split_whitespace()
                .any(|n| n == ds["metadata"]["namespace"]),
            "{}: {excluded}",
            c["name"]
        );
    }
    let (code, out, err) = render(&["-f", deploy.join("daemonset.yaml").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("not captured (selection \"injected\"): hostNetwork pod"),
        "{out}"
    );
}

/// Istio's injector writes `runAsUser: 0` with `runAsGroup: 1337` on `istio-proxy` for TPROXY
/// pods; istio-cni reads uid 0 as unset and exempts 1337. Exempting uid 0 would let every root
/// process of the app bypass outbound capture.
#[test]
fn tproxy_pod_with_run_as_user_zero_exempts_1337_not_root() {
    let (_scratch, manifest) = scratch_file(
        "uid0.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: tproxy-root
  namespace: default
  annotations:
    sidecar.istio.io/status: '{"containers":["istio-proxy"]}'
    sidecar.istio.io/interceptionMode: TPROXY
spec:
  containers:
  - name: app
    image: app
  - name: istio-proxy
    image: proxyv2
    args: ["proxy", "sidecar"]
    securityContext:
      runAsUser: 0
      runAsGroup: 1337
"#,
    );
    for format in ["iptables", "nftables"] {
        let (code, out, err) = render(&["-f", manifest.to_str().unwrap(), "--format", format]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("proxy uid 1337 gid 1337"), "{format}: {out}");
        let exempts_root = out
            .lines()
            .any(|l| l.contains("--uid-owner 0 ") || l.contains("skuid 0 "));
        assert!(!exempts_root, "{format} exempts uid 0:\n{out}");
    }
}

/// Linkerd and Kuma pods: `-f` takes the node's `linkerd` and `kuma` settings as the plugin
/// does (`--linkerd`, `--kuma`), and `-a` renders a pod from its annotations as the plugin's
/// runtime path does (the namespace stands in for the control-plane label).
#[test]
fn linkerd_and_kuma_pods_with_the_nodes_settings() {
    let pod = fixture("../../../../tests/peer/linkerd/cni-default.pod.yaml");
    let pod = pod.to_str().unwrap();
    let (code, out, err) = render(&["-f", pod]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# captured (linkerd pod): proxy uid 2102 gid none; inbound port 4143, outbound port 4140"), "{out}");
    let (code, out, err) = render(&[
        "-f",
        pod,
        "--linkerd",
        r#"{"proxy_uid": 3000, "outbound_proxy_port": 4150}"#,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("proxy uid 3000 gid none; inbound port 4143, outbound port 4150"),
        "{out}"
    );
    assert!(
        out.contains("--uid-owner 3000") && out.contains("--to-ports 4150"),
        "{out}"
    );
    // A typo in the node settings is refused, as the plugin refuses it.
    let (code, _, err) = render(&["-f", pod, "--linkerd", r#"{"proxy_id": 3000}"#]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--linkerd") && err.contains("proxy_id"),
        "{err}"
    );

    // Kuma's excluded namespaces.
    let kuma = fixture("../../../../tests/peer/kuma/inject-34.pod.yaml");
    let kuma = kuma.to_str().unwrap();
    let (code, out, err) = render(&["-f", kuma]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# captured (kuma pod)"), "{out}");
    let mut in_shop: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kuma).unwrap()).unwrap();
    in_shop["metadata"]["namespace"] = "shop".into();
    let (_scratch, file) = scratch_file("kuma.json", &in_shop.to_string());
    let file_arg = file.to_str().unwrap();
    let (code, out, _) = render(&[
        "-f",
        file_arg,
        "--kuma",
        r#"{"exclude_namespaces": ["shop"]}"#,
    ]);
    let (code2, out2, _) = render(&["-f", file_arg]);
    assert_eq!((code, code2), (0, 0));
    assert!(
        out.contains("# not captured (kuma-cni would skip it): namespace shop is excluded"),
        "{out}"
    );
    assert!(out2.contains("# captured (kuma pod)"), "{out2}");

    // The runtime path's view: annotations only; a control-plane namespace skips 443/6443.
    for (ns, skips) in [("linkerd", true), ("emojivoto", false)] {
        let (code, out, err) = render(&[
            "-a",
            "linkerd.io/proxy-version=stable",
            "--namespace",
            ns,
            "--family",
            "v4",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("# captured (linkerd pod, from its annotations)"),
            "{out}"
        );
        assert!(out.contains("MESHCAP_LINKERD"), "{out}");
        assert_eq!(out.contains("--dport 6443"), skips, "{ns}: {out}");
        assert_eq!(
            out.contains("# control-plane pod: also skips outbound 443 and 6443"),
            skips,
            "{ns}: {out}"
        );
    }
}

/// A Kuma config with `dryRun: true` installs nothing, once it is valid: kuma-cni validates the
/// config before it looks at dryRun, so a bad one still fails. Both paths say so.
#[test]
fn a_kuma_dry_run_renders_nothing_unless_its_config_is_bad() {
    let config = |yaml: &str| format!("traffic.kuma.io/transparent-proxy-config={yaml}");
    for (yaml, fails) in [
        ("dryRun: true\n", false),
        ("dryRun: true\nipFamilyMode: both\n", true),
    ] {
        let (code, out, err) =
            render(&["-a", "kuma.io/sidecar-injected=true", "-a", &config(yaml)]);
        if fails {
            assert_ne!(code, 0, "{yaml:?}: {out}");
            assert!(err.contains("ipFamilyMode"), "{yaml:?}: {err}");
        } else {
            assert_eq!(code, 0, "{yaml:?}: {err}");
            assert!(
                out.contains(
                    "# not captured: traffic.kuma.io/transparent-proxy-config sets dryRun"
                ),
                "{yaml:?}: {out}"
            );
            assert!(!out.contains("iptables-restore"), "{out}");
        }
    }

    let kuma = fixture("../../../../tests/peer/kuma/inject-34.pod.yaml");
    let mut pod: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(kuma).unwrap()).unwrap();
    let annotations = &mut pod["metadata"]["annotations"];
    let key = "traffic.kuma.io/transparent-proxy-config";
    let yaml = format!("{}\ndryRun: true\n", annotations[key].as_str().unwrap());
    annotations[key] = yaml.into();
    let (_scratch, file) = scratch_file("kuma-dry-run.json", &pod.to_string());
    let (code, out, err) = render(&["-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# not captured: "), "{out}");
    assert!(!out.contains("# captured"), "{out}");
}

/// A Kuma `dualstack` pod gets IPv6 rules only with an IPv6 address, which a manifest shows
/// only in `status.podIPs`: without one, `render -f` says why there are none.
#[test]
fn kuma_dualstack_pod_without_an_ipv6_address_says_why_it_has_no_ipv6_rules() {
    const NOTE: &str = "# IPv6: no rules, as the manifest gives the pod no IPv6 address";
    let dualstack = fixture("../../../../tests/peer/kuma/gateway-dualstack.pod.yaml");
    let (code, out, err) = render(&["-f", dualstack.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(NOTE), "{out}");
    assert!(!out.contains("ip6tables-restore"), "{out}");

    let mut pod: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&dualstack).unwrap()).unwrap();
    pod["status"]["podIPs"] = serde_json::json!([{"ip": "10.244.0.5"}, {"ip": "fd00::5"}]);
    let (_scratch, file) = scratch_file("kuma-dualstack.json", &pod.to_string());
    let (code, out, err) = render(&["-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains(NOTE), "{out}");
    assert!(out.contains("ip6tables-restore"), "{out}");

    // `ipFamilyMode: ipv4`: no IPv6 rules whatever the pod's addresses, so nothing to explain.
    let ipv4 = fixture("../../../../tests/peer/kuma/inject-34.pod.yaml");
    let (code, out, err) = render(&["-f", ipv4.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains(NOTE) && !out.contains("ip6tables-restore"),
        "{out}"
    );
}

/// Values Istio accepts but reads otherwise than they are written are rendered as istio-cni
/// reads them, and `render` says so, from flags and from a manifest alike.
#[test]
fn values_read_otherwise_are_explained() {
    let (code, out, err) = render(&[
        "--family",
        "v4",
        "-a",
        "sidecar.istio.io/status={}",
        "-a",
        "traffic.sidecar.istio.io/excludeOutboundIPRanges=10.1.2.3/8",
        "-a",
        "traffic.sidecar.istio.io/excludeOutboundPorts=010",
    ]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "# warning: traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.1.2.3/8 is 10.0.0.0/8",
        "# warning: traffic.sidecar.istio.io/excludeOutboundPorts: 010 is port 8",
        "-d 10.0.0.0/8 ",
        "--dport 8 ",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    let (_scratch, file) = scratch_file(
        "notes.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    sidecar.istio.io/status: "{}"
    istio.io/reroute-virtual-interfaces: net1
    traffic.sidecar.istio.io/kubevirtInterfaces: "not/a name"
spec:
  containers:
  - {name: app}
  - {name: istio-proxy, args: [proxy, sidecar]}
"#,
    );
    let (code, out, err) = render(&["--family", "v4", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "# warning: traffic.sidecar.istio.io/kubevirtInterfaces is ignored: \
             istio.io/reroute-virtual-interfaces is set"
        ),
        "{out}"
    );
    assert!(out.contains("-i net1 "), "{out}");
}

/// A Linkerd pod takes the `config.linkerd.io/*` settings it leaves unset from its Namespace
/// when the manifest holds it (linkerd-cni's `getAnnotationOverride`), its own values first;
/// without the Namespace, render says what it cannot show.
#[test]
fn linkerd_pods_take_unset_settings_from_their_namespace_in_the_manifest() {
    let (_scratch, file) = scratch_file(
        "linkerd-namespace.yaml",
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  annotations:
    config.linkerd.io/skip-outbound-ports: "3306"
    config.linkerd.io/skip-inbound-ports: "7777"
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  annotations:
    linkerd.io/proxy-version: stable
    config.linkerd.io/skip-inbound-ports: "9000"
spec:
  containers: [{name: app}, {name: linkerd-proxy}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: other
  annotations:
    linkerd.io/proxy-version: stable
spec:
  containers: [{name: app}, {name: linkerd-proxy}]
"#,
    );
    let (code, out, err) = render(&["-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (in_shop, elsewhere) = out
        .split_once("# Pod other/web-1")
        .expect("both pods rendered");
    assert!(
        in_shop.contains(
            "# from Namespace shop (the pod leaves them unset, as linkerd-cni reads them): \
             config.linkerd.io/skip-outbound-ports"
        ),
        "{out}"
    );
    assert!(
        in_shop.contains("--dport 3306 ") && in_shop.contains("--dport 9000 "),
        "{out}"
    );
    assert!(
        !in_shop.contains("7777"),
        "the pod's own value wins:\n{out}"
    );
    assert!(
        elsewhere.contains("add the Namespace to the manifest") && !elsewhere.contains("3306"),
        "{out}"
    );
}

/// An Istio Pod read back from the API carries its addresses: a v4-only pod gets no ip6 rules
/// in `render -f`, as its ADD installs none, and a dual-stack pod gets both. A template has no
/// addresses and keeps `--family`'s default (both).
#[test]
fn an_istio_pods_own_addresses_decide_its_families() {
    let pod = |status: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    sidecar.istio.io/status: '{{}}'\nspec:\n  containers:\n  - name: app\n    image: app\n  - name: istio-proxy\n    image: proxyv2\n{status}"
        )
    };
    let cases = [
        (
            "v4-only",
            "status:\n  podIP: 10.0.0.5\n  podIPs:\n  - ip: 10.0.0.5\n",
            Some("(10.0.0.5): IPv4 only"),
            false,
        ),
        (
            "dual-stack",
            "status:\n  podIP: 10.0.0.5\n  podIPs:\n  - ip: 10.0.0.5\n  - ip: fd00::5\n",
            Some("(10.0.0.5, fd00::5): IPv4 and IPv6"),
            true,
        ),
        (
            "podIP-only",
            "status:\n  podIP: 10.0.0.5\n",
            Some("(10.0.0.5): IPv4 only"),
            false,
        ),
        ("no-status", "", None, true),
    ];
    for (name, status, note, v6) in cases {
        let (_scratch, file) = scratch_file(&format!("families-{name}.yaml"), &pod(status));
        let (code, out, err) = render(&["-f", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains("# iptables-restore"), "{name}: {out}");
        assert_eq!(out.contains("# ip6tables-restore"), v6, "{name}: {out}");
        match note {
            Some(note) => assert!(
                out.contains(&format!("# address families from status.podIPs {note}")),
                "{name}: {out}"
            ),
            None => assert!(!out.contains("status.podIPs"), "{name}: {out}"),
        }
    }
}
