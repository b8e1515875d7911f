#!/bin/bash
# Runs inside the meshcap test VM (started by the VM's init from the read-only workspace share):
# records the guest kernel and which kernel features it carries, then runs every test executable
# that the host built and listed in /mnt/out/tests.list, the way `cargo test` would (from the
# package's directory), and writes the totals to /mnt/out/result for run-e2e.sh to read.
#
# /mnt/out/tests.list: one test executable a line, "<package dir>\t<executable>\t<label>".
set -u
OUT=/mnt/out
LOG=$OUT/test-output.log
: >"$LOG"

say() { echo "guest-run: $*"; }

# shellcheck disable=SC1091
. "$OUT/run.env"
# The host's cargo target dir, read-write (tests may write under CARGO_TARGET_TMPDIR), at the
# host's path; it may lie inside the read-only workspace mount, where the directory exists.
if [ -n "${MESHCAP_VM_TARGET:-}" ]; then
    mkdir -p "$MESHCAP_VM_TARGET" 2>/dev/null
    # cache=loose: the host does not change the binaries during a run, and without a page
    # cache every page fault of a (large, debug) executable is a 9p round trip.
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose target \
        "$MESHCAP_VM_TARGET" ||
        say "cannot mount the target dir at $MESHCAP_VM_TARGET"
fi

uname -r >"$OUT/kernel"
say "kernel $(uname -r): $(cat /proc/version)"

# --- Kernel features the suite relies on, probed in a throwaway namespace ------------------
probe_ns=meshcap-vm-probe-$$
ip netns add "$probe_ns"
in_ns() { ip netns exec "$probe_ns" "$@"; }
feature() {
    local name=$1
    shift
    local err
    if err=$("$@" 2>&1); then
        echo "$name=ok" >>"$OUT/features"
        say "feature $name: ok"
    else
        err=$(echo "$err" | head -n 1)
        echo "$name=missing: $err" >>"$OUT/features"
        say "feature $name: MISSING ($err)"
    fi
}
: >"$OUT/features"
feature nftables in_ns nft add table ip meshcap_probe
feature nft-tproxy in_ns nft -f - <<'EOF'
table ip meshcap_tproxy_probe {
    chain c {
        type filter hook prerouting priority mangle; policy accept;
        meta l4proto tcp tproxy to :15006 meta mark set 1337
    }
}
EOF
feature xt-TPROXY in_ns iptables -t mangle -A PREROUTING -p tcp -j TPROXY --on-port 15006 \
    --tproxy-mark 1337/0xffffffff
feature iptables-legacy in_ns iptables-legacy -t nat -A OUTPUT -p tcp -j REDIRECT --to-ports 15001
feature sockmap bpftool map create /sys/fs/bpf/meshcap_probe_$$ type sockhash key 8 value 4 \
    entries 1 name meshcap_probe
rm -f "/sys/fs/bpf/meshcap_probe_$$"
feature cgroup-v2 test "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs
ip netns delete "$probe_ns"

# --- The tests --------------------------------------------------------------------------------
export HOME=/root
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
passed=0 failed=0 ignored=0 crashed=0
read -r -a test_args <<<"${MESHCAP_VM_TEST_ARGS:-}"
while IFS=$'\t' read -r dir exe label; do
    [ -n "$exe" ] || continue
    say "=== $label ($exe)"
    echo "=== $label" >>"$LOG"
    start=$SECONDS
    # A hung test must not hang the VM: the host's timeout is the last resort, this the first.
    (cd "$dir" && timeout --kill-after=10 "${MESHCAP_VM_TEST_TIMEOUT:-900}" "$exe" \
        "${test_args[@]}") >"$OUT/one.log" 2>&1
    status=$?
    cat "$OUT/one.log" >>"$LOG"
    # Show failures and skips on the console; the full output is in test-output.log.
    grep -E '^(test result:|SKIPPED|failures:|    [a-z_:]+$|test .* FAILED)' "$OUT/one.log" || true
    read -r p f i < <(awk '/^test result:/ {
            for (k = 1; k <= NF; k++) {
                if ($(k) ~ /^passed;?$/) p += $(k - 1)
                if ($(k) ~ /^failed;?$/) f += $(k - 1)
                if ($(k) ~ /^ignored;?$/) s += $(k - 1)
            }
        } END { printf "%d %d %d\n", p, f, s }' "$OUT/one.log")
    passed=$((passed + p)) failed=$((failed + f)) ignored=$((ignored + i))
    if [ "$status" -ne 0 ] && [ "$f" -eq 0 ]; then
        # A crash or a timeout leaves no "failed" count; it is still a failure.
        crashed=$((crashed + 1))
        say "$label exited $status with no failed test counted"
    fi
    say "$label: exit $status in $((SECONDS - start))s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$status" "$p" "$f" "$i" "$((SECONDS - start))" \
        >>"$OUT/per-binary"
done <"$OUT/tests.list"
rm -f "$OUT/one.log"
# SKIPPED lines are the privileged tests that said by name why they could not run.
grep -h '^SKIPPED' "$LOG" >"$OUT/skipped" || true
printf 'passed=%d\nfailed=%d\nignored=%d\ncrashed=%d\nskipped=%d\n' \
    "$passed" "$failed" "$ignored" "$crashed" "$(wc -l <"$OUT/skipped")" >"$OUT/result"
say "done: $passed passed, $failed failed, $ignored ignored, $crashed crashed"
