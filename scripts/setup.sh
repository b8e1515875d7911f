#!/usr/bin/env bash
# Installs everything meshcap's build and tests need on a fresh Debian 12 machine.
#
# Run as root. Idempotent and non-interactive: every step is skipped when its result is already
# there. Quiet on success (one line); the details go to $MESHCAP_SETUP_LOG
# (default /tmp/meshcap-setup.log); on failure it names the step and prints the log's tail.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG=${MESHCAP_SETUP_LOG:-/tmp/meshcap-setup.log}
: >"$LOG"

# The eBPF crate pins its nightly in one place; read it from there.
NIGHTLY=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$REPO/ebpf/meshcap-ebpf/rust-toolchain.toml")
# bpf-linker links with this LLVM; its major must equal the pinned nightly's (22).
LLVM_MAJOR=22
BPF_LINKER_VERSION=0.13.0
# The licence check of scripts/test.sh (deny.toml).
CARGO_DENY_VERSION=0.20.2
# The fuzz targets' driver (scripts/fuzz.sh, run briefly by scripts/test.sh).
CARGO_FUZZ_VERSION=0.13.2

APT_PACKAGES=(
    iptables nftables iproute2 bpftool
    containernetworking-plugins podman runc busybox-static
    containerd protobuf-compiler
    "llvm-${LLVM_MAJOR}-dev" "libpolly-${LLVM_MAJOR}-dev" zlib1g-dev libzstd-dev
    gcc libc6-dev musl-tools pkg-config ca-certificates
)

fail() {
    echo "setup.sh: FAILED: $1 (full log: $LOG)" >&2
    tail -n 40 "$LOG" >&2 || true
    exit 1
}

# step DESCRIPTION COMMAND...: runs COMMAND with its output in the log.
step() {
    local desc=$1
    shift
    echo "=== $(date -u +%H:%M:%S) $desc: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || fail "$desc"
}

note() { echo "setup.sh: $*"; echo "note: $*" >>"$LOG"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs packages and mounts bpffs)"
[ -n "$NIGHTLY" ] || fail "could not read the pinned nightly from ebpf/meshcap-ebpf/rust-toolchain.toml"

# --- Debian packages ---------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    step "apt-get update" apt-get update -q
    step "apt-get install ${missing[*]}" \
        apt-get install -y -q -o Dpkg::Options::=--force-confold "${missing[@]}"
fi
# kubectl renders the deploy/ kustomizations in the tests. Machines of this kind carry it; where
# one does not, the package of whichever source the machine has (Kubernetes' `kubectl`,
# Debian's `kubernetes-client`) is tried, and the test says what is missing otherwise.
if ! command -v kubectl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q kubectl >>"$LOG" 2>&1 ||
        apt-get install -y -q kubernetes-client >>"$LOG" 2>&1 ||
        note "kubectl is not installed and no package provides it: the kustomize test cannot run"
fi

# --- Rust: the pinned nightly with rust-src (for -Z build-std=core) -----------------------
if ! command -v rustup >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v rustup >/dev/null 2>&1 || fail "rustup not found: this machine kind ships Rust through rustup"
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 ||
    ! rustup component list --installed --toolchain "$NIGHTLY" 2>/dev/null | grep -q '^rust-src'; then
    step "rustup toolchain install $NIGHTLY" \
        rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src
fi
nightly_llvm=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ "$nightly_llvm" = "$LLVM_MAJOR" ] ||
    fail "$NIGHTLY uses LLVM $nightly_llvm but bpf-linker is built against LLVM $LLVM_MAJOR"

# --- the musl target: meshcap-cni ships as a static musl binary (scripts/build-static.sh) ---
musl_target="$(uname -m)-unknown-linux-musl"
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl_target"; then
    step "rustup target add $musl_target" rustup target add "$musl_target"
fi

# --- bpf-linker ----------------------------------------------------------------------------
if ! bpf-linker --version >/dev/null 2>&1; then
    # The default features link against a system libLLVM that Debian does not name that way;
    # the llvm-22 feature with LLVM_PREFIX is what links.
    step "cargo install bpf-linker $BPF_LINKER_VERSION" \
        env LLVM_PREFIX="/usr/lib/llvm-$LLVM_MAJOR" cargo install bpf-linker \
        --version "$BPF_LINKER_VERSION" --no-default-features --features "llvm-$LLVM_MAJOR"
    bpf-linker --version >/dev/null 2>&1 || fail "bpf-linker installed but not on PATH ($HOME/.cargo/bin)"
fi

# --- cargo-deny, and every crate the licence check reads ----------------------------------
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
    step "cargo install cargo-deny $CARGO_DENY_VERSION" \
        cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
    step "cargo install cargo-fuzz $CARGO_FUZZ_VERSION" \
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# cargo-deny reads the whole dependency graph, including crates no Linux build downloads
# (Windows-only ones); fetch them once here so the check itself runs offline.
for manifest in Cargo.toml fuzz/Cargo.toml ebpf/meshcap-ebpf/Cargo.toml; do
    step "cargo fetch ($manifest)" cargo fetch --locked --manifest-path "$REPO/$manifest"
done

# --- bpffs, where the agent pins its programs' maps and links ------------------------------
if ! mountpoint -q /sys/fs/bpf; then
    step "mount bpffs on /sys/fs/bpf" mount -t bpf bpf /sys/fs/bpf
fi

# --- podman with CNI networking (used by the end-to-end tests) -------------------------------
CONF=/etc/containers/containers.conf
write_containers_conf() {
    mkdir -p /etc/containers
    cat >"$CONF" <<'EOF'
# Written by meshcap's scripts/setup.sh: podman networks through CNI so meshcap-cni can chain.
[network]
network_backend = "cni"
cni_plugin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]
network_config_dir = "/etc/cni/net.d"

[containers]
# The machine's hard limits are lower than podman's defaults.
default_ulimits = ["nofile=10000:10000", "nproc=1000:1000"]
EOF
}
if [ ! -f "$CONF" ]; then
    write_containers_conf
    echo "wrote $CONF" >>"$LOG"
elif ! grep -Eq '^[[:space:]]*network_backend[[:space:]]*=[[:space:]]*"cni"' "$CONF"; then
    backup="$CONF.meshcap-backup.$(date -u +%Y%m%dT%H%M%SZ)"
    cp -p "$CONF" "$backup"
    write_containers_conf
    note "$CONF did not select the cni network backend; saved it as $backup and wrote meshcap's (merge your settings back if you need them)"
fi
mkdir -p /etc/cni/net.d /opt/cni/bin

echo "setup.sh: ok ($NIGHTLY, $(bpf-linker --version), log: $LOG)"
