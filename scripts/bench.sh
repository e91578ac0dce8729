#!/usr/bin/env bash
# Runs eagate's load scenarios side by side on this machine: a private
# eagate on its embedded store (sled), a private eagate on a private Redis,
# and a private Mosquitto with a TLS listener (the MQTT broker users would
# pick instead), each started here on free loopback ports in a throwaway
# directory and stopped afterwards. Writes every run's JSON and a table of
# the figures to target/bench/<time>/, and prints the table.
#
#   scripts/bench.sh            # the full set (about 15 minutes)
#   scripts/bench.sh --quick    # shorter runs, fewer devices (about 5)
#
# Environment: EAGATE_BIN (a gateway binary to measure instead of this
# tree's, for before/after comparisons), TARGETS (a subset of
# "sled redis mosquitto"), SCENARIOS (a subset of
# "fanout100 fanout1000 latency1000 connect ingest client100 halfopen";
# client100 is what a device costs on the client side: eagate's SDK client
# with its journal against an MQTT client library; halfopen, eagate only and
# not in the default set, is the gateway's memory per connection that never
# authenticates, opened beside 100 connected devices), PROFILE=1 (records
# the server with perf during each run and draws a flamegraph of it,
# <target>-<run>.flame.svg; installs perf and inferno if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

quick=false
[ "${1:-}" = "--quick" ] && quick=true
targets=${TARGETS:-"sled redis mosquitto"}
scenarios=${SCENARIOS:-"fanout100 fanout1000 latency1000 connect ingest client100"}
if $quick; then
    duration=8; connect_devices=2000; ingest_devices=200
else
    duration=20; connect_devices=20000; ingest_devices=1000
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

profile=${PROFILE:-0}
if [ "$profile" = 1 ]; then
    command -v perf >/dev/null || { as_root apt-get update -qq; as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
    command -v inferno-flamegraph >/dev/null || cargo install --locked --quiet inferno
fi

echo "==> building (release)"
cargo build --release --quiet -p eagate-gateway -p eagate-examples --bin eagate --example eagate-loadgen
eagate=${EAGATE_BIN:-$root/target/release/eagate}
loadgen=$root/target/release/examples/eagate-loadgen

out=$root/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
work=$(mktemp -d -t eagate-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { # $1: tcp or udp
    python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=='udp' else socket.SOCK_STREAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}

wait_for() { # $1: what, then a command that succeeds when it is up
    local what=$1; shift
    for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "$what did not come up" >&2; return 1
}

start_redis() {
    redis_port=$(free_port tcp)
    mkdir -p "$work/redis"
    # appendfsync everysec: what docs/redis.md recommends for eagate.
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" \
        --save "" --appendonly yes --appendfsync everysec --daemonize no \
        --logfile "$work/redis/redis.log" &
    redis_pid=$!; pids+=("$redis_pid")
    wait_for redis redis-cli -p "$redis_port" ping
}

# Starts a private gateway; $1 is sled or redis. Sets server_pid and the
# loadgen's environment.
start_gateway() {
    local store=$1 dir=$work/gateway-$1
    mkdir -p "$dir"
    local quic http
    quic=$(free_port udp); http=$(free_port tcp)
    local extra=()
    [ "$store" = redis ] && extra=(--redis-url "redis://127.0.0.1:$redis_port/")
    EAGATE_TOKEN=$("$eagate" token create --scope admin --data-dir "$dir/data" 2>/dev/null | tail -1)
    # The load generator is one source opening thousands of connections at
    # once: the gate (per source, and on those not yet authenticated) is
    # opened wide, through the environment, which older binaries measured
    # with EAGATE_BIN ignore.
    EAGATE_CONNECTIONS_PER_MINUTE_PER_SOURCE=1000000 EAGATE_MAX_UNAUTHENTICATED_CONNECTIONS=1000000 \
        "$eagate" serve --data-dir "$dir/data" --quic-listen "127.0.0.1:$quic" \
        --http-listen "127.0.0.1:$http" "${extra[@]}" >"$dir/serve.log" 2>&1 &
    server_pid=$!; pids+=("$server_pid")
    wait_for "eagate ($store)" grep -q "TLS fingerprint" "$dir/serve.log"
    export EAGATE_TOKEN
    EAGATE_FINGERPRINT=$(grep "TLS fingerprint" "$dir/serve.log" | sed 's/.*fingerprint: *//')
    export EAGATE_FINGERPRINT
    export EAGATE_QUIC=127.0.0.1:$quic EAGATE_API_URL=http://127.0.0.1:$http
    wait_for "the sidecar" curl -sf "$EAGATE_API_URL/healthz"
    target_args=(--target eagate)
}

start_mosquitto() {
    local dir=$work/mosquitto port
    mkdir -p "$dir"; port=$(free_port tcp)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=eagate bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
    # No persistence and no cap on queued messages: nothing the benchmark
    # sends is dropped by the broker (its defaults drop QoS 1 messages to a
    # subscriber more than 1000 behind), as nothing is by eagate.
    cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
cafile $dir/ca.pem
certfile $dir/server.pem
keyfile $dir/server.key
tls_version tlsv1.3
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
EOF
    # Started as root, mosquitto drops to its own user, which must be able
    # to read its throwaway key and certificates.
    chmod 755 "$work" "$dir"
    chmod 644 "$dir"/*.pem "$dir"/*.key
    mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
    server_pid=$!; pids+=("$server_pid")
    wait_for mosquitto grep -q "mosquitto version .* running" "$dir/mosquitto.log"
    target_args=(--target "mqtts://127.0.0.1:$port" --mqtt-ca "$dir/ca.pem")
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

# Runs one scenario; $1 target name, $2 run name, then loadgen arguments.
run() {
    local target=$1 name=$2; shift 2
    echo "==> $target: $name ($*)"
    local perf_pid=
    if [ "$profile" = 1 ]; then
        perf record -F 199 --call-graph dwarf,16384 -p "$server_pid" -o "$out/$target-$name.perf" 2>/dev/null &
        perf_pid=$!
    fi
    local failed=false
    "$loadgen" "$@" "${target_args[@]}" --server-pid "$server_pid" --json \
        --plot "$out/$target-$name.svg" >"$out/$target-$name.json" 2>"$out/$target-$name.log" \
        || failed=true
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
        perf script -i "$out/$target-$name.perf" 2>/dev/null | inferno-collapse-perf \
            | inferno-flamegraph --title "$target $name: $*" >"$out/$target-$name.flame.svg" \
            && echo "   flamegraph: $out/$target-$name.flame.svg"
    fi
    $failed && { echo "   failed: see $out/$target-$name.log"; tail -3 "$out/$target-$name.log"; return 0; }
    python3 - "$out/$target-$name.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["connected", "failures", "sessions_per_s", "deliveries_per_s", "missing_deliveries",
        "gaps", "confirmed_per_s", "confirmed_not_stored", "server_rss_per_device_bytes",
        "server_cpu_us_per_message", "harness_cpu_us_per_message"]
print("   " + ", ".join(f"{k}={r[k]}" for k in keys if k in r))
for h in ("latency", "confirmation"):
    if h in r:
        print(f"   {h}: p50={r[h]['p50_us']}us p99={r[h]['p99_us']}us max={r[h]['max_us']}us")
if "half_open" in r:
    h = r["half_open"]
    print("   half-open: " + ", ".join(f"{k}={h[k]}" for k in h))
EOF
}

scenario_runs() { # $1 target
    local target=$1
    for s in $scenarios; do
        case $s in
        fanout100) run "$target" fanout100 fanout --devices 100 --rate 0 --duration "$duration" ;;
        fanout1000) run "$target" fanout1000 fanout --devices 1000 --rate 0 --duration "$duration" ;;
        latency1000)
            # Half the rate fanout1000 sustained with a report each (the
            # lower of deliveries and confirmed reports), in signals per
            # second.
            local rate=10
            if [ -f "$out/$target-fanout1000.json" ]; then
                rate=$(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(max(1, min(r.get('deliveries_per_s',0), r.get('confirmed_per_s',0))//r['devices']//2))" "$out/$target-fanout1000.json")
            fi
            run "$target" latency1000 fanout --devices 1000 --rate "$rate" --duration "$duration" ;;
        connect) run "$target" connect connect --devices "$connect_devices" --duration 5 --concurrency 512 --sockets 16 ;;
        ingest) run "$target" ingest ingest --devices "$ingest_devices" --window 64 --duration "$duration" ;;
        client100)
            # The harness's own CPU per message: the SDK's whole client
            # (journal fsync per report) against eagate, rumqttc against
            # Mosquitto.
            local bots=()
            [ "$target" != mosquitto ] && bots=(--sdk-client)
            run "$target" client100 fanout --devices 100 --rate 20 --duration "$duration" "${bots[@]}" ;;
        halfopen)
            # As many silent connections as the gateway's default cap on
            # unauthenticated ones (10,000): its memory at the cap. The
            # authentication deadline (5 s) closes them.
            [ "$target" = mosquitto ] \
                || run "$target" halfopen halfopen --devices 100 --connections 10000 \
                    --concurrency 512 --sockets 16 --duration 1 ;;
        esac
    done
}

for target in $targets; do
    case $target in
    sled) start_gateway sled; scenario_runs sled; stop_server ;;
    redis) start_redis; start_gateway redis; scenario_runs redis; stop_server ;;
    mosquitto) start_mosquitto; scenario_runs mosquitto; stop_server ;;
    esac
done

python3 scripts/bench-summary.py "$out" $targets | tee "$out/summary.md"
