#!/usr/bin/env bash
# Starts a Redis Cluster of three primaries (no replicas) on free loopback
# ports, its files in DIR, and prints the URL of its first node; stop it with
# `scripts/redis-cluster.sh stop DIR`. The test command runs the Redis-mode
# tests against one (EAGATE_TEST_REDIS_CLUSTER_URL); by hand:
#
#   dir=$(mktemp -d); url=$(scripts/redis-cluster.sh start "$dir")
#   EAGATE_TEST_REDIS_CLUSTER_URL=$url cargo nextest run -p eagate-gateway on_redis_cluster
#   scripts/redis-cluster.sh stop "$dir"
set -euo pipefail

usage() {
    echo "usage: $0 start DIR | stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
dir=$2

stop() {
    local pids=()
    for pidfile in "$dir"/node-*.pid; do
        [ -e "$pidfile" ] || continue
        pids+=("$(cat "$pidfile")")
        kill "${pids[-1]}" 2>/dev/null || true
    done
    # A node writes its cluster config as it shuts down: wait (up to 10 s)
    # until all are gone, so the caller can remove DIR.
    for _ in $(seq 1 100); do
        local alive=0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" -eq 0 ] && return 0
        sleep 0.1
    done
}

case $1 in
stop)
    stop
    exit 0
    ;;
start) ;;
*) usage ;;
esac

mkdir -p "$dir"
ports=()
# A node takes its port and the port 10000 above it (the cluster bus); try
# random ports until three nodes answer.
for _ in $(seq 1 30); do
    [ ${#ports[@]} -eq 3 ] && break
    port=$((20000 + RANDOM % 30000))
    node="$dir/node-$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
        --cluster-enabled yes --cluster-config-file "node-$port.conf" \
        --save "" --appendonly no --daemonize yes \
        --pidfile "$node.pid" --logfile "$node.log" >/dev/null 2>&1 || continue
    for _ in $(seq 1 50); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            ports+=("$port")
            continue 2
        fi
        sleep 0.1
    done
    # It did not answer (a port or its bus port taken): stop it, try another.
    [ -e "$node.pid" ] && kill "$(cat "$node.pid")" 2>/dev/null || true
    rm -f "$node.pid"
done
if [ ${#ports[@]} -ne 3 ]; then
    echo "could not start three cluster nodes; their logs:" >&2
    cat "$dir"/node-*.log >&2 || true
    stop
    exit 1
fi

nodes=()
for port in "${ports[@]}"; do nodes+=("127.0.0.1:$port"); done
if ! redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
    >"$dir/create.log" 2>&1; then
    echo "redis-cli --cluster create failed:" >&2
    cat "$dir/create.log" >&2
    stop
    exit 1
fi
# The nodes agree on the slots a moment after create returns.
for _ in $(seq 1 100); do
    ok=0
    for port in "${ports[@]}"; do
        redis-cli -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && ok=$((ok + 1))
    done
    if [ "$ok" -eq 3 ]; then
        echo "redis://127.0.0.1:${ports[0]}/"
        exit 0
    fi
    sleep 0.1
done
echo "the cluster did not reach cluster_state:ok; its logs:" >&2
cat "$dir"/node-*.log >&2 || true
stop
exit 1
