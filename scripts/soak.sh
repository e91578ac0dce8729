#!/usr/bin/env bash
# A soak: the load harness's `mixed` scenario (signals fanned out to every
# device, each answering, while every device also streams reports) against
# a private `eagate serve` for a bounded time, with the gateway's memory,
# file descriptors, CPU time and store size sampled every few seconds.
# Writes the samples (samples.csv), the harness's report and a plot
# (soak.svg, and a text plot on the terminal) to target/soak/<time>/, and
# fails when memory or descriptors grow beyond the bound once steady.
#
#   scripts/soak.sh                 # 30 minutes, 200 devices, embedded store
#   DURATION=600 scripts/soak.sh    # ten minutes
#   STORE=redis scripts/soak.sh     # on a private Redis
#
# Environment: DURATION (seconds, default 1800), DEVICES (200), RATE
# (signals per second, 10), REPORT_EVERY_MS (each device's own reports,
# one per this many ms besides its answers to signals, 200; 0 floods),
# WINDOW (at most in flight, 4),
# INTERVAL (seconds between samples, 5), STORE (sled or redis), GROWTH_BOUND
# (percent memory may grow from the second quarter of the run to the last,
# default 10).
#
# Run by hand (it takes its whole duration); its figures go in the notes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

duration=${DURATION:-1800}
devices=${DEVICES:-200}
rate=${RATE:-10}
report_every=${REPORT_EVERY_MS:-200}
window=${WINDOW:-4}
interval=${INTERVAL:-5}
store=${STORE:-sled}
bound=${GROWTH_BOUND:-10}

cargo build --release --quiet -p eagate-gateway -p eagate-examples --bin eagate --example eagate-loadgen
eagate=$root/target/release/eagate
loadgen=$root/target/release/examples/eagate-loadgen

out=$root/target/soak/$(date -u +%Y%m%dT%H%M%SZ)
work=$(mktemp -d -t eagate-soak.XXXXXX)
mkdir -p "$out"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=='udp' else socket.SOCK_STREAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}

extra=()
if [ "$store" = redis ]; then
    redis_port=$(free_port tcp)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work" --logfile "$work/redis.log" &
    pids+=($!)
    extra=(--redis-url "redis://127.0.0.1:$redis_port/")
    sleep 1
fi
quic=$(free_port udp)
http=$(free_port tcp)
EAGATE_TOKEN=$("$eagate" token create --scope admin --data-dir "$work/data" 2>/dev/null | tail -1)
# The harness is one source opening every device's connection: the gate is
# opened wide for it.
EAGATE_CONNECTIONS_PER_MINUTE_PER_SOURCE=1000000 EAGATE_MAX_UNAUTHENTICATED_CONNECTIONS=1000000 \
    EAGATE_LOG=warn "$eagate" serve --data-dir "$work/data" --quic-listen "127.0.0.1:$quic" \
    --http-listen "127.0.0.1:$http" "${extra[@]}" >"$out/serve.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 1 100); do
    grep -q "TLS fingerprint" "$out/serve.log" 2>/dev/null && break
    sleep 0.1
done
EAGATE_FINGERPRINT=$(grep "TLS fingerprint" "$out/serve.log" | sed 's/.*fingerprint: *//')
export EAGATE_TOKEN EAGATE_FINGERPRINT
export EAGATE_QUIC=127.0.0.1:$quic EAGATE_API_URL=http://127.0.0.1:$http

echo "soak: $devices devices, mixed load ($rate signals/s to each, a report every $report_every ms from each), $duration s, $store; samples every $interval s in $out"
"$loadgen" mixed --devices "$devices" --duration "$duration" --rate "$rate" \
    --window "$window" --report-every-ms "$report_every" --server-pid "$server_pid" \
    >"$out/loadgen.txt" 2>&1 &
loadgen_pid=$!
pids+=("$loadgen_pid")

ticks=$(getconf CLK_TCK)
echo "seconds,rss_kib,fds,cpu_seconds,store_kib" >"$out/samples.csv"
start=$(date +%s)
while kill -0 "$loadgen_pid" 2>/dev/null; do
    now=$(date +%s)
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
    fds=$(find "/proc/$server_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    # utime + stime, fields 14 and 15 of /proc/pid/stat.
    cpu=$(awk -v t="$ticks" '{printf "%.1f", ($14 + $15) / t}' "/proc/$server_pid/stat")
    size=$(du -sk "$work/data" | cut -f1)
    echo "$((now - start)),$rss,$fds,$cpu,$size" >>"$out/samples.csv"
    sleep "$interval"
done
wait "$loadgen_pid" || {
    echo "the load harness failed:" >&2
    cat "$out/loadgen.txt" >&2
    exit 1
}
cat "$out/loadgen.txt"

python3 - "$out" "$bound" <<'EOF'
import csv, sys
out, bound = sys.argv[1], float(sys.argv[2])
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(f"{out}/samples.csv"))]
if len(rows) < 8:
    sys.exit(f"only {len(rows)} samples: run longer")
quarter = len(rows) // 4
def mean(key, part):
    return sum(r[key] for r in part) / len(part)
steady, last = rows[quarter:2 * quarter], rows[3 * quarter:]
rss_growth = (mean("rss_kib", last) / mean("rss_kib", steady) - 1) * 100
fd_growth = mean("fds", last) - mean("fds", steady)
span = rows[-1]["seconds"] - rows[0]["seconds"]
cpu_share = (rows[-1]["cpu_seconds"] - rows[0]["cpu_seconds"]) / span * 100 if span else 0

# A text plot of memory over time, for the notes.
width, height = 60, 12
values = [r["rss_kib"] / 1024 for r in rows]
low, high = min(values), max(values)
step = max(1, len(values) // width)
columns = [max(values[i:i + step]) for i in range(0, len(values), step)][:width]
lines = []
for level in range(height, 0, -1):
    threshold = low + (high - low) * (level - 0.5) / height
    label = {height: f"{high:8.1f} |", 1: f"{low:8.1f} |"}.get(level, "         |")
    lines.append(label + "".join("#" if c >= threshold else " " for c in columns))
lines.append("   MiB   +" + "-" * len(columns))
lines.append(f"          0 s{' ' * (len(columns) - 12)}{int(rows[-1]['seconds'])} s")
plot = "\n".join(lines)

def polyline(key, scale, top, panel_height):
    ys = [r[key] for r in rows]
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1
    points = " ".join(
        f"{60 + 700 * (r['seconds'] - rows[0]['seconds']) / (span or 1):.1f},"
        f"{top + panel_height - panel_height * (r[key] - lo) / (hi - lo):.1f}"
        for r in rows
    )
    return lo * scale, hi * scale, points

panels = [("rss_kib", 1 / 1024, "gateway memory (RSS, MiB)"), ("fds", 1, "file descriptors"),
          ("store_kib", 1 / 1024, "store size (MiB)"), ("cpu_seconds", 1, "CPU time (s)")]
svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="800" height="760" font-family="sans-serif" font-size="12">']
for n, (key, scale, title) in enumerate(panels):
    top = 30 + n * 180
    lo, hi, points = polyline(key, scale, top, 130)
    svg.append(f'<text x="60" y="{top - 8}">{title}: {lo:.1f} to {hi:.1f}</text>')
    svg.append(f'<rect x="60" y="{top}" width="700" height="130" fill="none" stroke="#999"/>')
    svg.append(f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{points}"/>')
svg.append(f'<text x="60" y="750">0 to {int(span)} s, a sample every {int(rows[1]["seconds"] - rows[0]["seconds"])} s</text></svg>')
open(f"{out}/soak.svg", "w").write("\n".join(svg))

summary = (
    f"samples: {len(rows)} over {int(span)} s\n"
    f"memory: {rows[0]['rss_kib']/1024:.1f} MiB at start, {mean('rss_kib', steady)/1024:.1f} MiB in the second quarter, "
    f"{mean('rss_kib', last)/1024:.1f} MiB in the last (growth {rss_growth:+.1f}%, bound {bound:.0f}%), peak {high:.1f} MiB\n"
    f"file descriptors: {int(rows[0]['fds'])} at start, {mean('fds', steady):.0f} then {mean('fds', last):.0f} (change {fd_growth:+.0f})\n"
    f"store: {rows[0]['store_kib']/1024:.1f} MiB at start, {rows[-1]['store_kib']/1024:.1f} MiB at the end\n"
    f"gateway CPU: {cpu_share:.0f}% of one core on average\n"
)
open(f"{out}/summary.txt", "w").write(summary + "\n" + plot + "\n")
print(summary)
print(plot)
print(f"\nplot: {out}/soak.svg")
if rss_growth > bound:
    sys.exit(f"memory grew {rss_growth:.1f}% once steady, beyond the {bound:.0f}% bound")
if fd_growth > 5:
    sys.exit(f"file descriptors grew by {fd_growth:.0f} once steady")
EOF
