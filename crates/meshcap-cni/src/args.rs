//! `CNI_ARGS`: `K=V;K=V` pairs (CNI spec, section 2, and the Kubernetes conventions in
//! CONVENTIONS.md: `K8S_POD_NAME`, `K8S_POD_NAMESPACE`, `K8S_POD_INFRA_CONTAINER_ID`,
//! `K8S_POD_UID`, `IgnoreUnknown`).
//!
//! A pair without exactly one `=` or with an empty key is malformed (libcni's `LoadArgs`
//! rejects the same). Keys meshcap does not know are ignored whether or not `IgnoreUnknown`
//! is set: a chained plugin only reads what it needs, and rejecting a runtime's extra keys
//! would fail pods for no benefit. Empty segments (`A=1;;B=2`, a trailing `;`) are skipped.

use std::collections::BTreeMap;

/// Bounds that keep a hostile or broken runtime from making the plugin allocate freely;
/// Kubernetes names are at most 253 bytes, ids 64.
const MAX_ARGS_LEN: usize = 4096;
const MAX_PAIRS: usize = 64;
const MAX_KEY_LEN: usize = 128;
const MAX_VALUE_LEN: usize = 1024;

/// A malformed `CNI_ARGS` (CNI error code 4; every message names `CNI_ARGS`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("CNI_ARGS: pair {pair:?} is not KEY=VALUE")]
    MalformedPair { pair: String },
    #[error("CNI_ARGS: key {key:?} appears twice")]
    DuplicateKey { key: String },
    #[error("CNI_ARGS: {what} is {len}, more than the {max} allowed")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("CNI_ARGS: IgnoreUnknown={value:?} is not a boolean (1, 0, true, false)")]
    BadIgnoreUnknown { value: String },
}

/// The parsed `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub k8s_pod_name: Option<String>,
    pub k8s_pod_namespace: Option<String>,
    pub k8s_pod_infra_container_id: Option<String>,
    pub k8s_pod_uid: Option<String>,
    pub ignore_unknown: bool,
    /// Every other pair, kept for logging.
    pub other: BTreeMap<String, String>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, ArgsError> {
        if raw.len() > MAX_ARGS_LEN {
            return Err(ArgsError::TooLong {
                what: "the whole string's length",
                len: raw.len(),
                max: MAX_ARGS_LEN,
            });
        }
        let mut out = CniArgs::default();
        let mut seen = std::collections::BTreeSet::new();
        let segments: Vec<&str> = raw.split(';').filter(|s| !s.is_empty()).collect();
        if segments.len() > MAX_PAIRS {
            return Err(ArgsError::TooLong {
                what: "the number of pairs",
                len: segments.len(),
                max: MAX_PAIRS,
            });
        }
        for pair in segments {
            let malformed = || ArgsError::MalformedPair {
                pair: pair.to_string(),
            };
            let (key, value) = pair.split_once('=').ok_or_else(malformed)?;
            if key.is_empty() || value.contains('=') {
                return Err(malformed());
            }
            if key.len() > MAX_KEY_LEN {
                return Err(ArgsError::TooLong {
                    what: "a key's length",
                    len: key.len(),
                    max: MAX_KEY_LEN,
                });
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(ArgsError::TooLong {
                    what: "a value's length",
                    len: value.len(),
                    max: MAX_VALUE_LEN,
                });
            }
            if !seen.insert(key) {
                return Err(ArgsError::DuplicateKey {
                    key: key.to_string(),
                });
            }
            let value = value.to_string();
            match key {
                "K8S_POD_NAME" => out.k8s_pod_name = Some(value),
                "K8S_POD_NAMESPACE" => out.k8s_pod_namespace = Some(value),
                "K8S_POD_INFRA_CONTAINER_ID" => out.k8s_pod_infra_container_id = Some(value),
                "K8S_POD_UID" => out.k8s_pod_uid = Some(value),
                "IgnoreUnknown" => {
                    out.ignore_unknown = match value.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(ArgsError::BadIgnoreUnknown { value }),
                    }
                }
                _ => {
                    out.other.insert(key.to_string(), value);
                }
            }
        }
        Ok(out)
    }

    /// The pod's namespace and name when the runtime is Kubernetes (both keys present and
    /// non-empty), the condition under which annotations must be obtained or the ADD fails.
    pub fn kubernetes_pod(&self) -> Option<(&str, &str)> {
        match (&self.k8s_pod_namespace, &self.k8s_pod_name) {
            (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
            _ => None,
        }
    }

    /// `namespace/name` for logs, or `-` when not a Kubernetes pod.
    pub fn pod_display(&self) -> String {
        match self.kubernetes_pod() {
            Some((ns, name)) => format!("{ns}/{name}"),
            None => "-".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_style_args() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678",
        )
        .unwrap();
        assert!(a.ignore_unknown);
        assert_eq!(a.kubernetes_pod(), Some(("default", "web-0")));
        assert_eq!(a.k8s_pod_infra_container_id.as_deref(), Some("abc"));
        assert_eq!(a.k8s_pod_uid.as_deref(), Some("1234-5678"));
        assert_eq!(a.pod_display(), "default/web-0");
    }

    #[test]
    fn empty_and_unknown() {
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
        let a = CniArgs::parse("FOO=bar;;K8S_POD_NAME=x;").unwrap();
        assert_eq!(a.other.get("FOO").map(String::as_str), Some("bar"));
        assert!(!a.ignore_unknown);
        // Name without namespace is not a Kubernetes pod.
        assert_eq!(a.kubernetes_pod(), None);
        assert_eq!(a.pod_display(), "-");
        // Empty values are allowed but do not name a pod.
        let a = CniArgs::parse("K8S_POD_NAME=;K8S_POD_NAMESPACE=ns").unwrap();
        assert_eq!(a.kubernetes_pod(), None);
    }

    #[test]
    fn malformed_pairs() {
        for bad in ["FOO", "=bar", "A=b=c", "A=1;B"] {
            let err = CniArgs::parse(bad).unwrap_err();
            assert!(matches!(err, ArgsError::MalformedPair { .. }), "{bad}");
            assert!(err.to_string().starts_with("CNI_ARGS"));
        }
        assert_eq!(
            CniArgs::parse("A=1;A=2").unwrap_err(),
            ArgsError::DuplicateKey { key: "A".into() }
        );
        assert!(matches!(
            CniArgs::parse("IgnoreUnknown=maybe").unwrap_err(),
            ArgsError::BadIgnoreUnknown { .. }
        ));
        assert!(
            !CniArgs::parse("IgnoreUnknown=false")
                .unwrap()
                .ignore_unknown
        );
        assert!(CniArgs::parse("IgnoreUnknown=TRUE").unwrap().ignore_unknown);
    }

    #[test]
    fn bounds() {
        let long = "A=".to_string() + &"x".repeat(MAX_ARGS_LEN);
        assert!(matches!(
            CniArgs::parse(&long),
            Err(ArgsError::TooLong { .. })
        ));
        let value = format!("A={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            CniArgs::parse(&value),
            Err(ArgsError::TooLong {
                what: "a value's length",
                ..
            })
        ));
        let key = format!("{}=1", "K".repeat(MAX_KEY_LEN + 1));
        assert!(matches!(
            CniArgs::parse(&key),
            Err(ArgsError::TooLong {
                what: "a key's length",
                ..
            })
        ));
        let many: Vec<String> = (0..=MAX_PAIRS).map(|i| format!("K{i}=v")).collect();
        assert!(matches!(
            CniArgs::parse(&many.join(";")),
            Err(ArgsError::TooLong {
                what: "the number of pairs",
                ..
            })
        ));
    }
}
