#!/usr/bin/env bash
# The meshcap demo: builds the plugin and the harness, then builds a node out of network
# namespaces, starts pods through the real CNI chain (bridge -> meshcap-cni) with a stand-in
# sidecar, sends a representative set of flows and prints, per mode, where each one landed
# and how every mode compares with iptables mode. Cleans up everything, also on Ctrl-C.
#
#   scripts/demo.sh            representative flows, modes iptables, nftables and iptables+ebpf
#   scripts/demo.sh --full     the whole flow matrix
#   MESHCAP_E2E_MODES=iptables,nftables,iptables+ebpf scripts/demo.sh
#
# Needs root; runs scripts/setup.sh first, which installs what is missing. Exit status 1 when a flow missed its expectation or modes differ.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: run as root (the demo creates network namespaces and netfilter rules)" >&2
    exit 2
fi
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
# Installs (once) the packages and toolchains the demo needs; quiet when all is there.
"$REPO/scripts/setup.sh"

export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# The fast-path modes run the node agent with the real eBPF object (not the stub).
export MESHCAP_BUILD_EBPF=1
echo "demo.sh: building meshcap-cni, the node agent (with its eBPF object) and the harness"
cargo build --quiet -p meshcap-cni -p meshcap -p meshcap-tests --bins

target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
# exec: the demo gets Ctrl-C directly and cleans up its namespaces and processes itself.
exec "$target/debug/demo" "$@"
