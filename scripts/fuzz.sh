#!/usr/bin/env bash
# Fuzzes every meshcap parser and renderer (the cargo-fuzz crate in fuzz/) for a bounded time.
#
#   scripts/fuzz.sh                     every target, 60 s each
#   scripts/fuzz.sh --seconds 300 cni_args annotations
#   scripts/fuzz.sh --validate          also check a corpus sample of rendered models with
#                                       iptables-restore --test, ip6tables-restore --test and
#                                       nft -c -f in a scratch network namespace (root)
#   scripts/fuzz.sh --validate --no-run only that check, on the corpus already there
#   scripts/fuzz.sh --list              the targets
#   scripts/fuzz.sh --ci --seconds 4    what scripts/test.sh runs: every target briefly, from the
#                                       corpus in the repository, which it leaves unchanged; built
#                                       at opt-level 1 (see below)
#
# Uses the nightly pinned in ebpf/meshcap-ebpf/rust-toolchain.toml (cargo fuzz needs nightly)
# and installs cargo-fuzz when missing. Targets are built with AddressSanitizer and debug
# assertions (overflow checks on). The corpus lives in the repository: fuzz/corpus/<target>
# (what earlier runs found; a run adds its new inputs there: commit those worth keeping) and the
# hand-written fuzz/seeds/<target>; a crash leaves its input in fuzz/artifacts/<target>/ and
# makes the script exit 1: turn it into a unit test next to the code it concerns (see
# docs/SECURITY.md), and reproduce it with `cargo +<nightly> fuzz run -a <target> <artifact>`.
#
# Builds: every target is built once (`cargo fuzz build`) and each binary then runs directly.
# Target dir: $MESHCAP_FUZZ_TARGET_DIR, else $CARGO_TARGET_DIR, else target-fuzz/ in the
# checkout (a CI cache can keep it between runs). With --ci the build goes to its ci/
# subdirectory at opt-level 1 with line tables only: a run of a few seconds replays the corpus
# and explores a little, where full optimisation buys little and costs most of a cold build
# (ASan, coverage instrumentation and debug assertions stay); the subdirectory keeps a local
# long run's fully optimised build from being rebuilt by a test run and back.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TARGETS=(cni_config cni_args cni_env annotations render iptables_save pod_view manifests nft_reply mesh_pod cni_cache
    kubeconfig kube_response)
seconds=60
validate=false
ci=false
run=true
sample=200
chosen=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
        --seconds=*) seconds=${1#*=}; shift ;;
        --validate) validate=true; shift ;;
        --ci) ci=true; shift ;;
        --no-run) run=false; shift ;;
        --sample) sample=${2:?--sample needs a value}; shift 2 ;;
        --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) chosen+=("$1"); shift ;;
    esac
done
[ ${#chosen[@]} -gt 0 ] || chosen=("${TARGETS[@]}")
for t in "${chosen[@]}"; do
    [[ " ${TARGETS[*]} " == *" $t "* ]] || { echo "fuzz.sh: no target $t (see --list)" >&2; exit 2; }
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz.sh: --seconds takes a whole number" >&2; exit 2 ;; esac

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
NIGHTLY=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' ebpf/meshcap-ebpf/rust-toolchain.toml)
[ -n "$NIGHTLY" ] || { echo "fuzz.sh: no channel in ebpf/meshcap-ebpf/rust-toolchain.toml" >&2; exit 1; }
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing toolchain $NIGHTLY"
    rustup toolchain install "$NIGHTLY" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz
fi
export CARGO_TARGET_DIR=${MESHCAP_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target-fuzz}}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
validate_target_dir=$CARGO_TARGET_DIR/validate
if $ci; then
    export CARGO_TARGET_DIR=$CARGO_TARGET_DIR/ci
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=1
    export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
fi
HOST=$(rustup run "$NIGHTLY" rustc -vV | sed -n 's/^host: //p')

status=0
if $run; then
    echo "fuzz.sh: building every target with $NIGHTLY (ASan, debug assertions${CARGO_PROFILE_RELEASE_OPT_LEVEL:+, opt-level $CARGO_PROFILE_RELEASE_OPT_LEVEL}) in $CARGO_TARGET_DIR"
    build_start=$SECONDS
    cargo "+$NIGHTLY" fuzz build -a
    echo "fuzz.sh: built in $((SECONDS - build_start))s"
    summary=()
    for t in "${chosen[@]}"; do
        mkdir -p "fuzz/corpus/$t" "fuzz/seeds/$t"
        log="fuzz/artifacts/$t.log"
        mkdir -p fuzz/artifacts
        echo "fuzz.sh: $t for ${seconds}s"
        # libFuzzer adds new inputs to the first directory: the repository's corpus, or with
        # --ci a scratch one, so that a test run leaves the tree as it found it.
        dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
        if $ci; then
            scratch_corpus=$(mktemp -d /tmp/meshcap-fuzz-corpus.XXXXXX)
            dirs=("$scratch_corpus" "${dirs[@]}")
        fi
        mkdir -p "fuzz/artifacts/$t"
        set +e
        # The binary `cargo fuzz build` made, with the arguments `cargo fuzz run` would give it.
        # -timeout: one input taking 10 s is a hang; -rss_limit_mb: runaway allocation.
        "$CARGO_TARGET_DIR/$HOST/release/$t" -artifact_prefix="$REPO/fuzz/artifacts/$t/" \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            "${dirs[@]}" >"$log" 2>&1
        rc=$?
        set -e
        if $ci; then rm -rf "$scratch_corpus"; fi
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
        if [ $rc -eq 0 ]; then
            result="ok"
        else
            status=1
            artifact=$(grep -o 'fuzz/artifacts/[^ ]*' "$log" | tail -1 || true)
            result="FAILED (exit $rc) ${artifact:-see $log}"
            grep -m5 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" | sed 's/^/    /' || true
        fi
        summary+=("$(printf '%-14s %12s execs  %6s corpus  %s' "$t" "${execs:-?}" "$corpus" "$result")")
    done
    echo
    echo "fuzz.sh: ${seconds}s per target, toolchain $NIGHTLY"
    printf '  %s\n' "${summary[@]}"
fi

if $validate; then
    echo
    echo "fuzz.sh: --validate: rendering up to $sample models of the render corpus"
    out=$(mktemp -d /tmp/meshcap-fuzz-validate.XXXXXX)
    ns="meshcap-fuzz-validate-$$"
    # shellcheck disable=SC2317 # called by the trap
    cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$out"; }
    trap cleanup EXIT
    corpus_dir=fuzz/corpus/render
    [ -n "$(ls -A "$corpus_dir" 2>/dev/null)" ] || corpus_dir=fuzz/seeds/render
    mkdir -p "$corpus_dir"
    # A plain (uninstrumented) build, in its own directory so it never waits on a fuzz build.
    CARGO_TARGET_DIR="$validate_target_dir" cargo "+$NIGHTLY" run -q --release \
        --manifest-path fuzz/Cargo.toml --bin render_corpus -- \
        "$corpus_dir" "$out" "$sample"
    if [ "$(id -u)" != 0 ] || ! command -v iptables-restore >/dev/null || ! command -v nft >/dev/null; then
        msg="fuzz.sh: --validate needs root, iptables-restore and nft; the check did not run"
        if [ "${CI:-}" = true ]; then echo "$msg" >&2; exit 1; fi
        echo "$msg (skipped)"
        exit $status
    fi
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    # The default flavour (iptables-nft on Debian 12), and legacy too when installed: meshcap
    # uses legacy in namespaces that already hold legacy rules.
    v4=(iptables-restore) v6=(ip6tables-restore)
    if command -v iptables-legacy-restore >/dev/null && command -v ip6tables-legacy-restore >/dev/null; then
        v4+=(iptables-legacy-restore) v6+=(ip6tables-legacy-restore)
    fi
    ok=0 bad=0
    for f in "$out"/*.rules "$out"/*.nft; do
        case "$f" in
            *.v4.rules) cmds=("${v4[@]}") ;;
            *.v6.rules) cmds=("${v6[@]}") ;;
            *.nft) cmds=(nft) ;;
        esac
        [ -s "$f" ] || { ok=$((ok + 1)); continue; }
        for prog in "${cmds[@]}"; do
            if [ "$prog" = nft ]; then cmd=(nft -c -f -); else cmd=("$prog" --test --noflush); fi
            if err=$(ip netns exec "$ns" "${cmd[@]}" <"$f" 2>&1); then
                ok=$((ok + 1))
            else
                bad=$((bad + 1))
                echo "  REJECTED by ${cmd[*]}: $(basename "$f")"
                echo "$err" | head -5 | sed 's/^/    /'
                cp "$f" "/tmp/meshcap-fuzz-rejected-$(basename "$f")"
            fi
        done
    done
    echo "fuzz.sh: --validate: $ok checks passed, $bad rejected (${v4[*]} ${v6[*]} --test, nft -c;" \
        "$(iptables --version), $(nft --version))"
    [ $bad -eq 0 ] || status=1
fi
exit $status
