//! `iptables-save` output -> `Installed::parse_save`, then `transition` and `drift` against a
//! real model. The pod's network namespace is what meshcap reads back on ADD retries and CHECK,
//! and a pod with NET_ADMIN can put anything there.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcap_model::render::iptables::{drift, transition, Installed};
use meshcap_model::{Family, RedirectModel};

fuzz_target!(|text: &str| {
    let found = Installed::parse_save(text);
    for family in [Family::V4, Family::V6] {
        let want = Installed::from_ruleset(&RedirectModel::default().ruleset(family));
        let _ = drift(&want, &found);
        let _ = drift(&found, &want);
        for out in [
            transition(&found, &want),
            transition(&found, &Installed::default()),
        ]
        .into_iter()
        .flatten()
        {
            // Lines read back are echoed as `-D ...`: each stays one line of one statement.
            for line in out.lines() {
                assert!(
                    ["-A ", "-D", "-X ", ":", "*", "COMMIT"]
                        .iter()
                        .any(|p| line.starts_with(p)),
                    "{line:?}"
                );
            }
        }
    }
});
