#!/usr/bin/env bash
# Builds meshcap's node image offline: the static binaries (scripts/build-static.sh), the
# image's filesystem staged from them and this machine's xtables (scripts/stage-image.sh), then
# deploy/Containerfile (FROM scratch, no shell) with podman and no network.
#
#   scripts/build-image.sh [TAG]          # default ghcr.io/meshcap/meshcap:0.1.0
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
tag=${1:-ghcr.io/meshcap/meshcap:0.1.0}
dir=$("$REPO/scripts/build-static.sh" -p meshcap -p meshcap-cni)
context="${CARGO_TARGET_DIR:-$REPO/target}/image"
"$REPO/scripts/stage-image.sh" "$dir" "$context"
podman build --network=none -q -f deploy/Containerfile -t "$tag" "$context" >&2
echo "$tag"
