//! The stand-in sidecar / client / app server; see `meshcap_tests::standin`.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    meshcap_tests::standin::main_with_args(std::env::args().collect())
}
