#!/usr/bin/env bash
# Runs meshcap's privileged test suites on a second kernel: Debian 12's own kernel
# (linux-image-amd64, 6.1) booted under qemu (KVM, or TCG where KVM cannot run it at speed),
# whatever kernel the host runs.
#
#   scripts/vm/run-e2e.sh            # build what is missing, boot, run the suites, report
#   scripts/vm/run-e2e.sh --rebuild  # also rebuild the cached guest image
#
# Run as root on Debian 12. The binaries are built on the host (same glibc as
# the guest), so the guest needs no Rust toolchain: the workspace is shared into the guest
# read-only over 9p at the same path, the test executables run there, and the guest powers
# off. The guest image (scripts/vm/build-image.sh) is cached in $MESHCAP_VM_DIR
# (/var/tmp/meshcap-vm) and rebuilt only when its recipe changes.
#
# Environment:
#   MESHCAP_VM_PACKAGES   cargo packages whose tests run in the guest
#                         (default: meshcap-tests meshcap-dataplane meshcap-nft meshcap-cni)
#   MESHCAP_VM_ONLY       regex on "<package>::<test target>" labels to run only those
#   MESHCAP_VM_TEST_ARGS  arguments for every test executable (e.g. a name filter)
#   MESHCAP_VM_ACCEL      kvm, tcg or auto (default: kvm unless the host's KVM is PVM)
#   MESHCAP_VM_NO_BUILD   1: reuse the test executables of the last run instead of building
#   MESHCAP_VM_TIMEOUT    seconds before the VM is killed (default 2400)
#   MESHCAP_VM_MEMORY     guest memory in MiB (default 4096)
#   CI, MESHCAP_E2E_MODES, RUST_LOG  passed to the tests in the guest
#   CARGO_TARGET_DIR      where the host build goes (default <repo>/target-vm)
# Output: the guest's console and the tests' full output under $MESHCAP_VM_DIR/runs/<time>/.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$REPO/scripts/vm
VM_DIR=${MESHCAP_VM_DIR:-/var/tmp/meshcap-vm}
export MESHCAP_VM_DIR=$VM_DIR
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-vm}
PACKAGES=${MESHCAP_VM_PACKAGES:-meshcap-tests meshcap-dataplane meshcap-nft meshcap-cni}
TIMEOUT=${MESHCAP_VM_TIMEOUT:-2400}
MEMORY=${MESHCAP_VM_MEMORY:-4096}
start=$SECONDS

log() { echo "run-e2e.sh: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, KVM)"
rebuild=()
[ "${1:-}" = "--rebuild" ] && rebuild=(--rebuild)

# --- Host packages -----------------------------------------------------------------------------
apt_updated=false
apt_install() {
    $apt_updated || { apt-get update -q >/dev/null; apt_updated=true; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]}"
fi
if ! command -v qemu-system-x86_64 >/dev/null; then
    log "installing qemu-system-x86"
    if ! apt_install qemu-system-x86; then
        # A machine that already carries qemu-utils from bookworm-backports cannot take
        # bookworm's qemu-system-x86 (the versions break each other): take the backports one,
        # from a source list of our own so the machine's apt configuration is left alone.
        log "bookworm's qemu-system-x86 does not install here; trying bookworm-backports"
        bpo=$VM_DIR/apt-bpo
        mkdir -p "$bpo/lists/partial" "$bpo/archives/partial"
        printf 'deb http://deb.debian.org/debian %s main\n' \
            bookworm bookworm-updates bookworm-backports >"$bpo/sources.list"
        opts=(-o "Dir::Etc::sourcelist=$bpo/sources.list" -o Dir::Etc::sourceparts=-
            -o "Dir::State::lists=$bpo/lists" -o "Dir::Cache::archives=$bpo/archives")
        apt-get "${opts[@]}" update -q >/dev/null || die "apt-get update (backports)"
        DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install -y -q --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null || die "apt-get install qemu-system-x86"
    fi
fi

# --- Guest image (cached) ------------------------------------------------------------------------
"$HERE/build-image.sh" "${rebuild[@]}"

# --- Host build ----------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || die "cargo not found (scripts/setup.sh installs the toolchain)"
# The real eBPF object (instead of an empty stub) when the toolchain for it is here, so the
# fast-path tests run on the guest kernel too (scripts/setup.sh installs bpf-linker).
if [ -z "${MESHCAP_BUILD_EBPF+set}" ] && command -v bpf-linker >/dev/null 2>&1; then
    export MESHCAP_BUILD_EBPF=1
fi
log "MESHCAP_BUILD_EBPF=${MESHCAP_BUILD_EBPF:-unset}"
pkg_args=()
for p in $PACKAGES; do pkg_args+=(-p "$p"); done
run_dir=$VM_DIR/runs/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$run_dir"
if [ "${MESHCAP_VM_NO_BUILD:-}" = 1 ]; then
    # Reuse the executables of the last run that built some (for a tree that does not build
    # right now, or to rerun the guest alone).
    last=$(find "$VM_DIR/runs" -mindepth 2 -maxdepth 2 -name tests.list -size +0 -printf '%T@ %p\n' |
        sort -n | tail -n 1 | cut -d' ' -f2-)
    [ -n "$last" ] || die "MESHCAP_VM_NO_BUILD=1 but no earlier run built test executables"
    log "MESHCAP_VM_NO_BUILD=1: reusing the executables listed in $last"
    cp "$last" "$run_dir/tests.list"
else
    build_start=$SECONDS
    log "building on the host into $CARGO_TARGET_DIR: meshcap-cni, meshcap, the harness binaries"
    (cd "$REPO" && cargo build -q -p meshcap-cni -p meshcap -p meshcap-tests --bins) ||
        die "cargo build"
    log "building the test executables of: $PACKAGES"
    if ! (cd "$REPO" && cargo test -q --no-run --message-format=json "${pkg_args[@]}") \
        >"$run_dir/cargo-test.json"; then
        jq -r 'select(.reason == "compiler-message") | .message.rendered' \
            "$run_dir/cargo-test.json" >&2 || true
        die "cargo test --no-run"
    fi
    # Every test executable with the directory cargo would run it from (its package's root).
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null)
           | [(.manifest_path | sub("/Cargo.toml$"; "")), .executable,
              (((.package_id | split("#")[1] // "" | select(test("@")) | split("@")[0])
                // (.manifest_path | split("/")[-2])) + "::" + .target.name)]
           | @tsv' "$run_dir/cargo-test.json" | sort -u >"$run_dir/tests.list"
    [ -s "$run_dir/tests.list" ] || die "no test executables were built for: $PACKAGES"
    log "host build took $((SECONDS - build_start))s"
fi
# The end-to-end suite first (it is what this runner is for), then the runtimes' suites (podman,
# containerd through CRI), then the other privileged suites,
# then the rest; MESHCAP_VM_ONLY (a regex on the labels) narrows the list. The deploy suite
# (kustomize renders and the node image) depends on no kernel and needs kubectl and the static
# binaries, which the guest has not: scripts/test.sh runs it on the host.
awk -F'\t' '$3 ~ /::deploy$/ { next } { r = 3 } $3 ~ /::e2e$/ { r = 0 } $3 ~ /::(podman|containerd)$/ { r = 1 }
    $3 ~ /::(privileged|netns)$/ { r = 2 } { print r "\t" $0 }' "$run_dir/tests.list" |
    sort -s -n -k1,1 | cut -f2- | grep -E -- "${MESHCAP_VM_ONLY:-.}" >"$run_dir/tests.sorted" ||
    die "MESHCAP_VM_ONLY=${MESHCAP_VM_ONLY:-} matches no test executable"
mv "$run_dir/tests.sorted" "$run_dir/tests.list"
log "$(wc -l <"$run_dir/tests.list") test executables: $(cut -f3 "$run_dir/tests.list" | tr '\n' ' ')"

# --- Boot ----------------------------------------------------------------------------------------
host_kernel=$(uname -r)
# KVM when it can run Debian's stock kernel at speed. A host whose KVM is PVM (kvm_pvm:
# pagetable-based nested virtualization without hardware support) runs only PVM-built guest
# kernels at speed; there TCG is the faster choice by far (measured: the stock kernel's
# decompressor alone did not finish in 3 minutes under PVM, TCG boots it in seconds).
accel=${MESHCAP_VM_ACCEL:-auto}
if [ "$accel" = auto ]; then
    if [ -c /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then accel=kvm; else accel=tcg; fi
fi
case $accel in
    kvm) accel_args=(-enable-kvm -cpu host) ;;
    tcg)
        # Emulated, the soak's defaults (64 pods, 5 rounds, every mode) take most of an hour:
        # keep its shape, shrink its size, unless asked otherwise.
        export MESHCAP_SOAK_PODS=${MESHCAP_SOAK_PODS:-16} MESHCAP_SOAK_ROUNDS=${MESHCAP_SOAK_ROUNDS:-1}
        accel_args=(-accel "tcg,thread=multi" -cpu "${MESHCAP_VM_CPU:-max}")
        ;;
    *) die "MESHCAP_VM_ACCEL must be auto, kvm or tcg (got $accel)" ;;
esac
{
    printf 'MESHCAP_VM_WS=%q\n' "$REPO"
    printf 'MESHCAP_VM_TARGET=%q\n' "$CARGO_TARGET_DIR"
    printf 'export RUST_BACKTRACE=1\n'
    for v in CI MESHCAP_E2E_MODES RUST_LOG MESHCAP_VM_TEST_ARGS MESHCAP_VM_TEST_TIMEOUT \
        MESHCAP_SOAK_ROUNDS MESHCAP_SOAK_PODS MESHCAP_SOAK_MODES; do
        [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
    done
} >"$run_dir/run.env"
log "booting the guest ($accel; host kernel $host_kernel); console: $run_dir/console.log"
boot_start=$SECONDS
set +e
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    "${accel_args[@]}" -smp "$(nproc)" -m "$MEMORY" \
    -nographic -no-reboot -nic none \
    -kernel "$VM_DIR/vmlinuz" -initrd "$VM_DIR/initrd" \
    -append "root=/dev/vda rw console=ttyS0 init=/usr/local/sbin/meshcap-vm-init panic=-1 quiet ${MESHCAP_VM_APPEND:-}" \
    -drive "file=$VM_DIR/rootfs.img,format=raw,if=virtio,snapshot=on" \
    -virtfs "local,path=$run_dir,mount_tag=out,security_model=none" \
    -virtfs "local,path=$REPO,mount_tag=ws,security_model=none,readonly=on" \
    -virtfs "local,path=$CARGO_TARGET_DIR,mount_tag=target,security_model=none" \
    </dev/null >"$run_dir/console.log" 2>&1
qemu_status=$?
set -e
boot_secs=$((SECONDS - boot_start))
[ "$qemu_status" -eq 124 ] && log "the VM did not power off within ${TIMEOUT}s and was killed"

# --- Report --------------------------------------------------------------------------------------
guest_kernel=$(cat "$run_dir/kernel" 2>/dev/null || echo unknown)
echo "host kernel:  $host_kernel"
echo "accelerator:  $accel"
echo "guest kernel: $guest_kernel"
if [ -s "$run_dir/features" ]; then
    echo "guest kernel features:"
    sed 's/^/  /' "$run_dir/features"
fi
if [ -s "$run_dir/per-binary" ]; then
    echo "test executables (exit, passed, failed, ignored, seconds):"
    awk -F'\t' '{ printf "  %-40s exit %s  %s passed, %s failed, %s ignored  %ss\n", $1, $2, $3, $4, $5, $6 }' \
        "$run_dir/per-binary"
fi
if [ -s "$run_dir/skipped" ]; then
    echo "skipped by name in the guest:"
    sed 's/^/  /' "$run_dir/skipped"
fi
if [ ! -f "$run_dir/result" ]; then
    tail -n 40 "$run_dir/console.log" >&2
    echo "run-e2e.sh: $((SECONDS - start))s (VM ${boot_secs}s), qemu exit $qemu_status"
    die "the guest wrote no result (console above, full log $run_dir/console.log)"
fi
count() { sed -n "s/^$1=//p" "$run_dir/result"; }
passed=$(count passed) ignored=$(count ignored)
failures=$(($(count failed) + $(count crashed)))
echo "run-e2e.sh: $((SECONDS - start))s in all, VM boot+tests ${boot_secs}s; logs in $run_dir"
echo "vm: $passed passed, $failures failed, $ignored skipped"
[ "$failures" -eq 0 ] || exit 1
