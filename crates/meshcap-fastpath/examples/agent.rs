//! Runs the fast-path agent by hand until `meshcap agent` does:
//! `cargo run -p meshcap-fastpath --example agent -- [--uninstall] [--detach-on-exit] [PIN_DIR]`.
use anyhow::Result;
use meshcap_fastpath::agent::{self, AgentOptions};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let mut opts = AgentOptions::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--uninstall" => opts.uninstall = true,
            "--detach-on-exit" => opts.detach_on_exit = true,
            dir => opts.pin_dir = dir.into(),
        }
    }
    agent::run(&opts)?;
    Ok(())
}
