#!/usr/bin/env bash
# Stages the build context of deploy/Containerfile: CONTEXT/rootfs, the image's whole
# filesystem, which the Containerfile copies to / of a scratch image.
#
#   scripts/stage-image.sh BIN_DIR CONTEXT
#
# BIN_DIR holds the static meshcap and meshcap-cni (scripts/build-static.sh). Besides them the
# image carries this machine's xtables programs (iptables and ip6tables, nft and legacy
# flavours) with the shared libraries and extension modules they load, and nothing else (no
# shell): the agent's repair and adoption run the plugin's iptables backend inside the
# container, where the node's own iptables is not. Everything comes from local files, so the
# image builds with no network.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BIN_DIR CONTEXT" >&2
    exit 2
fi
bin_dir=$1
context=$2
rootfs="$context/rootfs"
export PATH="$PATH:/usr/sbin:/sbin"

rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/sbin"
for bin in meshcap meshcap-cni; do
    cp "$bin_dir/$bin" "$rootfs/usr/local/bin/$bin"
done

# Copies a file to the same absolute path under rootfs (symlinks resolved to their content).
put() {
    mkdir -p "$rootfs$(dirname "$1")"
    cp -L "$1" "$rootfs$1"
}

elves=()
for flavour in nft legacy; do
    multi=$(command -v "xtables-$flavour-multi" || true)
    if [ -z "$multi" ]; then
        echo "stage-image.sh: xtables-$flavour-multi not found; install iptables (scripts/setup.sh)" >&2
        exit 1
    fi
    cp -L "$multi" "$rootfs/usr/sbin/xtables-$flavour-multi"
    elves+=("$multi")
    # xtables picks its tool from the name it is run as: the names the plugin looks for.
    for family in iptables ip6tables; do
        for op in save restore; do
            ln "$rootfs/usr/sbin/xtables-$flavour-multi" "$rootfs/usr/sbin/$family-$flavour-$op"
        done
    done
done

# The extension modules libxtables loads (-m owner, -j TPROXY, ...), from its compiled-in
# directory: next to the library's real file, or under /usr/lib of its multiarch directory
# when /lib is not merged into /usr.
libxtables=$(ldd "${elves[0]}" | awk '$1 ~ /^libxtables/ {print $3}')
multiarch=$(basename "$(dirname "$libxtables")")
extensions=
for candidate in "$(dirname "$(readlink -f "$libxtables")")/xtables" \
    "/usr/lib/$multiarch/xtables" /usr/lib/xtables /usr/lib64/xtables; do
    if compgen -G "$candidate/*.so" >/dev/null; then
        extensions=$candidate
        break
    fi
done
if [ -z "$extensions" ]; then
    echo "stage-image.sh: no xtables extension modules found for $libxtables" >&2
    exit 1
fi
for module in "$extensions"/*.so; do
    put "$module"
    elves+=("$module")
done

# Every shared library those load, and the dynamic loader, at the paths they name.
for elf in "${elves[@]}"; do
    ldd "$elf" | awk '/=> \// {print $3} /^\t\// {print $1}'
done | sort -u | while read -r lib; do
    put "$lib"
done

# A readable trace of what the image holds, for review, and the xtables version it carries.
"${elves[0]}" iptables --version > "$context/xtables.version"
(cd "$rootfs" && find . -type f | sort) > "$context/rootfs.files"
echo "stage-image.sh: $(wc -l < "$context/rootfs.files") files in $rootfs" >&2
