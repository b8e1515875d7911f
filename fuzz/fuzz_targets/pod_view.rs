//! A Pod's JSON (from the API server, or a manifest's pod template) -> `PodView::from_pod`,
//! selection, and the model the Istio front end derives from it, rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_model::mesh::istio::{resolve, NodeDefaults};
use meshcap_model::pod::PodView;
use meshcap_model::Selection;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(view) = PodView::from_pod(&value) else {
        return;
    };
    let _ = view.display_name();
    let _ = view.selection(Selection::All);
    let _ = view.selection(Selection::Injected);
    if let Ok(model) = resolve(&view, &NodeDefaults::default()).map(|r| r.model) {
        assert!(!model.proxy_uids.contains(&u32::MAX));
        assert!(!model.proxy_gids.contains(&u32::MAX));
        meshcap_fuzz::check_model(&model);
    }
});
