/*
 * A command line over the C twin of eagate_http.mqh, for the tests: they
 * sign requests and verify answers with it, against the spec's vectors and
 * a live gateway, exactly as the MQL client does.
 *
 *   cli sign SECRET METHOD TARGET DEVICE TIMESTAMP NONCE_HEX BODY_HEX
 *       prints the request's Eagate-Signature
 *   cli verify SECRET NONCE_HEX STATUS BODY_HEX SIGNATURE
 *       prints "ok" (exit 0) or "refused" (exit 1)
 *   cli nonce DEVICE COUNTER TIME_MS RANDOM_A RANDOM_B
 *       prints a nonce as the MQL client makes it
 *   cli decimal TEXT
 *       prints "MANTISSA SCALE" as the copier takes a signal's decimal
 *       (exit 0), or "refused" (exit 1)
 *   cli unsigned TEXT
 *       prints the whole number as the copier reads it (exit 0), or
 *       "refused" (exit 1)
 *   cli signal-id TEXT
 *       prints "HI LO", the id's two 64-bit halves in decimal (exit 0),
 *       or "refused" (exit 1)
 *
 * A body is given in hex ("-" for none) so any bytes pass through argv.
 * Exit status 2 on unusable input (a secret that does not parse included).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eagate_http_ref.h"

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Reads hex into `out` (at most `capacity` bytes); the count, or -1. */
static int parse_hex(const char *hex, uchar *out, int capacity) {
    int len, i;
    if (strcmp(hex, "-") == 0) return 0;
    len = (int)strlen(hex);
    if (len % 2 != 0 || len / 2 > capacity) return -1;
    for (i = 0; i < len / 2; i++) {
        int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) return -1;
        out[i] = (uchar)(high * 16 + low);
    }
    return len / 2;
}

static void print_text(const EagateText *text) {
    printf("%.*s\n", text->len, (const char *)text->bytes);
}

int main(int argc, char **argv) {
    static uchar body[1 << 20];
    uchar secret[32], nonce[16];
    int body_len;
    if (argc == 9 && strcmp(argv[1], "sign") == 0) {
        EagateText signature;
        if (!eagate_parse_secret(argv[2], secret)) return 2;
        if (parse_hex(argv[7], nonce, 16) != 16) return 2;
        body_len = parse_hex(argv[8], body, (int)sizeof body);
        if (body_len < 0) return 2;
        if (!eagate_sign_request(secret, argv[3], argv[4], argv[5], strtoull(argv[6], NULL, 10),
                                 nonce, body, body_len, &signature))
            return 2;
        print_text(&signature);
        return 0;
    }
    if (argc == 7 && strcmp(argv[1], "verify") == 0) {
        if (!eagate_parse_secret(argv[2], secret)) return 2;
        if (parse_hex(argv[3], nonce, 16) != 16) return 2;
        body_len = parse_hex(argv[5], body, (int)sizeof body);
        if (body_len < 0) return 2;
        if (eagate_verify_answer(secret, nonce, atoi(argv[4]), body, body_len, argv[6])) {
            printf("ok\n");
            return 0;
        }
        printf("refused\n");
        return 1;
    }
    if (argc == 7 && strcmp(argv[1], "nonce") == 0) {
        EagateText text;
        eagate_make_nonce(argv[2], strtoull(argv[3], NULL, 10), strtoull(argv[4], NULL, 10),
                          atoi(argv[5]), atoi(argv[6]), nonce);
        text.len = 0;
        eagate_append_hex(&text, nonce, 16);
        print_text(&text);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "decimal") == 0) {
        long mantissa = 0;
        int scale = 0;
        if (!eagate_parse_decimal(argv[2], &mantissa, &scale)) {
            printf("refused\n");
            return 1;
        }
        printf("%ld %d\n", mantissa, scale);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "unsigned") == 0) {
        ulong value = 0;
        if (!eagate_parse_unsigned(argv[2], &value)) {
            printf("refused\n");
            return 1;
        }
        printf("%llu\n", value);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "signal-id") == 0) {
        ulong hi = 0, lo = 0;
        if (!eagate_parse_signal_id(argv[2], &hi, &lo)) {
            printf("refused\n");
            return 1;
        }
        printf("%llu %llu\n", hi, lo);
        return 0;
    }
    fprintf(stderr, "usage: see the comment at the top of cli.c\n");
    return 2;
}
