//! The `meshcap-cni` executable: the runtime runs it with the `CNI_*` environment and the
//! network configuration on stdin; it prints the CNI result or error JSON on stdout and
//! nothing else. Everything else lives in the library ([`meshcap_cni::boundary`]).
#![deny(unsafe_code)]

#[allow(unsafe_code)] // the allocator's contract is unsafe by nature; see the module
mod arena;

#[global_allocator]
static ALLOCATOR: arena::Arena<{ arena::PLUGIN_ARENA_BYTES }> = arena::Arena::new();

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    meshcap_cni::boundary::report_panics_as_cni_errors();
    let stdin = std::io::stdin();
    // Someone running `CNI_COMMAND=VERSION meshcap-cni` by hand should not hang waiting for
    // input; runtimes always pass a pipe or a file.
    let input: Box<dyn Read> = if stdin.is_terminal() {
        Box::new(std::io::empty())
    } else {
        Box::new(stdin.lock())
    };
    let outcome = meshcap_cni::run(|name| std::env::var_os(name), input);
    let mut stdout = std::io::stdout().lock();
    // If stdout is gone the runtime cannot read anything anyway; the exit code still tells.
    let _ = stdout.write_all(outcome.stdout.as_bytes());
    let _ = stdout.flush();
    ExitCode::from(outcome.exit_code)
}
