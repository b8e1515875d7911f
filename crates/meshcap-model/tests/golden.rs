//! Golden tests of both renderers from one case table ([`cases::all`]): per case and family,
//! the iptables-restore text under tests/golden/iptables/ and the `nft -f` script under
//! tests/golden/nftables/, each opening with a comment saying what it shows. The nft scripts
//! are what `meshcap render --format nftables` prints, and every rule in them is the nft syntax
//! of the expressions `meshcap-nft` sends, so they pin the netlink side too.
//! Regenerate after an intended change with `MESHCAP_UPDATE_GOLDEN=1 cargo test -p meshcap-model`.

mod cases;

use std::path::PathBuf;

#[test]
fn goldens_of_both_backends() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let failures = cases::check_backends(&cases::all(), |backend| dir.join(backend));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
