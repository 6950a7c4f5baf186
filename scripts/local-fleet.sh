# shellcheck shell=bash
# A local fleet for demos and benchmarks: a throwaway PKI (`edgectl pki`) and a Mosquitto running
# the fleet configuration from deploy/mosquitto with only its machine-specific lines
# rewritten, as the integration tests do (tests/src/lib.rs). Source this file; it defines:
#
#   lf_free_port                 print a free loopback port
#   lf_pki DIR CN...             `edgectl pki`: CA (DIR/ca.pem), broker cert for 127.0.0.1
#                                (DIR/broker.*), and a client cert DIR/CN.pem + DIR/CN.key
#                                per CN (`operator` gets the operator's); uses $LF_EDGECTL,
#                                or builds edgectl (cargo build --release -p edgectl)
#   lf_broker DIR PKI PORT       start mosquitto on 127.0.0.1:PORT with DIR for its files;
#                                sets LF_BROKER_PID and waits until it listens
#   lf_wait_port PORT PID WHAT   wait (10 s) until PORT accepts TCP while PID lives
#   lf_stop PID...               SIGTERM, then SIGKILL after 5 s
#
# Needs cargo, python3 and mosquitto (scripts/setup.sh installs mosquitto).

LF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

lf_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

lf_pki() {
    local dir="$1"; shift
    local edgectl="${LF_EDGECTL:-}"
    if [[ -z "$edgectl" ]]; then
        # Built here so that every caller gets an edgectl with `pki`; a no-op when it is fresh.
        cargo build --release -q -p edgectl --manifest-path "$LF_ROOT/Cargo.toml"
        edgectl="${CARGO_TARGET_DIR:-$LF_ROOT/target}/release/edgectl"
    fi
    mkdir -p "$dir" && chmod 700 "$dir"
    # CA and broker certificate for 127.0.0.1 and localhost (the defaults). Default validity
    # too: a short one would only draw check-config's expiry warning.
    "$edgectl" pki init --out "$dir" >/dev/null
    local cn
    for cn in "$@"; do
        # The names the broker's ACL grants more than a device's topics are not device ids.
        if [[ "$cn" == operator || "$cn" == edge-fleet ]]; then
            "$edgectl" pki issue --ca "$dir" --operator "$cn" --out "$dir" >/dev/null
        else
            "$edgectl" pki issue --ca "$dir" --device "$cn" --out "$dir" >/dev/null
        fi
    done
}

lf_wait_port() {
    local port="$1" pid="$2" what="$3" i
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { echo "$what exited early" >&2; return 1; }
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$what not listening on $port after 10 s" >&2
    return 1
}

lf_broker() {
    local dir="$1" pki="$2" port="$3"
    local exe
    exe="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
    [[ -x "$exe" ]] || { echo "mosquitto not found: run scripts/setup.sh (Debian package mosquitto)" >&2; return 2; }
    mkdir -p -m 700 "$dir/broker"
    awk -v port="$port" -v ca="$pki/ca.pem" -v cert="$pki/broker.pem" -v key="$pki/broker.key" \
        -v acl="$LF_ROOT/deploy/mosquitto/acl" '
        $1 == "listener"  { print "listener " port " 127.0.0.1"; next }
        $1 == "cafile"    { print "cafile " ca; next }
        $1 == "certfile"  { print "certfile " cert; next }
        $1 == "keyfile"   { print "keyfile " key; next }
        $1 == "acl_file"  { print "acl_file " acl; next }
        $1 == "pid_file" || $1 == "persistence_location" || $1 == "log_dest" { next }
        { print }
    ' "$LF_ROOT/deploy/mosquitto/mosquitto.conf" >"$dir/mosquitto.conf"
    {
        echo
        echo "# scripts/local-fleet.sh overrides."
        echo "persistence_location $dir/broker/"
        echo "log_dest file $dir/mosquitto.log"
        # As root, mosquitto would drop to the mosquitto user, which cannot read the 0600 keys.
        [[ "$(id -u)" == 0 ]] && echo "user root"
    } >>"$dir/mosquitto.conf"
    grep -q "^require_certificate true" "$dir/mosquitto.conf"
    grep -q "^use_identity_as_username true" "$dir/mosquitto.conf"
    "$exe" -c "$dir/mosquitto.conf" >"$dir/mosquitto.stderr" 2>&1 &
    LF_BROKER_PID=$!
    lf_wait_port "$port" "$LF_BROKER_PID" mosquitto
}

lf_stop() {
    local pid
    for pid in "$@"; do
        [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        [[ -n "$pid" ]] || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
