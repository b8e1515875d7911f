#!/usr/bin/env bash
# The benchmark command: builds meshcap-cni as it ships (static, scripts/build-static.sh) and
# meshcap-bench in release, and runs the suite
# (CNI ADD/DEL latency against nsenter + iptables-restore, 64 parallel ADDs, the datapath through
# the capture, 500 pods). Run as root on an otherwise idle machine; see docs/BENCHMARKS.md.
#
#   scripts/bench.sh                 # full run, a few minutes; JSON in target/bench-results.json
#   scripts/bench.sh --quick         # CI-sized smoke run, under a minute
#   scripts/bench.sh --json FILE ... # any meshcap-bench flag passes through (--help lists them)
#
# Needs iproute2, util-linux (nsenter), iptables and nftables: scripts/setup.sh installs them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench.sh: run as root (the benchmark creates network namespaces)" >&2
    exit 1
fi
for tool in ip nsenter iptables-restore ip6tables-restore nft; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "bench.sh: $tool is missing; run scripts/setup.sh first" >&2
        exit 1
    fi
done
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

TARGET=${CARGO_TARGET_DIR:-$REPO/target}
echo "bench.sh: building meshcap-bench (release) and the static meshcap-cni in $TARGET" >&2
cargo build --release -p meshcap-bench
plugin_dir=$(scripts/build-static.sh -p meshcap-cni)

exec "$TARGET/release/meshcap-bench" --plugin "$plugin_dir/meshcap-cni" "$@"
