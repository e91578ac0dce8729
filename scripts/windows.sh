#!/usr/bin/env bash
# Builds eagate.dll for MetaTrader 5 (x86_64) and MetaTrader 4 (i686, stdcall
# exported without @N decoration), checks what each exports and imports, and
# runs every program of the C harness under Wine against `eagate serve` on
# Linux loopback (the copier on many handles with exact signal fields and
# stored reports, closes within OnDeinit's limit, a takeover, a report after
# a stop, EAs on threads of their own with a close racing a poll, the DLL
# unloaded and loaded again, the spec's MAC vectors). Leaves both DLLs, the header
# and the MQL files, with their SHA-256 sums, in target/metatrader/.
# By hand (two more full builds than the test command makes):
#
#   scripts/windows.sh            # both; 32-bit Wine is tried, and said if absent
#   ARCHS=x86_64 scripts/windows.sh
#
# It installs what it needs: Debian's mingw-w64 and Wine, the two Rust targets.
set -euo pipefail
cd "$(dirname "$0")/.."
archs=${ARCHS:-"x86_64 i686"}
out=target/metatrader

step() { printf '\n==> %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
for arch in $archs; do
    command -v "$arch-w64-mingw32-gcc" >/dev/null || need+=("gcc-mingw-w64-${arch/_/-}")
done
command -v x86_64-w64-mingw32-objdump >/dev/null || need+=(binutils-mingw-w64-x86-64)
command -v wine >/dev/null || need+=(wine wine64)
if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]} from Debian's packages"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
step "Rust targets"
for arch in $archs; do rustup target add "$arch-pc-windows-gnu"; done

# 32-bit Wine (MT4's DLL runs only in a 32-bit process) needs Debian's i386
# architecture: tried, and said plainly when it cannot be had.
wine32=false
if [[ " $archs " == *" i686 "* ]]; then
    if ! dpkg -s wine32 >/dev/null 2>&1; then
        step "installing 32-bit Wine (wine32, i386)"
        if as_root dpkg --add-architecture i386 && as_root apt-get update -qq &&
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wine32; then
            wine32=true
        else
            echo "!! 32-bit Wine could not be installed: the i686 DLL is built and checked, not run"
            # A half-added i386 architecture would make every later
            # `apt-get update` (scripts/test.sh's too) fail on its index.
            if ! dpkg -l | grep -q ':i386 '; then
                as_root dpkg --remove-architecture i386 || true
                as_root apt-get update -qq || true
            fi
        fi
    else
        wine32=true
    fi
fi

# Windows' own DLLs: anything else imported would have to ship beside ours.
system_dlls='^(KERNEL32|ntdll|WS2_32|bcrypt|bcryptprimitives|ADVAPI32|USERENV|msvcrt|api-ms-win-.*|CRYPT32|USER32|SHELL32|ole32|OLEAUT32|Secur32|IPHLPAPI|crypt32)\.dll$'

mkdir -p "$out"
for arch in $archs; do
    target=$arch-pc-windows-gnu
    flags="-C target-feature=+crt-static"
    [ "$arch" = i686 ] && flags="$flags -C link-arg=-Wl,--kill-at"
    step "building eagate.dll for $target"
    RUSTFLAGS="$flags" cargo build --release --quiet -p eagate-ffi --lib --target "$target"
    dll=target/$target/release/eagate.dll
    dump=$("$arch-w64-mingw32-objdump" -p "$dll")

    step "$arch: exports"
    exports=$(echo "$dump" | awk '/\[Ordinal\/Name Pointer\] Table/{t=1;next} t&&/\]/{print $NF} t&&/^$/{t=0}' | grep '^eagate_' || true)
    echo "$exports" | sed 's/^/   /'
    [ "$(echo "$exports" | grep -c .)" -ge 14 ] || { echo "!! fewer than 14 eagate_ exports"; exit 1; }
    if echo "$exports" | grep -q '@'; then
        echo "!! decorated (@N) exports: MQL4 cannot find them"
        exit 1
    fi

    step "$arch: imports (Windows' own DLLs only)"
    imports=$(echo "$dump" | awk '/DLL Name:/{print $3}')
    echo "$imports" | sed 's/^/   /'
    foreign=$(echo "$imports" | grep -Eiv "$system_dlls" || true)
    if [ -n "$foreign" ]; then
        echo "!! imports a DLL that would have to ship beside it: $foreign"
        exit 1
    fi
    cp "$dll" "$out/eagate-$arch.dll"
done

step "the gateway and the harness (Linux)"
cargo build --quiet -p eagate-gateway --bin eagate
cargo build --quiet -p eagate-ffi --tests
failed=()
for arch in $archs; do
    if [ "$arch" = i686 ] && ! $wine32; then
        echo "!! i686: not run under Wine (no 32-bit Wine)"
        continue
    fi
    step "$arch: the C harness under Wine, against eagate serve on loopback"
    EAGATE_TEST_WINDOWS=$arch cargo nextest run --no-fail-fast -p eagate-ffi --test c_harness \
        || failed+=("$arch under Wine")
done

step "release folder: $out"
cp device-sdk-ffi/include/eagate.h device-sdk-ffi/mql/*.mq4 device-sdk-ffi/mql/*.mq5 \
    device-sdk-ffi/mql/*.mqh "$out/"
(cd "$out" && sha256sum eagate-*.dll eagate.h ./*.mq4 ./*.mq5 ./*.mqh > SHA256SUMS && cat SHA256SUMS)
echo "copy eagate-x86_64.dll (MT5) or eagate-i686.dll (MT4) as eagate.dll into MQL5\\Libraries or MQL4\\Libraries"
if [ ${#failed[@]} -gt 0 ]; then
    echo "!! failed: ${failed[*]} (the folder is there, the DLLs built and checked; see above)"
    exit 1
fi
echo "done"
