#!/usr/bin/env bash
# Devices over HTTPS under load, by hand (not part of the test command): a
# release `eagate serve` on loopback with its device HTTPS listener, and the
# load harness's fanout run twice, once with QUIC devices only and once with
# HTTPS long-pollers beside them, so the pollers' latency and what they cost
# the QUIC devices are measured in one sitting.
#
#   scripts/https-bench.sh [POLLERS] [QUIC_DEVICES] [RATE] [SECONDS]
#
# Defaults: 2000 pollers, 200 QUIC devices, 2 signals a second, 20 s. The
# figures go to standard error (the pollers') and standard output (the
# harness's table); docs/benchmarks.md says what they were here.
#
# HTTPS_CHANNEL=name puts the pollers on a channel of their own, where
# nothing is published: what pollers that wait cost the QUIC devices.
#
# EAGATE_BIN=path runs another gateway binary (an older build, for a
# before/after of the QUIC figures; it must know --device-https-listen
# only when POLLERS > 0).
set -euo pipefail

pollers=${1:-2000}
devices=${2:-200}
rate=${3:-2}
seconds=${4:-20}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet -p eagate-gateway -p eagate-examples --bin eagate --example eagate-loadgen
eagate=${EAGATE_BIN:-$root/target/release/eagate}
loadgen=$root/target/release/examples/eagate-loadgen
# Thousands of connections: the harness and the gateway need descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
gateway_pid=
cleanup() {
    [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null && wait "$gateway_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

https_args=()
if [ "$pollers" -gt 0 ]; then
    https_args=(--device-https-listen 127.0.0.1:0 --max-http-connections 20000 --max-http-connections-per-source 20000)
fi
EAGATE_LOG=warn "$eagate" serve --data-dir "$work/data" --quic-listen 127.0.0.1:0 \
    --http-listen 127.0.0.1:0 "${https_args[@]}" >"$work/serve.out" 2>&1 &
gateway_pid=$!
for _ in $(seq 1 300); do
    grep -q "Ctrl-C stops it." "$work/serve.out" && break
    sleep 0.1
done
field() { sed -n "s|^ *$1||p" "$work/serve.out" | awk '{print $1}'; }
quic=$(field "QUIC (devices):   ")
api=$(field "HTTP (admin API): ")
fingerprint=$(sed -n 's/^ *TLS fingerprint:  SHA256 //p' "$work/serve.out")
https=$(field "HTTPS (devices):  https://")
token=$("$eagate" token create --scope admin --data-dir "$work/data")
common=(fanout --devices "$devices" --rate "$rate" --duration "$seconds"
    --quic "$quic" --api "$api" --token "$token" --fingerprint "SHA256 $fingerprint"
    --server-pid "$gateway_pid")

echo "== QUIC devices only: $devices devices, $rate signals/s, $seconds s"
"$loadgen" "${common[@]}"
if [ "$pollers" -gt 0 ]; then
    echo "== with $pollers HTTPS long-pollers beside them"
    channel_args=()
    [ -n "${HTTPS_CHANNEL:-}" ] && channel_args=(--https-channel "$HTTPS_CHANNEL")
    "$loadgen" "${common[@]}" --https-pollers "$pollers" --https "$https" \
        --https-ca "$work/data/tls/cert.pem" --https-wait 10 --concurrency 64 "${channel_args[@]}"
fi
