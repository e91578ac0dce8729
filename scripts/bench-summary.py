"""The table of a scripts/bench.sh run, from its JSON files.

    python3 scripts/bench-summary.py target/bench/<time> sled redis mosquitto
"""
import json
import os
import sys

out, targets = sys.argv[1], sys.argv[2:]


def run(target, name):
    path = os.path.join(out, f"{target}-{name}.json")
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    return json.load(open(path))


def field(*path):
    def pick(r):
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        return r
    return pick


def sustained(r):
    # A delivery counts once its report is confirmed too.
    return min(r.get("deliveries_per_s", 0), r.get("confirmed_per_s", 0))


def rate(r):
    return r.get("deliveries_per_s", 0) // max(1, r.get("devices", 1))


rows = [
    ("deliveries/s flat out, 100 devices", "fanout100", field("deliveries_per_s")),
    ("of which confirmed reports/s (a report each)", "fanout100", field("confirmed_per_s")),
    ("sessions lost, 100 devices flat out", "fanout100", field("failures")),
    ("deliveries/s flat out, 1,000 devices", "fanout1000", field("deliveries_per_s")),
    ("sustained with a report each (lower of the two), 1,000 devices", "fanout1000", sustained),
    ("sessions lost, 1,000 devices flat out", "fanout1000", field("failures")),
    ("confirmation p99 flat out, 1,000 devices (µs)", "fanout1000", field("confirmation", "p99_us")),
    ("latency run: signals/s to 1,000 devices", "latency1000", rate),
    ("publish→receive p99 in the latency run (µs)", "latency1000", field("latency", "p99_us")),
    ("sessions lost in the latency run", "latency1000", field("failures")),
    ("new authenticated sessions/s", "connect", field("sessions_per_s")),
    ("devices connected in the connect run", "connect", field("connected")),
    ("server memory per idle device (bytes)", "connect", field("server_rss_per_device_bytes")),
    ("server CPU per delivery + report (µs), 1,000 devices", "fanout1000", field("server_cpu_us_per_message")),
    ("client CPU per delivery + report (µs; SDK client with journal vs MQTT client library), 100 devices at 20/s", "client100", field("harness_cpu_us_per_message")),
    ("confirmed reports/s (ingest, {devices} devices)", "ingest", field("confirmed_per_s")),
    ("confirmed but not stored (must be 0)", "ingest", field("confirmed_not_stored")),
    ("repeated or out of order, 1,000 devices (must be 0)", "fanout1000", field("gaps")),
]
print("| figure | " + " | ".join(targets) + " |")
print("|---|" + "---|" * len(targets))
for name, scenario, pick in rows:
    cells = []
    devices = None
    for target in targets:
        r = run(target, scenario)
        v = None if r is None else pick(r)
        if r is not None and devices is None:
            devices = r.get("devices")
        cells.append("—" if v is None else f"{v:,}" if isinstance(v, int) else str(v))
    # The ingest run's size depends on --quick.
    name = name.format(devices=f"{devices:,}" if isinstance(devices, int) else "?")
    print(f"| {name} | " + " | ".join(cells) + " |")
print(f"\nRuns and plots: {out}")
