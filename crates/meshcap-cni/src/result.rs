//! CNI results: the `prevResult` passthrough, converted to the configuration's `cniVersion`,
//! the result when there is no `prevResult`, and the VERSION output.
//!
//! meshcap changes nothing a CNI result describes, so ADD prints the previous plugin's result
//! (CNI spec, "ADD Success": "If a plugin makes no changes that would be reflected in the
//! Success result type, then it must output a result equivalent to the provided prevResult").
//! The result is kept as JSON rather than typed structs so that fields a newer spec or a
//! runtime adds survive. The only format difference among the supported versions is
//! `ips[].version`: present ("4"/"6") up to 0.4.0, dropped from 1.0.0 (libcni's
//! `convertTo04x`/`convertFrom04x` do the same).

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use crate::version::CniVersion;

/// A `prevResult` that cannot be converted. [`ResultError::UnsupportedVersion`] is code 1,
/// the rest code 7; every message names `prevResult`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    #[error("prevResult has cniVersion {version:?}, which meshcap cannot convert (supported: {})", CniVersion::supported_strings().join(", "))]
    UnsupportedVersion { version: String },
    #[error("prevResult.{field} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}

/// Converts `prev` to `to`, keeping everything but `cniVersion` and `ips[].version`.
///
/// A `prevResult` without `cniVersion` is read as being in the target version's format; the
/// conversion below is driven by the target anyway (add a missing `version` for 0.x, drop it
/// for 1.x), so every pair of supported versions converts the same way.
pub fn convert(prev: &Map<String, Value>, to: CniVersion) -> Result<Value, ResultError> {
    match prev.get("cniVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) if CniVersion::parse(v).is_some() => {}
        Some(Value::String(v)) => {
            return Err(ResultError::UnsupportedVersion { version: v.clone() });
        }
        Some(_) => {
            return Err(ResultError::Invalid {
                field: "cniVersion".into(),
                reason: "not a string".into(),
            })
        }
    }

    let mut out = prev.clone();
    out.insert("cniVersion".into(), Value::String(to.as_str().into()));

    match out.get_mut("ips") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ips)) => {
            for (i, ip) in ips.iter_mut().enumerate() {
                let Value::Object(ip) = ip else {
                    return Err(ResultError::Invalid {
                        field: format!("ips[{i}]"),
                        reason: "not an object".into(),
                    });
                };
                if to.has_ip_version_field() {
                    if !ip.contains_key("version") {
                        let version = ip_version(ip, i)?;
                        ip.insert("version".into(), Value::String(version.into()));
                    }
                } else {
                    ip.remove("version");
                }
            }
        }
        Some(_) => {
            return Err(ResultError::Invalid {
                field: "ips".into(),
                reason: "not an array".into(),
            })
        }
    }
    Ok(Value::Object(out))
}

/// The result of an ADD without `prevResult` (meshcap first in a chain, or a runtime that
/// passes none): what libcni prints for an empty result of that version.
pub fn minimal(to: CniVersion) -> Value {
    if to.has_ip_version_field() {
        // types040.Result marshals its DNS struct even when empty.
        json!({"cniVersion": to.as_str(), "dns": {}})
    } else {
        json!({"cniVersion": to.as_str()})
    }
}

/// The ADD output: the converted `prevResult`, or [`minimal`] without one.
pub fn add_output(prev: Option<&Map<String, Value>>, to: CniVersion) -> Result<Value, ResultError> {
    match prev {
        Some(prev) => convert(prev, to),
        None => Ok(minimal(to)),
    }
}

/// The VERSION output (CNI spec, "VERSION Success").
pub fn version_output(requested: CniVersion) -> Value {
    json!({
        "cniVersion": requested.as_str(),
        "supportedVersions": CniVersion::supported_strings(),
    })
}

/// The pod's addresses, from the prevResult's `ips` (none when it lists none). Every front end
/// that looks at the pod's addresses reads them from here.
pub fn pod_addresses(prev: Option<&Map<String, Value>>) -> Result<Vec<IpAddr>, ResultError> {
    let Some(Value::Array(ips)) = prev.and_then(|p| p.get("ips")) else {
        return Ok(Vec::new());
    };
    ips.iter()
        .enumerate()
        .map(|(i, ip)| match ip {
            Value::Object(ip) => ip_address(ip, i),
            _ => Err(ResultError::Invalid {
                field: format!("ips[{i}]"),
                reason: "not an object".into(),
            }),
        })
        .collect()
}

/// "4" or "6" from `address` (CIDR). An IPv4-mapped IPv6 address counts as 4, as Go's
/// `IP.To4()` decides in libcni.
fn ip_version(ip: &Map<String, Value>, index: usize) -> Result<&'static str, ResultError> {
    Ok(match ip_address(ip, index)? {
        IpAddr::V4(_) => "4",
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => "4",
        IpAddr::V6(_) => "6",
    })
}

/// The host part of `ips[index].address` (CIDR).
fn ip_address(ip: &Map<String, Value>, index: usize) -> Result<IpAddr, ResultError> {
    let invalid = |reason: String| ResultError::Invalid {
        field: format!("ips[{index}].address"),
        reason,
    };
    let address = match ip.get("address") {
        Some(Value::String(a)) => a,
        Some(_) => return Err(invalid("not a string".into())),
        None => return Err(invalid("missing".into())),
    };
    let host = address.split_once('/').map_or(address.as_str(), |(h, _)| h);
    host.parse()
        .map_err(|_| invalid(format!("{address:?} is not an IP address in CIDR notation")))
}

#[cfg(test)]
mod tests {
    use super::*;

    use meshcap_model::mesh::istio;
    use meshcap_model::Families;

    /// An Istio pod's families from the addresses of its prevResult.
    fn families_of(ips: Value) -> Families {
        let prev = json!({"cniVersion": "1.0.0", "ips": ips});
        istio::families_of(&pod_addresses(prev.as_object()).unwrap())
    }

    #[test]
    fn ipv6_rules_only_for_pods_with_an_ipv6_address() {
        let v4 = Families {
            v4: true,
            v6: false,
        };
        assert_eq!(families_of(json!([{"address": "10.1.0.5/16"}])), v4);
        assert_eq!(
            families_of(json!([{"address": "10.1.0.5/16"}, {"address": "fd00::5/64"}])),
            Families::BOTH
        );
        assert_eq!(
            families_of(json!([{"address": "fd00::5/64"}])),
            Families::BOTH
        );
        assert_eq!(
            families_of(json!([{"address": "10.1.0.5/16"}, {"address": "fe80::5/64"}])),
            v4
        );
        assert_eq!(families_of(json!([{"address": "::ffff:10.1.0.5/112"}])), v4);
        assert_eq!(families_of(json!([])), Families::BOTH);
        assert_eq!(
            istio::families_of(&pod_addresses(None).unwrap()),
            Families::BOTH
        );
        let bad = json!({"ips": [{"address": "nope"}]});
        assert!(pod_addresses(bad.as_object()).is_err());
    }

    /// The spec's bridge example result in the 0.x format (0.3.0, 0.3.1 and 0.4.0 are the same).
    fn result_0x(v: &str) -> Value {
        json!({
            "cniVersion": v,
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "ips": [
                {"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
                {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    /// The same result in the 1.x format; 1.1.0 adds fields that must survive conversion.
    fn result_1x(v: &str) -> Value {
        json!({
            "cniVersion": v,
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "ips": [
                {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
                {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    }

    fn expected(v: CniVersion) -> Value {
        if v.has_ip_version_field() {
            result_0x(v.as_str())
        } else {
            result_1x(v.as_str())
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_version_pair_converts() {
        for from in CniVersion::SUPPORTED {
            for to in CniVersion::SUPPORTED {
                let got = convert(&obj(expected(from)), to).unwrap();
                assert_eq!(got, expected(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn unknown_fields_survive_both_ways() {
        let mut prev = result_1x("1.1.0");
        prev["interfaces"][2]["socketPath"] = json!("/run/x.sock");
        prev["routes"][0]["mtu"] = json!(1400);
        prev["ips"][0]["extra"] = json!(true);
        prev["vendorKey"] = json!({"a": 1});
        let down = convert(&obj(prev.clone()), CniVersion::V0_4_0).unwrap();
        assert_eq!(down["ips"][0]["version"], "4");
        assert_eq!(down["ips"][1]["version"], "6");
        assert_eq!(down["interfaces"][2]["socketPath"], "/run/x.sock");
        assert_eq!(down["routes"][0]["mtu"], 1400);
        assert_eq!(down["ips"][0]["extra"], true);
        assert_eq!(down["vendorKey"], json!({"a": 1}));
        let up = convert(&obj(down), CniVersion::V1_1_0).unwrap();
        assert_eq!(up, prev);
    }

    #[test]
    fn missing_prev_version_uses_the_target_format() {
        let mut prev = result_0x("x");
        prev.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(
            convert(&obj(prev.clone()), CniVersion::V1_0_0).unwrap(),
            result_1x("1.0.0")
        );
        let mut prev = result_1x("x");
        prev.as_object_mut().unwrap().remove("cniVersion");
        assert_eq!(
            convert(&obj(prev), CniVersion::V0_3_0).unwrap(),
            result_0x("0.3.0")
        );
    }

    #[test]
    fn ipv4_mapped_is_version_4() {
        let prev = json!({"cniVersion": "1.0.0", "ips": [{"address": "::ffff:10.0.0.1/120"}]});
        let out = convert(&obj(prev), CniVersion::V0_4_0).unwrap();
        assert_eq!(out["ips"][0]["version"], "4");
    }

    #[test]
    fn bad_prev_results() {
        let e = convert(&obj(json!({"cniVersion": "0.2.0"})), CniVersion::V1_0_0).unwrap_err();
        assert!(matches!(e, ResultError::UnsupportedVersion { .. }));
        assert!(e.to_string().contains("prevResult"));
        let cases = [
            (json!({"cniVersion": 1}), "cniVersion"),
            (json!({"ips": {}}), "ips"),
            (json!({"ips": [1]}), "ips[0]"),
            (json!({"ips": [{"gateway": "1.1.1.1"}]}), "ips[0].address"),
            (
                json!({"ips": [{"address": "nonsense/8"}]}),
                "ips[0].address",
            ),
            (json!({"ips": [{"address": 5}]}), "ips[0].address"),
        ];
        for (prev, field) in cases {
            match convert(&obj(prev.clone()), CniVersion::V0_4_0) {
                Err(ResultError::Invalid { field: f, .. }) => assert_eq!(f, field, "{prev}"),
                other => panic!("{prev}: {other:?}"),
            }
        }
        // Going to 1.x the address is not parsed, so only the structure matters.
        assert!(convert(
            &obj(json!({"ips": [{"address": "nonsense"}]})),
            CniVersion::V1_0_0
        )
        .is_ok());
    }

    #[test]
    fn minimal_and_version_outputs() {
        assert_eq!(
            minimal(CniVersion::V0_3_1),
            json!({"cniVersion": "0.3.1", "dns": {}})
        );
        assert_eq!(minimal(CniVersion::V1_1_0), json!({"cniVersion": "1.1.0"}));
        assert_eq!(
            add_output(None, CniVersion::V1_0_0).unwrap(),
            json!({"cniVersion": "1.0.0"})
        );
        assert_eq!(
            version_output(CniVersion::V0_4_0),
            json!({
                "cniVersion": "0.4.0",
                "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
            })
        );
    }
}
