#!/usr/bin/env bash
# Checks eagate's dependencies against the RustSec advisory database
# (`cargo deny check advisories`, with the exceptions and their reasons in
# deny.toml). Run by hand: the database lives on GitHub, which the test
# machines cannot reach, so either give it a checkout of
# https://github.com/rustsec/advisory-db, or run it where GitHub is
# reachable and let cargo-deny fetch the database itself:
#
#   scripts/deny-advisories.sh /path/to/advisory-db
#   scripts/deny-advisories.sh
set -euo pipefail
cd "$(dirname "$0")/.."

deny_version=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q " $deny_version$"; then
    echo "==> installing cargo-deny $deny_version from crates.io"
    cargo install --quiet --locked cargo-deny --version "$deny_version"
fi

if [ $# -eq 0 ]; then
    exec cargo deny check advisories
fi
db=$(realpath "$1")
[ -d "$db/crates" ] || { echo "$db is not a checkout of rustsec/advisory-db" >&2; exit 2; }
# Where cargo-deny $deny_version keeps the database of
# github.com/rustsec/advisory-db (a name derived from its URL).
dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
kept=$dbs/advisory-db-3157b0e258782691
mkdir -p "$dbs"
rm -rf "$kept"
cp -r "$db" "$kept"
echo "==> advisory database: $(git -C "$kept" log -1 --format='%h of %cs')"
# cargo-deny reads the whole dependency graph, every platform's included.
cargo fetch --quiet
cargo deny --offline check advisories
