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
    pub fn wants_capture(self, annotations: &Annotations) -> bool {
        match self {
            Selection::All => true,
            Selection::Injected => {
                // istio-cni reads the opt-out with Go's `strconv.ParseBool` (`False`, `0`, `f`
                // too) and ignores a value that is not a boolean.
                annotations.contains_key(annotations::SIDECAR_STATUS)
                    && annotations
                        .get(annotations::SIDECAR_INJECT)
                        .map(|v| annotations::go_bool(annotations::SIDECAR_INJECT, v).ok())
                        != Some(Some(false))
            }
        }
    }
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
    fn all_captures_everything() {
        assert!(Selection::All.wants_capture(&ann(&[])));
        assert!(Selection::All.wants_capture(&ann(&[(annotations::SIDECAR_INJECT, "false")])));
    }
}
