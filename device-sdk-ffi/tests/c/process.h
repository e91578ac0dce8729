/* What the C harness programs need of the operating system beyond C11:
 * sleeping, a monotonic clock in milliseconds, and the number of threads
 * in the process, on Linux and on Windows (MinGW, run under Wine). */
#ifndef EAGATE_TEST_PROCESS_H
#define EAGATE_TEST_PROCESS_H

#include <stdio.h>
#include <time.h>

#ifdef _WIN32
#include <windows.h>
#include <tlhelp32.h>
#endif

static inline void sleep_ms(long ms) {
    struct timespec wait = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&wait, NULL);
}

static inline long long now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Threads in this process, or -1 if they cannot be counted. */
static inline int thread_count(void) {
#ifdef _WIN32
    HANDLE snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0);
    THREADENTRY32 entry;
    int threads = 0;
    if (snapshot == INVALID_HANDLE_VALUE) return -1;
    entry.dwSize = sizeof entry;
    for (BOOL more = Thread32First(snapshot, &entry); more; more = Thread32Next(snapshot, &entry))
        if (entry.th32OwnerProcessID == GetCurrentProcessId()) threads++;
    CloseHandle(snapshot);
    return threads;
#else
    FILE *status = fopen("/proc/self/status", "r");
    char line[256];
    int threads = -1;
    while (status != NULL && fgets(line, sizeof line, status) != NULL)
        if (sscanf(line, "Threads: %d", &threads) == 1) break;
    if (status != NULL) fclose(status);
    return threads;
#endif
}

/* Threads once at most `expected`, waited for up to a second: a joined
 * thread leaves the kernel's count a moment after the join returns. */
static inline int threads_settled(int expected) {
    int threads = thread_count();
    for (int waited = 0; threads > expected && waited < 1000; waited += 10) {
        sleep_ms(10);
        threads = thread_count();
    }
    return threads;
}

#endif
