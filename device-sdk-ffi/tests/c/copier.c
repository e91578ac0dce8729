/*
 * A trade copier driving the eagate library the way an MQL EA does: UTF-16
 * strings, caller-reserved buffers, a struct packed on one byte (MQL's
 * layout) at an odd address, and polling on a 20 ms timer, never blocking.
 * Several "EAs" (slots) share the library in one process, as in one
 * terminal.
 *
 * Arguments: server fingerprint state_dir. The test drives it over stdin,
 * with commands read between timer ticks:
 *   connect SLOT DEVICE_ID SECRET   start a session      -> handle / connect-failed
 *   reject SLOT                     refuse signals from now on (code 10019)
 *   misuse SLOT                     bad calls must fail cleanly -> misuse SLOT ok
 *   late SLOT                       report a fill now, as a pending order
 *                                   filled late does -> late SLOT CODE
 *   close SLOT                      close, timed          -> closed SLOT MS CODE
 *   quit                            close every slot      -> bye
 * On each tick it prints state changes and every signal, and reports each
 * signal received, then filled (or rejected).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eagate.h"
#include "process.h"
#include "wide.h"

#define SLOTS 8
#define UNITS 512

/* MQL's view of EagateSignal: the same fields, packed on one byte. */
#pragma pack(push, 1)
struct MqlSignal {
    uint64_t position;
    uint64_t signal_id_hi;
    uint64_t signal_id_lo;
    uint64_t reference_hi;
    uint64_t reference_lo;
    int64_t volume_mantissa;
    int64_t price_mantissa;
    int64_t stop_loss_mantissa;
    int64_t take_profit_mantissa;
    uint64_t magic;
    uint64_t issued_at_ms;
    uint64_t expires_at_ms;
    int32_t action;
    int32_t order_type;
    int32_t volume_scale;
    int32_t price_scale;
    int32_t stop_loss_scale;
    int32_t take_profit_scale;
    int32_t has_reference;
    int32_t reserved;
};
#pragma pack(pop)

_Static_assert(sizeof(struct MqlSignal) == sizeof(EagateSignal), "packed and natural sizes agree");
_Static_assert(sizeof(EagateSignal) == 128, "EagateSignal is 128 bytes");
_Static_assert(offsetof(struct MqlSignal, action) == offsetof(EagateSignal, action), "no padding");
_Static_assert(offsetof(struct MqlSignal, reserved) == offsetof(EagateSignal, reserved), "no padding");

struct Slot {
    int64_t handle; /* 0: not connected */
    EagateState state;
    int rejecting;
    int stopped_said;
    uint64_t tickets;
    /* A signal whose report failed (outbox full, disk): retried before
     * polling again, since polling again would finish it unreported. */
    int holding;
    struct MqlSignal held;
};

static struct Slot slots[SLOTS];
static char server[UNITS], fingerprint[UNITS], state_dir[UNITS];
static int failures;


static const char *narrow(const uint16_t *text, char *out, size_t capacity) {
    size_t i = 0;
    for (; text[i] != 0 && i + 1 < capacity; i++) out[i] = text[i] < 128 ? (char)text[i] : '?';
    out[i] = '\0';
    return out;
}

static const char *thread_error(void) {
    static uint16_t units[UNITS];
    static char text[UNITS];
    eagate_last_error(units, UNITS);
    return narrow(units, text, UNITS);
}

static const char *handle_error(int64_t handle) {
    static uint16_t units[UNITS];
    static char text[UNITS];
    if (eagate_handle_last_error(handle, units, UNITS) != EAGATE_RESULT_OK) return "(no handle error)";
    return narrow(units, text, UNITS);
}

/* mantissa / 10^scale as text, as MQL's DoubleToString would give it. */
static void decimal_text(int64_t mantissa, int32_t scale, char *out, size_t capacity) {
    char digits[32];
    unsigned long long magnitude =
        mantissa < 0 ? 0ULL - (unsigned long long)mantissa : (unsigned long long)mantissa;
    int len = snprintf(digits, sizeof digits, "%0*llu", scale + 1, magnitude);
    if (scale == 0) {
        snprintf(out, capacity, "%s%s", mantissa < 0 ? "-" : "", digits);
    } else {
        snprintf(out, capacity, "%s%.*s.%s", mantissa < 0 ? "-" : "", len - scale, digits,
                 digits + (len - scale));
    }
}

/* The same, or "-" when absent (scale -1). */
static void optional_decimal(int64_t mantissa, int32_t scale, char *out, size_t capacity) {
    if (scale >= 0)
        decimal_text(mantissa, scale, out, capacity);
    else
        snprintf(out, capacity, "-");
}

static void do_connect(int slot, const char *device_id, const char *secret) {
    uint16_t w_server[UNITS], w_device[UNITS], w_secret[UNITS], w_fingerprint[UNITS], w_dir[UNITS];
    int64_t handle = 0;
    EagateResult result = eagate_connect(
        wide(server, w_server, UNITS), wide(device_id, w_device, UNITS),
        wide(secret, w_secret, UNITS), wide(fingerprint, w_fingerprint, UNITS),
        wide(state_dir, w_dir, UNITS), &handle);
    if (result != EAGATE_RESULT_OK) {
        printf("connect-failed %d %d %s\n", slot, (int)result, thread_error());
        return;
    }
    slots[slot] = (struct Slot){.handle = handle, .state = 0};
    printf("handle %d %lld\n", slot, (long long)handle);
}

static void do_close(int slot) {
    long long started = now_ms();
    EagateResult result = eagate_close(slots[slot].handle);
    printf("closed %d %lld %d\n", slot, now_ms() - started, (int)result);
    slots[slot].handle = 0;
}

#define CHECK(condition)                                              \
    do {                                                              \
        if (!(condition)) {                                           \
            printf("misuse %d failed: %s\n", slot, #condition);       \
            return;                                                   \
        }                                                             \
    } while (0)

/* Every mistake an EA can make is refused with a reason; none crashes. */
static void do_misuse(int slot) {
    int64_t handle = slots[slot].handle;
    unsigned char arena[1 + sizeof(struct MqlSignal)];
    EagateSignal *signal = (EagateSignal *)(void *)(arena + 1);
    uint16_t small[8], comment[EAGATE_COMMENT_CAPACITY], text[UNITS];

    CHECK(eagate_poll_signal(handle, signal, small, 8, comment, EAGATE_COMMENT_CAPACITY) ==
          EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(strstr(handle_error(handle), "symbol buffer") != NULL);
    CHECK(strstr(thread_error(), "symbol buffer") != NULL);
    CHECK(eagate_poll_signal(handle, NULL, small, 8, comment, EAGATE_COMMENT_CAPACITY) ==
          EAGATE_RESULT_INVALID_ARGUMENT);

    CHECK(eagate_report_filled(handle, 1, 2, 3, wide("1,2", text, UNITS), wide("0.1", small, 8)) ==
          EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(strstr(handle_error(handle), "price") != NULL);
    CHECK(eagate_report_filled(handle, 1, 2, 3, wide("1.2", text, UNITS), wide("0", small, 8)) ==
          EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(strstr(handle_error(handle), "above zero") != NULL);
    CHECK(eagate_report_filled(handle, 1, 2, 3, NULL, wide("0.1", small, 8)) ==
          EAGATE_RESULT_INVALID_ARGUMENT);

    CHECK(eagate_state(handle, NULL) == EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(eagate_state_text(handle, text, 0) == EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(eagate_state_text(handle, small, 4) == EAGATE_RESULT_BUFFER_TOO_SMALL);

    EagateState state;
    CHECK(eagate_state(987654321, &state) == EAGATE_RESULT_UNKNOWN_HANDLE);
    CHECK(strstr(thread_error(), "987654321") != NULL);
    CHECK(eagate_report_received(0, 1, 2) == EAGATE_RESULT_UNKNOWN_HANDLE);
    CHECK(eagate_close(-5) == EAGATE_RESULT_UNKNOWN_HANDLE);
    CHECK(eagate_handle_last_error(-5, text, UNITS) == EAGATE_RESULT_UNKNOWN_HANDLE);

    int64_t other = 0;
    uint16_t a[UNITS], b[UNITS], c[UNITS], d[UNITS];
    CHECK(eagate_connect(wide(server, a, UNITS), wide("dv_x", b, UNITS),
                         wide("egs_notasecret", c, UNITS), wide("SHA256 12:34", d, UNITS),
                         wide(state_dir, text, UNITS), &other) == EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(strstr(thread_error(), "fingerprint") != NULL);
    CHECK(eagate_connect(wide("no-port", a, UNITS), wide("dv_x", b, UNITS),
                         wide("egs_x", c, UNITS), wide(fingerprint, d, UNITS),
                         wide(state_dir, text, UNITS), &other) == EAGATE_RESULT_INVALID_ARGUMENT);
    CHECK(strstr(thread_error(), "host:port") != NULL);
    CHECK(other == 0);
    printf("misuse %d ok\n", slot);
}

/* Reports a signal; 0 (and the signal held for the next tick) if the
 * library could not store the report. */
static int report(int slot, const struct MqlSignal *signal) {
    struct Slot *s = &slots[slot];
    EagateResult result =
        eagate_report_received(s->handle, signal->signal_id_hi, signal->signal_id_lo);
    if (result != EAGATE_RESULT_OK) {
        printf("report-failed %d %d %s\n", slot, (int)result, handle_error(s->handle));
        s->held = *signal;
        s->holding = 1;
        failures++;
        return 0;
    }
    s->holding = 0;
    uint16_t a[UNITS], b[UNITS];
    if (s->rejecting) {
        result = eagate_report_rejected(s->handle, signal->signal_id_hi, signal->signal_id_lo,
                                        10019, wide("No money", a, UNITS));
        printf("rejected %d %016llx%016llx %d\n", slot,
               (unsigned long long)signal->signal_id_hi,
               (unsigned long long)signal->signal_id_lo, (int)result);
    } else {
        char price[64], volume[64];
        if (signal->price_scale >= 0)
            decimal_text(signal->price_mantissa, signal->price_scale, price, sizeof price);
        else
            snprintf(price, sizeof price, "2350.10");
        decimal_text(signal->volume_mantissa, signal->volume_scale, volume, sizeof volume);
        s->tickets++;
        result = eagate_report_filled(s->handle, signal->signal_id_hi, signal->signal_id_lo,
                                      (uint64_t)slot * 1000 + s->tickets, wide(price, a, UNITS),
                                      wide(volume, b, UNITS));
        printf("filled %d %016llx%016llx %s %s %d\n", slot,
               (unsigned long long)signal->signal_id_hi,
               (unsigned long long)signal->signal_id_lo, price, volume, (int)result);
    }
    if (result != EAGATE_RESULT_OK) failures++;
    return 1;
}

/* One OnTimer: state, then every waiting signal. */
static void tick(int slot) {
    struct Slot *s = &slots[slot];
    EagateState state;
    if (eagate_state(s->handle, &state) != EAGATE_RESULT_OK) {
        printf("state-failed %d %s\n", slot, thread_error());
        failures++;
        return;
    }
    if (state != s->state) {
        uint16_t units[UNITS];
        char text[UNITS];
        eagate_state_text(s->handle, units, UNITS);
        printf("state %d %d %s\n", slot, (int)state, narrow(units, text, UNITS));
        s->state = state;
    }
    if (s->holding && !report(slot, &s->held)) return;
    for (;;) {
        /* MQL places structs at whatever address; so does this. */
        unsigned char arena[1 + sizeof(struct MqlSignal)];
        struct MqlSignal *signal = (struct MqlSignal *)(void *)(arena + 1);
        uint16_t symbol[EAGATE_SYMBOL_CAPACITY], comment[EAGATE_COMMENT_CAPACITY];
        EagateResult result =
            eagate_poll_signal(s->handle, (EagateSignal *)(void *)signal, symbol,
                               EAGATE_SYMBOL_CAPACITY, comment, EAGATE_COMMENT_CAPACITY);
        if (result == EAGATE_RESULT_NO_SIGNAL) return;
        if (result == EAGATE_RESULT_STOPPED) {
            if (!s->stopped_said) printf("stopped %d %s\n", slot, handle_error(s->handle));
            s->stopped_said = 1;
            return;
        }
        if (result != EAGATE_RESULT_OK) {
            printf("poll-failed %d %d %s\n", slot, (int)result, handle_error(s->handle));
            failures++;
            return;
        }
        char sym[64], com[128], volume[64], price[64], sl[64], tp[64];
        decimal_text(signal->volume_mantissa, signal->volume_scale, volume, sizeof volume);
        optional_decimal(signal->price_mantissa, signal->price_scale, price, sizeof price);
        optional_decimal(signal->stop_loss_mantissa, signal->stop_loss_scale, sl, sizeof sl);
        optional_decimal(signal->take_profit_mantissa, signal->take_profit_scale, tp, sizeof tp);
        printf("signal %d %016llx%016llx pos=%llu symbol=%s action=%d type=%d volume=%s "
               "price=%s sl=%s tp=%s magic=%llu ref=%d comment=%s\n",
               slot, (unsigned long long)signal->signal_id_hi,
               (unsigned long long)signal->signal_id_lo, (unsigned long long)signal->position,
               narrow(symbol, sym, sizeof sym), (int)signal->action, (int)signal->order_type,
               volume, price, sl, tp, (unsigned long long)signal->magic, (int)signal->has_reference,
               narrow(comment, com, sizeof com));
        if (!report(slot, signal)) return;
    }
}

/* Commands read from stdin by a thread of their own (the terminal's user),
 * taken by the timer between ticks: the timer never waits on input, and
 * nothing here needs POSIX's poll, so the program runs on Windows too. */
#define LINE 2048
#define QUEUED 64
static char queued[QUEUED][LINE];
static int queued_first, queued_count;
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;

static void enqueue(const char *line) {
    for (;;) {
        pthread_mutex_lock(&queue_lock);
        if (queued_count < QUEUED) {
            snprintf(queued[(queued_first + queued_count) % QUEUED], LINE, "%s", line);
            queued_count++;
            pthread_mutex_unlock(&queue_lock);
            return;
        }
        pthread_mutex_unlock(&queue_lock);
        sleep_ms(5);
    }
}

static int dequeue(char *line) {
    pthread_mutex_lock(&queue_lock);
    int taken = queued_count > 0;
    if (taken) {
        snprintf(line, LINE, "%s", queued[queued_first]);
        queued_first = (queued_first + 1) % QUEUED;
        queued_count--;
    }
    pthread_mutex_unlock(&queue_lock);
    return taken;
}

/* Reads lines until `quit` or the end of input (which means quit). */
static void *read_commands(void *unused) {
    (void)unused;
    char line[LINE];
    while (fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        enqueue(line);
        if (strcmp(line, "quit") == 0) return NULL;
    }
    enqueue("quit");
    return NULL;
}

static int command(char *line) {
    char verb[32], a[UNITS], b[UNITS];
    int slot = -1;
    int fields = sscanf(line, "%31s %d %511s %511s", verb, &slot, a, b);
    if (fields >= 1 && strcmp(verb, "quit") == 0) return 0;
    if (fields < 2 || slot < 0 || slot >= SLOTS) {
        printf("bad-command %s\n", line);
        failures++;
    } else if (strcmp(verb, "connect") == 0 && fields == 4) {
        do_connect(slot, a, b);
    } else if (strcmp(verb, "close") == 0) {
        do_close(slot);
    } else if (strcmp(verb, "reverse") == 0 && fields == 4 && strlen(a) == 32) {
        /* reverse SLOT SIGNAL-ID TICKET: the broker undid that fill. */
        char hi[17], lo[17];
        memcpy(hi, a, 16);
        hi[16] = 0;
        memcpy(lo, a + 16, 16);
        lo[16] = 0;
        EagateResult result =
            eagate_report_reversed(slots[slot].handle, strtoull(hi, NULL, 16),
                                   strtoull(lo, NULL, 16), strtoull(b, NULL, 10));
        printf("reversed %d %s %d\n", slot, a, (int)result);
        if (result != EAGATE_RESULT_OK) failures++;
    } else if (strcmp(verb, "reject") == 0) {
        slots[slot].rejecting = 1;
        printf("rejecting %d\n", slot);
    } else if (strcmp(verb, "misuse") == 0) {
        do_misuse(slot);
    } else if (strcmp(verb, "late") == 0) {
        uint16_t price[16], volume[16];
        EagateResult result = eagate_report_filled(slots[slot].handle, 1, 2, 77,
                                                   wide("2350.5", price, 16),
                                                   wide("0.10", volume, 16));
        printf("late %d %d\n", slot, (int)result);
    } else {
        printf("bad-command %s\n", line);
        failures++;
    }
    return 1;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 4) {
        fprintf(stderr, "usage: copier SERVER FINGERPRINT STATE_DIR\n");
        return 2;
    }
    snprintf(server, sizeof server, "%s", argv[1]);
    snprintf(fingerprint, sizeof fingerprint, "%s", argv[2]);
    snprintf(state_dir, sizeof state_dir, "%s", argv[3]);
    printf("version %u\n", eagate_version());
    /* The process's own threads, before the library or the reader starts
     * any (a Windows process under Wine has several of its own). */
    int own_threads = thread_count();
    pthread_t reader;
    if (pthread_create(&reader, NULL, read_commands, NULL) != 0) {
        fprintf(stderr, "cannot start the command reader\n");
        return 2;
    }
    char line[LINE];
    int running = 1;
    while (running) {
        /* The timer: 20 ms between ticks, like EventSetMillisecondTimer(20). */
        sleep_ms(20);
        while (running && dequeue(line))
            if (line[0] != '\0') running = command(line);
        for (int slot = 0; slot < SLOTS; slot++)
            if (slots[slot].handle != 0) tick(slot);
    }
    pthread_join(reader, NULL);
    for (int slot = 0; slot < SLOTS; slot++)
        if (slots[slot].handle != 0) do_close(slot);
    /* 0 once the library has stopped its own threads. */
    printf("threads %d\n", threads_settled(own_threads) - own_threads);
    printf("bye %d\n", failures);
    return failures == 0 ? 0 : 1;
}
