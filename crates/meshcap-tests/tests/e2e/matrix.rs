//! The flow matrix in every mode, compared against iptables mode; in `+ebpf` modes also the
//! fast path's registrations, counters and cleanup (see `compare::FastPathRun`).

use meshcap_tests::compare::run_modes;
use meshcap_tests::flows;

#[test]
fn flow_matrix_all_modes() {
    privileged!("flow_matrix_all_modes");
    let modes = crate::matrix_modes();
    let cmp = run_modes("matrix", &modes, &flows::pods(), &flows::flows()).expect("run the matrix");
    println!("{}", cmp.render_side_by_side());
    print!("{}", cmp.render_fastpath());
    assert!(cmp.ok(), "{}", cmp.render_failures());
}
