#!/usr/bin/env bash
# Builds meshcap's node image offline: the static binaries (scripts/build-static.sh), then
# deploy/Containerfile (FROM scratch: the two binaries, no shell) with podman and no network.
#
#   scripts/build-image.sh [TAG]          # default ghcr.io/meshcap/meshcap:0.1.0
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
tag=${1:-ghcr.io/meshcap/meshcap:0.1.0}
dir=$("$REPO/scripts/build-static.sh" -p meshcap -p meshcap-cni)
# The Containerfile copies from target/; a CARGO_TARGET_DIR elsewhere is staged there.
want="$REPO/target/x86_64-unknown-linux-musl/release"
if [ "$dir" != "$want" ]; then
    mkdir -p "$want"
    cp -f "$dir/meshcap" "$dir/meshcap-cni" "$want/"
fi
podman build --network=none -q -f deploy/Containerfile -t "$tag" . >&2
echo "$tag"
