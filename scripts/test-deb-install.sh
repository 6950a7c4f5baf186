#!/usr/bin/env bash
# Installs the amd64 .debs built by scripts/build-debs.sh into a fresh Debian 12 (bookworm)
# chroot made with debootstrap, and checks what the maintainer scripts do:
#   install   the edge-agent user and group exist (systemd-sysusers), the unit is enabled,
#             the service is not started (postinst says so: no edge-agent.toml), the example
#             config is a conffile, `edge-agent --version` and `edgectl --version` run;
#   upgrade   reinstalling keeps the unit enabled;
#   remove    the unit is masked, the conffile stays;
#   purge     the conffile, /var/lib/edge-agent and the unit's enablement are gone.
# systemd is installed in the chroot but does not run there, so what postinst does only under
# a running systemd (tmpfiles, daemon-reload, start) is not exercised: see docs/deploy.md.
#
#   scripts/test-deb-install.sh [DIR]     # DIR holds the .debs; default target/debian
#
# Needs root (chroot). Installs debootstrap; fetches the chroot's packages from the Debian
# mirror this machine's apt uses.
set -euo pipefail
cd "$(dirname "$0")/.."

deb_dir="${1:-${CARGO_TARGET_DIR:-target}/debian}"
if [ "$(id -u)" -ne 0 ]; then
    exec sudo "$0" "$@"
fi
command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
}

agent_deb=$(find "$deb_dir" -maxdepth 1 -name 'edge-agent_*_amd64.deb' | sort -V | tail -n 1)
ctl_deb=$(find "$deb_dir" -maxdepth 1 -name 'edgectl_*_amd64.deb' | sort -V | tail -n 1)
if [ -z "$agent_deb" ] || [ -z "$ctl_deb" ]; then
    echo "test-deb-install: no amd64 edge-agent/edgectl .deb in $deb_dir: run scripts/build-debs.sh host" >&2
    exit 1
fi

# The mirror apt uses here (deb822 or one-line sources).
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { echo "test-deb-install: no Debian mirror found in /etc/apt" >&2; exit 1; }

root=$(mktemp -d "${TMPDIR:-/tmp}/edge-agent-debroot.XXXXXX")
trap 'rm -rf "$root"' EXIT
echo "== debootstrap bookworm (minbase + systemd) into $root"
debootstrap --variant=minbase --include=systemd bookworm "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
cp "$agent_deb" "$ctl_deb" "$root/tmp/"
in_root() { chroot "$root" "$@"; }

fail=0
bad() {
    echo "test-deb-install: FAIL: $*" >&2
    fail=1
}
wants=/etc/systemd/system/multi-user.target.wants/edge-agent.service

echo "== install $(basename "$agent_deb") $(basename "$ctl_deb")"
out=$(in_root dpkg -i "/tmp/$(basename "$agent_deb")" "/tmp/$(basename "$ctl_deb")" 2>&1) || { printf '%s\n' "$out"; bad "dpkg -i"; }
printf '%s\n' "$out"
in_root getent passwd edge-agent | grep -q ':/var/lib/edge-agent:/usr/sbin/nologin$' || bad "no system user edge-agent"
in_root getent group edge-agent >/dev/null || bad "no group edge-agent"
[ -L "$root$wants" ] || bad "edge-agent.service is not enabled ($wants missing)"
grep -q 'enabled, not started' <<<"$out" || bad "postinst did not say that the service waits for its configuration"
# shellcheck disable=SC2016 # ${Conffiles} is dpkg-query's, not the shell's
in_root dpkg-query --showformat='${Conffiles}\n' --show edge-agent | grep -q '/etc/edge-agent/edge-agent.example.toml' \
    || bad "edge-agent.example.toml is not a conffile"
[ ! -e "$root/etc/edge-agent/edge-agent.toml" ] || bad "the package installed edge-agent.toml"
in_root /usr/bin/edge-agent --version || bad "edge-agent --version"
in_root /usr/bin/edgectl --version || bad "edgectl --version"

echo "== upgrade (reinstall)"
in_root dpkg -i "/tmp/$(basename "$agent_deb")" >/dev/null || bad "dpkg -i (reinstall)"
[ -L "$root$wants" ] || bad "reinstall disabled edge-agent.service"

echo "== remove"
mkdir -p "$root/var/lib/edge-agent" && touch "$root/var/lib/edge-agent/outbox"
in_root dpkg -r edge-agent edgectl >/dev/null || bad "dpkg -r"
[ -e "$root/usr/bin/edge-agent" ] && bad "remove left /usr/bin/edge-agent"
[ "$(readlink "$root/etc/systemd/system/edge-agent.service" || true)" = /dev/null ] || bad "remove did not mask the unit"
[ -f "$root/etc/edge-agent/edge-agent.example.toml" ] || bad "remove deleted the conffile"

echo "== purge"
in_root dpkg --purge edge-agent >/dev/null || bad "dpkg --purge"
[ ! -e "$root/etc/edge-agent/edge-agent.example.toml" ] || bad "purge left the conffile"
[ ! -e "$root/var/lib/edge-agent" ] || bad "purge left /var/lib/edge-agent"
if [ -e "$root$wants" ] || [ -L "$root/etc/systemd/system/edge-agent.service" ]; then
    bad "purge left the unit's enablement or mask"
fi

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "test-deb-install: ok"
