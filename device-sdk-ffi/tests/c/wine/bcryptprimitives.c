/*
 * For Wine only: Wine 8 (Debian 12's) lacks bcryptprimitives.dll, which
 * every Windows from 8 on has and Rust's standard library (and so
 * eagate.dll) imports for ProcessPrng, its source of randomness. This shim
 * gives Wine that one function over RtlGenRandom. It is never shipped:
 * scripts/windows.sh puts it beside the test programs under Wine, not in
 * the release folder.
 */
#include <windows.h>
#include <ntsecapi.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!RtlGenRandom(data, chunk)) return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
