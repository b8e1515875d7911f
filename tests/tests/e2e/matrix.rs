//! The flow matrix in every mode, compared against iptables mode.

use meshcap_tests::compare::run_modes;
use meshcap_tests::flows;

#[test]
fn flow_matrix_all_modes() {
    privileged!("flow_matrix_all_modes");
    let modes = crate::modes();
    let cmp = run_modes("matrix", &modes, &flows::pods(), &flows::flows()).expect("run the matrix");
    println!("{}", cmp.render_side_by_side());
    assert!(cmp.ok(), "{}", cmp.render_failures());
}
