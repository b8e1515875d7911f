#!/usr/bin/env bash
# The benchmark command: builds meshcap-cni as it ships (static, scripts/build-static.sh, with
# the burst control meshcap-bench-control beside it) and
# meshcap-bench in release, runs the eBPF fast path's bench (rules only against the fast path),
# then the suite (CNI ADD/DEL latency of a dual-stack and a v4-only pod against
# nsenter + iptables-restore, 64 parallel ADDs, the datapath through the capture, 500 pods),
# and draws the chart. Run as root on an otherwise idle machine; see docs/BENCHMARKS.md.
#
#   scripts/bench.sh                 # full run, a few minutes; JSON in target/bench-results.json,
#                                    # chart in target/bench-chart.svg
#   scripts/bench.sh --quick         # CI-sized smoke run, under a minute
#   scripts/bench.sh --json FILE ... # any meshcap-bench flag passes through (--help lists them)
#   MESHCAP_BENCH_FASTPATH=0 scripts/bench.sh   # without the fast path's bench
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
plugin_dir=$(scripts/build-static.sh -p meshcap-cni -p meshcap-bench-control)

fastpath=()
if [ "${MESHCAP_BENCH_FASTPATH:-1}" != 0 ]; then
    fastpath_json="$TARGET/fastpath-results.json"
    rm -f "$fastpath_json"
    quick=
    for arg in "$@"; do [ "$arg" = --quick ] && quick=1; done
    echo "bench.sh: the eBPF fast path against rules only (cargo bench -p meshcap-fastpath)" >&2
    # The fast path needs the real eBPF object; its bench prints its own table.
    if MESHCAP_BUILD_EBPF=1 MESHCAP_BENCH_JSON="$fastpath_json" \
        MESHCAP_BENCH_RUNS=${MESHCAP_BENCH_RUNS:-${quick:+3}} \
        MESHCAP_BENCH_ROUNDS=${MESHCAP_BENCH_ROUNDS:-${quick:+2000}} \
        MESHCAP_BENCH_MIB=${MESHCAP_BENCH_MIB:-${quick:+32}} \
        cargo bench -p meshcap-fastpath --bench fastpath >&2 && [ -s "$fastpath_json" ]; then
        fastpath=(--fastpath-json "$fastpath_json")
    else
        echo "bench.sh: the fast path's bench did not run; the chart goes without it" >&2
    fi
fi

exec "$TARGET/release/meshcap-bench" --plugin "$plugin_dir/meshcap-cni" "${fastpath[@]}" "$@"
