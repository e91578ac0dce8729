/*
 * The C twin of eagate_http.mqh's signing code (shared/spec/DEVICE-HTTP.md).
 *
 * MetaEditor, MQL's only compiler, does not run where eagate is built, so
 * the MQL that signs requests and verifies answers cannot be run in the
 * tests. Instead every function between "twin begin" and "twin end" below
 * is the same code as its namesake in eagate_http.mqh, token for token once
 * each language's spelling of references is set aside (C's `*p`, `&x`,
 * `p->f` are MQL's `&p[]`, `x`, `p.f`; C's `const char *` is MQL's
 * `string`): device-sdk-ffi/tests/mql.rs holds the two to that, and the
 * tests run this file against the spec's vectors and a live gateway.
 *
 * What is not twinned is what each language does its own way: SHA-256 (MQL
 * has CryptEncode; this file has its own, FIPS 180-4), and turning text
 * into UTF-8 bytes (eagate_append_text).
 */
#include <stdint.h>
#include <string.h>

#include "eagate_http_ref.h"

/* MQL's long is 64 bits; so must C's be for the twins to mean the same
 * (it is on 64-bit Linux, where the tests build this; not on Windows). */
_Static_assert(sizeof(long) == 8, "MQL's long is 64 bits");

/* ---- SHA-256 (stands in for MQL's CryptEncode(CRYPT_HASH_SHA256)) ---- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = ((uint32_t)block[4 * i] << 24) | ((uint32_t)block[4 * i + 1] << 16) |
               ((uint32_t)block[4 * i + 2] << 8) | (uint32_t)block[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; k = h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

void eagate_sha256(const uchar *data, int len, uchar *out) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    uint8_t block[64];
    uint64_t bits = (uint64_t)len * 8;
    int i, full = len / 64, rest = len % 64;
    for (i = 0; i < full; i++) sha256_block(h, data + 64 * i);
    memset(block, 0, sizeof block);
    memcpy(block, data + 64 * full, (size_t)rest);
    block[rest] = 0x80;
    if (rest >= 56) {
        sha256_block(h, block);
        memset(block, 0, sizeof block);
    }
    for (i = 0; i < 8; i++) block[63 - i] = (uint8_t)(bits >> (8 * i));
    sha256_block(h, block);
    for (i = 0; i < 8; i++) {
        out[4 * i] = (uchar)(h[i] >> 24);
        out[4 * i + 1] = (uchar)(h[i] >> 16);
        out[4 * i + 2] = (uchar)(h[i] >> 8);
        out[4 * i + 3] = (uchar)h[i];
    }
}

/* Appends `text`'s bytes (UTF-8 already: MQL converts with CP_UTF8). */
void eagate_append_text(EagateText *c, const char *text) {
    size_t n = strlen(text);
    if (c->len < 0 || n > (size_t)(EAGATE_MAX_TEXT - c->len)) {
        c->len = -1;
        return;
    }
    memcpy(c->bytes + c->len, text, n);
    c->len += (int)n;
}

/* ---- twins of eagate_http.mqh ---- */

// twin begin: eagate_append_byte
void eagate_append_byte(EagateText *c, int b) {
    if (c->len < 0 || c->len >= EAGATE_MAX_TEXT) {
        c->len = -1;
        return;
    }
    c->bytes[c->len] = (uchar)b;
    c->len++;
}
// twin end

// twin begin: eagate_append_decimal
void eagate_append_decimal(EagateText *c, ulong value) {
    uchar digits[20];
    int n = 0;
    do {
        digits[n] = (uchar)('0' + (int)(value % 10));
        value = value / 10;
        n++;
    } while (value > 0);
    while (n > 0) {
        n--;
        eagate_append_byte(c, digits[n]);
    }
}
// twin end

// twin begin: eagate_hex_digit
int eagate_hex_digit(int v) {
    if (v < 10) return '0' + v;
    return 'a' + v - 10;
}
// twin end

// twin begin: eagate_append_hex
void eagate_append_hex(EagateText *c, const uchar *bytes, int len) {
    int i;
    for (i = 0; i < len; i++) {
        eagate_append_byte(c, eagate_hex_digit(bytes[i] >> 4));
        eagate_append_byte(c, eagate_hex_digit(bytes[i] & 15));
    }
}
// twin end

// twin begin: eagate_hmac_sha256
void eagate_hmac_sha256(const uchar *key, int key_len, const uchar *msg, int msg_len, uchar *mac) {
    uchar block[64];
    uchar inner[EAGATE_MAX_INNER];
    uchar outer[96];
    uchar inner_hash[32];
    int i;
    for (i = 0; i < 64; i++) block[i] = 0;
    for (i = 0; i < key_len && i < 64; i++) block[i] = key[i];
    for (i = 0; i < 64; i++) {
        inner[i] = (uchar)(block[i] ^ 0x36);
        outer[i] = (uchar)(block[i] ^ 0x5c);
    }
    for (i = 0; i < msg_len; i++) inner[64 + i] = msg[i];
    eagate_sha256(inner, 64 + msg_len, inner_hash);
    for (i = 0; i < 32; i++) outer[64 + i] = inner_hash[i];
    eagate_sha256(outer, 96, mac);
}
// twin end

// twin begin: eagate_sign_request
int eagate_sign_request(const uchar *secret, const char *method, const char *target,
                        const char *device_id, ulong timestamp_ms, const uchar *nonce,
                        const uchar *body, int body_len, EagateText *signature_hex) {
    EagateText canonical;
    uchar body_hash[32];
    uchar mac[32];
    eagate_sha256(body, body_len, body_hash);
    canonical.len = 0;
    eagate_append_text(&canonical, "eagate/1 device-http");
    eagate_append_byte(&canonical, 10);
    eagate_append_text(&canonical, method);
    eagate_append_byte(&canonical, 10);
    eagate_append_text(&canonical, target);
    eagate_append_byte(&canonical, 10);
    eagate_append_text(&canonical, device_id);
    eagate_append_byte(&canonical, 10);
    eagate_append_decimal(&canonical, timestamp_ms);
    eagate_append_byte(&canonical, 10);
    eagate_append_hex(&canonical, nonce, 16);
    eagate_append_byte(&canonical, 10);
    eagate_append_hex(&canonical, body_hash, 32);
    if (canonical.len < 0) return 0;
    eagate_hmac_sha256(secret, 32, canonical.bytes, canonical.len, mac);
    signature_hex->len = 0;
    eagate_append_hex(signature_hex, mac, 32);
    return 1;
}
// twin end

// twin begin: eagate_verify_answer
int eagate_verify_answer(const uchar *secret, const uchar *nonce, int status, const uchar *body,
                         int body_len, const char *signature_hex) {
    EagateText canonical;
    EagateText expected;
    EagateText got;
    uchar body_hash[32];
    uchar mac[32];
    int i;
    int diff;
    if (status < 100 || status > 999) return 0;
    eagate_sha256(body, body_len, body_hash);
    canonical.len = 0;
    eagate_append_text(&canonical, "eagate/1 gateway-http");
    eagate_append_byte(&canonical, 10);
    eagate_append_hex(&canonical, nonce, 16);
    eagate_append_byte(&canonical, 10);
    eagate_append_decimal(&canonical, (ulong)status);
    eagate_append_byte(&canonical, 10);
    eagate_append_hex(&canonical, body_hash, 32);
    if (canonical.len < 0) return 0;
    eagate_hmac_sha256(secret, 32, canonical.bytes, canonical.len, mac);
    expected.len = 0;
    eagate_append_hex(&expected, mac, 32);
    got.len = 0;
    eagate_append_text(&got, signature_hex);
    if (got.len != 64) return 0;
    diff = 0;
    for (i = 0; i < 64; i++) diff = diff | (expected.bytes[i] ^ got.bytes[i]);
    return diff == 0;
}
// twin end

// twin begin: eagate_make_nonce
void eagate_make_nonce(const char *device_id, ulong counter, ulong time_ms, int random_a,
                       int random_b, uchar *nonce) {
    EagateText seed;
    uchar hash[32];
    int i;
    seed.len = 0;
    eagate_append_text(&seed, "eagate/1 nonce");
    eagate_append_byte(&seed, 10);
    eagate_append_text(&seed, device_id);
    eagate_append_byte(&seed, 10);
    eagate_append_decimal(&seed, counter);
    eagate_append_byte(&seed, 10);
    eagate_append_decimal(&seed, time_ms);
    eagate_append_byte(&seed, 10);
    eagate_append_decimal(&seed, (ulong)random_a);
    eagate_append_byte(&seed, 10);
    eagate_append_decimal(&seed, (ulong)random_b);
    eagate_sha256(seed.bytes, seed.len, hash);
    for (i = 0; i < 16; i++) nonce[i] = hash[i];
}
// twin end

// twin begin: eagate_base64url_value
int eagate_base64url_value(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}
// twin end

// twin begin: eagate_parse_secret
int eagate_parse_secret(const char *text, uchar *secret) {
    EagateText t;
    int i;
    int v;
    int bits = 0;
    int acc = 0;
    int out = 0;
    t.len = 0;
    eagate_append_text(&t, text);
    if (t.len != 47) return 0;
    if (t.bytes[0] != 'e' || t.bytes[1] != 'g' || t.bytes[2] != 's' || t.bytes[3] != '_') return 0;
    for (i = 4; i < 47; i++) {
        v = eagate_base64url_value(t.bytes[i]);
        if (v < 0) return 0;
        acc = ((acc << 6) | v) & 16383;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (out < 32) secret[out] = (uchar)((acc >> bits) & 255);
            out++;
        }
    }
    if (out != 32) return 0;
    if ((acc & ((1 << bits) - 1)) != 0) return 0;
    return 1;
}
// twin end

// A decimal as the gateway writes it (-?digits(.digits)?, nothing else):
// 1 with its mantissa and scale, or 0. At most 18 decimals, as the
// gateway; at most 18 digits after leading zeros, so the mantissa cannot
// overflow a long (the gateway takes 19; no price or volume comes near).
// twin begin: eagate_parse_decimal
int eagate_parse_decimal(const char *text, long *mantissa, int *scale) {
    EagateText t;
    int i;
    int c;
    int start = 0;
    int digits = 0;
    int fraction = -1;
    long m = 0;
    t.len = 0;
    eagate_append_text(&t, text);
    if (t.len > 0 && t.bytes[0] == '-') start = 1;
    for (i = start; i < t.len; i++) {
        c = t.bytes[i];
        if (c == '.' && fraction < 0 && digits > 0) {
            fraction = 0;
        } else if (c >= '0' && c <= '9' && m <= 99999999999999999) {
            m = m * 10 + (c - '0');
            digits++;
            if (fraction >= 0) fraction++;
        } else {
            return 0;
        }
    }
    if (digits == 0 || fraction == 0 || fraction > 18) return 0;
    if (start == 1) m = -m;
    *mantissa = m;
    *scale = fraction < 0 ? 0 : fraction;
    return 1;
}
// twin end

// A signal id as the gateway writes it, 32 lowercase hex digits: 1 with
// its high and low 64 bits (the DLL struct's two ulongs), or 0.
// twin begin: eagate_parse_signal_id
int eagate_parse_signal_id(const char *text, ulong *hi, ulong *lo) {
    EagateText t;
    int i;
    int c;
    int v;
    ulong h = 0;
    ulong l = 0;
    t.len = 0;
    eagate_append_text(&t, text);
    if (t.len != 32) return 0;
    for (i = 0; i < 32; i++) {
        c = t.bytes[i];
        if (c >= '0' && c <= '9') v = c - '0';
        else if (c >= 'a' && c <= 'f') v = c - 'a' + 10;
        else return 0;
        if (i < 16) h = (h << 4) | (ulong)v;
        else l = (l << 4) | (ulong)v;
    }
    *hi = h;
    *lo = l;
    return 1;
}
// twin end

// A whole number as the gateway writes it (digits only, up to 2^64 - 1):
// 1 with its value, or 0. For the signal's magic, which MetaTrader 5
// takes as a full ulong (StringToInteger stops at 2^63 - 1).
// twin begin: eagate_parse_unsigned
int eagate_parse_unsigned(const char *text, ulong *value) {
    EagateText t;
    int i;
    int d;
    ulong v = 0;
    t.len = 0;
    eagate_append_text(&t, text);
    if (t.len < 1 || t.len > 20) return 0;
    for (i = 0; i < t.len; i++) {
        d = t.bytes[i] - '0';
        if (d < 0 || d > 9) return 0;
        if (v > 1844674407370955161 || (v == 1844674407370955161 && d > 5)) return 0;
        v = v * 10 + (ulong)d;
    }
    *value = v;
    return 1;
}
// twin end
