//! Pod annotations -> `RedirectModel::from_annotations`: arbitrary maps biased to the real
//! annotation names and to list-shaped values. Any accepted model must render cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_fuzz::AnnotationsInput;
use meshcap_model::{RedirectModel, Selection};

fuzz_target!(|input: AnnotationsInput| {
    let annotations = input.annotations();
    let _ = Selection::Injected.wants_capture(&annotations);
    match RedirectModel::from_annotations(&annotations) {
        Ok(model) => meshcap_fuzz::check_model(&model),
        Err(e) => {
            // The error names one of the annotations it was given, and its text stays short
            // (values are truncated) whatever the pod wrote.
            assert!(annotations.contains_key(&e.annotation), "{e:?}");
            assert!(e.value.len() <= 124, "{} bytes", e.value.len());
        }
    }
});
