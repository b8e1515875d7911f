#!/usr/bin/env bash
# Builds release binaries the way meshcap ships them: static musl executables, not
# position-independent. meshcap-cni is exec'd on every pod start, and what a process costs
# before it does anything shows in every pod's start time (docs/BENCHMARKS.md):
# - a dynamic PIE spends about 0.7 ms in the dynamic loader (loading libc and libgcc_s,
#   symbol relocations, copy-on-write faults of relocated pages); a static non-PIE binary has
#   nothing to relocate;
# - glibc, even static, probes the CPU with dozens of `cpuid` instructions at startup, each a
#   hypervisor exit in a VM; musl does not;
# - musl's allocator would return memory with munmap as soon as it can, which is why the
#   plugin brings its own bump allocator (crates/meshcap-cni/src/arena.rs).
# musl resolves host names from /etc/hosts and DNS itself (no NSS), so a kubeconfig naming
# the API server by host name still works.
#
#   scripts/build-static.sh                      # meshcap-cni
#   scripts/build-static.sh -p meshcap -p meshcap-cni
#
# Prints the directory holding the binaries (<target>/x86_64-unknown-linux-musl/release).
# Needs the musl target (rustup target add x86_64-unknown-linux-musl) and musl-gcc (musl-tools)
# for ring's C code; scripts/setup.sh installs both.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(-p meshcap-cni)

arch=$(uname -m)
triple="$arch-unknown-linux-musl"
# An explicit --target keeps these flags off build scripts and proc-macros (host artifacts).
var="CARGO_TARGET_$(echo "$triple" | tr '[:lower:]-' '[:upper:]_')_RUSTFLAGS"
export "$var=-C target-feature=+crt-static -C relocation-model=static"
cargo build --release --target "$triple" "${packages[@]}" >&2

echo "${CARGO_TARGET_DIR:-$REPO/target}/$triple/release"
