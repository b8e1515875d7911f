//! Golden tests of the iptables-restore renderer: one fixture per case and family under
//! tests/golden/iptables/, each opening with a comment saying what it shows.
//! Regenerate after an intended change with `MESHCAP_UPDATE_GOLDEN=1 cargo test -p meshcap-model`.

mod cases;

use std::path::PathBuf;

use meshcap_model::render::iptables;
use meshcap_model::Family;

#[test]
fn iptables_golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/iptables");
    let mut failures = Vec::new();
    for case in cases::all() {
        for family in Family::ALL {
            let suffix = match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            };
            let mut text = case.header(&family.to_string());
            text.push_str(&iptables::render(&case.model.ruleset(family)));
            let path = dir.join(format!("{}.{suffix}.rules", case.name));
            if let Err(e) = cases::check_golden(&path, &text) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
