/*
 * What MetaTrader does with the library over an EA's life: it loads the
 * DLL when the EA starts, the EA connects and trades, and when the EA is
 * removed OnDeinit closes the session and the terminal unloads the DLL at
 * once; re-attaching the EA loads it again. The library must have stopped
 * every thread of its own by the time the close returns: one still running
 * after the unload would execute unmapped code and crash the terminal.
 *
 * This program is not linked to the library: it loads it at run time
 * (LoadLibrary/FreeLibrary on Windows, dlopen/dlclose elsewhere), twice.
 * (On Linux, glibc may keep the library mapped after dlclose, for its
 * thread-local destructors; the thread count is what shows nothing of it
 * runs. On Windows the library pins itself, so the live unload below is
 * the real test.)
 *
 * Arguments: library server fingerprint state_dir device_id secret.
 * Each round (1 and 2): loads the library and connects, prints
 *   connected ROUND
 * then waits for a line `go` on stdin (the test publishes a signal), takes
 * one signal, reports it received and filled, and prints
 *   signal ROUND ID
 * then waits for `close` (the test sees the fill stored), closes, unloads
 * and prints
 *   unloaded ROUND CLOSE_MS CODE THREADS_BEFORE_LOAD THREADS_AFTER_UNLOAD
 * and stays alive 500 ms, in which a stray thread would crash it.
 * On Windows a third round unloads the library with its session still
 * live (an EA that never closed, or a close whose threads outlived it):
 * the library pinned itself when it started its threads, so they keep
 * running its code instead of crashing the terminal; it prints
 *   live-unloaded
 * after 1 s of that. Then bye.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef _WIN32
#include <dlfcn.h>
#endif

#include "eagate.h"
#include "process.h"
#include "wide.h"

#define UNITS 512

/* The library's functions as loaded: the header's declarations, so the
 * calling convention (stdcall on 32-bit Windows) is the one it exports. */
struct Library {
    void *module;
    __typeof__(&eagate_connect) connect;
    __typeof__(&eagate_state) state;
    __typeof__(&eagate_poll_signal) poll_signal;
    __typeof__(&eagate_report_received) report_received;
    __typeof__(&eagate_report_filled) report_filled;
    __typeof__(&eagate_close) close;
};

static void fail(const char *what) {
    fprintf(stderr, "%s\n", what);
    exit(2);
}

#ifdef _WIN32
static void *load(const char *path) { return (void *)LoadLibraryA(path); }
static void *symbol(void *module, const char *name) {
    return (void *)GetProcAddress((HMODULE)module, name);
}
static int unload(void *module) { return FreeLibrary((HMODULE)module) ? 0 : -1; }
#else
static void *load(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
static void *symbol(void *module, const char *name) { return dlsym(module, name); }
static int unload(void *module) { return dlclose(module); }
#endif

/* Resolves `name` into `slot`, through memcpy: ISO C has no conversion
 * between object and function pointers, and both are one machine word. */
static void resolve(void *module, const char *name, void *slot, size_t size) {
    void *found = symbol(module, name);
    if (found == NULL) fail(name);
    memcpy(slot, &found, size);
}

static struct Library load_library(const char *path) {
    struct Library library;
    library.module = load(path);
    if (library.module == NULL) fail("the library does not load");
    resolve(library.module, "eagate_connect", &library.connect, sizeof library.connect);
    resolve(library.module, "eagate_state", &library.state, sizeof library.state);
    resolve(library.module, "eagate_poll_signal", &library.poll_signal,
            sizeof library.poll_signal);
    resolve(library.module, "eagate_report_received", &library.report_received,
            sizeof library.report_received);
    resolve(library.module, "eagate_report_filled", &library.report_filled,
            sizeof library.report_filled);
    resolve(library.module, "eagate_close", &library.close, sizeof library.close);
    return library;
}

static void await_command(const char *wanted) {
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL) fail("stdin closed");
    line[strcspn(line, "\r\n")] = '\0';
    if (strcmp(line, wanted) != 0) fail("an unexpected command");
}

/* Connects the device of argv through the loaded library and waits until
 * it is authenticated; its handle. */
static int64_t connect_and_wait(const struct Library *eagate, char **argv) {
    uint16_t a[UNITS], b[UNITS], c[UNITS], d[UNITS], e[UNITS];
    int64_t handle = 0;
    if (eagate->connect(wide(argv[2], a, UNITS), wide(argv[5], b, UNITS), wide(argv[6], c, UNITS),
                        wide(argv[3], d, UNITS), wide(argv[4], e, UNITS),
                        &handle) != EAGATE_RESULT_OK)
        fail("connect failed");
    long long deadline = now_ms() + 60000;
    EagateState state = 0;
    for (;;) {
        if (eagate->state(handle, &state) != EAGATE_RESULT_OK) fail("no state for the handle");
        if (state == EAGATE_STATE_CONNECTED) return handle;
        if (now_ms() > deadline) fail("not connected in 60 s");
        sleep_ms(20);
    }
}

static void round_of(int round, char **argv) {
    int threads_before = thread_count();
    struct Library eagate = load_library(argv[1]);
    int64_t handle = connect_and_wait(&eagate, argv);
    printf("connected %d\n", round);
    fflush(stdout);

    await_command("go");
    EagateSignal signal;
    uint16_t symbol_units[EAGATE_SYMBOL_CAPACITY], comment_units[EAGATE_COMMENT_CAPACITY];
    long long deadline = now_ms() + 60000;
    for (;;) {
        EagateResult result =
            eagate.poll_signal(handle, &signal, symbol_units, EAGATE_SYMBOL_CAPACITY,
                               comment_units, EAGATE_COMMENT_CAPACITY);
        if (result == EAGATE_RESULT_OK) break;
        if (result != EAGATE_RESULT_NO_SIGNAL) fail("poll failed");
        if (now_ms() > deadline) fail("no signal in 60 s");
        sleep_ms(20);
    }
    uint16_t price[16], volume[16];
    if (eagate.report_received(handle, signal.signal_id_hi, signal.signal_id_lo) !=
            EAGATE_RESULT_OK ||
        eagate.report_filled(handle, signal.signal_id_hi, signal.signal_id_lo,
                             (uint64_t)round, wide("2350.5", price, 16),
                             wide("0.10", volume, 16)) != EAGATE_RESULT_OK)
        fail("reporting failed");
    printf("signal %d %016llx%016llx\n", round, (unsigned long long)signal.signal_id_hi,
           (unsigned long long)signal.signal_id_lo);
    fflush(stdout);

    await_command("close");
    long long started = now_ms();
    EagateResult closed = eagate.close(handle);
    long long close_ms = now_ms() - started;
    if (unload(eagate.module) != 0) fail("the library does not unload");
    printf("unloaded %d %lld %d %d %d\n", round, close_ms, (int)closed, threads_before,
           threads_settled(threads_before));
    fflush(stdout);
    sleep_ms(500);
}

#ifdef _WIN32
static void unload_live(char **argv) {
    struct Library eagate = load_library(argv[1]);
    /* Never closed: the session is live when the library goes. */
    (void)connect_and_wait(&eagate, argv);
    if (unload(eagate.module) != 0) fail("the library does not unload");
    sleep_ms(1000);
    printf("live-unloaded\n");
}
#endif

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 7) fail("arguments: library server fingerprint state_dir device_id secret");
    round_of(1, argv);
    round_of(2, argv);
#ifdef _WIN32
    unload_live(argv);
#endif
    printf("bye\n");
    return 0;
}
