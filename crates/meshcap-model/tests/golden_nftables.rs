//! Golden tests of the nftables renderer: one `nft -f` script per case and family under
//! tests/golden/nftables/, each opening with a comment saying what it shows. The scripts are
//! what `meshcap render --format nftables` prints, and every rule in them is the nft syntax of
//! the expressions `meshcap-nft` sends, so they pin the netlink side too.
//! Regenerate after an intended change with `MESHCAP_UPDATE_GOLDEN=1 cargo test -p meshcap-model`.

mod cases;

use std::path::PathBuf;

use meshcap_model::render::nftables;
use meshcap_model::{Family, RedirectModel};

#[test]
fn nftables_golden() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nftables");
    let mut failures = Vec::new();
    for case in cases::CASES {
        let annotations = cases::annotations(case);
        let model = RedirectModel::from_annotations(&annotations).expect(case.name);
        for family in Family::ALL {
            let suffix = match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            };
            let mut text = format!("# {}\n# case {:?}, {family}\n", case.shows, case.name);
            for (k, v) in case.annotations {
                text.push_str(&format!("# annotation {k}={v:?}\n"));
            }
            text.push_str(&nftables::render(&[model.ruleset(family)]));
            let path = dir.join(format!("{}.{suffix}.nft", case.name));
            if let Err(e) = cases::check_golden(&path, &text) {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
