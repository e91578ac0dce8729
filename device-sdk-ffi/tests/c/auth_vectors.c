/*
 * Checks eagate_auth_mac against the independent vectors of
 * shared/spec/device-auth-vectors.json, calling the library exactly as MQL
 * does: UTF-16 strings, caller-reserved buffers, result codes, and the last
 * error text on failure.
 *
 * Input, one case per line (the Rust test writes it from the JSON):
 *   <device id as UTF-16 units, 4 hex digits each> <secret text>
 *   <timestamp ms> <nonce hex> <binding hex> <expected MAC hex or "invalid">
 * Exit status 0 when every case holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eagate.h"

#define MAX_UNITS 512

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Parses 2*len hex digits into len bytes; 0 on success. */
static int parse_bytes(const char *hex, uint8_t *out, size_t len) {
    if (strlen(hex) != 2 * len) return -1;
    for (size_t i = 0; i < len; i++) {
        int high = hex_value(hex[2 * i]), low = hex_value(hex[2 * i + 1]);
        if (high < 0 || low < 0) return -1;
        out[i] = (uint8_t)(high * 16 + low);
    }
    return 0;
}

/* Parses UTF-16 units written as 4 hex digits each, NUL-terminated. */
static int parse_units(const char *hex, uint16_t *out, size_t capacity) {
    size_t len = strlen(hex);
    if (len % 4 != 0 || len / 4 + 1 > capacity) return -1;
    for (size_t i = 0; i < len / 4; i++) {
        unsigned value = 0;
        for (size_t k = 0; k < 4; k++) {
            int digit = hex_value(hex[4 * i + k]);
            if (digit < 0) return -1;
            value = value * 16 + (unsigned)digit;
        }
        out[i] = (uint16_t)value;
    }
    out[len / 4] = 0;
    return 0;
}

/* ASCII to UTF-16, as MQL hands a string to a DLL. */
static void widen(const char *text, uint16_t *out, size_t capacity) {
    size_t i = 0;
    for (; text[i] != '\0' && i + 1 < capacity; i++) out[i] = (uint16_t)(unsigned char)text[i];
    out[i] = 0;
}

int main(void) {
    uint32_t version = eagate_version();
    printf("eagate %u.%u.%u\n", version >> 16, (version >> 8) & 0xFF, version & 0xFF);

    char device_hex[4 * MAX_UNITS], secret_text[128], nonce_hex[64], binding_hex[128], mac_hex[80];
    unsigned long long timestamp;
    int cases = 0, failures = 0;
    while (scanf("%2047s %127s %llu %63s %127s %79s", device_hex, secret_text, &timestamp,
                 nonce_hex, binding_hex, mac_hex) == 6) {
        uint16_t device_id[MAX_UNITS], secret[128];
        uint8_t nonce[16], binding[32], expected[32], mac[32];
        cases++;
        if (parse_units(device_hex, device_id, MAX_UNITS) || parse_bytes(nonce_hex, nonce, 16) ||
            parse_bytes(binding_hex, binding, 32)) {
            printf("case %d: unreadable input\n", cases);
            return 2;
        }
        widen(secret_text, secret, 128);
        memset(mac, 0, sizeof mac);
        EagateResult result =
            eagate_auth_mac(device_id, secret, (uint64_t)timestamp, nonce, binding, mac);
        if (strcmp(mac_hex, "invalid") == 0) {
            uint16_t reason[256];
            char narrow[256];
            if (result != EAGATE_RESULT_INVALID_ARGUMENT ||
                eagate_last_error(reason, 256) != EAGATE_RESULT_OK ||
                eagate_last_error_utf8((uint8_t *)narrow, 256) != EAGATE_RESULT_OK ||
                reason[0] == 0 || narrow[0] == '\0') {
                printf("case %d: expected a refusal with a reason, got %d\n", cases, (int)result);
                failures++;
            } else {
                printf("case %d: refused: %s\n", cases, narrow);
            }
            /* A 4-unit buffer gets 3 characters, a NUL, and says so. */
            uint16_t small[4] = {1, 1, 1, 1};
            if (eagate_last_error(small, 4) != EAGATE_RESULT_BUFFER_TOO_SMALL || small[3] != 0 ||
                small[0] != reason[0]) {
                printf("case %d: a short buffer was not cut cleanly\n", cases);
                failures++;
            }
            continue;
        }
        if (parse_bytes(mac_hex, expected, 32)) {
            printf("case %d: unreadable MAC\n", cases);
            return 2;
        }
        if (result != EAGATE_RESULT_OK || memcmp(mac, expected, 32) != 0) {
            printf("case %d: MAC mismatch (result %d)\n", cases, (int)result);
            failures++;
        } else {
            printf("case %d: ok\n", cases);
        }
    }
    /* Null arguments are refused, never dereferenced. */
    uint8_t mac[32];
    if (eagate_auth_mac(NULL, NULL, 0, NULL, NULL, mac) != EAGATE_RESULT_INVALID_ARGUMENT) {
        printf("null arguments were not refused\n");
        failures++;
    }
    printf("%d cases, %d failures\n", cases, failures);
    return failures == 0 && cases > 0 ? 0 : 1;
}
