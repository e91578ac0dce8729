#!/usr/bin/env bash
# Runs every check and test of eagate. This is the README's test command and
# what CI runs (.ci/run). On a fresh Debian machine with only Rust it installs
# what the tests need from Debian's packages (redis-server, gcc, valgrind),
# starts a private Redis on a free loopback port in a throwaway directory,
# exports its URL as EAGATE_TEST_REDIS_URL, starts a private Redis Cluster of
# three primaries (scripts/redis-cluster.sh) for EAGATE_TEST_REDIS_CLUSTER_URL,
# and stops both on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_packages=()
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_packages+=(redis-tools)
# The C library's harness compiles C programs and runs them under memcheck.
command -v gcc >/dev/null 2>&1 || need_packages+=(gcc)
# The header is compiled as C89 through C17 and C++ by gcc and clang.
command -v g++ >/dev/null 2>&1 || need_packages+=(g++)
command -v clang >/dev/null 2>&1 || need_packages+=(clang)
command -v valgrind >/dev/null 2>&1 || need_packages+=(valgrind)
# The lossy-network test puts a bot in a network namespace of its own
# (iproute2) whose packets nftables drops at random.
command -v ip >/dev/null 2>&1 || need_packages+=(iproute2)
command -v nft >/dev/null 2>&1 || need_packages+=(nftables)
# The console's end-to-end tests drive Debian's Chromium through its
# WebDriver (tests/tests/console_browser.rs).
[ -x /usr/bin/chromium ] || need_packages+=(chromium)
[ -x /usr/bin/chromedriver ] || need_packages+=(chromium-driver)
# schemathesis (the OpenAPI conformance test) is installed from PyPI into
# a virtual environment under target/.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_packages+=(python3 python3-venv)
if [ ${#need_packages[@]} -gt 0 ]; then
    step "installing ${need_packages[*]} from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_packages[@]}"
fi

schemathesis_version=4.32.5
schemathesis_env=target/schemathesis
if ! "$schemathesis_env/bin/st" --version 2>/dev/null | grep -q " $schemathesis_version$"; then
    step "installing schemathesis $schemathesis_version from PyPI into $schemathesis_env"
    rm -rf "$schemathesis_env"
    python3 -m venv "$schemathesis_env"
    "$schemathesis_env/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$schemathesis_version"
fi
EAGATE_TEST_SCHEMATHESIS="$(pwd)/$schemathesis_env/bin/st"
export EAGATE_TEST_SCHEMATHESIS

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "cargo deny: licences, duplicate versions, sources (deny.toml)"
deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q " $deny_version$"; then
    step "installing cargo-deny $deny_version from crates.io"
    cargo install --quiet --locked cargo-deny --version "$deny_version"
fi
# Advisories need the RustSec database from GitHub, which test machines
# cannot reach: scripts/deny-advisories.sh runs that check by hand.
# Offline, cargo-deny reads the whole dependency graph from the local
# registry, every platform's crates included (Windows and wasm ones too),
# which a build for this machine alone never downloads: fetch them first.
cargo fetch --locked --quiet
cargo deny --offline check licenses bans sources

step "no_std proof (tests/no-std links the device-side crates with its own panic handler)"
cargo build --quiet --manifest-path tests/no-std/Cargo.toml --target-dir target/no-std

step "starting a private Redis"
redis_dir=$(mktemp -d -t eagate-redis.XXXXXX)
redis_pid=""
cleanup() {
    scripts/redis-cluster.sh stop "$redis_dir/cluster" || true
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    # A file written by a server still shutting down must not turn a
    # passed run red: try again, then leave the temporary directory.
    rm -rf "$redis_dir" 2>/dev/null || { sleep 1; rm -rf "$redis_dir" || true; }
}
trap cleanup EXIT INT TERM
# Try random high ports until one binds: no window between checking a port
# and taking it, and no clash with a Redis already on 6379.
for _ in $(seq 1 20); do
    port=$((20000 + RANDOM % 40000))
    redis-server --port "$port" --bind 127.0.0.1 --dir "$redis_dir" \
        --save "" --appendonly no --daemonize no \
        --logfile "$redis_dir/redis.log" &
    redis_pid=$!
    for _ in $(seq 1 50); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            break 2
        fi
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
if [ -z "$redis_pid" ]; then
    echo "could not start a private redis-server; its log:" >&2
    cat "$redis_dir/redis.log" >&2 || true
    exit 1
fi
export EAGATE_TEST_REDIS_URL="redis://127.0.0.1:$port/"
echo "Redis for the tests: $EAGATE_TEST_REDIS_URL (pid $redis_pid)"

step "starting a private Redis Cluster (three primaries)"
EAGATE_TEST_REDIS_CLUSTER_URL=$(scripts/redis-cluster.sh start "$redis_dir/cluster")
export EAGATE_TEST_REDIS_CLUSTER_URL
echo "Redis Cluster for the tests: $EAGATE_TEST_REDIS_CLUSTER_URL"

step "tests"
# Output is kept to add up the counts: the last line of this script states
# how many tests ran, so nobody (human or CI) mistakes a doctest runner's
# "0 passed" for the whole suite.
if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests; cargo test --doc does.
    cargo test --workspace --all-features --doc 2>&1 | tee "$redis_dir/doc.log"
    cargo nextest run --workspace --all-features --no-fail-fast 2>&1 | tee "$redis_dir/unit.log"
    unit_passed=$(grep -Eo '[0-9]+ tests? run: [0-9]+ passed' "$redis_dir/unit.log" | awk '{s += $4} END {print s + 0}')
else
    cargo test --workspace --all-features --no-fail-fast 2>&1 | tee "$redis_dir/unit.log"
    : > "$redis_dir/doc.log"
    unit_passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$redis_dir/unit.log" | awk '{s += $4} END {print s + 0}')
fi
doc_passed=$(grep -Eo '^test result: ok\. [0-9]+ passed' "$redis_dir/doc.log" | awk '{s += $4} END {print s + 0}')
total=$((unit_passed + doc_passed))
if [ "$total" -eq 0 ]; then
    echo "no test ran" >&2
    exit 1
fi

step "all checks passed"
echo "tests: $total passed, 0 failed"
