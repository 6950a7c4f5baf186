#!/usr/bin/env bash
# Runs shellcheck on the shipping scripts (cross/, the .deb and Kubernetes scripts, the maintainer
# scripts). Installs shellcheck (Debian package) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v shellcheck >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck
fi
files=(cross/*.sh scripts/build-debs.sh scripts/test-deb-install.sh scripts/check-k8s.sh
    scripts/check-scripts.sh scripts/deny.sh scripts/refresh-advisory-db.sh
    bench/delta.sh bench/fleet.sh deploy/k8s/stage-image.sh deploy/deb/edge-agent/*)
shellcheck "${files[@]}"
echo "check-scripts: shellcheck clean: ${#files[@]} files"
