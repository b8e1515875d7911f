//! Which attachments meshcap captures (`selection` in the plugin config).

use serde::Deserialize;

use crate::annotations::{self, Annotations};

/// The plugin's `selection` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Only pods that carry a sidecar: `sidecar.istio.io/status` present and
    /// `sidecar.istio.io/inject` not false (what istio-cni checks).
    #[default]
    Injected,
    /// Every attachment of this network, for runtimes without Kubernetes (podman).
    All,
}

impl Selection {
    /// Whether the annotations alone cannot decide: they carry an injected sidecar's status
    /// and opt out with `sidecar.istio.io/inject`, and istio-cni lets the pod's label of that
    /// name, which the runtime does not pass, override the annotation (`sidecar.istio.io/inject:
    /// "true"` as label and `"false"` as annotation is a captured pod).
    pub fn opt_out_needs_labels(self, annotations: &Annotations) -> bool {
        self == Selection::Injected
            && annotations.contains_key(annotations::SIDECAR_STATUS)
            && opts_out(annotations)
    }

    pub fn wants_capture(self, annotations: &Annotations) -> bool {
        match self {
            Selection::All => true,
            Selection::Injected => {
                annotations.contains_key(annotations::SIDECAR_STATUS) && !opts_out(annotations)
            }
        }
    }
}

/// Whether `sidecar.istio.io/inject` opts the pod out: istio-cni reads it with Go's
/// `strconv.ParseBool` (`False`, `0`, `f` too) and ignores a value that is not a boolean.
fn opts_out(annotations: &Annotations) -> bool {
    annotations
        .get(annotations::SIDECAR_INJECT)
        .and_then(|v| annotations::go_bool(annotations::SIDECAR_INJECT, v).ok())
        == Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::annotations::from_pairs as ann;

    #[test]
    fn injected_needs_status_and_no_opt_out() {
        let s = Selection::Injected;
        assert!(!s.wants_capture(&ann(&[])));
        assert!(s.wants_capture(&ann(&[(annotations::SIDECAR_STATUS, "{}")])));
        assert!(!s.wants_capture(&ann(&[
            (annotations::SIDECAR_STATUS, "{}"),
            (annotations::SIDECAR_INJECT, "false")
        ])));
        assert!(s.wants_capture(&ann(&[
            (annotations::SIDECAR_STATUS, "{}"),
            (annotations::SIDECAR_INJECT, "true")
        ])));
        assert!(!s.wants_capture(&ann(&[(annotations::SIDECAR_INJECT, "true")])));
        // Go's ParseBool spellings of false opt out; a non-boolean is ignored, as istio-cni does.
        for off in ["0", "f", "F", "FALSE", "False"] {
            let a = ann(&[
                (annotations::SIDECAR_STATUS, "{}"),
                (annotations::SIDECAR_INJECT, off),
            ]);
            assert!(!s.wants_capture(&a), "{off}");
        }
        for other in ["no", "", "disabled"] {
            let a = ann(&[
                (annotations::SIDECAR_STATUS, "{}"),
                (annotations::SIDECAR_INJECT, other),
            ]);
            assert!(s.wants_capture(&a), "{other:?}");
        }
    }

    #[test]
    fn only_an_opt_out_of_an_injected_pod_needs_the_labels() {
        let s = Selection::Injected;
        let status = (annotations::SIDECAR_STATUS, "{}");
        for (a, needs) in [
            (ann(&[status, (annotations::SIDECAR_INJECT, "false")]), true),
            (ann(&[status, (annotations::SIDECAR_INJECT, "0")]), true),
            (ann(&[status, (annotations::SIDECAR_INJECT, "true")]), false),
            (ann(&[status, (annotations::SIDECAR_INJECT, "no")]), false),
            (ann(&[status]), false),
            (ann(&[(annotations::SIDECAR_INJECT, "false")]), false),
        ] {
            assert_eq!(s.opt_out_needs_labels(&a), needs, "{a:?}");
            assert!(!Selection::All.opt_out_needs_labels(&a));
        }
    }

    #[test]
    fn all_captures_everything() {
        assert!(Selection::All.wants_capture(&ann(&[])));
        assert!(Selection::All.wants_capture(&ann(&[(annotations::SIDECAR_INJECT, "false")])));
    }
}
