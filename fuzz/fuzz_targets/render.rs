//! Well-formed typed values -> annotation text -> model -> iptables and nft text. The parsers
//! must accept every well-formed value, and the rendering must hold the injection invariants
//! (see meshcap_fuzz::check_iptables / check_nft). `render_corpus` renders this target's corpus
//! for `scripts/fuzz.sh --validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_fuzz::ModelInput;

fuzz_target!(|input: ModelInput| {
    let model = input.model();
    meshcap_fuzz::check_model(&model);
});
