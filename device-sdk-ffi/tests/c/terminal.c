/*
 * A MetaTrader terminal's pattern: several EAs, each on a thread of its own
 * with a handle of its own, polling on a timer and reporting at the same
 * time as the others; and an EA removed while its thread is polling (the
 * terminal calls OnDeinit on another thread than the one still in OnTimer).
 *
 * Arguments: server fingerprint state_dir signals device_id secret ...
 * (the last device is the one closed while polled). The EAs run until
 * they took every signal and a line `close` arrives on stdin (the test
 * sends it once their reports are stored: a close leaves unconfirmed
 * reports in the journal for the next run). Prints:
 *   connected EA                 the EA's session is authenticated
 *   signal EA ID                 a signal taken, reported received and filled
 *   done EA COUNT CODE           the EA took COUNT signals and closed (CODE)
 *   raced POLLS CLOSE AFTER      the racing close: polls made meanwhile, its
 *                                result, and a poll's result after it
 *   bye
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eagate.h"
#include "process.h"
#include "wide.h"

#define UNITS 512
#define MOST_EAS 8

struct Ea {
    int index;
    const char *device_id;
    const char *secret;
    int64_t handle;
    int taken;
};

static const char *server;
static const char *fingerprint;
static const char *state_dir;
static int wanted;
static pthread_mutex_t printing = PTHREAD_MUTEX_INITIALIZER;
static atomic_int closing;

static void say(const char *line) {
    pthread_mutex_lock(&printing);
    fputs(line, stdout);
    fflush(stdout);
    pthread_mutex_unlock(&printing);
}

static int64_t connect_ea(const struct Ea *ea) {
    uint16_t a[UNITS], b[UNITS], c[UNITS], d[UNITS], e[UNITS];
    int64_t handle = 0;
    EagateResult result =
        eagate_connect(wide(server, a, UNITS), wide(ea->device_id, b, UNITS),
                       wide(ea->secret, c, UNITS), wide(fingerprint, d, UNITS),
                       wide(state_dir, e, UNITS), &handle);
    if (result != EAGATE_RESULT_OK) {
        fprintf(stderr, "EA %d: connect failed (%d)\n", ea->index, (int)result);
        exit(3);
    }
    return handle;
}

/* One EA: its timer, 5 ms here, polling and reporting until it has taken
 * every signal, then its OnDeinit. */
static void *run_ea(void *arg) {
    struct Ea *ea = arg;
    ea->handle = connect_ea(ea);
    int said_connected = 0;
    long waited = 0;
    while (ea->taken < wanted || !atomic_load(&closing)) {
        int32_t state = 0;
        if (!said_connected && eagate_state(ea->handle, &state) == EAGATE_RESULT_OK &&
            state == EAGATE_STATE_CONNECTED) {
            char line[64];
            snprintf(line, sizeof line, "connected %d\n", ea->index);
            say(line);
            said_connected = 1;
        }
        EagateSignal signal;
        uint16_t symbol[EAGATE_SYMBOL_CAPACITY], comment[EAGATE_COMMENT_CAPACITY];
        EagateResult result = eagate_poll_signal(ea->handle, &signal, symbol,
                                                 EAGATE_SYMBOL_CAPACITY, comment,
                                                 EAGATE_COMMENT_CAPACITY);
        if (result == EAGATE_RESULT_NO_SIGNAL) {
            sleep_ms(5);
            waited += 5;
            /* Waiting for `close` too: only a signal that never comes is
             * an error, so the wait counts from the last one. */
            if (waited > 180000 && ea->taken < wanted) {
                fprintf(stderr, "EA %d: no signal in 180 s\n", ea->index);
                exit(4);
            }
            continue;
        }
        if (result != EAGATE_RESULT_OK) {
            fprintf(stderr, "EA %d: poll failed (%d)\n", ea->index, (int)result);
            exit(5);
        }
        uint16_t price[16], volume[16];
        if (eagate_report_received(ea->handle, signal.signal_id_hi, signal.signal_id_lo) !=
                EAGATE_RESULT_OK ||
            eagate_report_filled(ea->handle, signal.signal_id_hi, signal.signal_id_lo,
                                 (uint64_t)ea->index * 1000 + (uint64_t)ea->taken,
                                 wide("2350.5", price, 16), wide("0.10", volume, 16)) !=
                EAGATE_RESULT_OK) {
            fprintf(stderr, "EA %d: reporting failed\n", ea->index);
            exit(6);
        }
        ea->taken++;
        waited = 0;
        char line[96];
        snprintf(line, sizeof line, "signal %d %016llx%016llx\n", ea->index,
                 (unsigned long long)signal.signal_id_hi, (unsigned long long)signal.signal_id_lo);
        say(line);
    }
    EagateResult closed = eagate_close(ea->handle);
    char line[64];
    snprintf(line, sizeof line, "done %d %d %d\n", ea->index, ea->taken, (int)closed);
    say(line);
    return NULL;
}

struct Race {
    int64_t handle;
    long polls;
    EagateResult last;
};

/* An EA's OnTimer still polling while the terminal removes the EA. */
static void *poll_until_gone(void *arg) {
    struct Race *race = arg;
    for (;;) {
        EagateSignal signal;
        uint16_t symbol[EAGATE_SYMBOL_CAPACITY], comment[EAGATE_COMMENT_CAPACITY];
        EagateResult result =
            eagate_poll_signal(race->handle, &signal, symbol, EAGATE_SYMBOL_CAPACITY, comment,
                               EAGATE_COMMENT_CAPACITY);
        race->polls++;
        if (result == EAGATE_RESULT_UNKNOWN_HANDLE) {
            race->last = result;
            return NULL;
        }
        if (result != EAGATE_RESULT_OK && result != EAGATE_RESULT_NO_SIGNAL) {
            race->last = result;
            return NULL;
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 9 || (argc - 5) % 2 != 0) {
        fprintf(stderr, "usage: terminal server fingerprint state_dir signals (id secret)...\n");
        return 2;
    }
    server = argv[1];
    fingerprint = argv[2];
    state_dir = argv[3];
    wanted = atoi(argv[4]);
    int devices = (argc - 5) / 2;
    int eas = devices - 1;
    if (eas > MOST_EAS) {
        fprintf(stderr, "at most %d EAs\n", MOST_EAS);
        return 2;
    }
    struct Ea all[MOST_EAS];
    pthread_t threads[MOST_EAS];
    for (int i = 0; i < eas; i++) {
        all[i] = (struct Ea){i, argv[5 + 2 * i], argv[6 + 2 * i], 0, 0};
        pthread_create(&threads[i], NULL, run_ea, &all[i]);
    }

    struct Ea raced = {eas, argv[5 + 2 * eas], argv[6 + 2 * eas], 0, 0};
    struct Race race = {connect_ea(&raced), 0, EAGATE_RESULT_OK};
    pthread_t poller;
    pthread_create(&poller, NULL, poll_until_gone, &race);
    sleep_ms(300);
    EagateResult closed = eagate_close(race.handle);
    pthread_join(poller, NULL);
    EagateSignal signal;
    uint16_t symbol[EAGATE_SYMBOL_CAPACITY], comment[EAGATE_COMMENT_CAPACITY];
    EagateResult after = eagate_poll_signal(race.handle, &signal, symbol, EAGATE_SYMBOL_CAPACITY,
                                            comment, EAGATE_COMMENT_CAPACITY);
    char line[96];
    snprintf(line, sizeof line, "raced %ld %d %d %d\n", race.polls, (int)closed, (int)race.last,
             (int)after);
    say(line);

    char command[64];
    while (fgets(command, sizeof command, stdin) != NULL && strncmp(command, "close", 5) != 0) {
    }
    atomic_store(&closing, 1);
    for (int i = 0; i < eas; i++) pthread_join(threads[i], NULL);
    say("bye\n");
    return 0;
}
