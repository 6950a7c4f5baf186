#!/usr/bin/env bash
# Builds the Debian packages edge-agent and edgectl with cargo-deb, and checks each one:
# `dpkg-deb --info`, `dpkg-deb --contents`, the expected files and maintainer scripts,
# the Depends line against the binary, and `lintian` (any error or warning fails).
#
#   scripts/build-debs.sh [--profile P] [TARGET...]
#
# TARGET: host (amd64) | aarch64-unknown-linux-gnu (arm64) |
#         armv7-unknown-linux-gnueabihf (armhf); default: all three.
# --profile: cargo profile of the packaged binaries; default `edge` (what ships: fat LTO,
#         stripped). CI uses `release`, which builds much faster.
#
# Installs what it needs: dpkg-dev and lintian (apt), cargo-deb (pinned, cargo install
# --locked), and each target's cross toolchain (via cross/build.sh). The binaries are built
# by cross/build.sh (which also smoke-tests them under qemu) and packaged with
# `cargo deb --no-build`. Packages land in target/debian/.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
profile=edge
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
        --profile=*) profile="${1#--profile=}"; shift ;;
        -h|--help) usage ;;
        -*) echo "build-debs.sh: unknown option $1" >&2; usage ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(host aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf)

# --- What this script needs ---
need_apt=()
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
command -v lintian >/dev/null || need_apt+=(lintian)
command -v readelf >/dev/null || need_apt+=(binutils)
if [ ${#need_apt[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if [ "$(cargo deb --version 2>/dev/null || true)" != "$CARGO_DEB_VERSION" ]; then
    echo "build-debs.sh: cargo install --locked cargo-deb@$CARGO_DEB_VERSION" >&2
    cargo install --locked --quiet "cargo-deb@$CARGO_DEB_VERSION"
fi

out_dir="${CARGO_TARGET_DIR:-target}/debian"
mkdir -p "$out_dir"
built=()
fail=0
bad() {
    echo "build-debs.sh: FAIL: $*" >&2
    fail=1
}

# The Depends line promises a libc6 version and nothing but libc6 and libgcc-s1 as shared
# libraries (see [package.metadata.deb] in agent/Cargo.toml): check both on the binary.
check_depends() {
    local deb="$1" bin="$2" depends libc_min need lib
    depends=$(dpkg-deb --field "$deb" Depends)
    libc_min=$(sed -n 's/.*libc6 (>= \([0-9][0-9.]*\)).*/\1/p' <<<"$depends")
    [ -n "$libc_min" ] || { bad "$deb: Depends has no libc6 version: $depends"; return; }
    need=$(readelf -W --version-info "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' \
        | sort -uV | tail -n 1)
    if [ -n "$need" ] && ! dpkg --compare-versions "$need" le "$libc_min"; then
        bad "$deb: $bin needs GLIBC_$need but Depends says libc6 (>= $libc_min)"
    fi
    echo "  glibc: newest symbol version GLIBC_$need; Depends: libc6 (>= $libc_min)"
    while read -r lib; do
        case "$lib" in
            libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux*|libgcc_s.so.1) ;;
            *) bad "$deb: $bin needs $lib, which Depends does not cover" ;;
        esac
    done < <(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
}

# check_deb DEB BINARY FILE...: info, contents, expected files, Depends, lintian.
check_deb() {
    local deb="$1" bin="$2" f contents tmp
    shift 2
    echo "== dpkg-deb --info $deb"
    dpkg-deb --info "$deb"
    echo "== dpkg-deb --contents $deb"
    contents=$(dpkg-deb --contents "$deb")
    printf '%s\n' "$contents"
    for f in "$@"; do
        grep -q " \./$f\$" <<<"$contents" || bad "$deb does not contain /$f"
    done
    tmp=$(mktemp -d)
    dpkg-deb --raw-extract "$deb" "$tmp"
    check_depends "$deb" "$tmp/$bin"
    rm -rf "$tmp"
    echo "== lintian $deb"
    # --fail-on error,warning: warnings fail too; what lintian reports and we keep is
    # overridden, with a reason, in deploy/deb/*.lintian-overrides.
    if lintian --fail-on error,warning --display-info "$deb"; then
        echo "lintian: ok"
    else
        bad "lintian $deb"
    fi
}

# Shell completions and man pages, written by the binaries themselves from the clap
# definitions they parse with (the same on every architecture, so the host's debug build
# makes them once); the packages take them from deploy/deb/generated (git-ignored).
gen_docs() {
    local gen=deploy/deb/generated bin b
    rm -rf "$gen"
    cargo build --quiet -p edge-agent -p edgectl --bins
    bin="${CARGO_TARGET_DIR:-target}/debug"
    for b in edge-agent edgectl; do
        mkdir -p "$gen/$b/man"
        "$bin/$b" completions bash >"$gen/$b/$b.bash"
        "$bin/$b" completions zsh >"$gen/$b/_$b"
        "$bin/$b" completions fish >"$gen/$b/$b.fish"
        "$bin/$b" man --out "$gen/$b/man" >/dev/null
        gzip -9n "$gen/$b/man/"*.1
    done
}
gen_docs

for target in "${targets[@]}"; do
    case "$target" in
        host) target_args=(); strip_env=() ;;
        aarch64-unknown-linux-gnu)
            target_args=(--target "$target")
            strip_env=("STRIP_aarch64-linux-gnu=aarch64-linux-gnu-strip"
                "OBJCOPY_aarch64-linux-gnu=aarch64-linux-gnu-objcopy") ;;
        armv7-unknown-linux-gnueabihf)
            target_args=(--target "$target")
            strip_env=("STRIP_arm-linux-gnueabihf=arm-linux-gnueabihf-strip"
                "OBJCOPY_arm-linux-gnueabihf=arm-linux-gnueabihf-objcopy") ;;
        *) echo "build-debs.sh: no Debian package for target $target" >&2; usage ;;
    esac

    # Builds both binaries (installing the target's toolchain first) and smoke-tests them.
    bash cross/build.sh "$target" --profile "$profile"

    for pkg in edge-agent edgectl; do
        echo "== cargo deb -p $pkg --no-build --profile $profile ${target_args[*]}" >&2
        # cargo-deb strips with the target's binutils (found through these variables).
        deb=$(env "${strip_env[@]}" cargo deb -p "$pkg" --no-build --profile "$profile" \
            "${target_args[@]}" --output "$out_dir" | tail -n 1)
        [ -f "$deb" ] || { bad "cargo deb -p $pkg ${target_args[*]}: no package"; continue; }
        case "$pkg" in
            edge-agent)
                check_deb "$deb" usr/bin/edge-agent \
                    usr/bin/edge-agent \
                    usr/lib/systemd/system/edge-agent.service \
                    usr/lib/sysusers.d/edge-agent.conf \
                    usr/lib/tmpfiles.d/edge-agent.conf \
                    etc/edge-agent/edge-agent.example.toml \
                    usr/share/edge-agent/models/pymicro-wakeword__okay_nabu.tflite \
                    usr/share/man/man1/edge-agent.1.gz \
                    usr/share/man/man1/edge-agent-run.1.gz \
                    usr/share/bash-completion/completions/edge-agent
                # The example config is a conffile, and the real one is never shipped.
                dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles \
                    | grep -qx /etc/edge-agent/edge-agent.example.toml \
                    || bad "$deb: /etc/edge-agent/edge-agent.example.toml is not a conffile"
                if dpkg-deb --contents "$deb" | grep -q ' \./etc/edge-agent/edge-agent\.toml$'; then
                    bad "$deb ships /etc/edge-agent/edge-agent.toml: the service would start on install"
                fi
                ;;
            edgectl)
                check_deb "$deb" usr/bin/edgectl usr/bin/edgectl \
                    usr/share/man/man1/edgectl.1.gz \
                    usr/share/man/man1/edgectl-deploy.1.gz \
                    usr/share/bash-completion/completions/edgectl \
                    usr/share/zsh/vendor-completions/_edgectl \
                    usr/share/fish/vendor_completions.d/edgectl.fish ;;
        esac
        built+=("$deb ($(stat -c %s "$deb") bytes)")
    done
done

if [ "$fail" -ne 0 ]; then
    exit 1
fi
echo "build-debs.sh: ok:"
printf '  %s\n' "${built[@]}"
