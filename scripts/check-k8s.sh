#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/k8s/ offline against the Kubernetes API's
# JSON schemas, with kubernetes-validate (PyPI; it bundles the schemas of every Kubernetes
# version, so no network is needed once it is installed). Strict: unknown fields fail.
# Also checks that every file kustomization.yaml lists exists and is validated.
#
#   scripts/check-k8s.sh [KUBERNETES_VERSION...]   # default: 1.29.0 and 1.37.0
#
# Installs kubernetes-validate, pinned, into a virtualenv under target/ (python3 -m venv).
set -euo pipefail
cd "$(dirname "$0")/.."

KV_VERSION=1.37.0
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.29.0 1.37.0)
venv="${CARGO_TARGET_DIR:-target}/k8s-validate-venv"

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
fi
if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null || true)" != "$KV_VERSION" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

manifests=()
while read -r f; do
    [ -f "deploy/k8s/$f" ] || { echo "check-k8s: kustomization.yaml lists missing $f" >&2; exit 1; }
    manifests+=("deploy/k8s/$f")
done < <(sed -n '/^resources:/,/^[^ ]/s/^  - //p' deploy/k8s/kustomization.yaml)
[ ${#manifests[@]} -gt 0 ] || { echo "check-k8s: no resources in kustomization.yaml" >&2; exit 1; }

for v in "${versions[@]}"; do
    echo "== kubernetes-validate $KV_VERSION --strict -k $v ${manifests[*]}"
    "$venv/bin/kubernetes-validate" --strict -k "$v" "${manifests[@]}"
done
echo "check-k8s: ok"
